"""Attention at any resolution in bounded memory: chunked attention and chunked rollout are exact,
the planner lowers the batch or refuses at once, and a 32,400-token video renders in every view
within 2 GB."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading

import av
import numpy as np
import pytest
from keras import ops

import vidattn
from tests.support.reliability import reliability
from tests.support.study import study_rollout
from tests.support.videos import make_video
from vidattn.attention import rollout_map
from vidattn.errors import VidattnError
from vidattn.models import compile, memory
from vidattn.models.layers import attention_probs, chunked_attention
from vidattn.models.presets import get_preset

TINY8 = dataclasses.replace(get_preset("dino_vits8"), name="tiny8", embed_dim=32, depth=2,
                            num_heads=2)


@pytest.mark.parametrize("dtype,atol", [("float64", 1e-6), ("float32", 1e-5)])
@pytest.mark.parametrize("chunk", [1, 7, 64, 100, 257])
def test_chunked_attention_equals_the_direct_path(chunk, dtype, atol):
    """Any chunk size (one that does not divide T too) gives the direct path's rows, and so does
    the backend's fused attention: exact (1e-6 in float64; float32's own rounding, summing in
    another order, stays within 1e-5)."""
    rng = np.random.default_rng(chunk)
    q, k, v = (rng.normal(size=(2, 100, 3, 8)).astype(dtype) * 2 for _ in range(3))
    scale = 8**-0.5
    direct = ops.convert_to_numpy(ops.einsum("nhqk,nkhd->nqhd", attention_probs(q, k, scale), v))
    for other in (chunked_attention(q, k, v, scale, chunk),
                  ops.dot_product_attention(q, k, v, scale=scale)):
        np.testing.assert_allclose(ops.convert_to_numpy(other), direct, atol=atol, rtol=0)


@pytest.mark.parametrize("name", ["dino_vits16", "dinov2_vits14_reg", "dinov3_vits16"])
def test_chunked_model_equals_the_direct_model(name):
    """Every output of the compiled model, with attention and rollout in chunks (a size that
    does not divide T), equals the one-piece model's: the class-token rows, the rollout row
    (also against the study's full product of every block's attention), the features."""
    model = vidattn.load_model(name, weights="random", seed=2)
    p = model.preset.patch_size
    x = np.random.default_rng(0).normal(size=(2, 5 * p, 8 * p, 3)).astype(np.float32) * 2
    grid, n_prefix = (5, 8), model.preset.num_prefix_tokens
    every = model.run(x, attention="all", rollout=True, tokens=True)
    for chunk in (7, 16):
        out = model.backbone(x, attention="cls", rollout=True, tokens=True, chunk=chunk)
        out = {k: v if k == "attention" else ops.convert_to_numpy(v) for k, v in out.items()}
        rows = ops.convert_to_numpy(out["attention"][0])
        n_cls = model.preset.num_class_tokens
        np.testing.assert_allclose(rows, every["attention"][-1][:, :, :n_cls], atol=1e-6)
        np.testing.assert_allclose(out["rollout"], every["rollout"], atol=1e-6)
        np.testing.assert_allclose(rollout_map(out["rollout"], n_prefix, grid),
                                   study_rollout(every["attention"], n_prefix, grid), atol=1e-6)
        for key in ("features", "patch_tokens", "patch_norms"):
            np.testing.assert_allclose(out[key], every[key], atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", ["dinov2_vits14_reg", "dinov3_vits16"])
def test_attention_alone_equals_the_whole_forward(name):
    """``features=False`` (the video views: the last block computes only its attention) gives the
    whole forward's class rows, last-block attention and rollout, in one piece and in chunks,
    and returns no features or logits. DINOv3 covers RoPE and the masked key bias on the
    separately projected queries and keys."""
    model = vidattn.load_model(name, weights="random", seed=3)
    p = model.preset.patch_size
    x = np.random.default_rng(1).normal(size=(2, 5 * p, 8 * p, 3)).astype(np.float32) * 2
    whole = model.run(x, attention="all", rollout=True)
    n_cls = model.preset.num_class_tokens
    for chunk in (None, 7):
        for mode, want in (("cls", whole["attention"][-1][:, :, :n_cls]),
                           ("last", whole["attention"][-1])):
            out = model.backbone(x, attention=mode, rollout=True, chunk=chunk, features=False)
            assert "features" not in out and "logits" not in out
            np.testing.assert_allclose(ops.convert_to_numpy(out["attention"][-1]), want,
                                       atol=1e-6, err_msg=f"{mode}, chunk {chunk}")
            np.testing.assert_allclose(ops.convert_to_numpy(out["rollout"]), whole["rollout"],
                                       atol=1e-6)


def test_plan_prefers_one_piece_then_chunks_then_a_smaller_batch():
    p = get_preset("dino_vits16")
    small = memory.plan(p, (224, 224), 8, "cls", budget=2**30)
    assert (small.batch, small.chunk) == (8, None) and small.bytes <= 2**30
    hd = (1088, 1920)  # a 1080p frame at full resolution: 8161 tokens
    chunked = memory.plan(p, hd, 8, "cls", budget=8 * 2**30)
    assert chunked.batch == 8 and chunked.chunk in memory.CHUNKS
    assert memory.estimate(p, hd, 8, "cls", chunk=None) > 8 * 2**30 >= chunked.bytes
    lowered = memory.plan(p, hd, 8, "cls", budget=2**30)
    assert 1 <= lowered.batch < 8 and lowered.bytes <= 2**30
    with pytest.raises(VidattnError, match=r"largest square input that fits is \d+x\d+"):
        memory.plan(p, hd, 8, "all", budget=2**30)  # every block's T x T cannot be chunked


def test_model_run_splits_a_batch_and_refuses_what_cannot_fit():
    model = vidattn.load_model(TINY8, weights="random")
    x = np.random.default_rng(1).normal(size=(3, 64, 96, 3)).astype(np.float32)
    whole = model.run(x, attention="cls", rollout=True)
    one = memory.estimate(model.preset, (64, 96), 1, "cls", True)
    tight = dataclasses.replace(model, memory_budget=int(1.5 * one), _compiled={})
    assert tight.plan((64, 96), 3, "cls", True).batch == 1
    split = tight.run(x, attention="cls", rollout=True)
    for key in ("features", "rollout"):
        np.testing.assert_allclose(split[key], whole[key], atol=1e-6)
    np.testing.assert_allclose(split["attention"][0], whole["attention"][0], atol=1e-6)
    tiny = dataclasses.replace(model, memory_budget=one // 10)
    with pytest.raises(VidattnError, match="over the memory budget .* largest square input"):
        tiny.run(x, attention="all")


def test_a_cpu_batch_runs_as_concurrent_equal_parts_in_order():
    """On a CPU (this suite's TensorFlow), ``Model.run`` calls the compiled model on equal parts
    of a batch from ``compile.streams()`` threads at once (a barrier that each call must meet
    proves they overlap), and each image gets the outputs it has alone, in the order given. A
    batch that does not split evenly is one call (one compiled shape)."""
    assert compile.streams() == compile.CPU_STREAMS == 2
    model = vidattn.load_model(TINY8, weights="random")
    x = np.random.default_rng(2).normal(size=(6, 32, 48, 3)).astype(np.float32)
    alone = [model.run(x[i : i + 1], attention="cls", rollout=True) for i in range(6)]
    (key, compiled_call), = model._compiled.items()
    calls, barrier = [], threading.Barrier(2, timeout=20)

    def recorded(group, meet=True):
        calls.append((threading.get_ident(), len(group)))
        if meet:
            barrier.wait()  # BrokenBarrierError unless the other part runs at the same time
        return compiled_call(group)

    model._compiled[key] = recorded
    together = model.run(x, attention="cls", rollout=True)
    assert sorted(n for _, n in calls) == [3, 3] and len({thread for thread, _ in calls}) == 2
    for i, one in enumerate(alone):
        for name in ("features", "rollout"):
            np.testing.assert_allclose(together[name][i], one[name][0], atol=1e-5)
        np.testing.assert_allclose(together["attention"][0][i], one["attention"][0][0], atol=1e-5)
    calls.clear()
    model._compiled[key] = lambda group: recorded(group, meet=False)
    model.run(x[:5], attention="cls", rollout=True)
    assert [n for _, n in calls] == [5]


def test_budget_sizes_parse():
    assert memory.parse_bytes("8G") == 8 * 2**30 and memory.parse_bytes("512MiB") == 2**29
    assert memory.parse_bytes("1.5GB") == 3 * 2**29 and memory.parse_bytes(4096) == 4096
    for bad in ("", "-1G", "8 apples", "0"):
        with pytest.raises(VidattnError, match="not a memory size"):
            memory.parse_bytes(bad)


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "vidattn", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hd_clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("hd") / "hd.mp4", n_frames=4, fps=25,
                      size=(1920, 1080)).path


def test_planner_lowers_the_batch_and_says_so(tmp_path):
    """The demo model at full resolution on 480x272 frames (2,041 tokens): in 64-query chunks a
    frame takes about 25 MB, so a 60 MB budget takes two frames per call, said in one line."""
    clip = make_video(tmp_path / "small.mp4", n_frames=4, fps=25, size=(480, 272)).path
    proc = _cli("video", clip, "-o", tmp_path / "out.mp4", "--model", "demo", "--full-res",
                "--max-frames", "4", "--batch-size", "4", "--memory-budget", "60M")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in lines if "instead of 4" in line]
    assert len(notes) == 1 and "batch size 2" in notes[0]
    assert "memory budget is 60.0 MB" in notes[0]
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4


@reliability(("`vidattn video --full-res` on 1080p frames through dino_vits8 with a 100 MB "
              "--memory-budget (one frame needs about 1 GB)",
              "refused before any work: exit 1, one line giving the memory needed, the budget and "
              "the largest --size that fits (which then renders); no output"))
def test_planner_refuses_a_frame_that_cannot_fit_naming_the_size_that_does(hd_clip, tmp_path):
    proc = _cli("video", hd_clip, "-o", tmp_path / "out.mp4", "--model", "dino_vits8",
                "--weights", "random", "--full-res", "--memory-budget", "100M", "-q", timeout=120)
    assert proc.returncode == 1 and not (tmp_path / "out.mp4").exists()
    assert proc.stderr.count("\n") == 1 and "internal error" not in proc.stderr
    assert "needs about" in proc.stderr and "the largest --size that fits is" in proc.stderr
    size = int(proc.stderr.split("the largest --size that fits is ")[1].split()[0])
    ok = _cli("video", hd_clip, "-o", tmp_path / "ok.mp4", "--model", "dino_vits8",
              "--weights", "random", "--size", size, "--max-frames", "1",
              "--memory-budget", "100M")
    assert ok.returncode == 0, ok.stderr


# The child's peak RSS is /proc/self/status's VmHWM, which starts afresh at exec: ru_maxrss would
# carry the pytest process's own peak into the child (Linux keeps it across fork and exec).
_RSS_RUN = """
import dataclasses, json, sys
from pathlib import Path
import vidattn
from vidattn.models.presets import get_preset
from vidattn.options import VideoOptions
TINY8 = dataclasses.replace(get_preset("dino_vits8"), name="tiny8", embed_dim=32, depth=2,
                            num_heads=2)
from vidattn.video.pipeline import render_video
model = vidattn.load_model(TINY8, weights="random", memory_budget="1G")
frames = {}
for view in ("heads", "mean", "masks", "rollout", "side-by-side"):
    out = Path(sys.argv[2]) / f"{view}.mp4"
    result = render_video(model, sys.argv[1], out, VideoOptions(
        view=view, full_res=True, max_frames=1, progress=False))
    frames[view] = result.frames
print(json.dumps({"frames": frames,
                  "peak_mib": int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
                              / 1024}))
"""


@reliability(("a 1920x1080 video at full resolution through a patch-8 model (32,400 tokens: "
              "one head's T x T is 4 GB), every view, rollout included, with a 1 GB budget",
              "rendered, every frame, in a fresh process whose peak RSS stays under 2 GB "
              "(attention and rollout in query chunks)"))
def test_a_32400_token_video_renders_in_every_view_within_2_gb(hd_clip, tmp_path):
    """A patch-8 model at 1920x1080: 32,400 patches, so one head's T x T is 4.2 GB; every view,
    rollout too, in a fresh process whose peak RSS stays under 2 GB."""
    assert (1080 // 8 + 1) * (1920 // 8) >= 32400
    proc = subprocess.run([sys.executable, "-c", _RSS_RUN, str(hd_clip), str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["frames"] == {v: 1 for v in ("heads", "mean", "masks", "rollout", "side-by-side")}
    assert got["peak_mib"] < 2048, got
    print(f"peak RSS {got['peak_mib']:.0f} MiB")
