"""User-facing errors: the CLI prints these as one line, without a traceback."""


class UserError(Exception):
    """Bad input or a refused operation that the user can fix."""
