"""The two label-propagation protocols, each as the code its published results come from.

``dino``: facebookresearch/dino ``eval_video_segmentation.py`` (the DAVIS 2017 numbers of the DINO
paper). ``dinov3``: facebookresearch/dinov3 ``notebooks/segmentation_tracking.ipynb``. What each
does, step by step, and where they differ:

=================  =======================================  ======================================
step               dino                                     dinov3
=================  =======================================  ======================================
frame size         short side 480; the long side            short side 960 rounded up to a
                   ``int(480 * long / short // 64 * 64)``   multiple of the patch; the long side
                   (floored to a multiple of 64)            ``ceil(long * short' / short / p) * p``
resize             OpenCV ``cv2.resize`` bilinear           PIL bicubic (torchvision's resize of a
                                                            PIL image)
normalisation      mean 0.485, 0.456, 0.406; std **0.228**, mean 0.485, 0.456, 0.406; std 0.229,
                   0.224, 0.225 (as written there)          0.224, 0.225
features           last block, final norm, L2-normalised    the same (``get_intermediate_layers``)
seed at the grid   PIL nearest resize to ``(w // p, h //    ``F.interpolate`` "nearest-exact" from
                   p)``; one-hot over ``max + 1`` of that   the mask to the grid; one-hot over
                                                            ``max + 1`` of the full mask
neighbourhood      square: ``|di|, |dj| <= 12``             circle: ``di² + dj² <= 12²``
affinity           ``exp(cos / 0.1)``, 0 outside; the       cosine, -inf outside; the top-5 and
                   top-5 (and ties) over all context        ties kept; softmax at temperature 0.2;
                   frames kept, normalised to sum 1         the result renormalised to sum 1
context            the first frame and the 7 before, each   the same
                   with its propagated (soft) probabilities
post-processing    bilinear upsampling by the patch; each   nearest upsampling to the mask size;
                   object's min-max where its max > 0;      each object's min-max (0 where
                   argmax; PIL nearest resize to the frame  constant); argmax
=================  =======================================  ======================================

Deliberate differences, both where the reference cannot run: DINO sizes a square frame as
448 wide and 480 high but its first mask as 480 wide and 448 high, so its grids disagree and it
fails; here the mask follows the frame's rule. And a patch size that does not divide the frame
(14 into 832) is cut at the bottom and right as the reference model's stride-p convolution cuts
it. A model whose own normalisation is not ImageNet's mean and std (the supervised ViT's
[-1, 1]) is fed its own: the protocol's would give it inputs it never saw.

Overlapping patches (``--stride``), which neither protocol defines: the grid is
``cells.grid_shape``, each cell's seed label is the label under its patch's centre, the
upsampling goes through the cells' centres, and the neighbourhood still counts cells.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from vidattn.cells import cell_centres, grid_shape
from vidattn.preprocess import normalize

DINO_LONG_MULTIPLE = 64  # DINO floors the long side to a multiple of 64


@dataclass(frozen=True)
class Protocol:
    """One protocol's settings (see the module docstring for what each means).

    ``neighbourhood``: the half-size (square) or radius (circle) in patches; 0: no restriction.
    ``weighting``: ``"exp"`` (DINO: ``exp(cos / T)``, kept values normalised) or ``"softmax"``
    (DINOv3: softmax of ``cos / T`` over the kept values). ``context``: previous frames used
    besides the first."""

    name: str
    short_side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    shape: str  # "square" | "circle"
    neighbourhood: int
    topk: int
    weighting: str  # "exp" | "softmax"
    temperature: float
    context: int

    def with_overrides(self, size=None, neighbourhood=None, topk=None, temperature=None,
                       context=None) -> Protocol:
        """This protocol with the given settings replaced (None: keep)."""
        given = {"short_side": size, "neighbourhood": neighbourhood, "topk": topk,
                 "temperature": temperature, "context": context}
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    def describe(self, stride: int | None = None) -> str:
        """One line saying what runs (``stride``: the model's overlapping patches, which no
        protocol defines)."""
        long = ("floored to a multiple of 64" if self.name == "dino"
                else "both rounded up to the patch")
        where = ("the whole frame" if not self.neighbourhood else
                 f"{self.shape} neighbourhood {self.neighbourhood}")
        weight = (f"exp(cos/{self.temperature:g})" if self.weighting == "exp"
                  else f"softmax(cos/{self.temperature:g})")
        return (f"{self.name} protocol: short side {self.short_side} (long side {long}), "
                f"{where}, top-{self.topk}, {weight}, first + {self.context} previous frames"
                + (f"; patches every {stride} px (--stride)" if stride else ""))


PROTOCOLS = {
    "dino": Protocol("dino", 480, (0.485, 0.456, 0.406), (0.228, 0.224, 0.225), "square", 12, 5,
                     "exp", 0.1, 7),
    "dinov3": Protocol("dinov3", 960, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "circle", 12,
                       5, "softmax", 0.2, 7),
}


def default_protocol(preset) -> str:
    """The protocol of a preset's family: dinov3 for DINOv3, dino for every other."""
    return "dinov3" if preset.family == "dinov3" else "dino"


def resized_hw(protocol: Protocol, frame_hw, patch: int) -> tuple[int, int]:
    """The size ``(h, w)`` a ``(H, W)`` frame is resized to (before the cut to the patch)."""
    fh, fw = frame_hw
    s = protocol.short_side
    if protocol.name == "dino":  # its read_frame: a portrait frame fixes the width
        if fh > fw:
            return int(s * fh / fw // DINO_LONG_MULTIPLE * DINO_LONG_MULTIPLE), s
        return s, int(s * fw / fh // DINO_LONG_MULTIPLE * DINO_LONG_MULTIPLE)

    def up(side):
        return math.ceil(side / patch) * patch

    if fw > fh:  # its ResizeToMultiple: the short side first, the long one from it
        h = up(s)
        return h, up(fw * h / fh)
    w = up(s)
    return up(fh * w / fw), w


def working_hw(protocol: Protocol, frame_hw, patch: int) -> tuple[int, int]:
    """The model input size: ``resized_hw`` cut to whole patches."""
    h, w = resized_hw(protocol, frame_hw, patch)
    return h // patch * patch, w // patch * patch


def prepare_frame(protocol: Protocol, image, patch: int, kind: str = "imagenet") -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> float32 model input ``working_hw`` x 3: resized and
    normalised as the protocol's code does (``kind``: the model's normalisation; anything but
    "imagenet" uses the model's own, see the module docstring)."""
    h, w = resized_hw(protocol, image.shape[:2], patch)
    if protocol.name == "dino":
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
    resized = resized[: h // patch * patch, : w // patch * patch]
    if kind != "imagenet":
        return normalize(resized, kind)
    mean = np.asarray(protocol.mean, np.float32)
    std = np.asarray(protocol.std, np.float32)
    return ((resized.astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)


def seed_probs(protocol: Protocol, labels, frame_hw, patch: int,
               stride: int | None = None) -> np.ndarray:
    """The seed frame's labels ``(H, W)`` uint8 -> one-hot float32 ``(C, gh, gw)`` on the grid of
    ``working_hw``, as the protocol's code makes it (C = largest id + 1; channel 0 background).
    With overlapping patches ``stride`` apart, which neither protocol defines, each cell takes
    the label under its patch's centre."""
    labels = np.asarray(labels, np.uint8)
    gh, gw = grid_shape(working_hw(protocol, frame_hw, patch), patch, stride)
    if stride not in (None, patch):
        (fh, fw), (h, w) = labels.shape, resized_hw(protocol, frame_hw, patch)
        rows = np.minimum((cell_centres(gh, patch, stride) * fh / h).astype(np.int64), fh - 1)
        cols = np.minimum((cell_centres(gw, patch, stride) * fw / w).astype(np.int64), fw - 1)
        small = labels[rows[:, None], cols[None, :]]
        channels = int((small if protocol.name == "dino" else labels).max()) + 1
    elif protocol.name == "dino":  # its read_seg: PIL nearest to (w // p, h // p) of the resize
        h, w = resized_hw(protocol, frame_hw, patch)
        small = np.asarray(Image.fromarray(labels).resize((w // patch, h // patch), Image.NEAREST))
        small = small[:gh, :gw]
        channels = int(small.max()) + 1
    else:  # F.interpolate(mode="nearest-exact"): source index floor((i + 0.5) * in / out)
        fh, fw = labels.shape
        rows = np.minimum(((np.arange(gh) + 0.5) * (fh / gh)).astype(np.int64), fh - 1)
        cols = np.minimum(((np.arange(gw) + 0.5) * (fw / gw)).astype(np.int64), fw - 1)
        small = labels[rows[:, None], cols[None, :]]
        channels = int(labels.max()) + 1
    return (small[None] == np.arange(channels, dtype=np.uint8)[:, None, None]).astype(np.float32)
