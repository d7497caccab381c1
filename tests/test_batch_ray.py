"""``vidattn batch --ray``: the local batch's results on Ray workers, a worker killed in the middle
of a file, an interrupted driver, and Ray's processes gone afterwards.

A local Ray instance (2 CPUs, no dashboard) serves the tests in this process; the command-line test
starts its own, as a user's ``--ray`` does. The planted model (tests/support/planted.py) at 64
pixels keeps every file fast; ``Dawdling`` makes one planted file slow enough to kill a worker
in the middle of it.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import av
import numpy as np
import psutil
import pytest
import ray
from click.testing import CliRunner
from PIL import Image

from tests.support.batchtree import FRAMES, frames, image, make_tree, manifest, video
from tests.support.clirun import DEMO, manifest_lines, partial_files
from tests.support.planted import dawdling_planted_model, planted_model
from tests.support.reliability import reliability
from vidattn import batch_ray as vr
from vidattn import cli
from vidattn.batch import run_batch
from vidattn.errors import VidattnError
from vidattn.options import BatchOptions, ImageOptions, RayOptions, VideoOptions

PLANTED = {"patch": 16, "depth": 2, "heads": 2, "dim": 32, "grid": 14}
OPTS = BatchOptions(video=VideoOptions(size=64), image=ImageOptions(probes=("rollout",), size=64),
                    progress=False)
SLOW_WIDTH = 128  # the planted slow clip, 128x64: the only one the model sees 128 pixels wide
GONE_S = 30.0  # how long Ray's processes may take to exit after a shutdown


def _ray_processes() -> set[int]:
    """Pids of the Ray processes on this machine: its servers (gcs_server, raylet, the Python
    monitors under ray/) and its workers (``ray::...``)."""
    found = set()
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if proc.info["status"] != psutil.STATUS_ZOMBIE and (
                cmd.startswith("ray::") or "/site-packages/ray/" in cmd):
            found.add(proc.pid)
    return found


def _assert_gone(pids: set[int]):
    """Every process in ``pids`` exits within ``GONE_S``."""
    deadline = time.monotonic() + GONE_S
    while (left := pids & _ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [" ".join(psutil.Process(p).cmdline()) for p in left if psutil.pid_exists(p)]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance for this module's in-process runs; shut down and its processes gone
    at the end."""
    before = _ray_processes()
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20)
    signal.signal(signal.SIGTERM, sigterm)  # ray.init's handler would outlive the module
    try:
        yield
    finally:
        started = _ray_processes() - before
        ray.shutdown()
        assert started  # the check below looks at real processes
        _assert_gone(started)


def _load(**slow):
    """The planted model's loader, as a Ray worker calls it (slow on one width with ``slow``)."""
    if slow:
        return functools.partial(dawdling_planted_model, **slow, **PLANTED)
    return functools.partial(planted_model, **PLANTED)


def _outputs(outdir) -> list[str]:
    """Every file and folder under ``outdir``, relative, sorted."""
    return sorted(p.relative_to(outdir).as_posix() for p in outdir.rglob("*"))


def _pixels(path) -> np.ndarray:
    """The decoded frames of a video, or an image's pixels, as one int16 array."""
    if path.suffix == ".png":
        return np.asarray(Image.open(path).convert("RGB"), np.int16)
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
                        ).astype(np.int16)


def _close(a, b) -> bool:
    """JSON values equal, numbers to 1e-6 relative."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, float) or isinstance(b, float):
        return np.isclose(a, b, rtol=1e-6, atol=0)
    return a == b


def _latest(outdir) -> dict[str, dict]:
    """The last manifest line of each input."""
    return {line["input"]: line for line in manifest(outdir)}


def test_same_tree_same_results_as_the_local_batch(local_ray, tmp_path):
    src, local, remote = tmp_path / "in", tmp_path / "local", tmp_path / "ray"
    make_tree(src)
    expected = run_batch(_load()(), src, local, OPTS)
    result = vr.run_batch_ray(_load(), src, remote, OPTS, RayOptions(ray="", workers=2))

    assert (result.done, result.failed, result.ignored) == \
        (expected.done, expected.failed, expected.ignored)
    assert len(result.done) == 8 and len(result.failed) == 2  # the truncated video, notes.jpg
    lines = manifest(remote)
    assert sorted(r["input"] for r in lines) == sorted(r["input"] for r in manifest(local))
    assert len(lines) == 10  # one line each: a file that fails on its own is not retried
    keys = ("kind", "output", "size", "mtime_ns", "status", "error", "model", "weights", "options",
            "frames")
    assert {r["input"]: [r.get(k) for k in keys] for r in lines} == \
        {r["input"]: [r.get(k) for k in keys] for r in manifest(local)}
    assert _outputs(remote) == _outputs(local)  # no temporary or marker file left either
    for rel in ("a.mp4", "sub/b.mp4", "sub/deep/c.mp4"):
        assert frames(remote / rel) == FRAMES
    for path in (local / rel for rel in _outputs(local)):
        twin = remote / path.relative_to(local)
        if path.suffix in (".mp4", ".png"):
            a, b = _pixels(path), _pixels(twin)
            assert a.shape == b.shape and np.abs(a - b).max() <= 1, path
        elif path.name == "probes.json":
            assert _close(json.loads(path.read_text()), json.loads(twin.read_text())), path
    assert (remote / "probes.html").read_text() == (local / "probes.html").read_text()
    assert (remote / "index.html").is_file()  # the gallery (its times and seconds differ)

    again = vr.run_batch_ray(_load(), src, remote, OPTS, RayOptions(ray="", workers=2))
    expected = run_batch(_load()(), src, local, OPTS)
    assert (again.up_to_date, again.failed, again.done) == \
        (expected.up_to_date, expected.failed, []) and len(again.up_to_date) == 8
    assert len(manifest(remote)) == 12  # the two failed files, tried once more each


def _run_killing(src, out, ray_opts, log, kills: int):
    """``run_batch_ray`` in a thread, killing (``ray.kill``) the worker of the planted slow file
    in the middle of it, ``kills`` times, each time a new worker takes the file -> (result, the
    names of the workers that took it, in order). The middle: the worker is in its second model
    call on the file (the first batch of frames is rendered) and the file's temporary output is
    there."""
    outcome = {}

    def work():
        try:
            outcome["result"] = vr.run_batch_ray(
                _load(width=SLOW_WIDTH, seconds=1.0, log=str(log)), src, out, OPTS, ray_opts)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = err

    thread = threading.Thread(target=work)
    thread.start()
    killed = []
    deadline = time.monotonic() + 240
    while thread.is_alive() and time.monotonic() < deadline:
        calls = collections.Counter(log.read_text().split()) if log.exists() else {}
        names = list(calls)  # in the order they took the file
        if len(killed) < min(kills, len(names)) and calls[names[len(killed)]] >= 2 and \
                list(out.glob(".slow.mp4.partial-*")):
            ray.kill(ray.get_actor(names[len(killed)]))
            killed.append(names[len(killed)])
        time.sleep(0.02)
    thread.join(timeout=1)
    assert not thread.is_alive(), "the Ray batch did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], list(dict.fromkeys(log.read_text().split()))


@reliability(("`vidattn batch --ray`: the worker rendering a file killed (`ray.kill`) in the "
              "middle of it",
              "its temporary output removed; the file retried on another worker and rendered "
              "whole; one manifest line for it"),
             ("`vidattn batch --ray`: the worker of a file killed on every try",
              "after the last try (3 by default) the file is recorded failed with the reason; no "
              "output or temporary file for it; the other files are done"))
@pytest.mark.parametrize("kills", [1, 2])
def test_killed_worker_file_retried_then_recorded_failed(local_ray, tmp_path, kills):
    src, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "slow.log"
    video(src / "a.mp4", 1)
    video(src / "slow.mp4", 2, size=(SLOW_WIDTH, 64))
    video(src / "z.mp4", 3)
    image(src / "p.png")
    result, takers = _run_killing(src, out, RayOptions(ray="", workers=2, attempts=2), log, kills)

    assert len(takers) == min(kills + 1, 2) and len(set(takers)) == len(takers)  # new workers
    assert not partial_files(out) and not list(out.rglob(".*"))
    lines = manifest(out)
    assert sorted(r["input"] for r in lines) == ["a.mp4", "p.png", "slow.mp4", "z.mp4"]
    slow = next(r for r in lines if r["input"] == "slow.mp4")
    if kills == 1:
        assert result.done == ["a.mp4", "p.png", "slow.mp4", "z.mp4"] and not result.failed
        assert slow["frames"] == frames(out / "slow.mp4") == FRAMES
    else:
        assert result.done == ["a.mp4", "p.png", "z.mp4"] and result.exit_code == 1
        assert slow["status"] == "failed" and "died 2 times" in slow["error"]
        assert "\n" not in slow["error"] and not (out / "slow.mp4").exists()
    assert all(frames(out / name) == FRAMES for name in ("a.mp4", "z.mp4"))


def test_outdir_not_shared_is_one_line(local_ray, tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    image(src / "p.png")
    # the workers read another marker than the driver wrote, as on a node with its own OUTDIR
    monkeypatch.setattr(vr, "write_bytes_atomic", lambda path, data: path.write_bytes(b"other"))
    with pytest.raises(VidattnError) as err:
        vr.run_batch_ray(_load(), src, out, OPTS, RayOptions(ray="", workers=1))
    assert str(err.value).startswith(f"{out}: not the same folder for the Ray worker on ")
    assert "\n" not in str(err.value) and "shared file system" in str(err.value)
    assert not list(out.iterdir())  # marker removed, nothing written


def _cli(*args, cwd) -> subprocess.Popen:
    """``vidattn ARGS`` in a subprocess, without a memory cap (Ray's servers inherit it), and
    without RAY_ADDRESS (``--ray`` starts a local instance)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "vidattn", *map(str, args)], cwd=cwd,
                            env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@reliability(("SIGTERM to `vidattn batch --ray` in the middle of a file",
              "exits 143: the workers killed, their temporary files removed, finished files "
              "recorded, the file in flight recorded `interrupted`, every manifest line whole, "
              "Ray's processes gone; the next run does the rest"))
def test_interrupted_driver_then_second_run_completes(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    video(src / "a_long.mp4", 1, n_frames=150)
    for name in ("b.mp4", "c.mp4"):
        video(src / name, 2)
    args = ("batch", src, "-o", out, *DEMO, "--ray", "--workers", "2", "--quiet")
    before = _ray_processes()

    proc = _cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + 180
    while not list(out.glob(".a_long.mp4.partial-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    started = _ray_processes() - before
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "vidattn: interrupted:" in err and "re-run to continue" in err
    latest = {r["input"]: r for r in manifest_lines(out)}  # every line parses
    assert latest["a_long.mp4"]["status"] == "interrupted"
    assert not partial_files(out) and not list(out.rglob(".*"))
    assert started and not (out / "a_long.mp4").exists()
    _assert_gone(started)

    proc = _cli(*args, cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = manifest_lines(out)
    latest = {r["input"]: r for r in lines}
    assert sorted(latest) == ["a_long.mp4", "b.mp4", "c.mp4"]
    assert all(r["status"] == "ok" for r in latest.values())
    assert frames(out / "a_long.mp4") == latest["a_long.mp4"]["frames"] == 150
    assert all(frames(out / n) == FRAMES for n in ("b.mp4", "c.mp4"))
    assert not partial_files(out) and not list(out.rglob(".*"))
    _assert_gone(_ray_processes() - before)


def test_help_does_not_import_ray():
    code = ("import sys; from click.testing import CliRunner; from vidattn import cli; "
            "out = CliRunner().invoke(cli.main, ['batch', '--help']).output; "
            "print('ray' in sys.modules, '--ray [ADDRESS]' in out)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["False", "True"]


def test_ray_options_need_ray_and_an_address_is_not_a_folder(tmp_path):
    image(tmp_path / "in" / "p.png")
    runner = CliRunner()
    alone = runner.invoke(cli.main, ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "o"),
                                     "--workers", "2", "--gpus-per-worker", "0.5"])
    assert alone.exit_code == 1
    assert "--workers, --gpus-per-worker: only with --ray" in alone.output
    swapped = runner.invoke(cli.main, ["batch", "--ray", str(tmp_path / "in"), "-o",
                                       str(tmp_path / "o")])
    assert swapped.exit_code == 2 and "is not a Ray address" in swapped.output
    assert "put --ray after INDIR" in swapped.output
    assert not (tmp_path / "o").exists()
