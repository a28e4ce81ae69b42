"""Errors a person caused. The CLI prints ``error: <message>`` on one line and exits with ``code``."""


class UsageError(Exception):
    """Bad input: flags, names, paths, config. Exit code 2."""

    code = 2


class NotFoundError(Exception):
    """A job reference that does not exist. Exit code 1."""

    code = 1


class BackendError(Exception):
    """The cluster said no (API error, sbatch failure): its message plus a hint. Exit code 1."""

    code = 1


class TemplateError(Exception):
    """A template failed to render or produced output that does not parse: a bug in the template,
    never the user's input (every value is quoted by a filter). Exit code 1."""

    code = 1
