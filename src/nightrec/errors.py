"""Errors that retrying cannot fix (bad input, bad configuration): Airflow fails such a task at once."""


class PermanentError(RuntimeError):
    """The data or the settings are wrong; the message says what to fix."""
