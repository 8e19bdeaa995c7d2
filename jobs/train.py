"""spark-submit entry for the train stage: spark-submit jobs/train.py --ds YYYY-MM-DD"""

import sys

from nightrec.pipeline.train import main

if __name__ == "__main__":
    main(sys.argv[1:])
