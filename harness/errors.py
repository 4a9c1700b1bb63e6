"""User-facing errors: printed as one line on stderr, exit code 2, never a traceback."""


class HarnessError(Exception):
    """A mistake in the user's input or environment that the user can fix."""
