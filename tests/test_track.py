"""``vidattn track`` and ``track-eval`` end to end: a planted object followed along its known
path (J above a stated bound), two crossing objects keeping their ids, the outputs (frame count,
fps, audio, DAVIS PNG names and palette, the probabilities' shape), the DAVIS-layout evaluation,
and every bad input as one error line with nothing written."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.support.clirun import DEMO, partial_files, run
from tests.support.families import tiny_dinov2, tiny_dinov3
from tests.support.planted import planted_model, strided
from tests.support.reliability import reliability
from tests.support.videos import make_truncated_copy, make_video
from vidattn import cli
from vidattn.demo import tracks
from vidattn.models.api import load_model
from vidattn.models.presets import get_preset
from vidattn.options import TrackOptions
from vidattn.track import davis
from vidattn.track.evaluate import evaluate_davis
from vidattn.track.pipeline import track_video
from vidattn.track.protocols import PROTOCOLS, working_hw
from vidattn.track.seeds import Seed

J_BOUND = 0.6  # mean J a colour-feature model must reach on the synthetic sequences


@pytest.fixture(scope="module")
def colour_model():
    """Patch tokens that are each patch's colour (and position): a model that can track."""
    return planted_model(colour_tokens=True)


@pytest.fixture(scope="module")
def davis_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    return tracks.write_davis(root, [tracks.synthetic(name, 16) for name in tracks.SYNTHETIC])


def test_planted_objects_followed(colour_model, davis_set, tmp_path):
    """Moving, crossing (the second in front) and scaling objects: every object's J is above
    J_BOUND, for both protocols, and after the crossing each id is on its own side."""
    for protocol in ("dino", "dinov3"):
        opts = TrackOptions(protocol=protocol, size=144, progress=False)
        scores, line = evaluate_davis(colour_model, davis_set, tmp_path / protocol, opts=opts)
        assert line.startswith(f"{protocol} protocol: short side 144")
        j = {row["Sequence"]: row["J-Mean"] for row in scores.per_sequence}
        assert set(j) == {"moving_1", "crossing_1", "crossing_2", "scaling_1"}
        assert min(j.values()) > J_BOUND, j
        last = davis.read_mask(tmp_path / protocol / "crossing" / "00014.png")
        cols = {k: np.nonzero(last == k)[1].mean() for k in (1, 2)}
        assert cols[1] > last.shape[1] / 2 > cols[2]  # 1 started left, 2 right: they swapped


def test_overlapping_patches_track_on_the_finer_grid(colour_model, davis_set, tmp_path):
    """--stride 8 on 16-pixel patches (seeds, propagation and upsampling on the cells' centres):
    the moving and the crossing objects are still followed (J above J_BOUND, ids kept)."""
    model = strided(colour_model, 8)
    opts = TrackOptions(protocol="dino", size=144, progress=False)
    scores, line = evaluate_davis(model, davis_set, tmp_path / "eval",
                                  sequences=["moving", "crossing"], opts=opts)
    assert line.endswith("patches every 8 px (--stride)")
    j = {row["Sequence"]: row["J-Mean"] for row in scores.per_sequence}
    assert min(j.values()) > J_BOUND, j
    last = davis.read_mask(tmp_path / "eval" / "crossing" / "00014.png")
    cols = {k: np.nonzero(last == k)[1].mean() for k in (1, 2)}
    assert cols[1] > last.shape[1] / 2 > cols[2]


RSS_BOUND_MIB = 2048  # a 480p patch-8 track's peak (1.5 GB here); DINO's masks would add 1.3 GB
RSS_GROWTH_MIB = 64  # what the peak may grow by once the context is full


def test_a_480p_patch_8_track_stays_within_its_memory(tmp_path):
    """12 frames of 480x854 through a patch-8 model (a 60 x 104 grid, the dino protocol's
    neighbourhood and context), in a process of its own: the peak RSS stays under RSS_BOUND_MIB,
    and from the frame that fills the context to the last it grows by less than RSS_GROWTH_MIB
    (each frame's features kept only while in the context)."""
    proc = subprocess.run([sys.executable, "-m", "tests.support.trackrss", str(tmp_path), "12"],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["frames"] == 12 and got["grid"] == [60, 104]
    assert got["last_area"] > 0.5 * 80 * 80  # the square is still followed
    assert got["end_mib"] < RSS_BOUND_MIB, got
    assert got["end_mib"] - got["full_context_mib"] < RSS_GROWTH_MIB, got


def test_track_command_outputs(tmp_path):
    """The real command: the video keeps frames, fps and audio; one DAVIS PNG per frame with
    DAVIS's names and palette; the probabilities (frames, gh*gw, C); the seed under the point."""
    clip = make_video(tmp_path / "clip.mp4", n_frames=30, fps=25, size=(128, 96), audio=True,
                      square_size=32)
    x, y = clip.centres[0]
    proc = run("track", "clip.mp4", "--point", f"{x:.0f},{y:.0f}", "-o", "t.mp4",
               "--save-masks", "m", "--save-probs", "p.npy", *DEMO, "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with av.open(str(tmp_path / "t.mp4")) as out:
        video = out.streams.video[0]
        assert video.average_rate == 25 and len(out.streams.audio) == 1
        assert sum(1 for _ in out.decode(video=0)) == 30
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == [f"{i:05d}.png" for i in range(30)]
    with Image.open(tmp_path / "m" / "00000.png") as im:
        assert im.mode == "P" and im.size == (128, 96)
        np.testing.assert_array_equal(np.reshape(im.getpalette()[:768], (256, 3)), davis.PALETTE)
        first = np.asarray(im)
    assert first[int(y), int(x)] == 1  # the clicked patch is in the seed
    probs = np.load(tmp_path / "p.npy")
    meta = json.loads((tmp_path / "p.json").read_text())
    gh, gw = (64 // 8, 128 * 64 // 96 // 64 * 64 // 8)  # dino's sizes at short side 64
    assert probs.shape == (30, gh * gw, 2)
    assert meta["protocol"].startswith("dino protocol: short side 64")
    np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1, atol=2e-2)
    assert partial_files(tmp_path) == []


def test_track_eval_command(davis_set, tmp_path):
    result = CliRunner().invoke(cli.main, ["track-eval", str(davis_set), "-o", str(tmp_path / "r"),
                                           "--sequences", "moving,scaling", *DEMO, "-q"])
    assert result.exit_code == 0, result.stderr
    assert "J&F-Mean" in result.stdout and "moving_1" in result.stdout
    with open(tmp_path / "r" / "global_results-val.csv") as f:
        header = f.readline().strip().split(",")
    assert header == list(davis.GLOBAL_COLUMNS)
    rows = (tmp_path / "r" / "per-sequence_results-val.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["Sequence", "moving_1", "scaling_1"]


# ---- bad input ---------------------------------------------------------------------------------

def _mask(path, ids, plain=False):
    """``ids`` as a DAVIS indexed PNG, or (``plain``) as Pillow saves the array (RGB, I;16)."""
    Image.fromarray(ids).save(path) if plain else davis.write_mask(path, ids)
    return path


def _frames(folder, sizes, extra=None):
    folder.mkdir()
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(folder / f"{i:05d}.jpg")
    if extra:
        (folder / extra).write_text("not an image")
    return folder


def _refused(tmp_path, args, named, message):
    """``vidattn track ARGS -o t.mp4 --save-masks m`` (in-process): exit 1, one error line naming
    ``named`` and holding ``message``, and neither output nor a temporary file left."""
    result = CliRunner().invoke(cli.main, ["track", *map(str, args), "-o", str(tmp_path / "t.mp4"),
                                           "--save-masks", str(tmp_path / "m"), *DEMO, "-q"])
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"vidattn: error: {named}: ") and message in lines[0]
    assert not (tmp_path / "t.mp4").exists() and not (tmp_path / "m").exists()
    assert partial_files(tmp_path) == []


SQUARE = np.zeros((64, 96), np.uint8)
SQUARE[20:40, 30:60] = 1

BAD_SEEDS = [  # (id, make(tmp) -> (track args, the path the error names), message)
    ("mask-size", lambda t: (["--mask", _mask(t / "m.png", SQUARE[:32])], t / "m.png"),
     "mask is 96x32 but the first frame is 96x64"),
    ("rgb-mask", lambda t: (["--mask", _mask(t / "m.png", np.dstack([SQUARE * 200] * 3),
                                            plain=True)], t / "m.png"),
     "RGB mask is not an indexed"),
    ("empty-mask", lambda t: (["--mask", _mask(t / "m.png", SQUARE * 0)], t / "m.png"),
     "holds no object"),
    ("too-many-ids", lambda t: (["--mask", _mask(t / "m.png", SQUARE.astype(np.uint16) * 300,
                                                 plain=True)], t / "m.png"),
     "more than 255 object ids"),
    ("point-outside", lambda t: (["--point", "200,10"], t / "clip.mp4"),
     "point 200,10 is outside the 96x64 frame"),
]


@reliability(("`vidattn track` seeds that cannot be used: a mask of another size than the frame, "
              "an RGB mask, an empty mask, a 16-bit mask with ids above 254, a point outside the "
              "frame", "exit 1, one error line naming the mask (or the video) and the problem; "
              "no output"))
@pytest.mark.parametrize("make, message",
                         [pytest.param(m, e, id=i) for i, m, e in BAD_SEEDS])
def test_bad_seeds(tmp_path, make, message):
    make_video(tmp_path / "clip.mp4", n_frames=4)
    args, named = make(tmp_path)
    _refused(tmp_path, [tmp_path / "clip.mp4", *args], named, message)


BAD_SOURCES = [
    ("mixed-sizes", lambda t: _frames(t / "seq", [(96, 64), (96, 64), (80, 64)]), "00002.jpg",
     "frame is 80x64 but 00000.jpg is 96x64"),
    ("non-image", lambda t: _frames(t / "seq", [(96, 64)] * 2, extra="00002.jpg"), "00002.jpg",
     "not a readable image"),
    ("truncated", lambda t: make_truncated_copy(make_video(t / "src.mp4", n_frames=40).path,
                                                t / "cut.mp4", 0.6), None, ""),
]


@reliability(("`vidattn track` on a frame folder whose frames differ in size or hold a non-image, "
              "and on a truncated MP4", "exit 1, one error line naming the file at fault; "
              "neither the video nor the masks folder is left behind"))
@pytest.mark.parametrize("make, culprit, message",
                         [pytest.param(m, c, e, id=i) for i, m, c, e in BAD_SOURCES])
def test_bad_sources(tmp_path, make, culprit, message):
    src = make(tmp_path)
    named = src / culprit if culprit else src
    _refused(tmp_path, [src, "--point", "10,10"], named, message)


@reliability(("`vidattn track-eval` on a DAVIS folder missing one annotation PNG",
              "exit 1, one error line naming the missing annotation; no results folder"))
def test_track_eval_missing_annotation(davis_set, tmp_path):
    import shutil

    root = shutil.copytree(davis_set, tmp_path / "davis")
    missing = root / "Annotations" / "480p" / "scaling" / "00007.png"
    missing.unlink()
    result = CliRunner().invoke(cli.main, ["track-eval", str(root), "-o", str(tmp_path / "r"),
                                           *DEMO, "-q"])
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"vidattn: error: {missing}: ")
    assert not (tmp_path / "r").exists() and partial_files(tmp_path) == []


def _tiny(name, **changes):
    return dataclasses.replace(get_preset(name), name=f"tiny_{name}", embed_dim=48, depth=2,
                               num_heads=4, mlp_hidden=None, **changes)


FAMILIES = [  # (preset, the protocol its family defaults to, tokens before the patches)
    (tiny_dinov2(registers=True), "dino", 5),
    (tiny_dinov3(), "dinov3", 5),
    (_tiny("dino_vits16"), "dino", 1),
    (_tiny("vit_b16"), "dino", 1),
    (_tiny("deit_b16_distilled"), "dino", 2),
]


@pytest.mark.parametrize("preset, protocol, prefix",
                         [pytest.param(p, r, n, id=p.name) for p, r, n in FAMILIES])
def test_every_family_tracks(preset, protocol, prefix, tmp_path):
    """Each family runs with its default protocol; its class, distillation and register tokens
    never reach the affinity: the probabilities have exactly one row per patch of the grid."""
    model = load_model(preset, weights="random")
    assert model.preset.num_prefix_tokens == prefix
    clip = make_video(tmp_path / "clip.mp4", n_frames=5, size=(96, 64))
    opts = TrackOptions(size=64, progress=False, save_probs=tmp_path / "p.npy",
                        save_masks=tmp_path / "m")
    result = track_video(model, clip.path, None, Seed(points=(tuple(clip.centres[0]),)), opts)
    assert result.frames == 5 and result.protocol.startswith(f"{protocol} protocol")
    p = preset.patch_size
    h, w = working_hw(PROTOCOLS[protocol].with_overrides(size=64), (64, 96), p)
    probs = np.load(tmp_path / "p.npy")
    assert probs.shape == (5, (h // p) * (w // p), 2)
    assert len(list((tmp_path / "m").iterdir())) == 5


def test_start_sets_the_seed_frame(colour_model, tmp_path):
    """--start 0.5 on a 20-frame clip at 20 fps: the seed belongs to frame 10, the track holds
    frames 10..19, and the seed point (on the square at that time) is in the first mask."""
    clip = make_video(tmp_path / "clip.mp4", n_frames=20, fps=20, size=(128, 96), square_size=32)
    x, y = clip.centres[10]
    opts = TrackOptions(start=0.5, size=96, progress=False, save_masks=tmp_path / "m")
    result = track_video(colour_model, clip.path, None, Seed(points=((x, y),)), opts)
    assert result.frames == 10
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == [f"{i:05d}.png" for i in range(10)]
    first = davis.read_mask(tmp_path / "m" / "00000.png")
    assert first[int(y), int(x)] == 1 and first[5, 5] == 0


def test_an_object_too_small_for_the_grid_is_said(colour_model, tmp_path, capsys):
    """A seed object that covers no patch at the working size cannot be propagated: one note
    line says so, and the track still runs."""
    clip = make_video(tmp_path / "clip.mp4", n_frames=3, size=(128, 96), square_size=32)
    seed = np.zeros((96, 128), np.uint8)
    seed[30:62, 40:72] = 1
    seed[2:4, 2:4] = 2  # 2x2 pixels: no patch centre at short side 64 (patch 16, cells of 24 px)
    davis.write_mask(tmp_path / "seed.png", seed)
    opts = TrackOptions(size=64, save_masks=tmp_path / "m")
    result = track_video(colour_model, clip.path, None, Seed(mask=tmp_path / "seed.png"), opts)
    assert result.frames == 3
    assert "note: object 2 of the seed covers no patch at short side 64" in capsys.readouterr().err
