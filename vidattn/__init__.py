"""vidattn: see what Vision Transformers look at.

Keras 3 runs on the TensorFlow backend unless ``KERAS_BACKEND`` says otherwise; the backend must be
chosen before Keras is first imported, hence the environment defaults here.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from vidattn.errors import VidattnError  # noqa: E402
from vidattn.models.api import load_model  # noqa: E402

__all__ = ["VidattnError", "load_model", "__version__"]
