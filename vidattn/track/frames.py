"""What ``vidattn track`` reads: a video file, or a folder of frames as DAVIS ships them.

A folder of frames (``JPEGImages/480p/<seq>/00000.jpg ...``) is its image files in name order,
as DINO's ``eval_video_segmentation.py`` lists them (``sorted``); each frame is named by its file
stem, which is also the name of its mask (``00000.jpg`` -> ``00000.png``). A video's frames are
named by their count from the seed frame, five digits as DAVIS names them.

Both give ``reader.Frame`` tuples (index, time in seconds, uint8 RGB ``(H, W, 3)``), streamed one
at a time, so memory stays flat however long the input is.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from vidattn.errors import VidattnError
from vidattn.preprocess import MAX_IMAGE_PIXELS, load_image
from vidattn.video.reader import Frame, probe, read_frames

# A folder of frames has no clock: DAVIS's sequences were filmed at 24 frames per second.
FOLDER_FPS = Fraction(24)


@dataclass(frozen=True)
class Source:
    """A video or a frame folder, probed: ``frame_hw`` (display size), ``fps``, ``n_frames``
    (None when unknown), ``files`` (a folder's frame files in order; empty for a video) and
    ``has_audio``."""

    path: Path
    frame_hw: tuple[int, int]
    fps: Fraction
    n_frames: int | None
    files: tuple[Path, ...] = ()
    has_audio: bool = False

    @property
    def is_folder(self) -> bool:
        return bool(self.files)

    def frame_name(self, frame: Frame, count: int) -> str:
        """The DAVIS name (no extension) of ``frame``, the ``count``-th frame of the run."""
        return self.files[frame.index].stem if self.is_folder else f"{count:05d}"


def open_source(path) -> Source:
    """Probe ``path``: a video file, or a folder whose files are all images of one size.

    Raises VidattnError naming the file for a missing path, an empty folder, a file in the
    folder that is not an image (hidden files are passed over), or frames whose sizes differ
    (checked from the headers, before any work)."""
    from vidattn.batch import classify

    path = Path(path)
    if not path.exists():
        raise VidattnError("no such file or folder", path)
    if not path.is_dir():
        info = probe(path)
        fps = info.fps or FOLDER_FPS
        return Source(path, (info.height, info.width), fps, info.n_frames, (), info.has_audio)
    files = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    if not files:
        raise VidattnError("the folder holds no frames", path)
    size = None
    for file in files:
        if file.is_dir() or classify(file.name) != "image":
            raise VidattnError("not an image file: a frame folder must hold only frames", file)
        hw = _image_hw(file)
        if size is None:
            size, first = hw, file
        elif hw != size:
            raise VidattnError(f"frame is {hw[1]}x{hw[0]} but {first.name} is {size[1]}x{size[0]}: "
                               "the frames of a folder must share one size", file)
    return Source(path, size, FOLDER_FPS, len(files), tuple(files))


def _image_hw(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image from its header (EXIF orientation applied)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise VidattnError(f"not a readable image ({' '.join(str(err).split())})", path) from None
    if w * h > MAX_IMAGE_PIXELS:
        raise VidattnError(f"frame is {w}x{h}, above the image size limit", path)
    return (w, h) if turned else (h, w)


def read_source(source: Source, start: float | None = None, end: float | None = None,
                max_frames: int | None = None) -> Iterator[Frame]:
    """The frames of ``source`` with ``start <= time < end``, at most ``max_frames``: a folder's
    frame i is at ``i / fps`` seconds."""
    if not source.is_folder:
        yield from read_frames(source.path, start, end, 1, max_frames)
        return
    first = 0 if start is None else int(-(-Fraction(start) * source.fps // 1))
    stop = len(source.files)
    if end is not None:
        stop = min(stop, int(-(-Fraction(end) * source.fps // 1)))
    if max_frames is not None:
        stop = min(stop, first + max_frames)
    for i in range(first, stop):
        image = load_image(source.files[i])
        if image.shape[:2] != source.frame_hw:  # changed since it was probed
            raise VidattnError("frame size differs from the first frame's", source.files[i])
        yield Frame(i, float(i / source.fps), image)

