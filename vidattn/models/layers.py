"""Keras 3 layers of a ViT, written with ``keras.ops`` only so they run on every backend.

Weight layouts follow Keras (Dense kernels are ``(in, out)``); ``vit.py`` maps torch-style
checkpoints onto them.
"""

from __future__ import annotations

import keras
from keras import ops


class PatchEmbed(keras.layers.Layer):
    """Cut an image into non-overlapping ``p x p`` patches and project each to ``dim``.

    Equivalent to a ``Conv2D(dim, p, strides=p)`` but written as reshape + matmul, which is what a
    stride-p convolution is; the kernel is ``(p * p * 3, dim)`` over patches flattened as
    (row, column, channel).

    Input ``(N, H, W, 3)`` with H and W multiples of p; output ``(N, H/p * W/p, dim)``, patches
    row by row.
    """

    def __init__(self, patch_size, dim, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.proj = keras.layers.Dense(dim, name="proj")

    def build(self, input_shape):
        self.proj.build((None, self.patch_size * self.patch_size * input_shape[-1]))

    def call(self, images):
        p = self.patch_size
        n, h, w, c = ops.shape(images)
        x = ops.reshape(images, (n, h // p, p, w // p, p, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        x = ops.reshape(x, (n, (h // p) * (w // p), p * p * c))
        return self.proj(x)


class Attention(keras.layers.Layer):
    """Multi-head self-attention with a fused qkv projection (q, k, v blocks, heads contiguous).

    ``call(x)`` with x ``(N, T, D)`` returns ``(out (N, T, D), probs)`` where probs is the softmax
    attention ``(N, heads, T, T)`` when ``return_probs`` is true, else None.
    """

    def __init__(self, dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = keras.layers.Dense(3 * dim, name="qkv")
        self.proj = keras.layers.Dense(dim, name="proj")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def call(self, x, return_probs=False):
        n, t, d = ops.shape(x)
        qkv = ops.reshape(self.qkv(x), (n, t, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, N, heads, T, head_dim)
        q, k, v = qkv[0], qkv[1], qkv[2]
        probs = ops.softmax(ops.matmul(q * self.scale, ops.transpose(k, (0, 1, 3, 2))), axis=-1)
        out = ops.transpose(ops.matmul(probs, v), (0, 2, 1, 3))
        out = self.proj(ops.reshape(out, (n, t, d)))
        return out, (probs if return_probs else None)


class MLP(keras.layers.Layer):
    """Two Dense layers with exact (erf) GELU between, as in timm and DINO."""

    def __init__(self, dim, hidden, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = keras.layers.Dense(hidden, name="fc1")
        self.fc2 = keras.layers.Dense(dim, name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.fc1.units,))

    def call(self, x):
        return self.fc2(keras.activations.gelu(self.fc1(x), approximate=False))


class Block(keras.layers.Layer):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim, num_heads, mlp_ratio, eps, **kwargs):
        super().__init__(**kwargs)
        self.norm1 = keras.layers.LayerNormalization(epsilon=eps, name="norm1")
        self.attn = Attention(dim, num_heads, name="attn")
        self.norm2 = keras.layers.LayerNormalization(epsilon=eps, name="norm2")
        self.mlp = MLP(dim, int(dim * mlp_ratio), name="mlp")

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.norm2, self.mlp):
            layer.build(input_shape)

    def call(self, x, return_probs=False):
        y, probs = self.attn(self.norm1(x), return_probs=return_probs)
        x = x + y
        return x + self.mlp(self.norm2(x)), probs
