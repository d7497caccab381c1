"""What a map explains: a class (``top1``, each image's own best class, the default; a class
index; or a class name, the ImageNet-1k names of a 1000-way head, matched forgivingly), or, for
a preset without a classifier (the DINO families), an ``Embedding``: the cosine similarity of
the CLS feature to a reference image's (pytorch-grad-cam issue 221's similarity target)."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

import numpy as np

from vidattn.errors import VidattnError
from vidattn.preprocess import imagenet_labels

__all__ = ["HOW_TO_REFER", "TOP1", "Embedding", "check_classifier", "check_target", "class_names",
           "describe", "is_embedding", "reference_target", "resolve", "top_k"]

TOP1 = "top1"
# What a headless preset's explanation needs, in the words of each way to give it.
HOW_TO_REFER = ("give a reference image (--explain-reference PATH, or reference= in "
                "vidattn.explain) to explain the similarity of its CLS feature to that image's")


@dataclass(frozen=True)
class Embedding:
    """The embedding target: each image's explained score is the cosine similarity of its CLS
    feature (the model's ``features``, ``(D,)``) to ``reference``: ``(D,)``, one reference
    image's or video frame's features, or ``(N, D)``, one per explained image. ``source``: what
    the reference is (its path), for the figure and ``probes.json``. The explained token is the
    CLS token (row 0), whatever the head."""

    reference: np.ndarray
    source: str = "reference"

    @classmethod
    def of(cls, model, images, source: str = "reference") -> Embedding:
        """The target whose reference is the features of the preprocessed ``images``
        ``(1, H, W, 3)`` (one reference) or ``(N, H, W, 3)`` (one per explained image): a frame
        of a video as a preprocessed image."""
        features = model.run(np.asarray(images, np.float32))["features"]
        return cls(features[0] if len(features) == 1 else features, os.fspath(source))

    def unit(self, n: int) -> np.ndarray:
        """The reference as ``(n, D)`` float32 rows of unit length (a zero vector stays 0)."""
        ref = np.broadcast_to(np.asarray(self.reference, np.float64), (n, self.reference.shape[-1]))
        norm = np.linalg.norm(ref, axis=-1, keepdims=True)
        return (ref / np.where(norm > 0, norm, 1)).astype(np.float32)

    def row(self, similarity: float) -> dict:
        """What an explanation of this target explains, as a class would be described
        (``methods.Explanation.classes``): ``class`` None, ``name`` "similarity to ref.jpg" and
        the ``similarity`` explained (the cosine, the "logit" of ``methods.Pass``)."""
        return {"class": None, "name": f"similarity to {os.path.basename(self.source)}",
                "similarity": float(similarity)}

    def part(self, start: int, stop: int) -> Embedding:
        """The target of images ``start:stop`` of a batch (a shared reference is kept whole)."""
        ref = np.asarray(self.reference)
        return self if ref.ndim == 1 else Embedding(ref[start:stop], self.source)


def is_embedding(target) -> bool:
    return isinstance(target, Embedding)


def reference_target(model, image, size: int) -> Embedding:
    """The ``Embedding`` of a reference ``image`` (a path, read by ``load_image``: a missing or
    unreadable file is a one-line VidattnError naming it; or uint8 RGB pixels), preprocessed as
    the explained images are (``preprocess_image`` at ``size``)."""
    from vidattn.preprocess import as_rgb, load_image, preprocess_image

    path = isinstance(image, (str, os.PathLike))
    pixels = load_image(image) if path else as_rgb(image)
    x = preprocess_image(pixels, model.preset.preprocessing, size, model.preset.resample)
    return Embedding.of(model, x, os.fspath(image) if path else "reference")


def describe(preset, logits, classes, target=None) -> list[dict]:
    """What each image's map explains, from its explained head's ``logits`` ``(N, C)`` and the
    explained ``classes`` ``(N,)`` (``methods.Pass``): ``{class, name, probability}``, the name
    the class's first (None for unnamed classes), the probability the head's softmax; for an
    ``Embedding`` target, whose "logit" is the cosine similarity ``(N, 1)``, its ``row``."""
    logits = np.asarray(logits, np.float64)
    if is_embedding(target):
        return [target.row(v) for v in logits[:, 0]]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    chosen = probs[np.arange(len(probs)), classes] / probs.sum(axis=1)
    names = class_names(preset)
    return [{"class": int(c), "name": names[c].split(", ")[0] if names else None,
             "probability": float(q)} for c, q in zip(classes, chosen)]


def check_classifier(preset, target=None) -> None:
    """One line for a preset without a classifier head (the self-supervised families) and a
    ``target`` that is not an ``Embedding``: what to give instead. Any model with a head is
    supervised, a named preset or one read from its own folder (``--model PATH``, whose classes
    are its config's ``id2label``)."""
    if not preset.num_classes and not is_embedding(target):
        from vidattn.models.presets import PRESETS

        supervised = ", ".join(name for name, p in PRESETS.items() if p.num_classes)
        raise VidattnError(f"{preset.name} has no classifier head, so there is no class to "
                           f"explain: {HOW_TO_REFER}, or use a supervised preset ({supervised}) "
                           "or a classifier's own folder (--model PATH)")


def class_names(preset, short: bool = False) -> list[str] | None:
    """The names of the head's classes: the preset's own (``Preset.class_names``: the toy
    ``demo_classifier``'s shapes, a checkpoint config's ``id2label``), else ImageNet-1k's for a
    1000-way head (``short``: the first synonym of each, as the top-5 shows them), or None."""
    if preset.class_names:
        return list(preset.class_names)
    return imagenet_labels(short) if preset.num_classes == 1000 else None


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
    """K of a ``topK`` target (``top1``, ``top3``...; None: top1), else None (an index, a name,
    an ``Embedding``)."""
    if target is None:
        return 1
    if is_embedding(target):
        return None
    text = str(target)
    return int(text[3:]) if text.startswith("top") and text[3:].isdecimal() else None


def check_target(preset, target) -> None:
    """Raise the one-line VidattnError ``resolve`` would, before any work: an unknown name, an
    index out of range."""
    if preset.num_classes and not top_k(target) and not is_embedding(target):
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
    if isinstance(target, (int, np.integer)) or str(target).strip().isdecimal():
        index = int(target)
        if not 0 <= index < preset.num_classes:
            raise VidattnError(f"class {index} is out of range: {preset.name} has classes "
                               f"0..{preset.num_classes - 1}")
    else:
        index = _by_name(preset, str(target))
    return np.full(len(logits), index, np.int64)
