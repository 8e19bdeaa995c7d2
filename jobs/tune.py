"""spark-submit entry for the tuning stage: spark-submit jobs/tune.py --ds YYYY-MM-DD"""

import sys

from nightrec.pipeline.tune import main

if __name__ == "__main__":
    main(sys.argv[1:])
