"""Gradients on every backend, through one function.

Keras 3 runs a model on TensorFlow, JAX or torch but has no backend-neutral gradient, so
``value_and_gradients`` differentiates with the backend's own machinery: TensorFlow's
``GradientTape``, ``jax.value_and_grad``, torch's ``autograd.grad``. The function it is given is
written with ``keras.ops`` only, so it is the same on the three.
"""

from __future__ import annotations

import numpy as np

from vidattn.backend import keras, ops

__all__ = ["value_and_gradients"]


def value_and_gradients(fn, inputs):
    """``fn(tensors) -> (scalar, aux)`` at ``inputs`` (arrays) -> ``(aux, gradients)``: ``aux``
    as ``fn`` returned it, converted to numpy (a dict or list of tensors), and the gradients of
    the scalar with respect to each input, float32 numpy arrays of the inputs' shapes (zeros
    for an input the scalar does not depend on)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.convert_to_tensor(np.asarray(x, np.float32)) for x in inputs]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y, aux = fn(xs)
        grads = tape.gradient(y, xs)
    elif backend == "jax":
        import jax

        xs = [ops.convert_to_tensor(np.asarray(x, np.float32)) for x in inputs]
        (_, aux), grads = jax.value_and_grad(fn, has_aux=True)(xs)
    elif backend == "torch":
        import torch

        xs = [ops.convert_to_tensor(np.asarray(x, np.float32)).requires_grad_(True)
              for x in inputs]
        with torch.enable_grad():
            y, aux = fn(xs)
            grads = torch.autograd.grad(y, xs, allow_unused=True)
        aux = keras.tree.map_structure(lambda t: t.detach(), aux)
    else:
        raise NotImplementedError(f"no gradients on the {backend} backend")
    numpy = keras.tree.map_structure(lambda t: np.asarray(ops.convert_to_numpy(t)), aux)
    return numpy, [np.zeros(np.shape(x), np.float32) if g is None  # an input fn did not use
                   else np.asarray(ops.convert_to_numpy(g), np.float32)
                   for x, g in zip(inputs, grads)]
