"""spark-submit entry for the publish stage: spark-submit jobs/publish.py --ds YYYY-MM-DD"""

import sys

from nightrec.pipeline.publish import main

if __name__ == "__main__":
    main(sys.argv[1:])
