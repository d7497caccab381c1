"""DINO training at toy scale, for the ``demo`` preset (``scripts/train_demo_model.py``).

DINO (Caron et al. 2021): a student ViT and its teacher (an exponential moving average of the
student) each carry a projection head; the student learns to predict, from every crop of a scene,
the teacher's centred and sharpened output for the other global crop. Crops are DINO's
augmentations written as resampling matrices (numpy draws them, one Generator fixes everything).
TensorFlow only: the step is one XLA-compiled ``tf.function``.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from vidattn.backend import keras
from vidattn.demo.scenes import make_views
from vidattn.models.presets import get_preset
from vidattn.models.vit import ViT
from vidattn.preprocess import IMAGENET_MEAN, IMAGENET_STD

TRAIN_RADIUS = (0.15, 0.35)
GLOBAL_SCALE, LOCAL_SCALE = (0.35, 1.0), (0.08, 0.35)


class DINOHead(keras.layers.Layer):
    """DINO's projection head: a 3-layer MLP to a ``bottleneck``-d vector, L2-normalised, then a
    weight-normalised linear layer (norm fixed at 1, i.e. unit prototype vectors) to ``out_dim``
    prototype scores. ``(N, D) -> (N, out_dim)``."""

    def __init__(self, out_dim=1024, hidden=512, bottleneck=128, seed=0, **kwargs):
        super().__init__(**kwargs)
        seeds = keras.random.SeedGenerator(seed)
        init = keras.initializers.TruncatedNormal(stddev=0.02, seed=seeds)
        self.mlp = [
            keras.layers.Dense(hidden, activation=_gelu, kernel_initializer=init),
            keras.layers.Dense(hidden, activation=_gelu, kernel_initializer=init),
            keras.layers.Dense(bottleneck, kernel_initializer=init),
        ]
        self.prototypes = self.add_weight(shape=(bottleneck, out_dim), initializer=init)

    def call(self, x):
        for layer in self.mlp:
            x = layer(x)
        return tf.math.l2_normalize(x, axis=-1) @ tf.math.l2_normalize(self.prototypes, axis=0)


def _gelu(x):
    return keras.activations.gelu(x, approximate=False)


def timm_init(vit: ViT, seed: int):
    """Re-initialise the backbone's Dense kernels as timm/DINO do (truncated normal, std 0.02,
    zero bias) instead of Keras' Glorot default: the ViT recipe DINO's hyperparameters assume.
    The seed generator gives every layer its own draw (an integer seed would repeat one)."""
    init = keras.initializers.TruncatedNormal(stddev=0.02, seed=keras.random.SeedGenerator(seed))
    for layer in vit._flatten_layers():
        if isinstance(layer, keras.layers.Dense):
            layer.kernel.assign(init(layer.kernel.shape))
            layer.bias.assign(np.zeros(layer.bias.shape, np.float32))


class Network(keras.Model):
    """Backbone + head: images ``(N, S, S, 3)`` -> prototype scores ``(N, out_dim)``."""

    def __init__(self, preset, seed, out_dim):
        super().__init__()
        self.backbone = ViT(preset, seed=seed)
        timm_init(self.backbone, seed)
        self.head = DINOHead(out_dim, seed=seed + 1)
        self(np.zeros((1, preset.image_size, preset.image_size, 3), np.float32))

    def call(self, images):
        return self.head(self.backbone(images)["features"])


# ------------------------------------------------------------------------------- augmentation


def _resize_matrices(start, length, n_in, n_out):
    """Bilinear resampling of a crop as a matrix: ``(N, n_out, n_in)``, row i holding the
    weights of output pixel i, whose centre maps to ``(start + (i + 0.5) / n_out * length)``
    (fractions of the side) in the input. Negative ``length`` mirrors the crop."""
    src = (start[:, None] + (np.arange(n_out) + 0.5) / n_out * length[:, None]) * n_in - 0.5
    src = np.clip(src, 0, n_in - 1)
    lo = np.minimum(np.floor(src).astype(int), n_in - 2)
    frac = src - lo
    m = np.zeros(src.shape + (n_in,), np.float32)
    np.put_along_axis(m, lo[..., None], (1 - frac)[..., None], axis=-1)
    np.put_along_axis(m, lo[..., None] + 1, frac[..., None], axis=-1)
    return m


def crop_params(rng, n, size, out, scale):
    """Parameters of DINO's augmentations for ``n`` images of ``size`` pixels (numpy, so one
    Generator fixes everything): a random resized crop to ``out`` pixels of ``scale`` (fraction
    of the area) and aspect 3/4..4/3, mirrored half the time, as row and column resampling
    matrices ``(n, out, size)``; colour jitter ``(n, 4)`` (brightness, contrast and saturation
    factors, a grey flag); a hue rotation ``(n, 3, 3)`` (YIQ, up to 36 degrees)."""
    area = rng.uniform(*scale, n)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), n))
    w, h = np.minimum(np.sqrt(area * ratio), 1), np.minimum(np.sqrt(area / ratio), 1)
    x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
    flip = rng.random(n) < 0.5
    rows = _resize_matrices(y0, h, size, out)
    cols = _resize_matrices(np.where(flip, x0 + w, x0), np.where(flip, -w, w), size, out)
    jitter = np.stack(
        [rng.uniform(0.6, 1.4, n), rng.uniform(0.6, 1.4, n), rng.uniform(0.4, 1.6, n),
         rng.random(n) < 0.2], axis=1,
    )
    angle = rng.uniform(-0.1, 0.1, n) * 2 * np.pi
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rot = np.zeros((n, 3, 3))
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 2, 2] = 1, np.cos(angle), np.cos(angle)
    rot[:, 1, 2], rot[:, 2, 1] = -np.sin(angle), np.sin(angle)
    hue = np.linalg.inv(yiq) @ rot @ yiq
    return rows, cols, jitter.astype(np.float32), hue.astype(np.float32)


def augment(images, rows, cols, jitter, hue):
    """Apply :func:`crop_params` in TensorFlow: uint8 ``(N, S, S, 3)`` -> ImageNet-normalised
    float32 ``(N, out, out, 3)``. The crop is two matrix products (rows, then columns)."""
    x = tf.einsum("nip,npqc,njq->nijc", rows, tf.cast(images, tf.float32) / 255.0, cols)
    b, c, s, grey = (jitter[:, i, None, None, None] for i in range(4))
    x = x * b
    mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * c + mean
    luma = tf.reduce_mean(x, axis=-1, keepdims=True)
    x = (x - luma) * s + luma
    x = tf.einsum("nij,nhwj->nhwi", hue, x)
    x = tf.where(grey > 0, tf.reduce_mean(x, axis=-1, keepdims=True), x)
    return (tf.clip_by_value(x, 0, 1) - IMAGENET_MEAN) / IMAGENET_STD


# ------------------------------------------------------------------------------- training


def prefetch(make, steps):
    """Yield ``make()`` ``steps`` times, each made one step ahead in a thread (numpy draws the
    next batch while TensorFlow trains on this one)."""
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(make)
        for _ in range(steps):
            ready, pending = pending.result(), pool.submit(make)
            yield ready
        pending.cancel()


def warmup_cosine(steps, lr):
    """The learning rate: linear warm-up over the first 10 % of ``steps`` to ``lr``, then a
    cosine to 0."""
    return keras.optimizers.schedules.CosineDecay(
        0.0, steps - steps // 10, warmup_target=lr, warmup_steps=steps // 10
    )


def write_weights(state, out):
    """Write a safetensors state dict atomically (temporary file in the same folder, then
    rename), readable by all: these files ship with the package."""
    from safetensors.numpy import save_file

    from vidattn.io import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})  # one key: header bytes are stable
        os.chmod(tmp, 0o644)  # the writer creates it private


def batches(rng, steps, batch, views, size):
    """Yield per step: the views ``(views, batch, S, S, 3)`` and crop parameters of each view
    (two global crops first, then the local ones); generated one step ahead in a thread."""

    def make():
        scenes = make_views(rng, batch, views, size, radius=TRAIN_RADIUS)
        v = scenes.images.transpose(1, 0, 2, 3, 4)  # (views, batch, S, S, 3)
        crops = [
            crop_params(rng, batch, size, size, GLOBAL_SCALE) if i < 2
            else crop_params(rng, batch, size, size // 2, LOCAL_SCALE)
            for i in range(views)
        ]
        return v, crops

    return prefetch(make, steps)


def train(args):
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    preset = get_preset("demo")
    size = preset.image_size
    views = 2 + args.local_crops
    student = Network(preset, args.seed, args.out_dim)
    teacher = Network(preset, args.seed, args.out_dim)
    teacher.set_weights(student.get_weights())
    center = tf.Variable(tf.zeros((1, args.out_dim)))
    optimizer = keras.optimizers.AdamW(
        warmup_cosine(args.steps, args.lr), weight_decay=0.04, global_clipnorm=3.0
    )
    pairs = list(zip(student.trainable_variables, teacher.trainable_variables))

    @tf.function(jit_compile=True)
    def step(images, crops, momentum):
        glob = [augment(images[i], *crops[i]) for i in range(2)]
        local = [augment(images[i], *crops[i]) for i in range(2, views)]
        t_out = [teacher(g) for g in glob]
        targets = [tf.nn.softmax((t - center) / args.teacher_temp) for t in t_out]
        with tf.GradientTape() as tape:
            s_out = [student(g) for g in glob] + [student(x) for x in local]
            terms = [
                tf.reduce_mean(tf.reduce_sum(-q * tf.nn.log_softmax(s / 0.1), axis=-1))
                for iq, q in enumerate(targets)
                for iv, s in enumerate(s_out)
                if iv != iq
            ]
            loss = tf.add_n(terms) / len(terms)
        grads = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(grads, student.trainable_variables))
        for s_var, t_var in pairs:
            t_var.assign(momentum * t_var + (1 - momentum) * s_var)
        center.assign(0.9 * center + 0.1 * tf.reduce_mean(tf.concat(t_out, 0), 0, keepdims=True))
        return loss

    rng = np.random.default_rng(args.seed)
    start = time.time()
    for i, (images, crops) in enumerate(batches(rng, args.steps, args.batch, views, size)):
        momentum = 1 - (1 - args.momentum) * (math.cos(math.pi * i / args.steps) + 1) / 2
        loss = step(images, crops, tf.constant(momentum, tf.float32))
        if (i + 1) % args.log_every == 0 or i + 1 == args.steps:
            print(f"step {i + 1}/{args.steps}  loss {float(loss):.4f}  "
                  f"{time.time() - start:.0f}s", flush=True)
    return teacher.backbone, time.time() - start


