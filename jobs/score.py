"""spark-submit entry for the score stage: spark-submit jobs/score.py --ds YYYY-MM-DD"""

import sys

from nightrec.pipeline.score import main

if __name__ == "__main__":
    main(sys.argv[1:])
