"""Image loading in every Pillow mode, the study's preprocessing, the video resolution policy and
the ImageNet labels."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vidattn import preprocess as P
from vidattn.errors import VidattnError

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


# ---------------------------------------------------------------- load_image


def test_rgb_png_round_trips_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    out = P.load_image(_save(tmp_path, "a.png", Image.fromarray(pixels)))
    assert out.dtype == np.uint8 and out.shape == (7, 11, 3)
    np.testing.assert_array_equal(out, pixels)


def test_rgba_is_composited_over_white(tmp_path):
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[..., 3] = [[0, 128, 255], [0, 128, 255]]
    out = P.load_image(_save(tmp_path, "a.png", Image.fromarray(pixels, "RGBA"))).astype(int)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[:, 0], [[255, 255, 255]] * 2)  # transparent -> white
    np.testing.assert_array_equal(out[:, 2], [[200, 0, 0]] * 2)  # opaque -> its colour
    blend = 200 * 128 / 255 + 255 * 127 / 255, 255 * 127 / 255, 255 * 127 / 255
    np.testing.assert_allclose(out[:, 1], [blend] * 2, atol=1)


def test_greyscale_and_one_bit_become_three_equal_channels(tmp_path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = P.load_image(_save(tmp_path, "l.png", Image.fromarray(grey, "L")))
    assert out.shape == (16, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)

    bits = Image.fromarray(grey >= 128).convert("1")
    out = P.load_image(_save(tmp_path, "b.png", bits))
    np.testing.assert_array_equal(out[..., 1], np.where(grey >= 128, 255, 0))


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1, 0, 1])
    out = P.load_image(_save(tmp_path, "p.png", image, transparency=1))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [255, 255, 255]] * 2)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    wide = np.linspace(0, 65535, 256).round().astype(np.uint16)[None].repeat(3, axis=0)
    image = Image.fromarray(wide)
    assert image.mode == "I;16"
    out = P.load_image(_save(tmp_path, "g16.png", image))
    expected = np.rint(wide / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out[0, -1, 0] == 255 and out[0, 128, 0] in (128, 129)  # mid-range stays mid-range
    # 32-bit integer greyscale (mode "I"), as some TIFFs and older Pillows give 16-bit data.
    out = P.load_image(_save(tmp_path, "g32.tif", Image.fromarray(wide.astype(np.int32))))
    np.testing.assert_array_equal(out[..., 2], expected)


def test_float_grey_in_zero_one_or_zero_255(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = P.load_image(_save(tmp_path, "f1.tif", Image.fromarray(unit, "F")))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])
    out = P.load_image(_save(tmp_path, "f255.tif", Image.fromarray(unit * 200 + 10, "F")))
    np.testing.assert_array_equal(out[0, :, 1], [10, 110, 210])


def test_cmyk(tmp_path):
    image = Image.new("CMYK", (3, 1))
    image.putdata([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)])
    out = P.load_image(_save(tmp_path, "c.tif", image))
    np.testing.assert_array_equal(out[0], [[0, 255, 255], [0, 0, 0], [255, 255, 255]])


def test_exif_orientation_is_applied(tmp_path):
    # Stored 64 wide x 32 tall with a red block in the stored top-left corner. Orientation 6 means
    # "rotate 90 degrees clockwise to display": the block ends up top-right of a 32 x 64 image.
    stored = np.full((32, 64, 3), 255, dtype=np.uint8)
    stored[:16, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path, "o.jpg", Image.fromarray(stored), exif=exif, quality=95)
    out = P.load_image(path).astype(int)
    assert out.shape == (64, 32, 3)
    red = (out[..., 0] > 200) & (out[..., 1] < 60) & (out[..., 2] < 60)
    np.testing.assert_array_equal(red[2:14, 18:30], True)
    assert not red[:, :14].any() and not red[18:].any()


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(VidattnError, match="no such file") as info:
        P.load_image(path)
    assert str(path) in str(info.value)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(VidattnError, match="not an image") as info:
        P.load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_png(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _save(tmp_path, "full.png", Image.fromarray(pixels)).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VidattnError, match="truncated") as info:
        P.load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _png_header_only(path, width, height):
    """A PNG that declares ``width x height`` but carries almost no pixel data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + chunk(b"IEND", b"")
    )
    return path


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = _png_header_only(tmp_path / "bomb.png", 20000, 10000)  # 200 MP declared
    with pytest.raises(VidattnError, match="decompression bomb") as info:
        P.load_image(path)
    assert str(path) in str(info.value)
    # Our own limit applies before decoding too, whatever Pillow's threshold is.
    monkeypatch.setattr(P, "MAX_IMAGE_PIXELS", 100)
    path = _save(tmp_path, "small.png", Image.new("RGB", (20, 20)))
    with pytest.raises(VidattnError, match="20x20"):
        P.load_image(path)


# ---------------------------------------------------------------- preprocess_image


@pytest.mark.parametrize("size", [224, 97])
def test_constant_image_gives_the_exact_normalised_value(size):
    colour = np.array([10, 128, 250])
    image = np.broadcast_to(colour.astype(np.uint8), (50, 70, 3))
    out = P.preprocess_image(image, "imagenet", size=size)
    assert out.dtype == np.float32 and out.shape == (1, size, size, 3)
    np.testing.assert_allclose(out, np.broadcast_to((colour / 255 - MEAN) / STD, out.shape), atol=2e-5)
    out = P.preprocess_image(image, "minus_one_one", size=size)
    np.testing.assert_allclose(out, np.broadcast_to(colour / 127.5 - 1, out.shape), atol=2e-6)


def test_random_image_matches_a_direct_tf_computation():
    import tensorflow as tf

    image = np.random.default_rng(2).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    size, resized = 97, 110  # int(256 / 224 * 97) = 110; crop offset (110 - 97) // 2 = 6
    ref = tf.image.resize(tf.constant(image[None], tf.float32), [resized, resized], "bicubic").numpy()
    ref = ref[:, 6 : 6 + size, 6 : 6 + size]
    np.testing.assert_allclose(
        P.preprocess_image(image, "imagenet", size=size), (ref / 255 - MEAN) / STD, atol=1e-4
    )
    np.testing.assert_allclose(
        P.preprocess_image(image, "minus_one_one", size=size), ref / 127.5 - 1, atol=1e-5
    )


def test_centre_crop_offsets():
    # An image already at the resize size is not resampled, so the crop is visible exactly:
    # 110 -> 97 starts at (110 - 97) // 2 = 6, as keras.layers.CenterCrop does.
    image = np.random.default_rng(3).integers(0, 256, (110, 110, 3), dtype=np.uint8)
    np.testing.assert_array_equal(P.display_image(image, size=97), image[6:103, 6:103])
    image = np.random.default_rng(4).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(P.display_image(image), image[16:240, 16:240])


def test_display_image_is_what_the_model_saw():
    image = np.random.default_rng(5).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    shown = P.display_image(image, size=32)
    assert shown.dtype == np.uint8 and shown.shape == (32, 32, 3)
    seen = P.preprocess_image(image, "minus_one_one", size=32)[0]
    np.testing.assert_allclose(shown, np.clip((seen + 1) * 127.5, 0, 255), atol=0.51)


def test_normalize_accepts_uint8_and_float_alike():
    batch = np.random.default_rng(6).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    out = P.normalize(batch, "imagenet")
    assert out.dtype == np.float32 and out.shape == batch.shape
    np.testing.assert_allclose(out, (batch / 255 - MEAN) / STD, atol=1e-5)
    np.testing.assert_array_equal(P.normalize(batch.astype(np.float64), "imagenet"), out)
    with pytest.raises(ValueError, match="unknown normalisation"):
        P.normalize(batch, "caffe")


# ---------------------------------------------------------------- video geometry


@pytest.mark.parametrize(
    "frame_hw, patch, full_res, resized, inp, grid",
    [
        ((1080, 1920), 16, False, (224, 398), (224, 400), (14, 25)),
        ((1080, 1920), 8, False, (224, 398), (224, 400), (28, 50)),
        ((1920, 1080), 16, False, (398, 224), (400, 224), (25, 14)),  # portrait
        ((480, 853), 16, False, (224, 398), (224, 400), (14, 25)),
        ((448, 449), 16, False, (224, 225), (224, 240), (14, 15)),  # 224.5 rounds half up
        ((10, 10), 16, False, (224, 224), (224, 224), (14, 14)),  # tiny: enlarged
        ((10, 10), 16, True, (10, 10), (16, 16), (1, 1)),
        ((1080, 1920), 16, True, (1080, 1920), (1088, 1920), (68, 120)),
    ],
)
def test_video_geometry_numbers(frame_hw, patch, full_res, resized, inp, grid):
    g = P.video_geometry(*frame_hw, patch, size=224, full_res=full_res)
    assert (g.frame_hw, g.resized_hw, g.input_hw, g.grid_hw, g.patch) == (frame_hw, resized, inp, grid, patch)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([8, 14, 16, 32]), st.integers(16, 640)
)
def test_video_geometry_invariants(h, w, patch, size):
    g = P.video_geometry(h, w, patch, size=size)
    assert min(g.resized_hw) == size
    # Aspect ratio kept to within rounding of the long side.
    long_side, short_side = max(h, w), min(h, w)
    assert abs(max(g.resized_hw) - long_side * size / short_side) <= 0.5
    for resized, padded, cells in zip(g.resized_hw, g.input_hw, g.grid_hw):
        assert padded % patch == 0 and 0 <= padded - resized < patch and cells == padded // patch >= 1


# ---------------------------------------------------------------- prepare_frames


def test_prepare_frames_pads_by_replicating_edges():
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, (3, 10, 20, 3), dtype=np.uint8)
    g = P.video_geometry(10, 20, 16, full_res=True)
    out = P.prepare_frames(frames, g, "imagenet")
    assert out.dtype == np.float32 and out.shape == (3, 16, 32, 3)
    np.testing.assert_array_equal(out[:, :10, :20], P.normalize(frames, "imagenet"))
    np.testing.assert_array_equal(out[:, :10, 20:], np.repeat(out[:, :10, 19:20], 12, axis=2))
    np.testing.assert_array_equal(out[:, 10:], np.repeat(out[:, 9:10], 6, axis=1))
    np.testing.assert_array_equal(P.prepare_frames(list(frames), g, "imagenet"), out)


def test_prepare_frames_resizes_with_the_geometry():
    # 90 x 200 frame, short side to 45: resized 45 x 100, padded to 48 x 112 for patch 16.
    frame = np.zeros((90, 200, 3), dtype=np.uint8)
    frame[30:60, 100:140] = 255  # lands at rows 15..30, cols 50..70 after halving
    g = P.video_geometry(90, 200, 16, size=45)
    assert (g.resized_hw, g.input_hw) == ((45, 100), (48, 112))
    out = P.prepare_frames(frame[None], g, "minus_one_one")[0, ..., 0]
    assert out.shape == (48, 112)
    np.testing.assert_allclose(out[16:29, 51:69], 1.0)
    np.testing.assert_allclose(out[:14], -1.0)
    np.testing.assert_allclose(out[:, :49], -1.0)
    np.testing.assert_allclose(out[:, 71:], -1.0)


@pytest.mark.parametrize("frame_hw,size_hw", [((720, 1280), (224, 398)), ((2160, 3840), (224, 398)),
                                               ((481, 853), (240, 426)), ((100, 60), (50, 30))])
def test_resize_frame_pyramid_matches_area_averaging(frame_hw, size_hw):
    """Halving with pyrDown before INTER_AREA (the fast path for big shrinks) keeps geometry and
    content: a square lands where it should, and the picture stays within 2.5 levels (mean) of plain
    INTER_AREA averaging."""
    h, w = frame_hw
    rng = np.random.default_rng(0)
    smooth = cv2.resize(rng.integers(0, 100, (9, 16, 3), dtype=np.uint8), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    smooth[h // 4 : h // 2, w // 2 : 3 * w // 4] = 255
    got = P.resize_frame(smooth, size_hw)
    want = cv2.resize(smooth, size_hw[::-1], interpolation=cv2.INTER_AREA)
    assert got.shape == (*size_hw, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want)
    assert diff.mean() < 2.5 and np.percentile(diff, 99) < 16
    rows, cols = np.nonzero(got.min(axis=-1) > 180)  # the square, edges cut at about half
    sh, sw = size_hw
    assert abs(rows.min() - sh / 4) <= 1 and abs(rows.max() + 1 - sh / 2) <= 1
    assert abs(cols.min() - sw / 2) <= 1 and abs(cols.max() + 1 - 3 * sw / 4) <= 1


def test_prepare_frames_enlarging_keeps_constant_colour():
    frames = np.broadcast_to(np.array([30, 60, 90], np.uint8), (2, 10, 12, 3))
    g = P.video_geometry(10, 12, 16, size=40)
    out = P.prepare_frames(frames, g, "minus_one_one")
    assert out.shape == (2, 48, 48, 3) and g.resized_hw == (40, 48)
    np.testing.assert_allclose(out, np.broadcast_to(np.array([30, 60, 90]) / 127.5 - 1, out.shape), atol=1e-6)


def test_prepare_frames_rejects_frames_of_another_size():
    g = P.video_geometry(10, 20, 16)
    with pytest.raises(ValueError, match="frame 1"):
        P.prepare_frames([np.zeros((10, 20, 3), np.uint8), np.zeros((20, 10, 3), np.uint8)], g, "imagenet")


# ---------------------------------------------------------------- labels


def test_imagenet_labels():
    labels = P.imagenet_labels()
    assert len(labels) == 1000 and all(label.strip() == label and label for label in labels)
    assert labels[0] == "tench, Tinca tinca"
    assert labels[1].startswith("goldfish")
    assert labels[96] == "toucan"
    assert labels[999].startswith("toilet tissue")
    # The standard list has two "crane"s (bird and machine) at these indices.
    assert [i for i, name in enumerate(P.imagenet_labels(short=True)) if name == "crane"] == [134, 517]
