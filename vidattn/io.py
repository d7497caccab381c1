"""Atomic file output: write next to the target, rename into place only on success."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from vidattn.errors import VidattnError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is untouched,
    so readers never see half a file. The temporary name keeps ``path``'s extension, for writers
    that choose a format by it.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.stem}.partial-", suffix=path.suffix, dir=path.parent or "."
        )
    except OSError as err:
        raise VidattnError(f"cannot write here: {err.strerror}", path) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data: bytes):
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
