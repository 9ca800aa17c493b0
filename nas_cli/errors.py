"""The one exception type for user mistakes.

Raise ``UserError`` for anything the user can fix (a missing data folder, a bad
checkpoint, an impossible option): the CLI prints its message as one line and
exits non-zero, with no traceback.
"""


class UserError(Exception):
    """A problem with the user's input, explained in one line that names the fix."""
