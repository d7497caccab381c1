"""vidattn: see what Vision Transformers look at.

Keras 3 runs on the TensorFlow backend unless ``KERAS_BACKEND`` says otherwise; the backend must be
chosen before Keras is first imported, hence the environment defaults here. Keras itself is
imported only when a model is loaded (``vidattn.load_model``), so the command line's ``--help``
and ``vidattn models`` start instantly.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow 2.21 logs "oneDNN custom operations are on" before its log level applies; its
# oneDNN rewrites do not change our speed (the model runs under XLA), so they are off by default.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"

from vidattn.errors import VidattnError  # noqa: E402

__all__ = ["VidattnError", "load_model", "__version__"]


def __getattr__(name):
    """``vidattn.load_model``, imported on first use (it imports Keras and its backend)."""
    if name == "load_model":
        from vidattn.models.api import load_model

        return load_model
    raise AttributeError(f"module 'vidattn' has no attribute {name!r}")
