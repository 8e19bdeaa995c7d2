"""Recommendation candidates. Each fits in Spark and becomes a scoring component over the catalog."""
