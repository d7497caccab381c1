"""Images: damaged seeds through ``load_image`` and the probes, decompression bombs, and a table
of named odd inputs. Every case ends in an RGB image (probes written) or one VidattnError naming
the file, before anything large is decoded."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

import vidattn
from tests.support.fuzzing import examples, write_damaged
from tests.support.reliability import reliability
from vidattn import probes as pr
from vidattn.errors import VidattnError
from vidattn.options import ImageOptions
from vidattn.preprocess import MAX_IMAGE_PIXELS, load_image

ROLLOUT_64 = ImageOptions(probes=("rollout",), size=64)

# A warning is noise on a CLI user's terminal: here it fails the case.
pytestmark = pytest.mark.filterwarnings("error")

LIMIT_MP = f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP"


@pytest.fixture(scope="module")
def demo():
    return vidattn.load_model("demo")


def _load_or_refuse(path) -> str:
    try:
        image = load_image(path)
    except VidattnError as err:
        assert err.path == str(path), err
        return "error"
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] <= MAX_IMAGE_PIXELS
    return "ok"


@reliability(("a seed image (PNG, JPEG with EXIF rotation, animated GIF, 16-bit PNG, WebP, "
              "palette PNG with transparency) cut, flipped, overwritten or spliced as the videos",
              "an RGB image, or one error naming the file (not an image file, unreadable or "
              "truncated image, above the size limit)"))
@examples(150)
@given(data=st.data())
def test_damaged_images_load_or_fail_cleanly(data, seed_images, scratch):
    path = write_damaged(data, seed_images, scratch, "image")
    event(_load_or_refuse(path))


@reliability(("the same damaged images probed (rollout figure and probes.json)",
              "the probe folder complete, or one error naming the image and no folder"))
@examples(10)
@given(data=st.data())
def test_damaged_images_probe_or_fail_cleanly(data, demo, seed_images, scratch):
    src, out = write_damaged(data, seed_images, scratch, "image"), scratch / "out"
    try:
        pr.probe_image(demo, src, out, ROLLOUT_64, overwrite=True)
    except VidattnError as err:
        assert err.path == str(src) and not out.exists()
        event("error")
        return
    assert sorted(p.name for p in out.iterdir()) == ["probes.json", "rollout.png"]
    for p in out.iterdir():
        p.unlink()
    out.rmdir()
    event("ok")


def _png(width, height) -> bytes:
    """An 8x8 PNG whose IHDR (with a valid CRC) declares ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _png_bomb(side) -> bytes:
    """A real PNG of ``side`` x ``side`` black grey pixels: ~180 KB that inflate to side**2 B."""
    deflate = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    pixels = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def _gif(width, height) -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (8, 8)).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _jpeg(width, height) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _saved(image, fmt="PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _photo(size=(40, 30)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8))


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _saved(_photo(), "JPEG", exif=exif.tobytes())


# (id, input tried, what vidattn does, file name, bytes, expected error or the loaded shape)
CASES = [
    ("png header bomb", "a 69-byte PNG declaring 60000x60000 pixels",
     f"error: above the {LIMIT_MP} limit (possible decompression bomb), nothing decoded",
     "bomb.png", lambda: _png(60000, 60000), "decompression bomb"),
    ("png bomb", "a real 180 KB PNG that inflates to 13500x13500 (182 MP)",
     f"error: above the {LIMIT_MP} limit, refused before inflating",
     "bomb2.png", lambda: _png_bomb(13500), "decompression bomb"),
    ("gif bomb", "a GIF declaring a 65535x65535 screen", "error: above the size limit",
     "bomb.gif", lambda: _gif(65535, 65535), "decompression bomb"),
    ("jpeg bomb", "a JPEG declaring 65000x65000 pixels", "error: above the size limit",
     "bomb.jpg", lambda: _jpeg(65000, 65000), "decompression bomb"),
    ("empty", "an empty .png", "error: not an image file", "empty.png", lambda: b"",
     "not an image"),
    ("text", "a text file named .jpg", "error: not an image file", "notes.jpg",
     lambda: b"meeting at noon", "not an image"),
    ("truncated", "a JPEG cut in half", "error: unreadable or truncated image", "cut.jpg",
     lambda: _saved(_photo(), "JPEG")[:300], "truncated"),
    ("1x1", "a 1x1 PNG", "probed (scaled up to --size)", "dot.png",
     lambda: _saved(Image.new("RGB", (1, 1), (255, 0, 0))), (1, 1, 3)),
    ("16-bit", "a 16-bit greyscale PNG", "probed (scaled to 8 bits)", "deep.png",
     lambda: _saved(Image.fromarray(np.full((6, 5), 65535, np.uint16))), (6, 5, 3)),
    ("exif", "a JPEG with an EXIF rotation flag", "probed upright", "exif.jpg", _exif_rotated,
     (40, 30, 3)),
    ("animated", "an animated GIF", "probed (first frame)", "anim.gif",
     lambda: _saved(_photo(), "GIF", save_all=True, append_images=[_photo((40, 30))]),
     (30, 40, 3)),
    ("transparent", "a palette PNG with a transparent colour", "probed over white", "pal.png",
     lambda: _saved(_photo().quantize(8), transparency=0), (30, 40, 3)),
]


@reliability(*[(tried, outcome) for _, tried, outcome, _, _, _ in CASES])
@pytest.mark.parametrize("name, make, expected",
                         [pytest.param(n, m, e, id=i) for i, _, _, n, m, e in CASES])
def test_odd_images(demo, tmp_path, name, make, expected):
    src, out = tmp_path / name, tmp_path / "out"
    src.write_bytes(make())
    if isinstance(expected, str):
        with pytest.raises(VidattnError, match=expected) as err:
            pr.probe_image(demo, src, out, ROLLOUT_64)
        assert err.value.path == str(src) and not out.exists()
    else:
        assert load_image(src).shape == expected
        pr.probe_image(demo, src, out, ROLLOUT_64)
        assert (out / "probes.json").is_file()
