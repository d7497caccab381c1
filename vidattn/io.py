"""Output files: temporary names, atomic replacement, and unique names within one folder.

Every file vidattn writes is first written to a hidden temporary file beside its target,
``.NAME.partial-XXXXXXXX.EXT`` (``temporary_path``), and renamed into place only when complete,
so a reader never sees half a file and a failed or interrupted run leaves nothing behind. The
temporary name keeps the extension, for writers that choose a format by it (PyAV, Pillow).
Outputs that are folders are built the same way in a hidden temporary folder
(``temporary_folder``) and moved into place whole (``publish_folder``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
from pathlib import Path

from vidattn.errors import VidattnError

__all__ = ["PARTIAL", "atomic_path", "discard_folder", "publish_folder", "remove_partials",
           "temporary_folder", "temporary_path", "unique_names", "write_bytes_atomic"]

PARTIAL = ".partial-"  # the mark of a temporary file: .NAME.partial-XXXXXXXX.EXT


def _create_beside(path: Path, suffix: str, create, what: str) -> Path:
    """A new ``.NAME.partial-XXXXXXXX<suffix>`` beside ``path``, made by ``create(temp)``, which
    must fail with FileExistsError when it exists."""
    for _ in range(8):  # a clash of 32 random bits is rare; a few tries make it impossible
        temp = path.with_name(f".{path.name}{PARTIAL}{secrets.token_hex(4)}{suffix}")
        try:
            create(temp)
        except FileExistsError:
            continue
        except OSError as error:
            raise VidattnError(f"cannot write here ({error.strerror})", path) from None
        return temp
    raise VidattnError(f"cannot create a temporary {what} beside it", path)


def temporary_path(path) -> Path:
    """Create an empty, new temporary file beside ``path`` and return its path.

    Creating it proves that the folder is writable before any work is done. Raises VidattnError
    naming ``path`` when ``path`` is a folder, its folder is missing or not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise VidattnError("output path is a directory", path)
    if not path.parent.is_dir():
        raise VidattnError("output directory does not exist", path)
    return _create_beside(path, path.suffix, lambda temp: os.close(
        os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)), "file")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (``temporary_path``); on success it replaces ``path``.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_partials(path) -> list[Path]:
    """Delete the temporary files and folders that writers killed outright (SIGKILL, a lost
    machine) left for ``path``: its ``.NAME.partial-*`` siblings and, where ``path`` is a folder
    (an image's figures), the ``.*.partial-*`` entries inside it. Only call it when no writer of
    ``path`` is still running. Returns the paths removed."""
    path = Path(path)
    found = list(path.parent.glob(f".{glob.escape(path.name)}{PARTIAL}*"))
    if path.is_dir() and not path.is_symlink():
        found += list(path.glob(f".*{PARTIAL}*"))
    removed = []
    for partial in found:
        if partial.is_dir() and not partial.is_symlink():
            discard_folder(partial)
            removed.append(partial)
            continue
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
            removed.append(partial)
    return removed


def write_bytes_atomic(path, data: bytes):
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def temporary_folder(path) -> Path:
    """Create a new, empty hidden folder beside ``path`` (``.NAME.partial-XXXXXXXX``) and return it.

    The folder form of ``temporary_path``, for outputs that are folders (the browser viewer):
    fill it, then ``publish_folder`` it into place, or ``discard_folder`` it. Raises VidattnError
    naming ``path`` when its parent is missing or not writable.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise VidattnError("output directory does not exist", path)
    return _create_beside(path, "", Path.mkdir, "folder")


def publish_folder(temp, path) -> Path:
    """Move the complete folder ``temp`` (from ``temporary_folder``) to ``path``.

    A folder already at ``path`` is first renamed aside and removed once ``temp`` is in place, so
    ``path`` holds either the old folder or the whole new one, never a mixture. A file at ``path``
    is refused (VidattnError), and ``temp`` is then discarded.
    """
    temp, path = Path(temp), Path(path)
    old = None
    try:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise VidattnError("output path exists and is not a folder", path)
        if path.exists():
            old = path.with_name(f".{path.name}{PARTIAL}{secrets.token_hex(4)}-old")
            os.replace(path, old)
        os.replace(temp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)
            old = None
        discard_folder(temp)
        raise
    finally:
        if old is not None:
            discard_folder(old)
    return path


def discard_folder(temp) -> None:
    """Remove a temporary folder and everything in it; a missing one is fine."""
    shutil.rmtree(temp, ignore_errors=True)


def unique_names(candidates, reserved=(), order=None) -> list[str]:
    """One name per candidate ``(base, ext)``, none equal to another or to a ``reserved`` name.

    A candidate gets ``base + ext`` if that is free, else ``base-2 + ext``, ``base-3 + ext``...
    Names are compared case-insensitively, as macOS and Windows file systems do. Candidates
    choose in ``order`` (a sequence of their indices; default: as given), so earlier ones keep
    their plain names. Returns the names in the candidates' order.
    """
    candidates = list(candidates)
    taken = {name.lower() for name in reserved}
    names = [""] * len(candidates)
    for i in range(len(candidates)) if order is None else order:
        base, ext = candidates[i]
        name, k = base + ext, 1
        while name.lower() in taken:
            k += 1
            name = f"{base}-{k}{ext}"
        taken.add(name.lower())
        names[i] = name
    return names
