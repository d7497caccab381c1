"""The Python API other modules and users build on: ``load_model`` and ``Model.run``.

>>> model = vidattn.load_model("dino_vits16", weights="random")
>>> out = model.run(images, attention="last")   # images: float32 (N, H, W, 3), preprocessed
>>> out["features"].shape, out["attention"][0].shape
((N, 384), (N, 6, T, T))
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidattn.backend import keras
from vidattn.errors import VidattnError
from vidattn.models import hub, memory
from vidattn.models.compile import Call, compiled, streams
from vidattn.models.configs import ReadPreset
from vidattn.models.presets import Preset, get_preset, with_stride
from vidattn.models.state_dict import read_checkpoint
from vidattn.models.vit import FACETS, ViT, check_attention, load_state_dict, randomize

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
    memory_budget: int | None = None  # bytes; None: what is available when a call is planned
    precision: str = "fp32"  # the matmuls' arithmetic (load_model)
    _compiled: dict = field(default_factory=dict, repr=False)

    @property
    def is_random(self) -> bool:
        return self.weights_label.startswith(RANDOM)

    def run(self, images, attention="none", rollout=False, tokens=False, facet=None,
            features=True) -> dict:
        """Forward a preprocessed float32 batch ``(N, H, W, 3)``; H and W multiples of the patch.

        Returns numpy arrays: ``features`` ``(N, D)``, ``logits`` ``(N, C)`` where the preset has
        a head, ``attention``: a list with one array per returned block (``"all"``: every
        block's ``(N, heads, T, T)``; ``"last"``: the last block's; ``"cls"``: the class tokens'
        rows of the last block, ``(N, heads, num_class_tokens, T)``; ``"cls_all"``: those rows of
        every block; ``"none"``: empty), with
        ``rollout=True`` ``rollout``: the CLS row of attention rollout ``(N, T)``, computed
        inside the compiled model (``attention.rollout_map`` turns it into maps), and with
        ``tokens=True`` ``patch_tokens``: the final-normed patch tokens ``(N, gh * gw, D)``,
        prefix tokens removed, and ``patch_norms`` ``(N, gh * gw)``: their norms before the
        final norm; with ``facet=(block, kind)`` (``kind`` one of ``vit.FACETS``, ``block`` a
        block index) ``facet_tokens`` ``(N, gh * gw, D)``: that block's patch features of that
        facet. ``T = preset.num_prefix_tokens + gh * gw``. One compiled call gives them all.
        ``features=False``: no ``features`` or ``logits`` (for a caller that reads only the rest:
        the last block then computes just its attention, ``vit.ViT``).

        A ``pool="map"`` preset (SigLIP: no class token, a probe pools the tokens) answers
        ``"cls"`` with ``[the probe's attention (N, heads, 1, T)]`` in place of the class rows,
        raises VidattnError for ``"cls_all"``, returns ``pool_attention`` ``(N, heads, 1, T)``
        beside any attention or rollout, and starts rollout from the probe's head-mean row
        (``vit.ViT``); ``vidattn.attention.class_rows`` picks the rows a CLS map reads.

        Memory stays within ``memory_budget`` (``vidattn.models.memory.plan``): attention in
        query chunks where one piece would not fit, and the batch run in smaller groups where
        it must. Raises VidattnError, before any work, when one image cannot fit. On a CPU
        the images run as ``compile.streams()`` calls at once, on equal parts of each group.
        """
        check_attention(self.preset, attention)
        images = np.asarray(images, np.float32)
        p = self.preset.patch_size
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % p or images.shape[2] % p:
            raise ValueError(
                f"images must be (N, H, W, 3) with H and W multiples of {p}, got {images.shape}"
            )
        if facet is not None:
            depth = self.preset.depth
            if facet[1] not in FACETS:
                raise ValueError(f"facet must be one of {FACETS}, got {facet[1]!r}")
            if not -depth <= int(facet[0]) < depth:
                raise VidattnError(f"--layer {facet[0]}: {self.preset.name} has {depth} blocks "
                                   f"(0..{depth - 1}, or -1..-{depth} from the end)")
            facet = (int(facet[0]) % depth, facet[1])
        plan = self.plan(images.shape[1:3], len(images), attention, rollout,
                         tokens or facet is not None)
        key = (attention, bool(rollout), bool(tokens), plan.chunk, facet, bool(features))
        if key not in self._compiled:
            self._compiled[key] = compiled(
                Call(self.backbone, attention=attention, rollout=bool(rollout),
                     tokens=bool(tokens), chunk=plan.chunk, facet=facet,
                     features=bool(features)), self.backbone
            )
        call = self._compiled[key]
        # A group that splits evenly runs as streams() calls at once (one compiled shape), which
        # together hold what one call of plan.batch would; plan.batch <= len(images), so there
        # are at least as many parts as workers.
        workers = streams() if plan.batch % streams() == 0 else 1
        step = plan.batch // workers
        groups = [images[i : i + step] for i in range(0, len(images), step)]
        if workers == 1:
            parts = [call(group) for group in groups]
        else:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(call, groups))
        result = {"attention": [np.concatenate([keras.ops.convert_to_numpy(part["attention"][b])
                                                for part in parts])
                                for b in range(len(parts[0]["attention"]))]}
        for name in ("features", "logits", "rollout", "patch_tokens", "patch_norms",
                     "facet_tokens", "pool_attention"):
            if name in parts[0]:
                result[name] = np.concatenate([keras.ops.convert_to_numpy(part[name])
                                               for part in parts])
        return result

    def plan(self, input_hw, batch, attention="none", rollout=False, tokens=False,
             extra_per_image=0, sizes=None):
        """The memory plan of ``run`` on ``batch`` images ``input_hw`` (see
        ``vidattn.models.memory.plan``), within this model's ``memory_budget``."""
        return memory.plan(self.preset, input_hw, batch, attention, rollout, tokens,
                           self.memory_budget, extra_per_image, sizes)

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


# precision -> Keras dtype policy: variables stay float32, matmuls run in the reduced type
DTYPE_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def labelled(weights_label: str, precision: str) -> str:
    """A model's label: where its weights came from, and a reduced precision after a comma."""
    return weights_label if precision == "fp32" else f"{weights_label}, {precision}"


def build_backbone(preset, precision: str = "fp32") -> ViT:
    """The backbone of ``preset``, its layers made under ``precision``'s dtype policy (Keras
    layers take the global policy when they are created; it is restored at once)."""
    if precision not in DTYPE_POLICIES:
        raise VidattnError(f"unknown precision {precision!r}; choose {', '.join(DTYPE_POLICIES)}")
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(DTYPE_POLICIES[precision])
    try:
        return ViT(preset)
    finally:
        keras.config.set_dtype_policy(before)


def load_model(preset, weights=None, seed: int | None = 0, checkpoint_key="teacher",
               memory_budget=None, precision: str = "fp32", stride: int | None = None) -> Model:
    """Build a preset's model and load its weights.

    Args:
        preset: a preset name (``vidattn models`` lists them), a model source (a checkpoint
            folder, a checkpoint file in one, or ``hf:ORG/NAME``: ``presets.get_preset``), or a
            :class:`Preset`.
        weights: None for the preset's official weights (from torch hub's, Hugging Face's or
            vidattn's cache, else downloaded once: ``vidattn.models.hub``); a path to an
            official ``.pth``, a timm or Hugging Face ``.safetensors`` file or model folder; or
            ``"random"`` for untrained weights (tests, benchmarks), labelled as such.
        seed: with ``weights="random"``, the seed the weights are drawn from (the same weights
            on every backend and every run).
        checkpoint_key: which network of a DINO training checkpoint to load (teacher/student).
        memory_budget: working memory a forward pass may take, in bytes or as ``"8G"``
            (None: what is available when each call is planned; see ``Model.run``).
        precision: "fp32" (exact), "bf16" or "fp16": the matmuls' arithmetic; the softmax and
            what ``run`` returns stay float32. A reduced precision is part of the label
            (``weights_label``), so everything the model makes says so.
        stride: overlapping patches this many pixels apart, for a finer grid of every map
            (``presets.with_stride``, dino-vit-features' ``patch_vit_resolution``); None: the
            patch size. The weights are the same; ``preset.stride`` says it.
    """
    budget = None if memory_budget is None else memory.parse_bytes(memory_budget)
    preset = get_preset(preset) if isinstance(preset, str) else preset
    preset = with_stride(preset, stride)
    if weights == RANDOM:
        backbone = build_backbone(preset, precision)
        randomize(backbone, seed)
        return Model(preset, backbone, labelled(f"{RANDOM} (untrained, seed {seed})", precision),
                     budget, precision)
    path = hub.resolve(preset, weights)  # first: a missing file fails before any work
    state = read_checkpoint(path, preset, checkpoint_key)
    backbone = build_backbone(preset, precision)
    load_state_dict(backbone, state, source=os.fspath(path))
    return Model(preset, backbone, labelled(_source_label(preset, weights, path), precision),
                 budget, precision)


def _source_label(preset, weights, path) -> str:
    """Where the weights at ``path`` came from, for every title and record: the file given
    (``--weights``), the model's own folder and file (``--model PATH``), the Hub repository of
    a model read from the Hub (``--model hf:ORG/NAME``), or the preset's official release (the
    bundled toys trained here on synthetic scenes say so)."""
    path = Path(path)
    if weights is not None:
        return path.name
    if preset.weights_path:
        return f"{path.resolve().parent.name}/{path.name}"  # "--model ." names the folder too
    if preset.packaged_weights:
        return f"{preset.name} (bundled toy)"
    if isinstance(preset, ReadPreset) and preset.hf_repo:
        return f"hf:{preset.hf_repo}"
    return f"{preset.name} (official)"
