"""nightrec: nightly batch recommendations from interaction logs to Redis."""

__version__ = "0.1.0"
