"""Keras, imported once and quietly: every vidattn module takes ``keras`` and ``ops`` from here.

TensorFlow's C++ runtime writes to the process's stderr while it loads, before any log level
applies ("Could not find cuda drivers on your machine" on a CPU machine with the CUDA-capable
``tensorflow`` wheel), and a command's stderr is kept to one line per error. So the first import
of Keras (which loads the backend) runs with file descriptor 2 pointed at /dev/null; Python's own
exceptions still propagate. Where Keras is already imported, this is a plain import.
"""

from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["keras", "ops"]


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the block, then back."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to quiet
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


with _quiet_stderr() if "keras" not in sys.modules else contextlib.nullcontext():
    import keras
from keras import ops  # noqa: E402
