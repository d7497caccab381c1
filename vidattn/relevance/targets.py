"""Which class a map explains: ``top1`` (each image's own best class, the default), a class
index, or a class name (the ImageNet-1k names of a 1000-way head), matched forgivingly."""

from __future__ import annotations

import difflib

import numpy as np

from vidattn.errors import VidattnError
from vidattn.preprocess import imagenet_labels

__all__ = ["TOP1", "check_classifier", "check_target", "class_names", "resolve", "top_k"]

TOP1 = "top1"


def check_classifier(preset) -> None:
    """One line for a preset without a classifier head (the self-supervised families)."""
    if not preset.num_classes:
        raise VidattnError(f"{preset.name} has no classifier head, so there is no class to "
                           "explain: use a supervised preset (vit_b16, deit_b16, "
                           "deit_b16_distilled)")


def class_names(preset) -> list[str] | None:
    """The names of the head's classes (ImageNet-1k's for a 1000-way head), or None."""
    return imagenet_labels() if preset.num_classes == 1000 else None


def _key(text: str) -> str:
    return " ".join(text.casefold().replace("_", " ").replace("-", " ").split())


def _by_name(preset, name: str) -> int:
    """The class whose name, or one of its comma-separated synonyms, is ``name`` (case, spaces,
    ``_`` and ``-`` ignored); else one line with the nearest names."""
    names = class_names(preset)
    if names is None:
        raise VidattnError(f"class {name!r}: {preset.name}'s {preset.num_classes} classes have "
                           "no names; give an index")
    synonyms = {}
    for index, full in enumerate(names):
        for synonym in full.split(", "):
            synonyms.setdefault(_key(synonym), index)
    if _key(name) in synonyms:
        return synonyms[_key(name)]
    near = difflib.get_close_matches(_key(name), list(synonyms), n=3, cutoff=0.6)
    if near:
        shown = ", ".join(repr(names[synonyms[n]].split(", ")[0]) for n in near)
        raise VidattnError(f"unknown class {name!r}; did you mean {shown}?")
    raise VidattnError(f"unknown class {name!r} (ImageNet-1k names, e.g. 'tabby cat', or an "
                       "index 0..999)")


def top_k(target) -> int | None:
    """K of a ``topK`` target (``top1``, ``top3``...; None: top1), else None."""
    if target is None:
        return 1
    text = str(target)
    return int(text[3:]) if text.startswith("top") and text[3:].isdigit() else None


def check_target(preset, target) -> None:
    """Raise the one-line VidattnError ``resolve`` would, before any work: an unknown name, an
    index out of range."""
    if preset.num_classes and not top_k(target):
        resolve(preset, target, np.zeros((1, preset.num_classes)))


def resolve(preset, target, logits) -> np.ndarray:
    """``target`` (``"top1"`` or None, an index as int or digits, or a name) and the logits
    ``(N, C)`` -> the class of each image ``(N,)`` int64."""
    check_classifier(preset)
    logits = np.asarray(logits)
    k = top_k(target)
    if k == 1:
        return np.argmax(logits, axis=1)
    if k:
        raise ValueError(f"{target}: one class per image here; take the top {k} with top_k")
    if isinstance(target, (int, np.integer)) or str(target).strip().isdigit():
        index = int(target)
        if not 0 <= index < preset.num_classes:
            raise VidattnError(f"class {index} is out of range: {preset.name} has classes "
                               f"0..{preset.num_classes - 1}")
    else:
        index = _by_name(preset, str(target))
    return np.full(len(logits), index, np.int64)
