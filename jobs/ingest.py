"""spark-submit entry for the ingest stage: spark-submit jobs/ingest.py --ds YYYY-MM-DD"""

import sys

from nightrec.pipeline.ingest import main

if __name__ == "__main__":
    main(sys.argv[1:])
