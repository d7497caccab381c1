"""vidattn: see what Vision Transformers look at.

Keras 3 runs on the TensorFlow backend unless ``KERAS_BACKEND`` says otherwise; the backend must be
chosen before Keras is first imported, hence the environment defaults here. Keras itself is
imported only when a model is loaded (``vidattn.load_model``, ``vidattn.probe``,
``vidattn.render``: attributes imported on first use), so the command line's ``--help`` and
``vidattn models`` start instantly.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # XLA logs its slow compiles as errors
# TensorFlow 2.21 logs "oneDNN custom operations are on" before its log level applies; its
# oneDNN rewrites do not change our speed (the model runs under XLA), so they are off by default.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"

from vidattn.errors import VidattnError  # noqa: E402

# name -> the module that holds it, imported on first use (each imports Keras and its backend)
_LAZY = {
    "load_model": "vidattn.models.api",
    "probe": "vidattn.notebook",
    "explain": "vidattn.notebook",
    "render": "vidattn.notebook",
    "ProbeResult": "vidattn.notebook",
    "RenderResult": "vidattn.notebook",
}

__all__ = ["VidattnError", "__version__", *_LAZY]


def __getattr__(name):
    """``vidattn.load_model``, ``probe``, ``explain``, ``render`` and their results, imported on
    first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vidattn' has no attribute {name!r}")
