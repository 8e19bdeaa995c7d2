"""Data wing: the Spark session, the Delta lake, landing files, validation, feedback, synthetic and MovieLens data."""
