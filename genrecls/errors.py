"""The one exception type for user mistakes.

The CLI prints its message on one line and exits non-zero, without a
traceback, so every message must say what to do next.
"""


class GenreclsError(Exception):
    """A mistake the user can fix: bad path, unknown name, missing weights."""
