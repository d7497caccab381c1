"""A checkpoint file -> the canonical state dict a preset's backbone loads.

The generic clean-up every family shares lives here, as timm's ``_helpers`` does it: descend
through training wrappers to the network's tensors (DINO and DINOv2 training checkpoints keep
``teacher`` and ``student``; others wrap in ``state_dict`` or ``model``), drop the prefixes of
distributed and compiled training (``module.``, ``_orig_mod.``) and keep only the ``backbone.``
where a checkpoint holds one beside its heads. A family's own names are then mapped onto the
canonical ones by that family (``vidattn.models.families``), and every floating tensor becomes
float32.

The canonical names are the official repositories' (``cls_token``, ``pos_embed``,
``blocks.{i}.attn.qkv.weight``...), with torch layouts: see ``ViT.checkpoint_layout``.
"""

from __future__ import annotations

import contextlib

import numpy as np

from vidattn.errors import VidattnError
from vidattn.models import families
from vidattn.models.formats import LazyTensor, load_tensor, open_checkpoint

__all__ = ["network_tensors", "read_checkpoint", "some_keys"]

WRAPPERS = ("state_dict", "model")  # looked through after the checkpoint key
PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
BACKBONE = "backbone."  # DINO training: the backbone beside the projection head


def _is_tensor(value) -> bool:
    return isinstance(value, (LazyTensor, np.ndarray))


def some_keys(mapping, n=8) -> str:
    """The first ``n`` keys of ``mapping`` for an error message."""
    keys = [str(k) for k in mapping]
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} keys)" if len(keys) > n else "") or "none"


def _select_network(raw, path, checkpoint_key):
    """Descend through wrappers (``checkpoint_key``, then ``state_dict``, ``model``) to the
    dict that holds the tensors."""
    state = raw
    while isinstance(state, dict):
        inner = next((state[k] for k in (checkpoint_key, *WRAPPERS)
                      if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        found = "a single tensor" if _is_tensor(state) else f"a {type(state).__name__}"
        raise VidattnError(f"holds {found}, not a dict of tensors", path)
    if not any(_is_tensor(v) for v in state.values()) and {"teacher", "student"} & set(state):
        raise VidattnError(
            f"has no {checkpoint_key!r} network (checkpoint_key); entries: {some_keys(state)}",
            path,
        )
    return state


def _strip_prefixes(tensors):
    """Drop ``module.`` and ``_orig_mod.``; where keys live under ``backbone.``, keep only those:
    the rest is a training head."""
    stripped = {}
    for key, value in tensors.items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    backbone = {k[len(BACKBONE):]: v for k, v in stripped.items() if k.startswith(BACKBONE)}
    return backbone or stripped


@contextlib.contextmanager
def network_tensors(path, checkpoint_key: str = "teacher"):
    """Context manager: the network's tensors of a checkpoint file as :class:`LazyTensor`
    (nothing read yet), training wrappers and prefixes removed but the family's names kept,
    while the file is open. What :func:`read_checkpoint` maps, and what
    ``vidattn.models.configs`` reads a model's shapes from."""
    with open_checkpoint(path) as raw:
        state = _select_network(raw, path, checkpoint_key)
        tensors = {k: v for k, v in state.items() if isinstance(k, str) and _is_tensor(v)}
        if not tensors:
            raise VidattnError(f"holds no tensors; keys seen: {some_keys(state)}", path)
        yield _strip_prefixes(tensors)


def read_checkpoint(path, preset=None, checkpoint_key: str = "teacher"):
    """Read a ``.pth`` (torch zip) or ``.safetensors`` file into the canonical state dict of
    ``preset``'s family (None: the ViT family): name -> numpy array, floating tensors float32,
    torch layouts.

    ``checkpoint_key`` picks the network of a training checkpoint (``teacher``/``student``).
    Keys the family does not know pass through unchanged; the model reports them. Every failure
    (missing, truncated, foreign or hostile file, no ViT inside) is a one-line VidattnError.
    """
    with network_tensors(path, checkpoint_key) as tensors:
        family = families.get("vit" if preset is None else preset.family)
        tensors = family.to_canonical(tensors, preset, path)
        if "patch_embed.proj.weight" not in tensors:
            raise VidattnError(
                f"unrecognised checkpoint layout (no ViT patch embedding); keys seen: "
                f"{some_keys(tensors)}",
                path,
            )
        out = {}
        for key, value in tensors.items():
            array = load_tensor(value)
            with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused later
                out[key] = array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array
    return out
