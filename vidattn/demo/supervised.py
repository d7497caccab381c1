"""Supervised training at toy scale, for the ``demo_classifier`` preset
(``scripts/train_demo_classifier.py``).

A plain ViT classifier (CLS token, learned positions, GELU MLP; the head reads the final-normed
CLS token) learns cross-entropy on :func:`classes.draw_labelled` scenes, a fresh batch every step
(so nothing is seen twice and no augmentation is needed). TensorFlow only: the step is one
XLA-compiled ``tf.function``; the initialisation, schedule and batch prefetching are the DINO
demo's (``training``).
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from vidattn.backend import keras
from vidattn.demo.classes import PRESET, draw_labelled
from vidattn.demo.training import prefetch, timm_init, warmup_cosine
from vidattn.models.presets import get_preset
from vidattn.models.vit import ViT
from vidattn.preprocess import IMAGENET_MEAN, IMAGENET_STD

WEIGHT_DECAY, LABEL_SMOOTHING = 0.05, 0.1


def train_classifier(seed, steps, batch, lr, log_every):
    """Train ``demo_classifier`` from ``seed`` alone (Keras seeds, TensorFlow op determinism,
    one numpy Generator for the scenes) -> ``(ViT, seconds)``. AdamW (weight decay
    :data:`WEIGHT_DECAY`) at peak ``lr`` with :func:`warmup_cosine`, gradients clipped at norm
    1, cross-entropy with :data:`LABEL_SMOOTHING`; ``steps * batch`` scenes in all, logged every
    ``log_every`` steps."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    preset = get_preset(PRESET)
    model = ViT(preset, seed=seed)
    timm_init(model, seed)
    optimizer = keras.optimizers.AdamW(warmup_cosine(steps, lr), weight_decay=WEIGHT_DECAY,
                                       global_clipnorm=1.0)
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                   label_smoothing=LABEL_SMOOTHING)

    @tf.function(jit_compile=True)
    def step(images, labels):
        x = (tf.cast(images, tf.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        with tf.GradientTape() as tape:
            logits = model(x)["logits"]
            loss = loss_fn(tf.one_hot(labels, preset.num_classes), logits)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        hits = tf.cast(tf.argmax(logits, axis=1) == labels, tf.float32)
        return loss, tf.reduce_mean(hits)

    rng = np.random.default_rng([seed, 25])  # never a held-out seed's stream
    start, running = time.time(), []
    for i, scenes in enumerate(prefetch(lambda: draw_labelled(rng, batch, preset.image_size),
                                        steps)):
        loss, acc = step(scenes.images, scenes.labels)
        running.append(float(acc))
        if (i + 1) % log_every == 0 or i + 1 == steps:
            print(f"step {i + 1}/{steps}  loss {float(loss):.3f}  "
                  f"train accuracy {np.mean(running[-log_every:]):.3f}  "
                  f"{time.time() - start:.0f}s", flush=True)
    return model, time.time() - start
