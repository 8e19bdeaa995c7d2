"""spark-submit entry for the smoke stage: spark-submit jobs/smoke.py --ds YYYY-MM-DD"""

import sys

from nightrec.pipeline.smoke import main

if __name__ == "__main__":
    main(sys.argv[1:])
