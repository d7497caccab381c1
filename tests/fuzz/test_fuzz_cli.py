"""Bad inputs through the real ``vidattn`` command (a subprocess, capped in time and memory): one
error line naming the file, exit 1, no traceback, no output and no temporary file. Unexpected
exceptions become one "internal error" line too (in-process, with a planted bug)."""

from __future__ import annotations

import struct

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from safetensors.numpy import save_file

from tests.support.clirun import DEMO, assert_one_error, manifest_lines, partial_files, run
from tests.support.corpus import demo_state, make_images, make_videos
from tests.support.pickles import pickle_text, torch_zip
from tests.support.reliability import reliability
from tests.support.videos import make_truncated_copy, make_video, make_y4m_header
from vidattn import cli


def _nan_weights(path):
    state = demo_state()
    state["blocks.0.attn.qkv.weight"][0, 0] = np.nan
    save_file(state, path)
    return path


def _hostile_pth(path):
    """A torch zip whose pickle is ``os.system("touch pwned")``."""
    return torch_zip(path, b"\x80\x02cos\nsystem\n(" + pickle_text("touch pwned") + b"tR.")


VIDEO_CASES = [
    ("truncated", lambda p: make_truncated_copy(make_video(p / "src.mp4", n_frames=40).path,
                                                p / "cut.mp4", 0.6)),
    ("huge", lambda p: make_y4m_header(p / "huge.y4m", 16000, 16000, b"FRAME\n")),
]
WEIGHT_CASES = [
    ("hostile pickle", _hostile_pth, "evil.pth", "refused to load: the pickle calls os.system"),
    ("nan weights", _nan_weights, "nan.safetensors", "NaN or infinite values"),
]


@reliability(("`vidattn video` on a truncated MP4 and on a file declaring 16000x16000 frames "
              "(subprocess, 6 GiB address-space cap, 180 s limit)",
              "exit 1, one stderr line `vidattn: error: FILE: ...`, no traceback, no output, "
              "no temporary file"))
@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in VIDEO_CASES])
def test_video_command_bad_inputs(tmp_path, make):
    src = make(tmp_path).relative_to(tmp_path)
    (tmp_path / "out").mkdir()
    proc = run("video", src, "-o", "out/attn.mp4", *DEMO, "-q", cwd=tmp_path)
    assert_one_error(proc, src)
    assert list((tmp_path / "out").iterdir()) == []


@reliability(("`vidattn video --weights` with a pickle calling os.system, and with NaN weights",
              "exit 1, one error line naming the checkpoint; the command never runs"))
@pytest.mark.parametrize("make, name, message",
                         [pytest.param(m, n, e, id=i) for i, m, n, e in WEIGHT_CASES])
def test_video_command_bad_weights(tmp_path, make, name, message):
    make_video(tmp_path / "clip.mp4", n_frames=4)
    make(tmp_path / name)
    proc = run("video", "clip.mp4", "-o", "attn.mp4", "--model", "demo", "--weights", name,
               "-q", cwd=tmp_path)
    assert_one_error(proc, name)
    assert message in proc.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "attn.mp4").exists()
    assert partial_files(tmp_path) == []


@reliability(("`vidattn video` on an MKV whose audio codec is unknown (its codec ID renamed, as "
              "in a damaged file); then with `--no-audio`",
              "exit 1, one error line naming the file: its audio stream has an unknown codec, "
              "--no-audio renders without it (regression, found by scripts/fuzz.sh: was an "
              "internal error); with --no-audio, every frame rendered, silent"))
def test_video_command_unknown_audio_codec(tmp_path):
    source = make_video(tmp_path / "src.mkv", n_frames=6, audio=True).path.read_bytes()
    assert source.count(b"A_AAC") == 1
    (tmp_path / "clip.mkv").write_bytes(source.replace(b"A_AAC", b"A_ZZZ"))
    proc = run("video", "clip.mkv", "-o", "attn.mp4", *DEMO, "-q", cwd=tmp_path)
    assert_one_error(proc, "clip.mkv")
    assert "audio stream has an unknown codec; --no-audio renders" in proc.stderr
    assert not (tmp_path / "attn.mp4").exists() and partial_files(tmp_path) == []

    proc = run("video", "clip.mkv", "-o", "attn.mp4", *DEMO, "-q", "--no-audio", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with av.open(str(tmp_path / "attn.mp4")) as out:
        assert not out.streams.audio
        assert sum(1 for _ in out.decode(video=0)) == 6


@reliability(("`vidattn image` on a good PNG with a PNG bomb, a cut JPEG and a text file",
              "the good one probed; one error line per bad file naming it; exit 1"))
def test_image_command_mixed_inputs(tmp_path):
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(tmp_path / "good.png")
    bomb = bytearray((tmp_path / "good.png").read_bytes())
    bomb[16:24] = struct.pack(">II", 60000, 60000)  # a broken CRC: refused on size first
    (tmp_path / "bomb.png").write_bytes(bytes(bomb))
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(40))
    (tmp_path / "notes.jpg").write_text("not an image")
    bad = ["bomb.png", "cut.jpg", "notes.jpg"]
    proc = run("image", "good.png", *bad, "-o", "out", *DEMO, "--probes", "rollout", "-q",
               cwd=tmp_path)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line.split(": ")[2] for line in lines] == bad, lines
    assert all(line.startswith("vidattn: error: ") for line in lines)
    assert (tmp_path / "out" / "good" / "probes.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good", "index.html"]


@reliability(("`vidattn batch`, and `vidattn batch --ray`, over a tree of the seed videos and "
              "images, damaged copies, and names with spaces, unicode, a leading dash, `..` and a "
              "newline",
              "good files rendered, each bad one a manifest line and one escaped error line; "
              "exit 1; nothing outside OUTDIR, no temporary file"))
@pytest.mark.parametrize("ray", [(), ("--ray", "--workers", "1")], ids=["local", "ray"])
def test_batch_command_over_a_messy_tree(tmp_path, ray):
    src = tmp_path / "in"
    (src / "sub dir").mkdir(parents=True)
    videos, images = make_videos(src), make_images(src / "sub dir")
    clip, photo = videos["clip.mp4"], images["photo.png"]
    make_truncated_copy(clip, src / "cut.mp4", 0.5)
    data = bytearray(photo.read_bytes())
    data[40:60] = bytes(20)
    (src / "sub dir" / "flipped.png").write_bytes(bytes(data))
    for odd in ("-rf.mp4", "café ☕.mp4", "a..b.mp4"):
        (src / odd).write_bytes(clip.read_bytes())
    (src / "broken\nname.jpg").write_text("not an image")

    proc = run("batch", "in", "-o", "out", *DEMO, "--probes", "rollout", "-q", *ray,
               cwd=tmp_path, capped=not ray)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    records = manifest_lines(tmp_path / "out")
    failed = [r for r in records if r["status"] == "failed"]
    lines = proc.stderr.splitlines()
    assert len(lines) == len(failed) and all(line.startswith("vidattn: error: ") for line in lines)
    assert "vidattn: error: broken\\nname.jpg: " in proc.stderr  # one line, newline escaped
    assert {"cut.mp4", "broken\nname.jpg"} <= {r["input"] for r in failed}
    ok = {r["input"] for r in records if r["status"] == "ok"}
    assert {"-rf.mp4", "café ☕.mp4", "a..b.mp4", "clip.mp4", "sub dir/photo.png"} <= ok
    out = (tmp_path / "out").resolve()
    assert all((out / r["output"]).resolve().is_relative_to(out) for r in records)
    assert all((out / r["output"]).exists() for r in records if r["status"] == "ok")
    outside = {p.name for p in tmp_path.iterdir()} - {"vidattn-home"}  # (its compile cache)
    assert outside == {"in", "out"} and partial_files(tmp_path) == []


@reliability(("a bug: an unexpected exception inside a command (planted in a test)",
              "one line `vidattn: error: [FILE: ]internal error: TYPE: message (run with --debug "
              "for the traceback)`, exit 1; `--debug` shows the traceback"))
def test_unexpected_exceptions_are_one_line(tmp_path, monkeypatch):
    from vidattn.video import pipeline

    def boom(model, src, dst, opts):
        raise FileNotFoundError(2, "No such file or directory\nsecond line", "/tmp/x.npz")

    monkeypatch.setattr(pipeline, "render_video", boom)
    make_video(tmp_path / "clip.mp4", n_frames=2)
    args = ["video", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "o.mp4"), *DEMO, "-q"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "vidattn: error: /tmp/x.npz: internal error: FileNotFoundError: [Errno 2] No such file "
        "or directory second line: '/tmp/x.npz' (run with --debug for the traceback)"]
    debug = CliRunner().invoke(cli.main, ["--debug", *args])
    assert isinstance(debug.exception, FileNotFoundError)

