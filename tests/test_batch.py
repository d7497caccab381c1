"""``vidattn batch``: the mirrored layout, the manifest, resuming, failures, interruption and
where outputs may land. A planted model (tests/support/planted.py) at 64 pixels keeps every run fast."""

import dataclasses
import json
import os
import signal

import pytest
from click.testing import CliRunner

from tests.support.batchtree import FRAMES, frames, image, make_tree, manifest, video
from tests.support.planted import planted_model
from tests.support.reliability import reliability
from vidattn import batch as vb
from vidattn import cli
from vidattn.batch import output_names, run_batch
from vidattn.options import BatchOptions, ImageOptions, VideoOptions

ROLLOUT_64 = ImageOptions(probes=("rollout",), size=64)

ARGS = ["--size", "64", "--probes", "rollout", "--quiet"]


@pytest.fixture(scope="module")
def planted():
    return planted_model(patch=16, depth=2, heads=2, dim=32, grid=14)


@pytest.fixture(autouse=True)
def _planted_cli(monkeypatch, planted):
    """The CLI loads the planted model whatever --model says."""
    monkeypatch.setattr(cli, "_load", lambda *args, **kwargs: planted)


def _opts(**kw):
    return BatchOptions(**{"video": VideoOptions(size=64), "image": ROLLOUT_64, "progress": False,
                           **kw})


def _mtimes(outdir):
    """mtime_ns of every output file (the manifest, the gallery and the probe report aside)."""
    return {p.relative_to(outdir).as_posix(): p.stat().st_mtime_ns for p in outdir.rglob("*")
            if p.is_file() and p.name not in (vb.MANIFEST, vb.INDEX, vb.gallery.PROBES_REPORT)}


def _run(*args):
    return CliRunner().invoke(cli.main, ["batch", *map(str, args)])


def test_output_names_mirror_and_never_clash():
    entries = [("Photo", "dir"), ("clip.mov", "video"), ("clip.mp4", "video"), ("clip", "dir"),
               ("photo.jpg", "image"), ("photo.png", "image"), ("_model.png", "image"),
               ("x.y.tif", "image")]
    names = output_names(entries, "mp4", reserved=vb.RESERVED)
    assert names == ["Photo", "clip-2.mp4", "clip.mp4", "clip", "photo-2", "photo-3",
                     "_model-2", "x.y"]
    assert output_names([("clip.mov", "video"), ("clip.gif", "video")], "gif") == \
        ["clip-2.gif", "clip.gif"]


def test_tree_failures_resume_and_touch(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _, images = make_tree(src)

    first = _run(src, "-o", out, *ARGS[:-1])
    assert first.exit_code == 1, first.output
    for rel in ("a.mp4", "sub/b.mp4", "sub/deep/c.mp4"):
        assert frames(out / rel) == FRAMES
    for rel in ("p1", "p2", "sub/p3", "sub/deep/p4", "sub/deep/p5"):
        record = json.loads((out / rel / "probes.json").read_text())
        assert record["probes"] == ["rollout"] and (out / rel / "rollout.png").is_file()
    assert not (out / ".hidden").exists() and not (out / "sub" / "broken.mp4").exists()
    lines = manifest(out)
    assert len(lines) == 10
    failed = {r["input"]: r["error"] for r in lines if r["status"] == "failed"}
    assert set(failed) == {"sub/broken.mp4", "sub/notes.jpg"}
    assert all(failed.values()) and all("\n" not in e for e in failed.values())
    assert all(r["model"] == "planted" and r["options"] and r["seconds"] >= 0 for r in lines)
    summary = first.output
    assert "done            8" in summary and "failed          2" in summary
    assert "ignored         1" in summary  # readme.txt; the hidden folder is not counted
    assert "sub/broken.mp4" in summary and "sub/notes.jpg" in summary
    assert (out / vb.INDEX).is_file() and (out / vb.gallery.PROBES_REPORT).is_file()
    assert not (out / vb.pr.MODEL_FOLDER).exists()  # none asked for

    before = _mtimes(out)
    second = _run(src, "-o", out, *ARGS)
    assert second.exit_code == 1
    again = manifest(out)[10:]
    assert sorted(r["input"] for r in again) == ["sub/broken.mp4", "sub/notes.jpg"]
    assert _mtimes(out) == before

    os.utime(images[2], ns=(images[2].stat().st_atime_ns, images[2].stat().st_mtime_ns + 10**9))
    third = _run(src, "-o", out, *ARGS)
    assert third.exit_code == 1
    redone = [r["input"] for r in manifest(out)[12:] if r["status"] == "ok"]
    assert redone == ["sub/p3.png"]
    changed = {k for k, v in _mtimes(out).items() if before.get(k) != v}
    assert changed == {"sub/p3/probes.json", "sub/p3/rollout.png", "_thumbs/sub/p3.jpg"}


def test_fingerprint_follows_each_kinds_options(planted):
    base = _opts()
    video_changes = {"view": "heads", "side_map": "rollout", "size": 96, "full_res": True,
                     "batch_size": 4, "alpha": 0.3, "colormap": "viridis", "captions": False,
                     "smooth": 2.0, "start": 1.0, "end": 2.0, "every": 2, "max_frames": 5,
                     "crf": 30, "x264_preset": "fast", "gif_fps": 5.0, "gif_width": 64}
    for key, value in video_changes.items():
        changed = dataclasses.replace(base, video=dataclasses.replace(base.video, **{key: value}))
        assert vb.fingerprint(planted, "video", changed) != vb.fingerprint(planted, "video", base)
        assert vb.fingerprint(planted, "image", changed) == vb.fingerprint(planted, "image", base)
    for change in ({"probes": ("heads",)}, {"size": 32}):
        changed = dataclasses.replace(base, image=dataclasses.replace(base.image, **change))
        assert vb.fingerprint(planted, "image", changed) != vb.fingerprint(planted, "image", base)
        assert vb.fingerprint(planted, "video", changed) == vb.fingerprint(planted, "video", base)
    shared = dataclasses.replace(base, image=dataclasses.replace(base.image, threshold=0.5),
                                 video=dataclasses.replace(base.video, threshold=0.5))
    assert all(vb.fingerprint(planted, k, shared) != vb.fingerprint(planted, k, base)
               for k in vb.KINDS)
    quiet = dataclasses.replace(base, progress=True, overwrite=True,
                                video=dataclasses.replace(base.video, progress=True))
    assert all(vb.fingerprint(planted, k, quiet) == vb.fingerprint(planted, k, base)
               for k in vb.KINDS)
    other = dataclasses.replace(planted, weights_label="other.pth")
    assert vb.fingerprint(other, "video", base) != vb.fingerprint(planted, "video", base)


@reliability(("`vidattn batch` where OUTDIR already holds a file this batch did not write",
              "that file fails with 'use --overwrite to replace it' and is left untouched; "
              "--overwrite replaces it"))
def test_options_deleted_outputs_and_foreign_files(tmp_path, planted):
    src, out = tmp_path / "in", tmp_path / "out"
    video(src / "v.mp4")
    image(src / "i.png")
    (out / "w.mp4").parent.mkdir(parents=True)
    video(src / "w.mp4")
    (out / "w.mp4").write_bytes(b"someone else's file")
    result = run_batch(planted, src, out, _opts())
    assert result.done == ["i.png", "v.mp4"] and [f for f, _ in result.failed] == ["w.mp4"]
    assert "--overwrite" in result.failed[0][1]
    assert (out / "w.mp4").read_bytes() == b"someone else's file"

    (out / "v.mp4").unlink()
    result = run_batch(planted, src, out, _opts(overwrite=True))
    assert result.done == ["v.mp4", "w.mp4"] and result.up_to_date == ["i.png"]
    assert frames(out / "w.mp4") == FRAMES

    heads = ImageOptions(probes=("heads",), size=64)
    result = run_batch(planted, src, out, _opts(image=heads))
    assert result.done == ["i.png"] and result.up_to_date == ["v.mp4", "w.mp4"]
    assert sorted(p.name for p in (out / "i").iterdir()) == ["heads.png", "probes.json"]

    result = run_batch(planted, src, out, _opts(image=heads, format="gif"))
    assert result.done == ["v.mp4", "w.mp4"] and result.up_to_date == ["i.png"]
    assert frames(out / "v.gif") > 0


@reliability(("`vidattn batch` with links out of INDIR, a link to a folder, a link inside OUTDIR "
              "leading elsewhere, OUTDIR inside INDIR",
              "links out of INDIR and to folders passed over with the reason; the file whose "
              "output would go through the trap link fails; OUTDIR is not walked; nothing is "
              "written outside OUTDIR"))
def test_outputs_never_land_outside_outdir(tmp_path, planted):
    src = tmp_path / "in"
    out = src / "results"  # OUTDIR inside INDIR: passed over by the walk
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside = image(tmp_path / "outside.png")
    image(src / "a" / "b" / "c" / "deep.png")
    image(src / "x" / "y.png")
    (src / "link.png").symlink_to(outside)
    (src / "dirlink").symlink_to(src / "a", target_is_directory=True)
    (src / "inner.png").symlink_to(src / "a" / "b" / "c" / "deep.png")
    out.mkdir()
    (out / "x").symlink_to(elsewhere, target_is_directory=True)  # a trap inside OUTDIR
    before = {p for p in tmp_path.rglob("*")}

    result = run_batch(planted, src, out, _opts())
    assert sorted(result.done) == ["a/b/c/deep.png", "inner.png"]
    assert [f for f, _ in result.failed] == ["x/y.png"] and "outside" in result.failed[0][1]
    reasons = dict(result.ignored)
    assert "outside the input folder" in reasons["link.png"]
    assert "not followed" in reasons["dirlink"]
    assert list(elsewhere.iterdir()) == []
    new = {p for p in tmp_path.rglob("*") if p not in before}
    assert new and all(p.resolve().is_relative_to(out.resolve()) for p in new)
    assert (out / "a" / "b" / "c" / "deep" / "probes.json").is_file()
    assert not (out / "results").exists()  # the output folder itself was not walked
    assert run_batch(planted, src, out, _opts()).up_to_date == ["a/b/c/deep.png", "inner.png"]


@reliability(("a manifest whose last line was torn by a killed run",
              "the torn line is ignored and the next line starts on a fresh line; nothing done "
              "is redone"))
def test_torn_manifest_line_is_ignored(tmp_path, planted):
    src, out = tmp_path / "in", tmp_path / "out"
    image(src / "one.png")
    image(src / "two.png", 1)
    run_batch(planted, src, out, _opts())
    with open(out / vb.MANIFEST, "a") as f:
        f.write('{"input": "one.png", "status": "fai')  # a run killed mid-line
    result = run_batch(planted, src, out, _opts())
    assert result.up_to_date == ["one.png", "two.png"] and not result.done

    (src / "two.png").unlink()
    image(src / "two.png", 2)
    os.utime(src / "two.png", ns=(0, 10**18))
    assert run_batch(planted, src, out, _opts()).done == ["two.png"]
    lines = (out / vb.MANIFEST).read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["input"] == "two.png"  # on a fresh line


def test_sigterm_stops_after_the_current_file_and_resumes(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for i, name in enumerate(["a.mp4", "b.mp4", "c.mp4"]):
        video(src / name, i)
    real = vb.render_video
    calls = []

    def render_then_terminate(model, source, dst, opts):
        calls.append(source.name)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises KeyboardInterrupt here
        return real(model, source, dst, opts)

    monkeypatch.setattr(vb, "render_video", render_then_terminate)
    handler = signal.getsignal(signal.SIGTERM)
    result = _run(src, "-o", out, *ARGS)
    assert result.exit_code == 143  # 128 + SIGTERM
    assert "interrupted: 1 done, 2 left; re-run to continue" in result.output
    assert signal.getsignal(signal.SIGTERM) == handler
    assert [(r["input"], r["status"]) for r in manifest(out)] == \
        [("a.mp4", "ok"), ("b.mp4", "interrupted")]
    assert sorted(p.name for p in out.iterdir()) == \
        sorted(["a.mp4", vb.MANIFEST, vb.INDEX, vb.gallery.THUMBS_FOLDER])  # no partial b
    assert [p.name for p in (out / vb.gallery.THUMBS_FOLDER).iterdir()] == ["a.mp4.jpg"]

    resumed = _run(src, "-o", out, *ARGS[:-1])
    assert resumed.exit_code == 0 and calls == ["a.mp4", "b.mp4", "b.mp4", "c.mp4"]
    assert "done            2" in resumed.output and "up to date      1" in resumed.output
    assert all(frames(out / n) == FRAMES for n in ("a.mp4", "b.mp4", "c.mp4"))


def test_unexpected_errors_are_one_line_unless_debug(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    image(src / "good.png")
    image(src / "bad.png", 1)
    real = vb.pr.probe_image

    def flaky(model, path, *args, **kwargs):
        if path.name == "bad.png":
            raise RuntimeError("boom\nsecond line")
        return real(model, path, *args, **kwargs)

    monkeypatch.setattr(vb.pr, "probe_image", flaky)
    result = _run(src, "-o", out, *ARGS)
    assert result.exit_code == 1
    assert "vidattn: error: bad.png: RuntimeError: boom second line" in result.output
    assert [r["status"] for r in manifest(out)] == ["failed", "ok"]

    debug = CliRunner().invoke(cli.main, ["--debug", "batch", str(src), "-o", str(out), *ARGS])
    assert isinstance(debug.exception, RuntimeError)


def test_bad_folders_fail_before_anything_is_written(tmp_path, planted):
    src = tmp_path / "in"
    image(src / "i.png")
    for outdir in (src, tmp_path):
        result = _run(src, "-o", outdir, *ARGS)
        assert result.exit_code == 1 and "must not be the input folder" in result.output
    assert sorted(p.name for p in src.iterdir()) == ["i.png"]
    bad_size = _run(src, "-o", tmp_path / "out", "--size", "72", "--quiet")
    assert bad_size.exit_code == 1 and "multiple of the patch size" in bad_size.output
