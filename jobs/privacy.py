"""Entry for the privacy stage: python jobs/privacy.py --ds YYYY-MM-DD (no Spark needed)"""

import sys

from nightrec.pipeline.privacy import main

if __name__ == "__main__":
    main(sys.argv[1:])
