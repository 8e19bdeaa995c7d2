"""spark-submit entry for the analyze stage: spark-submit jobs/analyze.py --ds YYYY-MM-DD [--lookback-days N]"""

import sys

from nightrec.pipeline.analyze import main

if __name__ == "__main__":
    main(sys.argv[1:])
