"""The ViT backbone: one model family for DINO, supervised ViT and DeiT (with or without the
distillation token), configured by a :class:`~vidattn.models.presets.Preset`.

``ViT(images, attention=..., rollout=...)`` returns the final CLS features, the logits where the
preset has a head, exactly the attention probabilities the caller asked for (a run that needs only
the last block never holds every block's ``T x T`` matrices), and, on request, the CLS row of
attention rollout computed in the graph (:func:`cls_rollout`), so the rollout view never copies
``depth * heads * T**2`` floats out of the model.

:func:`load_state_dict` is the one place that maps a checkpoint (timm/DINO names, torch layouts,
as produced by :mod:`vidattn.models.state_dict`) onto the Keras variables, and
:func:`export_state_dict` is its inverse.
"""

from __future__ import annotations

from functools import lru_cache

import keras
import numpy as np
from keras import ops

from vidattn.errors import VidattnError
from vidattn.models.layers import Block, PatchEmbed
from vidattn.models.presets import Preset

ATTENTION_MODES = ("none", "last", "all")


def _cubic(x, a=-0.75):
    """Keys' cubic convolution kernel with torch's ``a = -0.75`` at distances ``x >= 0``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@lru_cache(maxsize=64)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of 1-D bicubic resampling weights, exactly as torch's
    ``interpolate(mode="bicubic", align_corners=False, size=n_out)``: source coordinate
    ``(i + 0.5) * n_in / n_out - 0.5``, four taps, indices clamped at the borders.

    TensorFlow's bicubic kernel uses ``a = -0.5``; Hugging Face's ViT interpolates position
    embeddings with torch's, so we build the weights ourselves to match it exactly.
    """
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    frac = src - base
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    for tap in range(-1, 3):
        idx = np.clip(base + tap, 0, n_in - 1).astype(int)
        np.add.at(m, (rows, idx), _cubic(frac - tap))
    return m.astype(np.float32)


def cls_rollout(mean_attns):
    """CLS row of attention rollout (Abnar & Zuidema) with the study's semantics.

    ``mean_attns``: one ``(N, T, T)`` tensor per block, first block first, each the block's
    attention averaged over heads. Returns ``(N, T)``: row 0 of ``J = R_L @ ... @ R_1``, where
    ``R_b`` is ``mean_attns[b] + I`` with rows renormalised to sum to 1 (the residual path).

    Only that row is needed, and ``e_0 @ R_L @ ... @ R_1`` is a row vector times matrices taken
    LAST block first: ``r <- r @ R_b`` for b = L..1, which costs O(L * N * T**2), not the full
    product's O(L * N * T**3). ``R_b`` is never formed either: with ``d`` its row sums (row sums
    of the mean attention, plus 1), ``r @ R_b = (r / d) @ A_b + r / d``.

    Written with ``keras.ops``: the model runs it inside its compiled graph, and it accepts numpy
    arrays too (float64 in, float64 out).
    """
    last = ops.convert_to_tensor(mean_attns[-1])
    row = ops.cast(ops.arange(last.shape[-1]) == 0, last.dtype)
    row = ops.zeros_like(last[:, :1, :]) + row  # (N, 1, T): e_0 for each image
    for attn in reversed(mean_attns):
        scaled = row / (ops.expand_dims(ops.sum(attn, axis=-1), 1) + 1)
        row = ops.matmul(scaled, attn) + scaled
    return row[:, 0]


class ViT(keras.Model):
    """Vision Transformer backbone (timm's ``VisionTransformer`` without dropout).

    Call with images ``(N, H, W, 3)``, float32, already preprocessed, H and W multiples of the
    patch size (any aspect ratio). Returns a dict:

    - ``features``: ``(N, D)``, the final-normed CLS token;
    - ``logits``: ``(N, num_classes)`` where the preset has a head (distilled DeiT averages the
      CLS and distillation heads, as timm does at inference);
    - ``attention``: list of ``(N, heads, T, T)`` softmax probabilities, one per returned block
      (``attention="last"``: the last block only; ``"all"``: every block; ``"none"``: empty),
      where ``T = num_class_tokens + (H/p) * (W/p)``, class tokens first, patches row by row;
    - ``rollout``: ``(N, T)``, the CLS row of attention rollout through every block
      (:func:`cls_rollout`), only with ``rollout=True``.
    """

    def __init__(self, preset: Preset, seed: int | None = None, **kwargs):
        super().__init__(name=preset.name, **kwargs)
        self.preset = preset
        d = preset.embed_dim
        self.patch_embed = PatchEmbed(preset.patch_size, d, name="patch_embed")
        self.blocks = [
            Block(d, preset.num_heads, preset.mlp_ratio, preset.layer_norm_eps, name=f"blocks_{i}")
            for i in range(preset.depth)
        ]
        self.norm = keras.layers.LayerNormalization(epsilon=preset.layer_norm_eps, name="norm")
        init = keras.initializers.TruncatedNormal(stddev=0.02, seed=seed)
        self.class_tokens = self.add_weight(
            shape=(1, preset.num_class_tokens, d), initializer=init, name="class_tokens"
        )
        self.pos_embed = self.add_weight(
            shape=(1, preset.num_tokens, d), initializer=init, name="pos_embed"
        )
        self.heads = [
            keras.layers.Dense(preset.num_classes, name=name)
            for name in ("head", "head_dist")[: preset.num_class_tokens if preset.num_classes else 0]
        ]
        p = preset.patch_size
        self.build((None, p, p, 3))

    def build(self, input_shape):
        d = self.preset.embed_dim
        self.patch_embed.build(input_shape)
        for block in self.blocks:
            block.build((None, None, d))
        self.norm.build((None, None, d))
        for head in self.heads:
            head.build((None, d))
        self.built = True

    def position_embeddings(self, grid_hw):
        """``(1, T, D)`` position embeddings for a ``(gh, gw)`` patch grid: the class tokens'
        rows as trained, the patch rows resampled bicubically (torch's kernel, by target size,
        as Hugging Face's ``interpolate_pos_encoding``)."""
        n_cls, g = self.preset.num_class_tokens, self.preset.grid_size
        if tuple(grid_hw) == (g, g):
            return self.pos_embed
        gh, gw = grid_hw
        cls_pos = self.pos_embed[:, :n_cls]
        patch_pos = ops.reshape(self.pos_embed[:, n_cls:], (g, g, self.preset.embed_dim))
        resampled = ops.einsum(
            "hi,ijd,wj->hwd", bicubic_matrix(g, gh), patch_pos, bicubic_matrix(g, gw)
        )
        return ops.concatenate([cls_pos, ops.reshape(resampled, (1, gh * gw, -1))], axis=1)

    def call(self, images, attention="none", rollout=False):
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        n, h, w = images.shape[0], images.shape[1], images.shape[2]
        p = self.preset.patch_size
        x = self.patch_embed(images)
        batch = ops.shape(x)[0] if n is None else n
        cls = ops.broadcast_to(self.class_tokens, (batch,) + tuple(self.class_tokens.shape[1:]))
        x = ops.concatenate([cls, x], axis=1) + self.position_embeddings((h // p, w // p))
        kept, means = [], []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            want = attention == "all" or (attention == "last" and i == last)
            x, probs = block(x, return_probs=want or rollout)
            if want:
                kept.append(probs)
            if rollout:
                means.append(ops.mean(probs, axis=1))
        x = self.norm(x)
        out = {"features": x[:, 0], "attention": kept}
        if rollout:
            out["rollout"] = cls_rollout(means)
        if self.heads:
            logits = [head(x[:, i]) for i, head in enumerate(self.heads)]
            out["logits"] = logits[0] if len(logits) == 1 else (logits[0] + logits[1]) / 2
        return out

    # -- checkpoint mapping -------------------------------------------------------------------

    def checkpoint_layout(self):
        """Map each canonical (timm/DINO) checkpoint name to ``(variable, to_keras)``, where
        ``to_keras`` turns the checkpoint's torch-layout array into the variable's layout."""
        p, d = self.preset.patch_size, self.preset.embed_dim

        def linear(prefix, dense):
            return {
                f"{prefix}.weight": (dense.kernel, np.transpose),
                f"{prefix}.bias": (dense.bias, None),
            }

        def norm(prefix, ln):
            return {f"{prefix}.weight": (ln.gamma, None), f"{prefix}.bias": (ln.beta, None)}

        def conv_to_dense(w):  # (D, 3, p, p) -> (p*p*3, D), patches flattened (row, col, ch)
            return np.transpose(w, (2, 3, 1, 0)).reshape(p * p * w.shape[1], d)

        layout = {
            "pos_embed": (self.pos_embed, None),
            "patch_embed.proj.weight": (self.patch_embed.proj.kernel, conv_to_dense),
            "patch_embed.proj.bias": (self.patch_embed.proj.bias, None),
            **norm("norm", self.norm),
        }
        for name, i in (("cls_token", 0), ("dist_token", 1))[: self.preset.num_class_tokens]:
            layout[name] = (self.class_tokens, i)  # one slot of the class-token array
        for i, b in enumerate(self.blocks):
            layout.update(norm(f"blocks.{i}.norm1", b.norm1))
            layout.update(linear(f"blocks.{i}.attn.qkv", b.attn.qkv))
            layout.update(linear(f"blocks.{i}.attn.proj", b.attn.proj))
            layout.update(norm(f"blocks.{i}.norm2", b.norm2))
            layout.update(linear(f"blocks.{i}.mlp.fc1", b.mlp.fc1))
            layout.update(linear(f"blocks.{i}.mlp.fc2", b.mlp.fc2))
        for head in self.heads:
            layout.update(linear(head.name, head))
        return layout


def _expected_shape(variable, transform, p, d):
    """Torch-layout shape a checkpoint tensor must have for ``variable``."""
    shape = tuple(variable.shape)
    if isinstance(transform, int):
        return (1, 1, shape[-1])
    if transform is np.transpose:
        return shape[::-1]
    if transform is not None:  # patch projection: conv weight (D, 3, p, p)
        return (d, shape[0] // (p * p), p, p)
    return shape


def load_state_dict(model: ViT, state: dict, source="checkpoint"):
    """Assign a canonical state dict (name -> numpy array, torch layouts) to ``model``.

    Every problem is collected first (missing keys, unexpected keys, wrong shapes, tensors that
    are not floating point or hold NaN or infinity) and reported in one :class:`VidattnError`
    naming ``source``, so a wrong preset or a broken file is obvious at once; nothing is assigned
    unless everything fits. Non-finite weights (a diverged run, damaged data) would turn every
    attention map into NaN, so they are refused rather than rendered.
    """
    layout = model.checkpoint_layout()
    p, d = model.preset.patch_size, model.preset.embed_dim
    missing = sorted(set(layout) - set(state))
    extra = sorted(set(state) - set(layout))
    bad_shape, bad_dtype, non_finite = [], [], []
    for name in sorted(set(layout) & set(state)):
        want = _expected_shape(*layout[name], p, d)
        value = np.asarray(state[name])
        if value.shape != want:
            bad_shape.append(f"{name} {value.shape} != {want}")
        elif value.dtype.kind != "f":
            bad_dtype.append(f"{name} {value.dtype}")
        elif not np.isfinite(value).all():
            non_finite.append(name)
    problems = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", bad_shape),
                         ("not floating point", bad_dtype), ("NaN or infinite values", non_finite)):
        if items:
            shown = ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise VidattnError(
            f"does not fit preset {model.preset.name!r}: " + "; ".join(problems), path=source
        )
    class_tokens = np.array(model.class_tokens.numpy())
    for name, (variable, transform) in layout.items():
        value = np.asarray(state[name], np.float32)
        if isinstance(transform, int):
            class_tokens[:, transform] = value[:, 0]
        else:
            variable.assign(value if transform is None else transform(value))
    model.class_tokens.assign(class_tokens)


def export_state_dict(model: ViT, dtype=np.float32) -> dict[str, np.ndarray]:
    """The backbone's weights under canonical names in torch layouts: the inverse of
    ``load_state_dict`` (kernels transposed, the patch projection back to ``(D, 3, p, p)``, the
    class-token array split into ``cls_token`` and ``dist_token``). What an official ``.pth`` or
    a timm safetensors file of the same model holds."""
    p, d = model.preset.patch_size, model.preset.embed_dim
    state = {}
    for name, (variable, to_keras) in model.checkpoint_layout().items():
        value = np.asarray(variable.numpy())
        if isinstance(to_keras, int):
            value = value[:, to_keras : to_keras + 1]
        elif to_keras is np.transpose:
            value = value.T
        elif to_keras is not None:  # (p*p*3, D) kernel -> conv weight (D, 3, p, p)
            value = value.reshape(p, p, 3, d).transpose(3, 2, 0, 1)
        state[name] = np.ascontiguousarray(value, dtype=dtype)
    return state
