"""The per-backend compile step: one compiled function per input shape, whatever the backend.

TensorFlow compiles with XLA through ``tf.function``, JAX with ``jax.jit``, and torch runs eagerly
under ``no_grad``. Each distinct input shape compiles once (the video pipeline pads its last
batch so a whole video is one shape). ``streams`` says how many calls on parts of one batch
run at once.
"""

from __future__ import annotations

import functools

from vidattn.backend import keras
from vidattn.models import device

__all__ = ["CPU_STREAMS", "Call", "compiled", "streams"]

# Calls that run at once on parts of one batch, with TensorFlow on a CPU. XLA's CPU runtime
# leaves cores idle in its row reductions (LayerNorm, softmax) and between kernels: one call
# of batch 8 keeps 1.86 of 2 cores busy. Two calls of half the batch fill each other's gaps:
# 6-11 % faster on this machine's 2 cores for dino_vits16, dinov2_vits14_reg and dinov3_vits16
# at 224x224 and 224x400, batch 8 and 2 (scripts/bench.py --only model,families).
CPU_STREAMS = 2


def compiled(fn, model=None):
    """Compile ``fn(x) -> outputs`` for the active backend: XLA through ``tf.function`` on
    TensorFlow, ``jax.jit`` on JAX, eager under ``no_grad`` on torch. Each distinct input shape
    compiles once. When ``fn`` calls ``model``, pass it: JAX then jits ``model.stateless_call``
    with the model's variables as inputs, since ``jax.jit`` needs a pure function."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # one trace per input shape is by design, not a bug
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


@functools.cache
def streams() -> int:
    """How many calls ``Model.run`` runs at once on equal parts of a batch: ``CPU_STREAMS`` with
    TensorFlow on a CPU, else 1 (a GPU runs its calls one after another, and torch's eager ops
    each use every core already)."""
    return CPU_STREAMS if device.backend() == "tensorflow" and not device.gpus() else 1


class Call:
    """``model(x, **kwargs)`` as a plain callable that remembers its keyword arguments."""

    def __init__(self, model, **kwargs):
        self.model, self.kwargs = model, kwargs

    def __call__(self, x):
        return self.model(x, **self.kwargs)
