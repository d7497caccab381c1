"""vidattn.probes: the study's numbers wired to the model, geometry of the drawn maps, the files."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import vidattn
from tests.support.planted import planted_model, strided
from vidattn import attention as am
from vidattn import probes as pr
from vidattn.errors import VidattnError
from vidattn.models.presets import get_preset
from vidattn.options import PROBES, ImageOptions, parse_probes
from vidattn.preprocess import display_image, normalize, preprocess_image

TINY = dataclasses.replace(get_preset("dino_vits16"), name="tiny", embed_dim=32, depth=3,
                           num_heads=2, image_size=64)
TINY_DISTILLED = dataclasses.replace(get_preset("deit_b16_distilled"), name="tiny_distilled",
                                     embed_dim=32, depth=3, num_heads=2, image_size=64)
RED_BOX = (slice(40, 110), slice(250, 330))  # rows, columns of the red square in a 300x400 photo


def study_distance_matrix(patch_size, num_patches, length):
    """The study's compute_distance_matrix, loops and all."""
    distance_matrix = np.zeros((num_patches, num_patches))
    for i in range(num_patches):
        for j in range(num_patches):
            if i == j:
                continue
            xi, yi = (int(i / length)), (i % length)
            xj, yj = (int(j / length)), (j % length)
            distance_matrix[i, j] = patch_size * np.linalg.norm([xi - xj, yi - yj])
    return distance_matrix


def study_mean_distance(patch_size, attention_weights, num_cls_tokens):
    """The study's compute_mean_attention_dist, square grids: (N, heads, T, T) -> (N, heads)."""
    attention_weights = attention_weights[..., num_cls_tokens:, num_cls_tokens:]
    num_patches = attention_weights.shape[-1]
    length = int(np.sqrt(num_patches))
    assert length**2 == num_patches
    distance_matrix = study_distance_matrix(patch_size, num_patches, length)[None, None]
    return np.mean(np.sum(attention_weights * distance_matrix, axis=-1), axis=-1)


def softmax_attention(rng, n, heads, tokens):
    logits = rng.normal(scale=3.0, size=(n, heads, tokens, tokens))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def red_photo():
    """A 300x400 photo-like gradient with a pure red square at ``RED_BOX`` (off the diagonal)."""
    y, x = np.mgrid[0:300, 0:400]
    img = np.stack([x * 0.3, y * 0.5 + 40, 200 - x * 0.3], -1).astype(np.uint8)
    img[RED_BOX] = (255, 0, 0)
    return img


def red_box(image):
    """Bounding box (top, bottom, left, right), inclusive, of the pure red pixels of an image."""
    rows, cols = np.nonzero((image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60))
    return rows.min(), rows.max(), cols.min(), cols.max()


def assert_peak_in(heat, box):
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    top, bottom, left, right = box
    assert top <= y <= bottom and left <= x <= right, f"peak ({y}, {x}) outside {box}"


# -- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_prefix,grid,patch", [(1, 4, 16), (2, 5, 8), (1, 7, 14), (2, 3, 16),
                                                 (5, 4, 14)])
def test_mean_distances_match_the_study_loop_per_block(n_prefix, grid, patch):
    """Prefix tokens (class tokens, and registers: 5 = CLS + 4) are dropped as the study drops
    its class token."""
    rng = np.random.default_rng(grid)
    model = SimpleNamespace(preset=SimpleNamespace(cell_stride=patch, num_prefix_tokens=n_prefix))
    attns = [softmax_attention(rng, 2, 3, n_prefix + grid * grid) for _ in range(4)]
    got = pr.mean_distances(model, attns, (grid, grid))
    assert got.shape == (2, 4, 3)  # (N, depth, heads)
    for b, attn in enumerate(attns):
        np.testing.assert_allclose(got[:, b], study_mean_distance(patch, attn, n_prefix),
                                   atol=1e-6)


def test_average_mean_distance_is_the_mean_of_the_study_per_image():
    """Through the model, uneven batches (2 + 1), images of different sizes, 2 class tokens."""
    preset = TINY_DISTILLED
    model = vidattn.load_model(preset, weights="random")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in
              [(50, 70, 3), (64, 64, 3), (90, 40, 3)]]
    got = pr.average_mean_distance(model, images, size=64, batch_size=2)
    per_image = []
    for img in images:
        attns = model.run(preprocess_image(img, preset.preprocessing, 64), attention="all")
        per_image.append([study_mean_distance(16, a, preset.num_class_tokens)[0]
                          for a in attns["attention"]])
    assert got.shape == (preset.depth, preset.num_heads)
    np.testing.assert_allclose(got, np.mean(per_image, axis=0), rtol=1e-5)


def test_top5_names_the_planted_class():
    preset = dataclasses.replace(get_preset("vit_b16"), name="tiny_vit", embed_dim=32, depth=2,
                                 num_heads=2, image_size=64)
    model = vidattn.load_model(preset, weights="random")
    head = model.backbone.heads[0]
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    bias = np.linspace(0, 1, 1000, dtype=np.float32)  # a known order below the winner
    bias[96] = 8.0
    head.bias.assign(bias)
    top = pr.top_classes(model, pr.analyse(model, red_photo(), 64, ["heads"]).logits)
    assert [t["class"] for t in top] == [96, 999, 998, 997, 996]
    assert top[0]["name"] == "toucan"
    expected = np.exp(bias[96]) / np.exp(bias.astype(np.float64)).sum()
    assert top[0]["probability"] == pytest.approx(expected, rel=1e-5)
    assert all(a["probability"] > b["probability"] for a, b in zip(top, top[1:]))


def test_filters_are_min_max_scaled_per_filter_like_sklearn():
    model = vidattn.load_model(TINY, weights="random")
    kernel = model.backbone.patch_embed.proj.kernel
    values = np.array(kernel.numpy())
    values[:, 3] = 0.25  # a constant filter: MinMaxScaler maps it to 0
    kernel.assign(values)
    got = pr.filter_images(model)
    assert got.shape == (32, 16, 16, 3)  # all 32 of D = 32 (fewer than 128)
    flat = values.reshape(-1, 32)
    for j in (0, 7, 31):
        col = flat[:, j]
        want = ((col - col.min()) / (col.max() - col.min())).reshape(16, 16, 3)
        np.testing.assert_allclose(got[j], want, atol=1e-6)
    assert np.all(got[3] == 0)
    assert pr.filter_images(model, limit=5).shape == (5, 16, 16, 3)


def test_position_similarity_drops_class_tokens():
    model = vidattn.load_model(TINY_DISTILLED, weights="random")
    pos = model.backbone.pos_embed.numpy()[0, 2:].astype(np.float64)
    sim = pr.position_similarity(model)
    assert sim.shape == (16, 16)
    np.testing.assert_allclose(sim, pos @ pos.T, rtol=1e-6)


# -- geometry: planted attention on a red square -------------------------------------------------


def test_planted_peaks_land_on_the_red_square_of_the_display_image():
    model = planted_model()
    photo = red_photo()
    a = pr.analyse(model, photo, size=224)
    display = display_image(photo, 224)
    np.testing.assert_array_equal(a.display, display)
    box = red_box(display)  # the square after the study's stretch to 256x256 and centre crop
    assert box[3] - box[2] > 32 and box[1] - box[0] > 32  # holds whole patches
    for heat in pr.upsample(a.heads, display.shape[:2], 16):
        assert_peak_in(heat, box)
    assert_peak_in(pr.upsample(a.rollout, display.shape[:2], 16), box)
    # the drawn overlays glow there too: the overlay differs from the photo most inside the box
    glow = np.abs(pr.heat_overlay(display, pr.upsample(a.rollout, (224, 224), 16)).astype(int)
                  - display).sum(-1)
    assert_peak_in(glow, box)


@pytest.mark.parametrize("registers", [0, 4], ids=["cls", "cls+4reg"])
@pytest.mark.parametrize("hw,box", [((160, 256), (slice(96, 144), slice(16, 64))),
                                    ((256, 128), (slice(32, 80), slice(80, 128)))])
def test_planted_peaks_on_non_square_inputs(hw, box, registers):
    """The maths under the probes on a non-square input: grid (rows, cols) never swapped; with
    registers that draw most of the attention, the maps still peak on the red square."""
    model = planted_model(registers=registers)
    img = np.full((*hw, 3), 90, np.uint8)
    img[box] = (255, 0, 0)
    grid = (hw[0] // 16, hw[1] // 16)
    out = model.run(normalize(img[None], "imagenet"), attention="all", rollout=True)
    heads = pr.head_maps(model, out, grid)[0]
    shares = pr.register_shares(model, out["attention"])[0]
    assert shares.shape == (2, 2) and ((shares > 0.5) if registers else (shares == 0)).all()
    rollout = pr.rollout_maps(model, out["rollout"], grid)[0]
    assert heads.shape == (2, *grid) and rollout.shape == grid
    bounds = (box[0].start, box[0].stop - 1, box[1].start, box[1].stop - 1)
    for heat in pr.upsample(heads, hw, 16):
        assert_peak_in(heat, bounds)
    assert_peak_in(pr.upsample(rollout, hw, 16), bounds)
    inside = np.zeros(grid, bool)  # the patches of the (patch-aligned) red square
    inside[box[0].start // 16 : box[0].stop // 16, box[1].start // 16 : box[1].stop // 16] = True
    masks = am.threshold_masks(heads, 0.6)
    assert masks.any(axis=(1, 2)).all() and not (masks & ~inside).any()


# -- files ---------------------------------------------------------------------------------------


def test_probe_image_writes_every_probe(tmp_path):
    import matplotlib.pyplot as plt

    model = planted_model(registers=4)  # so that every probe applies
    src = tmp_path / "photo.png"
    Image.fromarray(red_photo()).save(src)
    record = pr.probe_image(model, src, tmp_path / "out" / "photo", ImageOptions(query="290,75"))
    files = pr.write_model_probes(model, tmp_path / "out" / "model")
    assert plt.get_fignums() == []  # nothing left open in pyplot
    saved = json.loads((tmp_path / "out" / "photo" / "probes.json").read_text())
    assert saved == record
    ran = [p for p in pr.IMAGE_PROBES if p != "explain"]  # tests/test_explain.py: a head
    assert record["probes"] == ran and set(files) == set(pr.MODEL_PROBES)
    assert record["image_size"] == [300, 400] and record["shapes"]["tokens"] == 201
    assert list(record["skipped"]) == ["explain"] and record["model"]["register_tokens"] == 4
    shares = np.array(record["register_attention"]["per_block_head"])
    assert shares.shape == (2, 2) and (shares > 0.5).all()
    norms = record["patch_token_norms"]
    assert 0 < norms["median"] <= norms["max"] and len(norms["top5"]) == 5
    assert np.array(record["mean_attention_distance"]["per_block_head"]).shape == (2, 2)
    peak = record["rollout_peak"]
    top, bottom, left, right = red_box(display_image(red_photo(), 224))
    assert top <= peak["y"] <= bottom and left <= peak["x"] <= right
    assert record["masks"]["keep"] == 0.6 and "top5" not in record  # no head, no top-5
    # (least width, height): 3 inches (300 px) per image panel, 2 panels of heads, 2 + 1 of
    # masks, 2 rows of 16 filters; a long title may widen a figure, never shrink it
    expected = {"distance": (900, 700), "rollout": (900, 400), "heads": (600, 400),
                "masks": (600, 700), "filters": (1300, 255), "posembed": (750, 700),
                "registers": (600, 500), "norms": (1300, 460), "pca": (900, 400),
                "similarity": (600, 400)}
    paths = {p: tmp_path / "out" / "photo" / f"{p}.png" for p in ran}
    paths.update({p: tmp_path / "out" / "model" / f for p, f in files.items()})
    for probe, path in paths.items():
        with Image.open(path) as im:
            assert im.format == "PNG"
            pixels = np.asarray(im.convert("L"), np.float32)
            width, height = im.size
            assert expected[probe][0] <= width < 1400 and height == expected[probe][1], probe
        assert pixels.std() > 20, f"{probe}.png looks blank"
    assert not list((tmp_path / "out").rglob(".*partial*"))  # no temporary files left behind


def test_probe_image_refuses_an_existing_folder_unless_overwrite(tmp_path):
    model = vidattn.load_model(TINY, weights="random")
    src = tmp_path / "a.png"
    Image.fromarray(red_photo()).save(src)
    out = tmp_path / "a"
    pr.probe_image(model, src, out, ImageOptions(probes=("heads", "masks"), size=64))
    with pytest.raises(VidattnError, match="exists.*--overwrite"):
        pr.probe_image(model, src, out, ImageOptions(size=64))
    record = pr.probe_image(model, src, out, ImageOptions(probes=("heads",), size=64), overwrite=True)
    assert record["probes"] == ["heads"] and "masks" not in record
    assert sorted(p.name for p in out.iterdir()) == ["heads.png", "probes.json"]  # stale gone


def test_unreadable_image_writes_nothing(tmp_path):
    model = vidattn.load_model(TINY, weights="random")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    with pytest.raises(VidattnError, match="notes.jpg"):
        pr.probe_image(model, bad, tmp_path / "notes", ImageOptions(size=64))
    assert not (tmp_path / "notes").exists()


def test_random_weights_say_so_in_every_title():
    model = vidattn.load_model(TINY, weights="random")
    a = pr.analyse(model, red_photo(), 64)
    figures = [pr.distance_figure(model, a.distances), pr.heads_figure(model, a.display, a.heads),
               pr.filters_figure(model, pr.filter_images(model)),
               pr.posembed_figure(model, pr.position_similarity(model))]
    for fig in figures:
        assert "tiny · RANDOM (untrained) WEIGHTS" in fig.get_suptitle()
    trained = planted_model()
    fig = pr.distance_figure(trained, a.distances)
    assert "planted · weights: planted (test weights)" in fig.get_suptitle()
    assert "RANDOM" not in fig.get_suptitle()


def test_size_must_be_a_multiple_of_the_patch():
    model = vidattn.load_model(TINY, weights="random")
    with pytest.raises(VidattnError, match="multiple of the patch size 16"):
        pr.analyse(model, red_photo(), 100)


def test_parse_probes_and_folder_names():
    assert parse_probes("all") == PROBES
    assert parse_probes("posembed, heads,distance") == ("distance", "heads", "posembed")
    with pytest.raises(VidattnError, match="unknown probe.*heatmap"):
        parse_probes("heads,heatmap")
    reserved = pr.MODEL_FOLDER  # the model's figures' folder
    names = pr.folder_names(["a/cat.jpg", "b/cat.png", "CAT.gif", f"{reserved}.jpg", "cat-2.jpg"])
    assert names == ["cat", "cat-2", "CAT-3", f"{reserved}-2", "cat-2-2"]


def test_probes_a_model_cannot_have_are_skipped_and_said(tmp_path):
    """No registers, no registers probe: the record says why, and no figure is written."""
    model = planted_model()
    src = tmp_path / "photo.png"
    Image.fromarray(red_photo()).save(src)
    record = pr.probe_image(model, src, tmp_path / "photo", ImageOptions(probes="registers,norms"))
    assert record["probes"] == ["norms"] and "no register tokens" in record["skipped"]["registers"]
    assert sorted(p.name for p in (tmp_path / "photo").iterdir()) == ["norms.png", "probes.json"]


# -- similarity: the query patch found again ---------------------------------------------------


def _square_photo(path, box, size=(300, 400), seed=0):
    """A grey noisy photo ``size`` (H, W) with a red square at ``box`` (rows, columns)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 140, (*size, 3)).astype(np.uint8)
    pixels[box] = (230, 30, 30)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("stride", [None, 8])
def test_similarity_query_is_found_in_every_image(tmp_path, stride):
    """The query on image A's red square: in A the query patch has cosine 1 and A's map peaks on
    the square; in B, whose red square is elsewhere, the map peaks on B's square. Also on the
    27 x 27 grid of 16-pixel patches 8 apart (``--stride 8``)."""
    model = planted_model(colour_tokens=True)
    model, s = (strided(model, stride), stride) if stride else (model, 16)
    a = _square_photo(tmp_path / "a.png", RED_BOX)
    other = (slice(180, 260), slice(60, 140))
    b = _square_photo(tmp_path / "b.png", other, seed=1)
    x, y = (250 + 330) / 2, (40 + 110) / 2
    opts = ImageOptions(probes="similarity", query=f"{x:g},{y:g}", size=224)
    run = pr.probe_images(model, [a, b], tmp_path / "out", opts)
    assert [name for name, _ in run.entries] == ["a", "b"]
    for (name, record), box in zip(run.entries, (RED_BOX, other)):
        sim = record["similarity"]
        assert sim["query"]["image"] == str(a)
        assert record["shapes"]["grid"] == [1 + (224 - 16) // s] * 2
        assert record["model"]["stride"] == s
        display = display_image(np.asarray(Image.open(tmp_path / f"{name}.png")), 224)
        red = (display[..., 0] > 180) & (display[..., 1] < 80)  # the square in the crop
        r, c = sim["peak"]
        assert red[r * s:r * s + 16, c * s:c * s + 16].mean() > 0.5, (name, r, c)
        assert (tmp_path / "out" / name / "similarity.png").exists()
    m = pr.measure(model, np.asarray(Image.open(a)), a, opts)
    assert m.similarity[m.query.row, m.query.col] == pytest.approx(1.0, abs=1e-5)
    assert m.similarity.min() >= -1 - 1e-5


def test_similarity_options_and_an_outside_query(tmp_path):
    assert "similarity" not in ImageOptions().probes  # "all" without --query leaves it out
    assert "similarity" in ImageOptions(query="3,4").probes
    with pytest.raises(VidattnError, match="--query X,Y goes with the similarity probe"):
        ImageOptions(probes="similarity")
    with pytest.raises(VidattnError, match="--query X,Y goes with the similarity probe"):
        ImageOptions(probes="rollout", query="3,4")
    a = _square_photo(tmp_path / "a.png", RED_BOX)
    opts = ImageOptions(probes="similarity", query="2,150", size=224)  # the crop cuts x < 21
    with pytest.raises(VidattnError, match="outside the part of the 400x300 image") as err:
        pr.probe_images(planted_model(colour_tokens=True), [a], tmp_path / "out", opts)
    assert err.value.path == str(a)
