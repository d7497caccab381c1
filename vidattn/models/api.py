"""The Python API other modules and users build on: ``load_model`` and ``Model.run``.

>>> model = vidattn.load_model("dino_vits16", weights="random")
>>> out = model.run(images, attention="last")   # images: float32 (N, H, W, 3), preprocessed
>>> out["features"].shape, out["attention"][0].shape
((N, 384), (N, 6, T, T))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from vidattn.models import hub
from vidattn.models.compile import Call, compiled
from vidattn.models.presets import Preset, get_preset
from vidattn.models.state_dict import read_checkpoint
from vidattn.models.vit import ATTENTION_MODES, ViT, load_state_dict, randomize

RANDOM = "random"


@dataclass
class Model:
    """A ViT with its preset and a label saying where its weights came from.

    ``weights_label`` is ``"random (untrained)"`` for random weights: everything rendered from such
    a model carries that label, so nobody mistakes it for a trained model's attention.
    """

    preset: Preset
    backbone: ViT
    weights_label: str
    _compiled: dict = field(default_factory=dict, repr=False)

    @property
    def is_random(self) -> bool:
        return self.weights_label.startswith(RANDOM)

    def run(self, images, attention="none", rollout=False, tokens=False) -> dict:
        """Forward a preprocessed float32 batch ``(N, H, W, 3)``; H and W multiples of the patch.

        Returns numpy arrays: ``features`` ``(N, D)``, ``logits`` ``(N, C)`` where the preset has
        a head, ``attention``: a list with one ``(N, heads, T, T)`` array per returned block
        (``"last"``: one; ``"all"``: ``depth``; ``"none"``: empty), with ``rollout=True``
        ``rollout``: the CLS row of attention rollout ``(N, T)``, computed inside the compiled
        model (``attention.rollout_map`` turns it into maps), and with ``tokens=True``
        ``patch_tokens``: the final-normed patch tokens ``(N, gh * gw, D)``, prefix tokens
        removed, and ``patch_norms`` ``(N, gh * gw)``: their norms before the final norm.
        ``T = preset.num_prefix_tokens + gh * gw``. One compiled call gives them all.
        """
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        images = np.asarray(images, np.float32)
        p = self.preset.patch_size
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % p or images.shape[2] % p:
            raise ValueError(
                f"images must be (N, H, W, 3) with H and W multiples of {p}, got {images.shape}"
            )
        key = (attention, bool(rollout), bool(tokens))
        if key not in self._compiled:
            self._compiled[key] = compiled(
                Call(self.backbone, attention=attention, rollout=bool(rollout),
                     tokens=bool(tokens)), self.backbone
            )
        out = self._compiled[key](images)
        result = {
            "features": keras.ops.convert_to_numpy(out["features"]),
            "attention": [keras.ops.convert_to_numpy(a) for a in out["attention"]],
        }
        for name in ("logits", "rollout", "patch_tokens", "patch_norms"):
            if name in out:
                result[name] = keras.ops.convert_to_numpy(out[name])
        return result

    def patch_filters(self) -> np.ndarray:
        """Patch-projection filters ``(p, p, 3, D)``: the kernel that turns a patch into a token."""
        p = self.preset.patch_size
        return self.backbone.patch_embed.proj.kernel.numpy().reshape(p, p, 3, -1)

    def patch_position_embeddings(self) -> np.ndarray | None:
        """Trained position embeddings of the patch tokens, ``(grid**2, D)``, class tokens
        dropped; None for a model without learned positions (DINOv3's RoPE)."""
        if self.backbone.pos_embed is None:
            return None
        return self.backbone.pos_embed.numpy()[0, self.preset.num_class_tokens :]


def load_model(preset, weights=None, seed: int | None = 0, checkpoint_key="teacher") -> Model:
    """Build a preset's model and load its weights.

    Args:
        preset: a preset name (``vidattn models`` lists them) or a :class:`Preset`.
        weights: None for the preset's official weights (from torch hub's, Hugging Face's or
            vidattn's cache, else downloaded once: ``vidattn.models.hub``); a path to an
            official ``.pth``, a timm or Hugging Face ``.safetensors`` file or model folder; or
            ``"random"`` for untrained weights (tests, benchmarks), labelled as such.
        seed: with ``weights="random"``, the seed the weights are drawn from (the same weights
            on every backend and every run).
        checkpoint_key: which network of a DINO training checkpoint to load (teacher/student).
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if weights == RANDOM:
        backbone = ViT(preset)
        randomize(backbone, seed)
        return Model(preset, backbone, f"{RANDOM} (untrained, seed {seed})")
    path = hub.resolve(preset, weights)  # first: a missing file fails before any work
    state = read_checkpoint(path, preset, checkpoint_key)
    backbone = ViT(preset)
    load_state_dict(backbone, state, source=os.fspath(path))
    label = f"{preset.name} ({'bundled' if preset.packaged_weights else 'official'})"
    label = label if weights is None else Path(path).name
    return Model(preset, backbone, label)
