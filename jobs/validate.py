"""spark-submit entry for the validate stage: spark-submit jobs/validate.py --ds YYYY-MM-DD"""

import sys

from nightrec.pipeline.validate import main

if __name__ == "__main__":
    main(sys.argv[1:])
