"""Entry for the housekeeping stage: python jobs/housekeeping.py --ds YYYY-MM-DD (no Spark needed)"""

import sys

from nightrec.pipeline.housekeeping import main

if __name__ == "__main__":
    main(sys.argv[1:])
