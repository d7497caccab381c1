"""Ctrl-C and SIGTERM in the middle of ``vidattn video`` and ``vidattn batch`` (real subprocesses,
signalled once a temporary output shows the render is under way): exit 130 / 143, no temporary
file, an intact manifest, and a further run that finishes the work."""

from __future__ import annotations

import os
import signal
import threading
import time

import av
import numpy as np
import pytest

from tests.support.clirun import DEMO, TIMEOUT_S, manifest_lines, partial_files, run, start
from tests.support.reliability import reliability
from tests.support.videos import make_video
from vidattn.interrupts import Interrupted, Interrupts
from vidattn.video.pipeline import _Sink

LONG = 600  # frames: a few seconds of rendering, so the signal lands mid-way
SHORT = 8


def _frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def _interrupt_when_rendering(args, cwd, output, sig):
    """Start ``vidattn ARGS``, wait until the temporary file of ``output`` appears (its render is
    under way), send ``sig``; returns the finished process and its stderr."""
    proc = start(*args, cwd=cwd)
    deadline = time.monotonic() + TIMEOUT_S
    while not any(p.name.startswith(f".{output.name}.partial-")
                  for p in partial_files(output.parent)):
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no temporary output appeared"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    return proc, err


@reliability(("Ctrl-C, then SIGTERM, in the middle of `vidattn video` (a 600-frame render)",
              "exits 130, then 143, with one line saying no partial output was kept: no output, "
              "no temporary file; the next run writes the whole video"),
             ("the same with `--view pca --save-features` (its basis fitted before the render)",
              "the same, and no feature file or sidecar; the next run writes the features of "
              "every frame"))
@pytest.mark.parametrize("extra", [[], ["--view", "pca", "--save-features", "out/f.npy"]],
                         ids=["mean", "pca-features"])
def test_video_interrupted_twice_then_completes(tmp_path, extra):
    make_video(tmp_path / "long.mp4", n_frames=LONG)
    out = tmp_path / "out"
    out.mkdir()
    args = ["video", "long.mp4", "-o", "out/attn.mp4", *DEMO, "--batch-size", "4", "-q", *extra]
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc, err = _interrupt_when_rendering(args, tmp_path, out / "attn.mp4", sig)
        assert proc.returncode == 128 + sig, err
        assert err.splitlines() == ["vidattn: interrupted; no partial output was kept"]
        assert list(out.iterdir()) == []
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _frames(out / "attn.mp4") == LONG
    assert sorted(p.name for p in out.iterdir()) == (["attn.mp4", "f.json", "f.npy"] if extra
                                                       else ["attn.mp4"])
    if extra:
        assert len(np.load(out / "f.npy", mmap_mode="r")) == LONG


@reliability(("SIGTERM, then Ctrl-C, in the middle of `vidattn batch` (during its second of three "
              "videos)",
              "exits 143, then 130: finished files kept, the current one discarded and recorded "
              "`interrupted`, every manifest line whole; the next run does the rest and skips "
              "the done"))
def test_batch_interrupted_twice_then_completes(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name, n in (("a.mp4", SHORT), ("b.mp4", LONG), ("c.mp4", SHORT)):
        make_video(src / name, n_frames=n)
    args = ["batch", "in", "-o", "out", *DEMO, "--batch-size", "4", "-q"]
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc, err = _interrupt_when_rendering(args, tmp_path, out / "b.mp4", sig)
        assert proc.returncode == 128 + sig, err
        assert "Traceback" not in err and "re-run to continue" in err
        assert partial_files(out) == [] and not (out / "b.mp4").exists()
        assert manifest_lines(out)[-1]["input"] == "b.mp4"
        assert manifest_lines(out)[-1]["status"] == "interrupted"
    assert [(r["input"], r["status"]) for r in manifest_lines(out)] == [
        ("a.mp4", "ok"), ("b.mp4", "interrupted"), ("b.mp4", "interrupted")]
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [(r["input"], r["status"]) for r in manifest_lines(out)[3:]] == [
        ("b.mp4", "ok"), ("c.mp4", "ok")]
    assert {n: _frames(out / n) for n in ("a.mp4", "b.mp4", "c.mp4")} == {
        "a.mp4": SHORT, "b.mp4": LONG, "c.mp4": SHORT}
    assert partial_files(out) == []


@reliability(("SIGTERM while `vidattn` waits for its encoding thread to finish a video",
              "the clean-up waits for that thread before closing the file (regression: the "
              "writer was closed under the encoder, a segfault in one batch run in five)"))
def test_interrupted_wait_for_the_encoder_still_waits():
    """CPython 3.11 marks a thread finished when a join on it is interrupted; the sink must not
    trust join, or ``stop()`` returns while the encoder still writes."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def encode(item):
        started.set()
        release.wait()
        finished.set()

    sink = _Sink(encode)
    sink.put("frame")
    started.wait()
    with Interrupts():
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with pytest.raises(Interrupted):
            sink.close()  # interrupted while the encoder is busy
    threading.Timer(0.2, release.set).start()
    sink.stop()
    assert finished.is_set()
