"""The per-backend compile step: one compiled function per input shape, whatever the backend.

TensorFlow compiles with XLA through ``tf.function``, JAX with ``jax.jit``, and torch runs eagerly
under ``no_grad``. Each distinct input shape compiles once (the video pipeline pads its last
batch so a whole video is one shape).
"""

from __future__ import annotations

from vidattn.backend import keras

__all__ = ["Call", "compiled"]


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


class Call:
    """``model(x, **kwargs)`` as a plain callable that remembers its keyword arguments."""

    def __init__(self, model, **kwargs):
        self.model, self.kwargs = model, kwargs

    def __call__(self, x):
        return self.model(x, **self.kwargs)
