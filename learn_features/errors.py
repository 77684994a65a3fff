"""One exception type for user-facing failures.

The CLI turns a ``LearnFeaturesError`` into a one-line message and exit code 2, so every
check that guards user input raises it with the file, row or field at fault in the text.
Anything else escaping is a bug and keeps its traceback.
"""


class LearnFeaturesError(Exception):
    """Bad input or configuration that the user can fix; the message says where."""
