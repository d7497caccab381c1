"""Image loading, the reference study's preprocessing, and the video resolution policy.

Still images follow the study exactly: bicubic resize to a square of ``int(256 / 224 * size)``,
centre crop to ``size``, then one of two normalisations (``NORMALIZATIONS``). Videos instead keep
their aspect ratio: the short side is scaled to ``size`` and the frame is padded (never cropped) up
to a multiple of the patch size, so the attention map covers the whole frame (``video_geometry``).

Arrays are channels-last RGB throughout: images ``(H, W, 3)``, batches ``(N, H, W, 3)``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vidattn.backend import keras
from vidattn.cells import grid_shape
from vidattn.errors import VidattnError
from vidattn.options import DEFAULT_RESAMPLE, DEFAULT_SIZE

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_IMAGE_PIXELS",
    "NORMALIZATIONS",
    "VideoGeometry",
    "as_rgb",
    "display_image",
    "imagenet_labels",
    "load_image",
    "normalize",
    "prepare_frames",
    "preprocess_image",
    "resize_frame",
    "video_geometry",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, also OpenCLIP's default
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _mean_std(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) on 0..255 pixels of ``(x / 255 - mean) / std``."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return 1.0 / (255.0 * std), -mean / std


# kind -> (scale, offset) per RGB channel, so that normalised = pixel * scale + offset on 0..255
# pixels. "imagenet" is (x / 255 - mean) / std (DINO, DeiT); "minus_one_one" is x / 127.5 - 1
# (the original supervised ViT, SigLIP); "clip" is OpenAI CLIP's mean and std.
NORMALIZATIONS = {
    "imagenet": _mean_std(IMAGENET_MEAN, IMAGENET_STD),
    "minus_one_one": (np.full(3, 1.0 / 127.5), np.full(3, -1.0)),
    "clip": _mean_std(CLIP_MEAN, CLIP_STD),
}

# Images above this many pixels are refused before decoding: a small file can declare an enormous
# canvas (a "decompression bomb") and exhaust memory. 2**31 / 12 (~179 MP) is where Pillow itself
# turns its warning into an error; we make that the single, hard limit, with a clear message.
MAX_IMAGE_PIXELS = 178_956_970

# Transparent pixels are composited over white: transparent images (logos, cut-out objects) are
# made to be seen on white pages, and white keeps the overlay looking like the picture people know.
ALPHA_BACKGROUND = (255, 255, 255)

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def load_image(path) -> np.ndarray:
    """Read an image file as uint8 RGB ``(H, W, 3)``, whatever its mode, upright per its EXIF.

    Modes: 1-bit and greyscale are replicated to three channels; 16/32-bit integer greyscale is
    scaled from 0..65535 (``v / 257``, rounded, not clipped at 255); float greyscale is taken as
    0..1 if its maximum is at most 1, else 0..255; CMYK and palettes are converted by Pillow; any
    alpha (including a palette's or a tRNS transparent colour) is composited over
    ``ALPHA_BACKGROUND``. Multi-frame files (GIF, TIFF) give their first frame.

    Raises VidattnError naming the file when it is missing, not an image, truncated or corrupt,
    or larger than ``MAX_IMAGE_PIXELS``.
    """
    with opened_image(path) as im:
        im.load()  # decode now, inside the error handling: truncated files fail here
        return _to_rgb(ImageOps.exif_transpose(im))


@contextlib.contextmanager
def opened_image(path, what: str = "an image file"):
    """``Image.open(path)``, its size checked against ``MAX_IMAGE_PIXELS``, for the block to
    decode and read; whatever Pillow raises, there or in the block, becomes one VidattnError
    naming the file (missing, a directory, not ``what``, truncated or corrupt, too large).
    Pillow's decompression-bomb warning and its UserWarnings about damaged metadata it skips are
    silenced: the image decodes anyway, or fails here."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise VidattnError(
                        f"image is {width}x{height} ({width * height / 1e6:.0f} MP), above the "
                        f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit (possible decompression bomb)",
                        path,
                    )
                yield im
    except FileNotFoundError:
        raise VidattnError("no such file", path) from None
    except IsADirectoryError:
        raise VidattnError(f"is a directory, not {what}", path) from None
    except PermissionError:
        raise VidattnError("permission denied", path) from None
    except UnidentifiedImageError:
        raise VidattnError(f"not {what} (Pillow cannot identify it)", path) from None
    except Image.DecompressionBombError:
        raise VidattnError(
            f"image is above the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit (possible decompression bomb)",
            path,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        # Pillow reports truncated and corrupt data with any of these.
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise VidattnError(f"unreadable or truncated image ({detail})", path) from None


def as_rgb(image) -> np.ndarray:
    """A Pillow image or a numpy array already in memory -> uint8 RGB ``(H, W, 3)``, by the rules
    of ``load_image`` (a Pillow image is turned upright per its EXIF; an array is read as Pillow
    reads it: uint8 ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA, ``(H, W)`` greyscale of uint8, uint16
    or float). Raises VidattnError for anything else, saying what it got."""
    if isinstance(image, np.ndarray):
        problem = VidattnError(f"an array of shape {image.shape} and dtype {image.dtype} is not an "
                               "image: pass uint8 RGB (H, W, 3)")
        if image.ndim not in (2, 3) or not image.size:
            raise problem
        try:
            image = Image.fromarray(image)
        except (TypeError, ValueError):
            raise problem from None
    elif isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
    else:
        raise VidattnError(f"not an image: {type(image).__name__} (pass a path, a Pillow image or "
                           "a uint8 (H, W, 3) array)")
    return _to_rgb(image)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> uint8 RGB ``(H, W, 3)``; see ``load_image`` for the rules."""
    if im.mode.startswith("I"):  # I;16, I;16B, I;16L, I (16-bit PNGs, integer TIFFs)
        wide = np.asarray(im.convert("I"), dtype=np.int64)
        grey = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        values = np.asarray(im, dtype=np.float32)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        grey = (np.clip(np.nan_to_num(values), 0, 255 / scale) * scale + 0.5).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        background = Image.new("RGBA", im.size, ALPHA_BACKGROUND + (255,))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _affine(kind) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 (scale, offset) of shape (3,) for a normalisation kind: a name in
    ``NORMALIZATIONS`` or a ``(mean, std)`` pair of RGB triples on 0..1 pixels."""
    if isinstance(kind, tuple):
        scale, offset = _mean_std(*kind)
        return scale.astype(np.float32), offset.astype(np.float32)
    if kind not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {kind!r}; expected one of {sorted(NORMALIZATIONS)}")
    scale, offset = NORMALIZATIONS[kind]
    return scale.astype(np.float32), offset.astype(np.float32)


def normalize(batch, kind: str) -> np.ndarray:
    """0..255 pixels ``(..., 3)`` (uint8 or float) -> float32 model input of the same shape.

    One fused multiply-add per element (``x * scale + offset``), no intermediate float64 copy.
    """
    scale, offset = _affine(kind)
    out = np.multiply(batch, scale, dtype=np.float32)
    out += offset
    return out


def _resize_crop(image, size: int, resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """The study's geometry: ``(H, W, 3)`` 0..255 -> float32 ``(size, size, 3)``, unclipped.

    Resize (``keras.ops.image.resize`` with ``resample``, bicubic by default, no antialiasing,
    as the study) to a square of ``int(256 / 224 * size)``, then a centre crop with
    keras.layers.CenterCrop's offsets, ``(resized - size) // 2``. A checkpoint's own
    preprocessing config may name another filter (``Preset.resample``); only the filter
    follows it, the geometry stays the study's.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    resize_size, start = crop_geometry(size)
    resized = keras.ops.image.resize(
        image[None].astype(np.float32),
        (resize_size, resize_size),
        interpolation=resample,
        antialias=False,
    )
    resized = keras.ops.convert_to_numpy(resized)[0]
    return resized[start : start + size, start : start + size]


def crop_geometry(size: int) -> tuple[int, int]:
    """The study's square resize and centre-crop offset for a ``size`` crop:
    ``(int(256 / 224 * size), (resized - size) // 2)``."""
    resize_size = int((256 / 224) * size)
    return resize_size, (resize_size - size) // 2


def crop_point(x: float, y: float, image_hw, size: int) -> tuple[float, float] | None:
    """Image pixel ``(x, y)`` of an ``(H, W)`` image -> its ``(x, y)`` in the ``size`` crop the
    model sees (``_resize_crop``), or None where the crop leaves it out."""
    resize_size, start = crop_geometry(size)
    h, w = image_hw
    cx, cy = x * resize_size / w - start, y * resize_size / h - start
    inside = 0 <= x < w and 0 <= y < h and 0 <= cx < size and 0 <= cy < size
    return (cx, cy) if inside else None


def preprocess_image(image, kind, size: int = DEFAULT_SIZE,
                     resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """The study's ``preprocess_image``: uint8 RGB ``(H, W, 3)`` -> float32 ``(1, size, size, 3)``.

    Resize and crop as ``_resize_crop`` (with ``resample``), then normalise by ``kind`` (see
    ``_affine``: a name in ``NORMALIZATIONS`` or a ``(mean, std)`` pair).
    The study rescales to [-1, 1] before resizing; both steps are affine per channel and bicubic
    weights sum to one, so the order changes only float rounding.
    """
    return normalize(_resize_crop(image, size, resample), kind)[None]


def display_image(image, size: int = DEFAULT_SIZE, resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """The same resize and crop as ``preprocess_image``, as uint8 ``(size, size, 3)`` for display,
    so overlays line up with exactly what the model saw (bicubic overshoot is clipped)."""
    return np.clip(np.rint(_resize_crop(image, size, resample)), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class VideoGeometry:
    """How video frames become model input, as ``(height, width)`` pairs.

    frame_hw:   the source frame.
    resized_hw: the frame after an aspect-preserving resize (equal to frame_hw at full resolution).
    input_hw:   resized_hw padded at the bottom/right to multiples of the patch size.
    grid_hw:    the patch-token grid, ``input_hw // patch`` (finer with a ``stride``:
                ``cells.grid_shape``).
    patch, stride: the patch size, and the pixels between patches (the patch size unless they
                overlap).

    The resized frame occupies the top-left ``resized_hw`` of the input; an attention map of
    ``grid_hw`` maps back to the frame through the cells' centres (``cells.map_to_frame``).
    """

    frame_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    input_hw: tuple[int, int]
    grid_hw: tuple[int, int]
    patch: int
    stride: int


def video_geometry(frame_h: int, frame_w: int, patch: int, size: int = DEFAULT_SIZE,
                   full_res: bool = False, stride: int | None = None):
    """The resolution policy for videos -> ``VideoGeometry``.

    The short side is scaled to ``size`` (``full_res``: frames keep their native size) and the long
    side by the same factor, rounded half up; then each side is padded up to the next multiple of
    ``patch``. Padding rather than cropping keeps the whole frame under the attention map, and the
    map maps back exactly (the pad is at most ``patch - 1`` pixels, replicated from the edge so it
    looks like the border rather than a black bar the model might attend to).
    """
    if min(frame_h, frame_w, patch, size) < 1:
        raise ValueError(
            f"frame size, patch and size must be positive, got {frame_h}x{frame_w}, {patch}, {size}"
        )
    frame_hw = (int(frame_h), int(frame_w))
    if full_res:
        resized_hw = frame_hw
    else:
        short = min(frame_hw)
        # round(side * size / short), half up, in integers (no float or banker's rounding).
        resized_hw = tuple(max(1, (2 * side * size + short) // (2 * short)) for side in frame_hw)
    input_hw = tuple(math.ceil(side / patch) * patch for side in resized_hw)
    return VideoGeometry(frame_hw, resized_hw, input_hw, grid_shape(input_hw, patch, stride),
                         int(patch), int(stride or patch))


def resize_frame(frame: np.ndarray, size_hw) -> np.ndarray:
    """uint8 ``(H, W, C)`` -> ``(h, w, C)`` for ``size_hw = (h, w)``, for video frames.

    Shrinking averages source pixels (cv2 INTER_AREA), which avoids aliasing from 4K to 224;
    while the frame is still over twice the target on both sides, it is halved first with a
    Gaussian pyramid step (``cv2.pyrDown``), because INTER_AREA at a non-integer ratio costs about
    4 ms on a 720p frame and the two steps together half that. Enlarging is bicubic.
    """
    h, w = size_hw
    if (h, w) == frame.shape[:2]:
        return frame
    if h > frame.shape[0] or w > frame.shape[1]:
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_CUBIC)
    while frame.shape[0] > 2 * h and frame.shape[1] > 2 * w:
        frame = cv2.pyrDown(frame)
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)


def prepare_frames(frames, geometry: VideoGeometry, kind: str) -> np.ndarray:
    """uint8 RGB frames ``(N, H, W, 3)`` (an array or a list of ``(H, W, 3)``) -> float32 model
    input ``(N, *geometry.input_hw, 3)``.

    Each frame is resized as uint8 (``resize_frame``), padded bottom/right by edge replication
    (cv2.BORDER_REPLICATE semantics), and only then normalised: no float copy at full frame size.
    """
    frames = list(frames) if not isinstance(frames, np.ndarray) else frames
    count = len(frames)
    (fh, fw), (rh, rw), (ih, iw) = geometry.frame_hw, geometry.resized_hw, geometry.input_hw
    padded = np.empty((count, ih, iw, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.shape != (fh, fw, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame {i}: expected uint8 {(fh, fw, 3)} as in the geometry, "
                f"got {frame.dtype} {frame.shape}"
            )
        padded[i, :rh, :rw] = resize_frame(frame, (rh, rw))
    padded[:, :rh, rw:] = padded[:, :rh, rw - 1 : rw]
    padded[:, rh:] = padded[:, rh - 1 : rh]
    return normalize(padded, kind)


@functools.lru_cache(maxsize=1)
def _label_lines() -> tuple[str, ...]:
    text = importlib.resources.files("vidattn").joinpath("data/imagenet1k_labels.txt").read_text("utf-8")
    lines = tuple(text.splitlines())
    if len(lines) != 1000:
        raise VidattnError(f"expected 1000 ImageNet labels, found {len(lines)}: broken install?")
    return lines


def imagenet_labels(short: bool = False) -> list[str]:
    """The 1000 ImageNet-1k class names, index-aligned with standard 1000-way heads (sorted synset
    order). Each is its WordNet lemmas, e.g. ``"tench, Tinca tinca"``; ``short`` keeps the first."""
    lines = _label_lines()
    return [line.split(", ")[0] for line in lines] if short else list(lines)
