"""The data pipeline's one error type (kept apart so small modules can raise it cheaply)."""


class DataError(ValueError):
    """Bad data or data settings; the message is one line meant for the user (the CLI exits 2)."""
