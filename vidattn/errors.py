"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class VidattnError(Exception):
    """A user-facing failure: bad input file, mismatched checkpoint, unwritable output.

    The message is one line that names the file (where there is one) and the problem.
    """

    def __init__(self, message, path=None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
