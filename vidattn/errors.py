"""The one exception type the CLI turns into a one-line message and a non-zero exit, and the
escaping that keeps such a message on one line."""


class VidattnError(Exception):
    """A user-facing failure: bad input file, mismatched checkpoint, unwritable output.

    The message is one line that names the file (where there is one) and the problem.
    """

    def __init__(self, message, path=None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``, ``\\x1b``), so
    that a message naming a file stays one line on a terminal whatever the file is called."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
