"""The per-backend compile step: one compiled function per input shape, whatever the backend.

TensorFlow compiles with XLA through ``tf.function``, JAX with ``jax.jit``, and torch runs eagerly
under ``no_grad``. Each distinct input shape compiles once (the video pipeline pads its last
batch so a whole video is one shape).
"""

from __future__ import annotations

import os
import platform

from vidattn.backend import keras

__all__ = ["Call", "choose_xla_cpu_matmul", "compiled"]

# XLA runs a CPU dot through Eigen's matmul; TensorFlow 2.21's XLA can hand dots to oneDNN
# instead: the same float32 arithmetic, faster or slower with the work. Measured on a 2-core
# AVX-512 Xeon (dino_vits16 unless named; one process per setting, alternated; Eigen -> oneDNN):
# - batch 8 at 224x400, the video's default (2808 rows in each product): 688 -> 642 ms; batch 8
#   at 224: 344 -> 316 ms; dinov3_vits16 369 -> 347 ms; dinov2_vits14_reg 465 -> 430 ms;
# - batch 2 at 224 and batch 1 at 224x400 (about 400 rows): equal;
# - batch 1 at 224 (197 rows), as the image command runs: 52 -> 57 ms;
# - attention in query chunks (``--full-res`` at 1080p, 8161 tokens): 24.1 -> 28.2 s for two
#   images, while unchunked at 720p it is 4.32 -> 4.24 s for one.
# XLA reads its flags once, at a process's first compile, so the first compile's work chooses
# for the process. Only for the versions where these flags were measured: XLA stops the process
# at a flag it does not know, and its flags change between releases.
XLA_CPU_FLAGS = {"2.21": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot"}
ONEDNN_MIN_ROWS = 1024  # batch x tokens from which oneDNN's products were the faster here
_xla_cpu_chosen = False


def choose_xla_cpu_matmul(rows, chunked, tf_version=None):
    """Choose XLA's CPU matmul for this process, once, before its first compile: add
    ``XLA_CPU_FLAGS`` of this TensorFlow (``tf_version``, default the installed one) to
    ``XLA_FLAGS`` where oneDNN was measured faster for the work: on an x86 machine, products of
    at least ``ONEDNN_MIN_ROWS`` rows (``rows``: batch x tokens) and attention in one piece (not
    ``chunked``); never when the user's ``XLA_FLAGS`` already choose about oneDNN. Later calls
    change nothing: XLA has read the variable by then. ``compiled`` calls it; call it first to
    choose for other work (``scripts/bench.py`` chooses as a video at the default size does)."""
    global _xla_cpu_chosen
    if _xla_cpu_chosen or keras.backend.backend() != "tensorflow":
        return
    _xla_cpu_chosen = True
    if tf_version is None:
        import tensorflow as tf

        tf_version = tf.__version__
    flags = XLA_CPU_FLAGS.get(".".join(tf_version.split(".")[:2]))
    user = os.environ.get("XLA_FLAGS", "")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if flags and x86 and rows >= ONEDNN_MIN_ROWS and not chunked and "onednn" not in user:
        os.environ["XLA_FLAGS"] = f"{user} {flags}".strip()


def compiled(fn, model=None, rows=0, chunked=False):
    """Compile ``fn(x) -> outputs`` for the active backend: XLA through ``tf.function`` on
    TensorFlow, ``jax.jit`` on JAX, eager under ``no_grad`` on torch. Each distinct input shape
    compiles once. When ``fn`` calls ``model``, pass it: JAX then jits ``model.stateless_call``
    with the model's variables as inputs, since ``jax.jit`` needs a pure function. ``rows``
    (batch x tokens) and ``chunked`` (attention in query chunks) describe the work, from which
    the process's first compile chooses XLA's CPU matmul (``choose_xla_cpu_matmul``)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # one trace per input shape is by design, not a bug
        choose_xla_cpu_matmul(rows, chunked, tf.__version__)
        return tf.function(fn, jit_compile=True, reduce_retracing=False)
    if backend == "jax":
        import jax

        if model is None:
            return jax.jit(fn)
        jitted = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, **fn.kwargs)[0])
        return lambda x: jitted(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            x,
        )
    if backend == "torch":
        import torch

        def run_no_grad(x):
            with torch.no_grad():
                return fn(x)

        return run_no_grad
    return fn


class Call:
    """``model(x, **kwargs)`` as a plain callable that remembers its keyword arguments."""

    def __init__(self, model, **kwargs):
        self.model, self.kwargs = model, kwargs

    def __call__(self, x):
        return self.model(x, **self.kwargs)
