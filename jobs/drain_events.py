"""Entry for the drain_events stage: python jobs/drain_events.py --ds YYYY-MM-DD (no Spark needed)"""

import sys

from nightrec.pipeline.drain_events import main

if __name__ == "__main__":
    main(sys.argv[1:])
