#!/usr/bin/env python
"""Benchmark vidattn on this machine and print one table (also written as JSON).

    python scripts/bench.py [--quick]
        [--only startup,vs-dino,model,torch,families,ceiling,e2e,memory,fullres,rollout,batch,
                viewer,track,explain]
        [--json out/bench.json] [--cache out/bench-cache] [--dino-repo PATH]

Parts (all by default, in this order):

- ``startup``: wall time of ``vidattn --help``, ``vidattn models`` and a 5-frame ``vidattn video``
  of dino_vits16 from a safetensors checkpoint, each a fresh process (median of 3), and where the
  video run's time goes: the same steps timed one after another in a fresh process
  (``scripts/startup_steps.py``: imports, reading the checkpoint, building the model, assigning
  the weights, compiling for the video's input shape, rendering the 5 frames); and per Keras
  backend (TensorFlow, JAX, torch), a fresh ``vidattn video`` process rendering one batch, the
  first run in an empty ``$VIDATTN_HOME`` and the second with the programs the first compiled
  kept there (``runtime.keep_compiled_programs``), the backends alternating, 3 rounds.
- ``vs-dino`` (only with ``--dino-repo PATH``, a checkout of facebookresearch/dino): DINO's own
  ``video_generation.py --resize 224`` against ``vidattn video --view mean --size 224``, whole
  fresh processes timed in alternation (3 rounds) on generated 720p clips with audio of 200, 30
  and 600 frames, from the same random dino_vits16 checkpoint in DINO's .pth layout. torchvision,
  which DINO's script imports, is replaced by a stand-in written to a temporary folder on that
  subprocess's PYTHONPATH (``TORCHVISION_STANDIN``).
- ``model``: ``Model.run`` throughput of dino_vits16 (random weights) at 224x224 and at the video
  input size of a 720p frame (``video_geometry(720, 1280, 16, DEFAULT_SIZE)``), batch 1 and
  ``DEFAULT_BATCH``, attention "last" and "none" (and the in-graph rollout at the video size,
  the rollout view's need). Each shape is warmed up first (XLA compiles per shape); the rate is
  batch / median time.
- ``torch``: the same shapes in Hugging Face ``transformers`` (``ViTModel``, eager attention with
  ``output_attentions`` for "last", sdpa without attentions for "none"), each timed in
  alternation with ours on the same pixels: the "ours vs torch" rows' ratio (> 1: ours is
  faster) compares calls made in the same seconds.
- ``families``: ``Model.run(attention="last")`` of dinov2_vits14_reg, dinov3_vits16,
  clip_vitb16 and siglip2_vitb16 (random weights) against Hugging Face's
  ``Dinov2WithRegistersModel``, ``DINOv3ViTModel``, ``CLIPVisionModel`` and
  ``SiglipVisionModel`` (its MAP head included) with eager
  attention returning every block's attention (the only way it gives attention), at 224x224 and
  224x400 (224x392 for patch 14), batch 8, timed in alternation.
- ``ceiling``: float32 matmul GFLOP/s on the active Keras backend (2048^3 and the model's largest
  matmul) and in numpy (OpenBLAS); the fastest of them is the ceiling, and the ``model`` rates
  turned into GFLOP/s (analytic FLOPs) are shown as % of it.
- ``e2e``: ``render_video`` frames/s for every view (``E2E_VIEWS``) on a generated 720p H.264
  clip, over the model-only rate at the same size and batch (for the pca view: the model
  returning its patch tokens; the basis fit before the render, on ``--pca-frames`` frames, is
  timed apart); plus a serial per-stage breakdown of the mean view (decode, preprocess, model,
  render, encode), and the threaded mean render's CPU by stage as a share of all cores
  (``ThreadCpu``: the rest of 100 % is cores left idle).
- ``memory``: peak RSS of renders of 60, 600 and 1,500 frames of a 360p clip, each in a fresh
  subprocess (since the model loaded, and of the whole process), each longer one over the
  shortest (1.0 = flat); and the first two with ``--save-features`` (the tokens streamed to a
  .npy).
- ``fullres``: ``--full-res`` renders of dino_vits16 on 1080p and dino_vits8 on 720p at the
  default batch: the memory planner's batch, chunk and estimate against the measured peak RSS,
  and frames per second (``part_fullres``).
- ``rollout``: dino_vits8 at 480x848 (6361 tokens): the forward pass, the same pass with the
  in-graph rollout row (``Model.run(..., rollout=True)``), and ``cls_rollout`` alone.
- ``batch``: ``vidattn batch`` over 8 short clips (360p, 2 s), here in this process
  (``run_batch``, the model loaded before) and on Ray with 2 workers (``run_batch_ray``: a local
  Ray instance started for it, each worker loading the model): both throughputs, Ray's start-up,
  the Ray run's throughput once its workers are up, and Ray's overhead per file (from handing a
  file out to its record on the driver, less the worker's own time on it). Needs vidattn[ray].
- ``viewer``: ``vidattn video --viewer`` on a one-minute 640x360 clip at 30 fps (render rate,
  the size of its map data and video), the page's load time in headless Chromium (navigation
  timing, and the mark the page sets when it has drawn its first overlay), and the image
  viewer's data of dino_vits16 and dino_vitb8 at 224 (every block's T x T attention).
- ``track``: ``vidattn track-eval`` with the demo model (a toy: its numbers say nothing of real
  weights) on a generated DAVIS-layout set (``vidattn.demo.tracks``: moving, crossing and
  scaling objects, and pans over two sample photographs, 24 frames of 144x256 each), J&F of both
  protocols at short side 144 (the toy's scale; the protocols' own sizes on a CPU would take
  hours), against copying the first mask and warping it by Farneback optical flow (scored the
  same way); ``vidattn track`` frames per second on a 480x854 clip at the dino protocol's own
  size (demo: patch 8, 6240 patches a frame; dino_vits16 with random weights: 1560); and the peak
  RSS of a track and of a 10x longer one, each in a fresh process.
- ``explain``: the faithfulness tests of Chefer et al. (``vidattn.relevance.faithfulness``:
  the segmentation test's pixel accuracy, mIoU and mAP against the class object's mask, and the
  perturbation test's AUCs, positive and negative, for maps of the predicted and of the true
  class) of every relevance method (``methods.METHODS`` as it is at run time), a random map (the
  floor) and the ground-truth mask (the ceiling), on ``EXPLAIN_SCENES`` held-out synthetic
  scenes of the toy ``demo_classifier`` (``demo.classes.labelled_scenes``) for each of
  ``EXPLAIN_SEEDS`` seeds: mean ± std over the seeds (a toy model on synthetic scenes: its
  numbers say nothing of real weights). Each method's time per image against the forward pass
  alone, on one batch. The table is also written as markdown beside ``--json``
  (``faithfulness.md``, the README's).

The backend is KERAS_BACKEND's (TensorFlow by default); nothing here needs TensorFlow itself.
Generated clips are cached in ``--cache``. ``--quick`` is a smoke run: few iterations, short
clips, a smaller rollout input; its numbers are not meant to be quoted.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import vidattn  # noqa: E402  (sets the KERAS_BACKEND default before keras is imported)
from vidattn.io import atomic_path, write_bytes_atomic  # noqa: E402
from vidattn.models.presets import Preset, get_preset  # noqa: E402
from vidattn.options import DEFAULT_BATCH, DEFAULT_SIZE, VIEWS, VideoOptions  # noqa: E402
from vidattn.preprocess import video_geometry  # noqa: E402
from vidattn.runtime import keep_freed_memory  # noqa: E402

PARTS = ("startup", "vs-dino", "model", "torch", "families", "ceiling", "e2e", "memory", "fullres",
         "rollout", "batch", "viewer", "track", "explain")
FAMILY_PRESETS = ("dinov2_vits14_reg", "dinov3_vits16", "clip_vitb16", "siglip2_vitb16")
FAMILY_HW = ((224, 224), (224, 400))  # the width is rounded down to whole patches (392 at 14)
PRESET = "dino_vits16"
ROLLOUT_PRESET = "dino_vits8"
ROLLOUT_HW, ROLLOUT_QUICK_HW = (480, 848), (240, 424)  # 6361 and 1591 tokens with patch 8
VIDEO_HW = (720, 1280)  # the e2e clip (H, W): 5 s at 30 fps
VIDEO_FRAMES = 150
MEMORY_HW = (360, 640)  # the memory clip: 20 s, and the same model input size as 720p
BATCH_CLIPS, BATCH_FRAMES, BATCH_WORKERS = 8, 60, 2  # the batch part: 8 clips of 2 s at MEMORY_HW
MEMORY_FRAMES = (60, 600, 1500)  # the memory part's renders (the longest also the clip's length)
FPS = 30
AUDIO_RATE = 48000  # the generated clips' audio (make_clip's audio=True)
VIEWER_HW, VIEWER_FRAMES = MEMORY_HW, 60 * FPS  # the viewer's clip: one minute
IMAGE_VIEWER_PRESETS = ("dino_vits16", "dino_vitb8")
# Model.run arguments by mode: the last block's attention (heads, mean, masks views), none, or
# the in-graph rollout row (rollout view)
RUN_MODES = {"last": {"attention": "last"}, "none": {"attention": "none"},
             "rollout": {"rollout": True}, "tokens": {"tokens": True}}
VIEW_MODES = {"rollout": "rollout", "pca": "tokens"}  # what each view asks of the model: else last
# The e2e part's views: similarity needs a query point and explain a classifier head, which
# dino_vits16 has not (the explain part times the relevance methods)
E2E_VIEWS = tuple(v for v in VIEWS if v not in ("similarity", "explain"))


@dataclass
class Row:
    """One line of the table. ``ratio`` is value / reference, shown as ``ratio_unit`` ("x" or
    "%"); ``reference`` says what it is compared with in ``ref_label``."""

    measure: str
    size: str
    batch: int | None
    value: float
    unit: str
    reference: float | None = None
    ref_label: str = ""
    ratio: float | None = None
    ratio_unit: str = "x"
    note: str = ""


@dataclass(frozen=True)
class Effort:
    """How hard to try: warm-up calls, then at least ``min_iters`` timed calls, more (up to
    ``max_iters``) while the timed calls took less than ``budget_s`` in all."""

    warmup: int
    min_iters: int
    max_iters: int
    budget_s: float
    e2e_frames: int
    memory_frames: tuple[int, ...]  # the memory part's renders, shortest first
    rollout_iters: int


FULL = Effort(2, 5, 20, 4.0, VIDEO_FRAMES, MEMORY_FRAMES, 5)
QUICK = Effort(1, 2, 2, 0.0, 2 * DEFAULT_BATCH, (16, 160, 400), 1)


def hw_str(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


def median_seconds(fn, effort: Effort) -> tuple[float, str]:
    """Median wall time of ``fn()`` after ``effort.warmup`` untimed calls, and a note on how
    many calls were timed and how far apart they were ("n=5 spread 4%": (max - min) / median),
    so noise on a busy machine shows in the table."""
    for _ in range(effort.warmup):
        fn()
    times = []
    while len(times) < effort.min_iters or (
        len(times) < effort.max_iters and sum(times) < effort.budget_s
    ):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return spread(times)


def paired_seconds(fn_a, fn_b, effort: Effort) -> tuple[tuple[float, str], tuple[float, str]]:
    """``median_seconds`` of two functions timed in alternation (a, b, a, b, ...), so that a
    change of machine load during the measurement hits both alike and their ratio stays fair."""
    for _ in range(effort.warmup):
        fn_a()
        fn_b()
    times = ([], [])
    while len(times[0]) < effort.min_iters or (
        len(times[0]) < effort.max_iters and sum(times[0]) + sum(times[1]) < 2 * effort.budget_s
    ):
        for fn, kept in zip((fn_a, fn_b), times):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return spread(times[0]), spread(times[1])


def spread(times) -> tuple[float, str]:
    """Median of ``times`` and the note ``median_seconds`` gives about them."""
    mid = statistics.median(times)
    return mid, f"n={len(times)} spread {100 * (max(times) - min(times)) / mid:.0f}%"


def vit_flops(preset: Preset, input_hw) -> float:
    """Forward FLOPs of one image (2 per multiply-add), matmuls only: patch embedding, and per
    block qkv, attention scores and weighted sum, output projection, MLP. LayerNorm, softmax and
    GELU (O(T * D) and O(heads * T^2) elementwise work) are left out."""
    p, d = preset.patch_size, preset.embed_dim
    patches = (input_hw[0] // p) * (input_hw[1] // p)
    t = preset.num_prefix_tokens + patches
    mlp = (3 if preset.mlp == "swiglu" else 2) * t * d * preset.hidden
    per_block = t * d * 3 * d + 2 * t * t * d + t * d * d + mlp
    return 2.0 * (patches * p * p * 3 * d + preset.depth * per_block)


# -- machine and backend ---------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def backend_device() -> tuple[str, str]:
    """(kind, description) of the device the Keras backend computes on: kind "cpu" or "gpu"."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return "gpu", details.get("device_name", gpus[0].name)
    elif backend == "jax":
        import jax

        dev = jax.devices()[0]
        if dev.platform != "cpu":
            return "gpu", f"{dev.platform}: {dev.device_kind}"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return "gpu", torch.cuda.get_device_name(0)
    return "cpu", f"CPU: {cpu_model()}"


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "vidattn": vidattn.__version__}
    for dist in ("numpy", "keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "transformers",
                 "av", "opencv-python-headless"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def header(args) -> dict:
    import keras

    kind, device = backend_device()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{os.cpu_count()} cores, {cpu_model()}, {mem_gb:.0f} GiB RAM",
        "load_average_at_start": os.getloadavg()[0],
        "backend": keras.backend.backend(),
        "device": device,
        "device_kind": kind,
        "torch_device": args.torch_device,
        "quick": args.quick,
        "precision": args.precision,
        "parts": args.parts,
        "versions": versions(),
    }


# -- the benchmark state ---------------------------------------------------------------------


class Bench:
    """Models, clips and rates shared between parts, so a rate measured once is reused (the
    e2e part's reference is the model part's row when both run)."""

    def __init__(self, args):
        self.args = args
        self.effort = QUICK if args.quick else FULL
        self.rows: list[Row] = []
        self.rates: dict = {}  # (impl, preset, hw, batch, attention) -> images/s
        self.spreads: dict = {}  # same keys -> median_seconds' note
        self.ceiling: float | None = None  # best matmul GFLOP/s (backend or numpy): part_ceiling
        self._models: dict = {}
        self.cache = Path(args.cache)
        self.video_geo = video_geometry(*VIDEO_HW, get_preset(PRESET).patch_size, DEFAULT_SIZE)

    def model(self, name):
        if name not in self._models:
            self._models[name] = vidattn.load_model(name, weights="random",
                                                    precision=self.args.precision)
        return self._models[name]

    def ours_rate(self, name, hw, batch, mode) -> float:
        """Images/s of ``Model.run`` (numpy in, numpy out, as the video pipeline calls it) in
        one of ``RUN_MODES``."""
        key = ("ours", name, tuple(hw), batch, mode)
        if key not in self.rates:
            model = self.model(name)
            x = np.random.default_rng(0).standard_normal((batch, *hw, 3), np.float32)
            seconds, spread = median_seconds(lambda: model.run(x, **RUN_MODES[mode]), self.effort)
            self.rates[key] = batch / seconds
            self.spreads[key] = spread
        return self.rates[key]

    def clip(self, hw, n_frames, audio=False) -> Path:
        """The generated clip of ``n_frames`` at ``hw`` (with ``audio``: an AAC tone too), made
        once into the cache folder."""
        path = self.cache / f"clip_{hw[1]}x{hw[0]}_{n_frames}f_{FPS}fps{'_aac' * audio}_v1.mp4"
        if not path.exists():
            make_clip(path, hw, n_frames, audio=audio)
        return path


def shapes(bench):
    """The (input size, batch) pairs of the model and torch parts."""
    return [(hw, b) for hw in ((224, 224), bench.video_geo.input_hw) for b in (1, DEFAULT_BATCH)]


# -- part: startup ---------------------------------------------------------------------------

STARTUP_FRAMES = 5
BACKENDS = ("tensorflow", "jax", "torch")  # the Keras backends the startup part compares


def startup_checkpoint(bench) -> Path:
    """dino_vits16 with random weights as a timm-layout safetensors file, made once."""
    from safetensors.numpy import save_file

    from vidattn.models.vit import export_state_dict

    path = bench.cache / f"{PRESET}_random.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(export_state_dict(bench.model(PRESET).backbone), str(tmp))
    return path


def _command_seconds(args, runs=3) -> tuple[float, str]:
    """Median wall time of a fresh ``vidattn ARGS`` process (it must succeed)."""
    return spread([_timed_process([sys.executable, "-m", "vidattn", *args]) for _ in range(runs)])


def _backend_startups(bench, clip, checkpoint, tmp: Path):
    """Per backend (``BACKENDS``), the wall time of a fresh ``vidattn video`` process rendering
    one batch (``DEFAULT_BATCH`` frames): the first run with an empty ``$VIDATTN_HOME`` (nothing
    compiled yet) and the second (the compiled programs kept there, ``runtime
    .keep_compiled_programs``). Rounds alternate the backends, each round in a fresh home."""
    times = {(b, run): [] for b in BACKENDS for run in ("first", "second")}
    for round_ in range(1 if bench.args.quick else 3):
        for backend in BACKENDS:
            home = tmp / f"home-{backend}-{round_}"
            env = {**os.environ, "KERAS_BACKEND": backend, "VIDATTN_HOME": str(home)}
            for run in ("first", "second"):
                times[backend, run].append(_timed_process(
                    [sys.executable, "-m", "vidattn", "video", clip, "-o", tmp / "out.mp4",
                     "--weights", checkpoint, "-q", "--overwrite", "--max-frames", DEFAULT_BATCH],
                    env))
    for backend in BACKENDS:
        first, second = spread(times[backend, "first"]), spread(times[backend, "second"])
        label = f"startup: vidattn video, {DEFAULT_BATCH} frames, {backend}"
        bench.rows.append(Row(f"{label}, first run", hw_str(VIDEO_HW), DEFAULT_BATCH, first[0],
                              "s", note=f"{first[1]}; fresh process, empty compile cache"))
        bench.rows.append(Row(f"{label}, second run", hw_str(VIDEO_HW), DEFAULT_BATCH,
                              second[0], "s", first[0], "first run", second[0] / first[0],
                              note=f"{second[1]}; fresh process, programs compiled before"))


def _checked_run(cmd, env=None):
    """Run ``cmd`` (paths allowed) and raise with its stderr's tail when it fails."""
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, check=False,
                          env=env)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-2000:]}")
    return proc


def part_startup(bench):
    checkpoint = startup_checkpoint(bench)
    clip = bench.clip(VIDEO_HW, 2 * FPS)
    with tempfile.TemporaryDirectory() as tmp:
        video = ["video", clip, "-o", Path(tmp) / "out.mp4", "--weights", checkpoint, "-q",
                 "--max-frames", STARTUP_FRAMES, "--overwrite"]
        for label, args in (("vidattn --help", ["--help"]), ("vidattn models", ["models"]),
                            (f"vidattn video, {STARTUP_FRAMES} frames", video)):
            seconds, note = _command_seconds(args)
            bench.rows.append(Row(f"startup: {label}", hw_str(VIDEO_HW) if "video" in label else "",
                                  None, seconds, "s", note=f"{note}; fresh process"))
        _backend_startups(bench, clip, checkpoint, Path(tmp))
    steps_script = Path(__file__).with_name("startup_steps.py")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "VIDATTN_HOME": home}
        for run in ("first", "second"):
            proc = _checked_run([sys.executable, steps_script, PRESET, checkpoint, clip,
                                 DEFAULT_BATCH, STARTUP_FRAMES], env)
            steps = json.loads(proc.stdout.strip().splitlines()[-1])
            total = sum(steps.values())
            for step, seconds in steps.items():
                bench.rows.append(Row(f"startup step ({run} run): {step}", hw_str(VIDEO_HW),
                                      DEFAULT_BATCH, seconds, "s", total, "steps' total",
                                      100 * seconds / total, "%"))


# -- part: vs-dino ---------------------------------------------------------------------------

# frames of the 720p clips: a long run, one where start-up dominates, and one where it is small
DINO_CLIPS = (200, 30, 600)
DINO_ROUNDS = 3
# torchvision, which DINO's video_generation.py imports, cannot be installed beside this torch:
# a stand-in with what that script calls (transforms.Compose, ToTensor, Resize of the short side,
# Normalize), each as torchvision computes it on a tensor (Resize: bilinear, antialiased, the
# long side int(size * long / short)). vision_transformer.py and utils.py import no torchvision.
TORCHVISION_STANDIN = {
    "torchvision/__init__.py": "from . import transforms  # noqa: F401\n",
    "torchvision/transforms.py": '''"""torchvision.transforms as video_generation.py uses it."""
import numpy as np
import torch
import torch.nn.functional as F


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class ToTensor:
    def __call__(self, pic):
        return torch.from_numpy(np.asarray(pic)).permute(2, 0, 1).float().div(255)


class Resize:
    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        h, w = img.shape[-2:]
        if len(self.size) == 1:
            short, long = (h, w) if h <= w else (w, h)
            new_short, new_long = self.size[0], int(self.size[0] * long / short)
            size = (new_short, new_long) if h <= w else (new_long, new_short)
        else:
            size = tuple(self.size)
        return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False,
                             antialias=True)[0]


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

    def __call__(self, x):
        return (x - self.mean) / self.std
''',
}


def dino_checkpoint(bench) -> Path:
    """dino_vits16 with random weights in the official DINO release's layout (a torch-pickled
    dict of tensors under timm/DINO names), made once: what both pipelines load."""
    import torch

    from vidattn.models.vit import export_state_dict

    path = bench.cache / f"{PRESET}_random_dino.pth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: torch.from_numpy(np.ascontiguousarray(v))
                 for k, v in export_state_dict(bench.model(PRESET).backbone).items()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    return path


def _timed_process(cmd, env=None) -> float:
    """Wall seconds of one subprocess ``cmd`` (it must succeed)."""
    start = time.perf_counter()
    _checked_run(cmd, env)
    return time.perf_counter() - start


def part_vs_dino(bench):
    """DINO's own ``video_generation.py`` (``--dino-repo``, a checkout of facebookresearch/dino;
    batch 1, torch eager, frames and head-mean heatmaps through JPEG files, no overlay, no audio)
    against ``vidattn video --view mean`` (overlay, the input's audio), each a whole fresh process
    on the same 720p clip with audio, short side 224, the same official-format checkpoint;
    timed in alternation, ``DINO_ROUNDS`` rounds, on a long clip, a short one and a longer one."""
    repo = bench.args.dino_repo
    if repo is None:
        print("vs-dino: skipped (no --dino-repo)", file=sys.stderr)
        return
    repo = Path(repo).resolve()
    if not (repo / "video_generation.py").is_file():
        raise RuntimeError(f"no video_generation.py in {repo}")
    checkpoint = dino_checkpoint(bench)
    rounds = 1 if bench.args.quick else DINO_ROUNDS
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, text in TORCHVISION_STANDIN.items():
            (tmp / "standin" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "standin" / name).write_text(text)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp / "standin"), str(repo)])}
        ours_env = {**os.environ, "VIDATTN_HOME": str(tmp / "home")}

        def ours(clip):
            return [sys.executable, "-m", "vidattn", "video", clip, "-o", tmp / "ours.mp4",
                    "--model", PRESET, "--weights", checkpoint, "--view", "mean", "--size", "224",
                    "-q", "--overwrite"]

        # one untimed run first: the programs it compiles are kept, as a user's second run finds
        _timed_process(ours(bench.clip(VIDEO_HW, min(DINO_CLIPS), audio=True)), ours_env)
        for n_frames in DINO_CLIPS:
            clip = bench.clip(VIDEO_HW, n_frames, audio=True)
            dino = [sys.executable, repo / "video_generation.py", "--arch", "vit_small",
                    "--patch_size", "16", "--pretrained_weights", checkpoint, "--resize", "224",
                    "--input_path", clip, "--output_path", tmp / "dino"]
            times = ([], [])
            for _ in range(rounds):
                shutil.rmtree(tmp / "dino", ignore_errors=True)  # it globs its folders' JPEGs
                times[0].append(_timed_process(dino, env))
                times[1].append(_timed_process(ours(clip), ours_env))
            (t_dino, n_dino), (t_ours, n_ours) = spread(times[0]), spread(times[1])
            size = f"{hw_str(VIDEO_HW)}, {n_frames} frames"
            bench.rows.append(Row("vs-dino: DINO video_generation.py", size, 1, t_dino, "s",
                                  note=f"{n_dino}; fresh process, alternating"))
            bench.rows.append(Row("vs-dino: vidattn video --view mean", size, DEFAULT_BATCH,
                                  t_ours, "s", t_dino, "DINO's time", t_dino / t_ours,
                                  note=f"{n_ours}; > 1: vidattn is faster; programs "
                                       "compiled by an untimed first run kept"))


# -- part: model -----------------------------------------------------------------------------


def part_model(bench):
    for hw, batch in shapes(bench):
        for attention in ("last", "none"):
            rate = bench.ours_rate(PRESET, hw, batch, attention)
            bench.rows.append(Row(f"model attention={attention}", hw_str(hw), batch, rate, "img/s",
                                  note=bench.spreads[("ours", PRESET, hw, batch, attention)]))
    hw = bench.video_geo.input_hw
    rate = bench.ours_rate(PRESET, hw, DEFAULT_BATCH, "rollout")
    key = ("ours", PRESET, hw, DEFAULT_BATCH, "rollout")
    bench.rows.append(Row("model rollout=True", hw_str(hw), DEFAULT_BATCH, rate, "img/s",
                          note=f"{bench.spreads[key]}; the rollout view's mode"))


# -- part: torch -----------------------------------------------------------------------------


def part_torch(bench):
    import torch
    from transformers import ViTModel

    from tests.support.checkpoints import hf_config  # the HF config of a preset

    torch.set_num_threads(os.cpu_count())
    device = bench.args.torch_device
    preset = get_preset(PRESET)
    models = {}
    for impl in ("eager", "sdpa"):
        config = hf_config(preset)
        config._attn_implementation = impl
        models[impl] = ViTModel(config, add_pooling_layer=False).eval().to(device)

    ours = bench.model(PRESET)
    for hw, batch in shapes(bench):
        x = torch.randn(batch, 3, *hw, device=device)
        x_ours = x.permute(0, 2, 3, 1).cpu().numpy()  # the same pixels, channels last
        for attention, impl in (("last", "eager"), ("none", "sdpa")):
            model, want = models[impl], attention == "last"

            def call(model=model, want=want, x=x):
                with torch.inference_mode():
                    out = model(pixel_values=x, output_attentions=want,
                                interpolate_pos_encoding=True)
                    out.last_hidden_state[:, 0].cpu().numpy()
                    if want:
                        out.attentions[-1].cpu().numpy()

            def call_ours(attention=attention):
                ours.run(x_ours, attention=attention)

            (theirs, spread), (mine, my_spread) = paired_seconds(call, call_ours, bench.effort)
            label = f"torch {impl}" + (" +attentions" if want else "")
            bench.rows.append(Row(label, hw_str(hw), batch, batch / theirs, "img/s",
                                  note=f"{spread}; HF ViTModel on {device}"))
            bench.rows.append(Row(f"ours vs torch, attention={attention}", hw_str(hw), batch,
                                  batch / mine, "img/s", batch / theirs, label, theirs / mine,
                                  note=f"{my_spread}; calls alternate with torch's"))


# -- part: families --------------------------------------------------------------------------


def part_families(bench):
    import torch

    from tests.support.clip import hf_vision
    from tests.support.families import hf_dinov2, hf_dinov3

    torch.set_num_threads(os.cpu_count())
    device = bench.args.torch_device
    references = {"dinov2": hf_dinov2, "dinov3": hf_dinov3, "clip": hf_vision,
                  "siglip": hf_vision}
    for name in FAMILY_PRESETS:
        preset = get_preset(name)
        reference = references[preset.family](preset).eval().to(device)
        # CLIP and SigLIP resize their positions only when asked; DINOv2 and DINOv3 always do
        resize = {"interpolate_pos_encoding": True} if preset.family in ("clip", "siglip") else {}
        ours = bench.model(name)
        p = preset.patch_size
        for hw in FAMILY_HW:
            hw = (hw[0] // p * p, hw[1] // p * p)
            x = torch.randn(DEFAULT_BATCH, 3, *hw, device=device)
            x_ours = x.permute(0, 2, 3, 1).cpu().numpy()

            def call(x=x):
                with torch.inference_mode():
                    out = reference(pixel_values=x, output_attentions=True, **resize)
                    out.last_hidden_state[:, 0].cpu().numpy()
                    out.attentions[-1].cpu().numpy()

            def call_ours(x=x_ours):
                ours.run(x, attention="last")

            (theirs, spread), (mine, my_spread) = paired_seconds(call, call_ours, bench.effort)
            bench.rows.append(Row(f"{name}: HF eager +attentions", hw_str(hw), DEFAULT_BATCH,
                                  DEFAULT_BATCH / theirs, "img/s",
                                  note=f"{spread}; {type(reference).__name__} on {device}"))
            bench.rows.append(Row(f"{name}: ours, attention=last", hw_str(hw), DEFAULT_BATCH,
                                  DEFAULT_BATCH / mine, "img/s", DEFAULT_BATCH / theirs,
                                  "HF eager", theirs / mine,
                                  note=f"{my_spread}; calls alternate with HF's"))


# -- part: ceiling ---------------------------------------------------------------------------


def matmul_gflops(m, k, n, effort, use_numpy=False) -> float:
    """Best-of-several float32 ``(m, k) @ (k, n)`` GFLOP/s on the Keras backend (or numpy); each
    timed product is read back (one element) so asynchronous devices are timed to completion."""
    import keras

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), np.float32)
    b = rng.standard_normal((k, n), np.float32)
    if use_numpy:
        def call():
            return float((a @ b)[0, 0])
    else:
        a, b = keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b)

        def call():
            return float(keras.ops.convert_to_numpy(keras.ops.matmul(a, b)[0, 0]))

    for _ in range(2):
        call()
    best = math.inf
    for _ in range(max(3, effort.min_iters)):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return 2.0 * m * k * n / best / 1e9


def part_ceiling(bench):
    import keras

    preset = get_preset(PRESET)
    tokens = preset.tokens_at(bench.video_geo.input_hw)
    fc1 = (DEFAULT_BATCH * tokens, preset.embed_dim, preset.hidden)
    backend = keras.backend.backend()
    ceiling = 0.0
    for label, mkn, use_numpy in (("2048^3", (2048,) * 3, False),
                                  ("x".join(map(str, fc1)), fc1, False),
                                  ("2048^3", (2048,) * 3, True)):
        g = matmul_gflops(*mkn, bench.effort, use_numpy)
        where = "numpy" if use_numpy else backend
        bench.rows.append(Row(f"matmul f32 {where}", label, None, g, "GFLOP/s",
                              note="MLP fc1 shape (B*T, D, 4D)" if mkn == fc1 else ""))
        ceiling = max(ceiling, g)
    bench.ceiling = ceiling  # the fastest float32 matmul this machine ran, whoever ran it


def add_efficiency(bench):
    """One GFLOP/s row per model rate measured, as % of the matmul ceiling."""
    ceiling = bench.ceiling
    if not ceiling:
        return
    for (impl, name, hw, batch, mode), rate in list(bench.rates.items()):
        if impl != "ours" or name != PRESET:
            continue
        achieved = vit_flops(get_preset(name), hw) * rate / 1e9
        bench.rows.append(Row(f"model GFLOP/s {mode}", hw_str(hw), batch,
                              achieved, "GFLOP/s", ceiling, "matmul ceiling",
                              100 * achieved / ceiling, "%",
                              note=f"{vit_flops(get_preset(name), hw) / 1e9:.1f} GFLOP/img"))


# -- part: e2e -------------------------------------------------------------------------------


def make_clip(path: Path, hw, n_frames, fps=FPS, seed=0, audio=False):
    """Write an H.264 clip (yuv420p, CRF 23, x264 veryfast, 2 s GOP) of ``n_frames`` RGB frames
    ``hw`` = (H, W): a texture (colour blobs, fine grain, wavy stripes) panning 2 px/frame, with
    three shapes moving over it (a circle on a sine path, a bouncing square, a spinning triangle).
    With ``audio``, also a stereo 48 kHz AAC 440 Hz tone as long as the video (the audio a real
    clip brings, which ``vidattn video`` copies into its output).
    Written to a temporary file in the same folder, then renamed, so a cached clip is complete."""
    import av
    import cv2

    h, w = hw
    rng = np.random.default_rng(seed)
    big_h, big_w = h, w + 2 * n_frames

    def blobs(scale, channels):  # smooth noise in 0..1 with features about `scale` pixels wide
        noise = rng.random((big_h // scale + 2, big_w // scale + 2, channels)).astype(np.float32)
        return cv2.resize(noise, (big_w, big_h), interpolation=cv2.INTER_CUBIC).reshape(
            big_h, big_w, channels)

    yy, xx = np.mgrid[0:big_h, 0:big_w].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin(xx / 7.0 + 3.0 * np.sin(yy / 41.0))[..., None]
    texture = 255 * (0.45 * blobs(96, 3) + 0.25 * blobs(12, 1) + 0.15 * stripes + 0.1)
    texture = np.clip(texture, 0, 255).astype(np.uint8)

    path.parent.mkdir(parents=True, exist_ok=True)
    s = min(h, w) // 6
    faststart = {"movflags": "+faststart"}
    with atomic_path(path) as tmp, av.open(str(tmp), "w", options=faststart) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        stream.codec_context.options = {"preset": "veryfast", "crf": "23"}
        if audio:
            sound = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
            t = np.arange(n_frames * AUDIO_RATE // fps) / AUDIO_RATE
            wave = np.repeat((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], 2, 0)
            tone = av.AudioFrame.from_ndarray(wave, format="fltp", layout="stereo")
            tone.sample_rate, tone.pts, tone.time_base = AUDIO_RATE, 0, Fraction(1, AUDIO_RATE)
            out.mux(sound.encode(tone))
            out.mux(sound.encode(None))
        for i in range(n_frames):
            u = i / max(1, n_frames - 1)
            frame = np.ascontiguousarray(texture[:, 2 * i : 2 * i + w])
            cx, cy = int(s + u * (w - 2 * s)), int(h / 2 + h / 4 * math.sin(6 * math.pi * u))
            cv2.circle(frame, (cx, cy), s // 2, (230, 40, 40), -1, cv2.LINE_AA)
            bx = int(abs(((u * 3) % 2) - 1) * (w - s))
            cv2.rectangle(frame, (bx, h - s - 10), (bx + s, h - 10), (40, 200, 60), -1)
            angle = 4 * math.pi * u + np.arange(3) * 2 * math.pi / 3
            tri = np.stack([w * 0.7 + s * np.cos(angle), h * 0.3 + s * np.sin(angle)], 1)
            cv2.fillPoly(frame, [tri.astype(np.int32)], (40, 80, 230), cv2.LINE_AA)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")))
        out.mux(stream.encode(None))


def stage_seconds(model, clip, view, n_frames, dst) -> dict:
    """Run the video pipeline's stages one after another (no threads) on ``n_frames`` and time
    each: where a frame's time goes. Keys: decode, preprocess, model, render, encode."""
    from vidattn.preprocess import prepare_frames
    from vidattn.video.pipeline import FrameRenderer, MapLayout, MapMaker
    from vidattn.video.reader import probe, read_frames
    from vidattn.video.writer import VideoWriter

    info = probe(clip)
    opts = VideoOptions(view=view, progress=False)
    geo = video_geometry(info.height, info.width, model.preset.patch_size, opts.size)
    layout = MapLayout.of(model, opts)
    make_maps = MapMaker(model, opts, geo.grid_hw, layout)
    draw = FrameRenderer(model, opts, geo)
    spent = dict.fromkeys(("decode", "preprocess", "model", "render", "encode"), 0.0)
    frames = read_frames(clip, max_frames=n_frames)
    writer = None
    while True:
        t0 = time.perf_counter()
        batch = list(islice(frames, opts.batch_size))
        t1 = time.perf_counter()
        spent["decode"] += t1 - t0
        if not batch:
            break
        inputs = prepare_frames([f.image for f in batch], geo, model.preset.preprocessing)
        t2 = time.perf_counter()
        maps = make_maps(inputs)[0][:, list(layout.view)]
        t3 = time.perf_counter()
        spent["preprocess"] += t2 - t1
        spent["model"] += t3 - t2
        for frame, frame_maps in zip(batch, maps):
            t3 = time.perf_counter()
            image = draw(frame.image, frame_maps, frame.pts_s)
            t4 = time.perf_counter()
            if writer is None:
                writer = VideoWriter(dst, info.fps or 25, image.shape[1], image.shape[0],
                                     audio_from=clip, crf=opts.crf, preset=opts.x264_preset)
            writer.write(image, frame.pts_s)
            spent["render"] += t4 - t3
            spent["encode"] += time.perf_counter() - t4
    t0 = time.perf_counter()
    writer.close()
    spent["encode"] += time.perf_counter() - t0
    return spent


class ThreadCpu:
    """CPU seconds of this process's threads while the block runs, by stage: /proc/self/task is
    sampled every ``interval`` s, each thread's user + system time kept (a thread that ends
    between two samples loses its last interval). Threads are named by Python's name for them
    (``threading``'s native ids) else by their OS name (TensorFlow's ``tf_*`` pools, FFmpeg's
    ``av:h264:*`` decoder threads); the unnamed native threads that were there before the block
    are the backend's compute pools (the model is warm), those started in it x264's.
    ``STAGES`` maps names to the pipeline's stages (``render_video``'s threads)."""

    STAGES = (("decode", ("vidattn-decode", "av:")), ("preprocess", ("vidattn-prepare",)),
              ("model", ("MainThread", "ThreadPoolExecutor", "tf_", "native, before")),
              ("render, encode call", ("vidattn-render", "vidattn-work")),
              ("x264 threads", ("native, started",)))

    def __init__(self, interval=0.1):
        self.interval, self.cpu, self.names = interval, {}, {}
        self.start_cpu = self.cpu  # until the block starts: threads seen are "before" it
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self):
        python = {t.native_id: t.name for t in threading.enumerate()}
        for task in Path("/proc/self/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:  # the thread ended
                continue
            tid = int(task.name)
            comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.split(")")[-1].split()
            self.cpu[tid] = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime
            native = "native, started" if self.cpu is not self.start_cpu else "native, before"
            self.names.setdefault(tid, python.get(tid) or (comm if comm != "python" else native))

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self.start_cpu, self.start = dict(self.cpu), time.perf_counter()
        self.cpu = dict(self.cpu)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.perf_counter() - self.start

    def by_stage(self) -> dict:
        """Stage -> CPU seconds spent in the block (threads of no stage under "other")."""
        out = dict.fromkeys([stage for stage, _ in self.STAGES] + ["other"], 0.0)
        for tid, cpu in self.cpu.items():
            name = self.names[tid]
            stage = next((st for st, prefixes in self.STAGES if name.startswith(prefixes)),
                         "other")
            out[stage] += cpu - self.start_cpu.get(tid, 0.0)
        return out


def part_e2e(bench):
    """Each view's e2e rate over the model-only rate measured just before and just after it, in
    the same process: on a shared machine the load drifts over minutes, and a ratio of figures
    taken minutes apart would measure the drift."""
    from vidattn.video.pipeline import render_video

    n = bench.effort.e2e_frames
    clip = bench.clip(VIDEO_HW, VIDEO_FRAMES)
    model = bench.model(PRESET)
    hw = bench.video_geo.input_hw
    size = f"{hw_str(VIDEO_HW)}->{hw_str(hw)}"
    x = np.random.default_rng(0).standard_normal((DEFAULT_BATCH, *hw, 3), np.float32)
    around = replace(bench.effort, warmup=0, min_iters=3, max_iters=3, budget_s=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        for view in E2E_VIEWS:
            mode = VIEW_MODES.get(view, "last")
            warm = VideoOptions(view=view, progress=False, max_frames=DEFAULT_BATCH)
            render_video(model, clip, Path(tmp) / "warm.mp4", warm)  # compiles, fills caches
            before = median_seconds(lambda: model.run(x, **RUN_MODES[mode]), around)[0]
            started = time.perf_counter()
            with ThreadCpu() as cpu:
                result = render_video(model, clip, Path(tmp) / f"{view}.mp4",
                                      VideoOptions(view=view, progress=False, max_frames=n))
            setup = time.perf_counter() - started - result.seconds  # probe, and pca's fit
            if view == "mean":
                cores = os.cpu_count() or 1
                for stage, seconds in cpu.by_stage().items():
                    bench.rows.append(Row(f"e2e mean, CPU of {stage}", size, DEFAULT_BATCH,
                                          100 * seconds / (cpu.wall * cores), "% of cores",
                                          note=f"{seconds:.1f} CPU s in {cpu.wall:.1f} s on "
                                               f"{cores} cores (threaded render)"))
            after = median_seconds(lambda: model.run(x, **RUN_MODES[mode]), around)[0]
            model_rate = 2 * DEFAULT_BATCH / (before + after)
            bench.rows.append(Row(f"e2e render view={view}", size, DEFAULT_BATCH,
                                  result.frames / result.seconds, "frame/s", model_rate,
                                  f"model {mode}, same minute",
                                  result.frames / result.seconds / model_rate,
                                  note=f"{result.frames} frames; model before/after "
                                       f"{DEFAULT_BATCH / before:.2f}/{DEFAULT_BATCH / after:.2f}"
                                       f"; {setup:.1f} s before the first frame"))
        spent = stage_seconds(model, clip, "mean", n, Path(tmp) / "stages.mp4")
    total = sum(spent.values())
    for stage, seconds in spent.items():
        bench.rows.append(Row(f"e2e mean, serial stage {stage}", size, DEFAULT_BATCH,
                              1000 * seconds / n, "ms/frame", 1000 * total / n, "serial total",
                              100 * seconds / total, "%"))
    piped = next(r for r in bench.rows if r.measure == "e2e render view=mean")
    bench.rows.append(Row("e2e mean, threaded / serial", size, DEFAULT_BATCH,
                          piped.value, "frame/s", n / total, "serial frame/s",
                          piped.value * total / n, note="overlap gain of the pipeline's threads"))


# -- part: memory ----------------------------------------------------------------------------


def _status_mib(field) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Set this process's peak-RSS mark (VmHWM) to its current RSS; False where Linux refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0
        return True
    except OSError:
        return False


def memory_worker(clip, n_frames, preset=PRESET, full_res=False, features=False):
    """In a fresh process: load the model, reset the peak-RSS mark, render ``n_frames`` of
    ``clip`` (mean view; with ``features``, also streaming the patch tokens to a .npy) and
    print, as one JSON line, the RSS after loading, the peak RSS since then (``VmHWM``: unlike
    ``ru_maxrss``, it starts afresh at exec, so the parent's size does not leak into a child's
    figure), and the memory planner's plan for the render."""
    from vidattn.video.pipeline import _plan_batch, render_video
    from vidattn.video.reader import probe

    model = vidattn.load_model(preset, weights="random")
    tmp = tempfile.TemporaryDirectory()
    opts = VideoOptions(view="mean", progress=False, max_frames=n_frames, full_res=full_res,
                        save_features=Path(tmp.name) / "features.npy" if features else None)
    info = probe(clip)
    geo = video_geometry(info.height, info.width, model.preset.patch_size, opts.size, full_res)
    batch = _plan_batch(model, opts, geo).batch_size
    plan = model.plan(geo.input_hw, batch, "cls", extra_per_image=5 * info.height * info.width * 3)
    loaded, start_peak = _status_mib("VmRSS"), _status_mib("VmHWM")
    since = "model load" if reset_peak_rss() else "process start"
    with tmp:
        result = render_video(model, clip, Path(tmp.name) / "out.mp4", opts)
    print(json.dumps({"frames": result.frames, "seconds": result.seconds, "loaded_mib": loaded,
                      "peak_mib": _status_mib("VmHWM"), "peak_since": since,
                      "process_peak_mib": max(start_peak, _status_mib("VmHWM")),
                      "batch": plan.batch, "chunk": plan.chunk, "estimate_mib": plan.bytes / 2**20,
                      "budget_mib": plan.budget / 2**20, "input_hw": list(geo.input_hw)}))


def run_memory_worker(clip, n_frames, preset=PRESET, full_res=False, features=False) -> dict:
    """``memory_worker`` in a fresh process -> its JSON."""
    proc = subprocess.run([sys.executable, __file__, "--memory-worker", str(clip), str(n_frames),
                           preset, str(int(full_res)), str(int(features))], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"memory worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def part_memory(bench):
    """Peak RSS of renders of each of ``Effort.memory_frames`` frames (the shortest and the
    second with ``--save-features`` too), each longer one over the shortest: 1.0 is flat."""
    lengths = bench.effort.memory_frames
    clip = bench.clip(MEMORY_HW, lengths[-1])
    size = hw_str(MEMORY_HW)
    for features, label, runs in ((False, "", lengths), (True, " with --save-features",
                                                         lengths[:2])):
        peaks = {}
        for n in runs:
            got = run_memory_worker(clip, n, features=features)
            peaks[n] = got["peak_mib"]
            bench.rows.append(Row(f"peak RSS, {got['frames']}-frame render{label}", size,
                                  DEFAULT_BATCH, got["peak_mib"], "MiB", got["loaded_mib"],
                                  "RSS after model load", got["peak_mib"] / got["loaded_mib"],
                                  note=f"peak since {got['peak_since']}, fresh process "
                                       f"(whole process: {got['process_peak_mib']:.0f} MiB), "
                                       f"{got['frames'] / got['seconds']:.1f} frame/s"))
        for n in runs[1:]:
            bench.rows.append(Row(f"peak RSS {n} / {runs[0]} frames{label}", size,
                                  DEFAULT_BATCH, peaks[n] / peaks[runs[0]], "ratio",
                                  note="1.0 = flat memory"))


# -- part: fullres --------------------------------------------------------------------------

FULLRES = (("dino_vits16", (1080, 1920)), ("dino_vits8", (720, 1280)))


def part_fullres(bench):
    """``--full-res`` renders that once were killed for memory: dino_vits16 on 1080p frames
    (8161 tokens) and dino_vits8 on 720p (14,401 tokens), each in a fresh process at the default
    batch size: the planner's batch and chunk, its estimate against the measured peak RSS above
    the RSS after loading the model, and frames per second."""
    frames = DEFAULT_BATCH if not bench.args.quick else 2
    for preset, hw in FULLRES:
        clip = bench.clip(hw, frames)
        got = run_memory_worker(clip, frames, preset, full_res=True)
        used = got["peak_mib"] - got["loaded_mib"]
        size = hw_str(got["input_hw"])
        bench.rows.append(Row(f"{preset} --full-res, peak RSS", size, got["batch"],
                              got["peak_mib"], "MiB", got["loaded_mib"], "RSS after model load",
                              note=f"{got['frames'] / got['seconds']:.3f} frame/s; chunk "
                                   f"{got['chunk']}; budget {got['budget_mib']:.0f} MiB"))
        bench.rows.append(Row(f"{preset} --full-res, planner estimate", size, got["batch"],
                              got["estimate_mib"], "MiB", used, "measured peak - loaded",
                              got["estimate_mib"] / used, note="> 1: the planner is cautious"))


# -- part: rollout ---------------------------------------------------------------------------


def part_rollout(bench):
    """dino_vits8 at 480x848 (240x424 when quick): the forward pass alone, the same pass with
    the rollout row computed in the graph (what the rollout view runs), and ``cls_rollout`` on
    its own, compiled, over random head-mean attention of every block."""
    import keras

    from vidattn.models.compile import compiled
    from vidattn.models.vit import cls_rollout

    preset = get_preset(ROLLOUT_PRESET)
    hw = ROLLOUT_QUICK_HW if bench.args.quick else ROLLOUT_HW
    model = bench.model(ROLLOUT_PRESET)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, *hw, 3), np.float32)
    k = bench.effort.rollout_iters
    once = replace(bench.effort, warmup=1, min_iters=k, max_iters=k, budget_s=0.0)
    tokens = preset.tokens_at(hw)
    means = rng.random((preset.depth, 1, tokens, tokens), np.float32)
    means = [keras.ops.convert_to_tensor(m / m.sum(-1, keepdims=True)) for m in means]
    alone = compiled(cls_rollout)

    # alternate the two passes, so that a change of machine load hits both alike
    calls = {False: [], True: []}
    for rollout in calls:
        model.run(x, rollout=rollout)  # compile
    for _ in range(k):
        for rollout, times in calls.items():
            start = time.perf_counter()
            model.run(x, rollout=rollout)
            times.append(time.perf_counter() - start)
    (fwd, fwd_spread), (both, both_spread) = (spread(calls[False]), spread(calls[True]))
    roll, roll_spread = median_seconds(lambda: keras.ops.convert_to_numpy(alone(means)), once)
    size = hw_str(hw)
    bench.rows.append(Row(f"{ROLLOUT_PRESET} forward", size, 1, fwd, "s/frame",
                          note=f"{fwd_spread}; T={tokens}" + "; quick run" * bench.args.quick))
    bench.rows.append(Row(f"{ROLLOUT_PRESET} forward + in-graph rollout", size, 1, both,
                          "s/frame", fwd, "forward", 100 * (both - fwd) / fwd, "%",
                          note=f"{both_spread}; ratio = added time / forward"))
    bench.rows.append(Row("cls_rollout alone (compiled)", size, 1, roll, "s/frame", fwd,
                          "forward", 100 * roll / fwd, "%",
                          note=f"{roll_spread}; {preset.depth} blocks of (1, T, T)"))


# -- part: batch -----------------------------------------------------------------------------


def part_batch(bench):
    import functools
    import shutil

    from vidattn.batch import run_batch
    from vidattn.batch_ray import run_batch_ray
    from vidattn.models.api import load_model
    from vidattn.options import BatchOptions, RayOptions

    n_frames = 16 if bench.args.quick else BATCH_FRAMES
    clip = bench.clip(MEMORY_HW, n_frames)
    load = functools.partial(load_model, PRESET, weights="random")
    opts = BatchOptions(progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "clips"
        src.mkdir()
        for i in range(BATCH_CLIPS):
            shutil.copyfile(clip, src / f"clip{i}.mp4")
        model = load()  # a fresh model: its compile is timed, as each Ray worker's is
        start = time.perf_counter()
        local = run_batch(model, src, Path(tmp) / "local", opts)
        local_s = time.perf_counter() - start
        start = time.perf_counter()
        remote = run_batch_ray(load, src, Path(tmp) / "ray", opts,
                               RayOptions(ray="", workers=BATCH_WORKERS))
        ray_s = time.perf_counter() - start
    if len(local.done) != BATCH_CLIPS or len(remote.done) != BATCH_CLIPS:
        raise RuntimeError(f"batch failures: local {local.failed}, ray {remote.failed}")
    frames = BATCH_CLIPS * n_frames
    local_rate, steady_s = frames / local_s, ray_s - remote.startup_seconds
    size, quick = hw_str(MEMORY_HW), "; quick run" * bench.args.quick
    overheads = [1000 * (trip - worker) for _, trip, worker in remote.round_trips]
    bench.rows += [
        Row(f"batch here: {BATCH_CLIPS} clips of {n_frames} frames", size, DEFAULT_BATCH,
            local_rate, "frames/s",
            note=f"{BATCH_CLIPS / local_s:.2f} files/s, {local_s:.1f} s; model loaded before, its "
                 f"compile timed{quick}"),
        Row(f"batch --ray, {BATCH_WORKERS} workers", size, DEFAULT_BATCH, frames / ray_s,
            "frames/s", local_rate, "here", local_s / ray_s,
            note=f"{BATCH_CLIPS / ray_s:.2f} files/s, {ray_s:.1f} s with the start-up{quick}"),
        Row("batch --ray start-up", "", None, remote.startup_seconds, "s", local_s, "here",
            100 * remote.startup_seconds / local_s, "%",
            note=f"ray.init + {BATCH_WORKERS} workers importing Keras and loading the model; "
                 f"{remote.startup_seconds / BATCH_CLIPS:.2f} s per file of this batch"),
        Row(f"batch --ray once started, {BATCH_WORKERS} workers", size, DEFAULT_BATCH,
            frames / steady_s, "frames/s", local_rate, "here", local_s / steady_s,
            note=f"{BATCH_CLIPS / steady_s:.2f} files/s over {steady_s:.1f} s{quick}"),
        Row("batch --ray overhead per file", "", None, statistics.mean(overheads), "ms",
            note=f"hand-out to record on the driver less the worker's time; max "
                 f"{max(overheads):.0f} ms, n={len(overheads)}"),
    ]


# -- part: viewer ----------------------------------------------------------------------------


def _megabytes(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def part_viewer(bench):
    """The browser viewer: data sizes, the render with the viewer alone, and the page's load
    time in the tests' headless Chromium (tests/support/browser.py)."""
    from tests.support.browser import Browser
    from vidattn.video.pipeline import render_video
    from vidattn.viewer.image import write_image_viewer

    frames = 10 * FPS if bench.args.quick else VIEWER_FRAMES
    clip = bench.clip(VIEWER_HW, frames)
    model = bench.model(PRESET)
    p = model.preset
    size = f"{hw_str(VIEWER_HW)}, {frames / FPS:.0f} s"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "viewer"
        start = time.perf_counter()
        result = render_video(model, clip, None, VideoOptions(viewer=folder, progress=False))
        seconds = time.perf_counter() - start
        geo = video_geometry(*VIEWER_HW, p.patch_size, DEFAULT_SIZE)
        cells = geo.grid_hw[0] * geo.grid_hw[1]
        data = _megabytes((folder / "data").glob("*.js"))
        raw = result.frames * (p.num_heads + 1) * (cells + 4) / 1e6
        every = raw * p.depth  # --viewer-blocks all: every block's heads and mean
        bench.rows += [
            Row("viewer alone: render", size, DEFAULT_BATCH, result.frames / seconds, "frames/s",
                note="--viewer DIR without -o"),
            Row("viewer: map data (chunk scripts)", size, None, data, "MB", raw, "raw MB",
                data / raw, note=f"{result.frames} frames x {p.num_heads + 1} maps of "
                f"{geo.grid_hw[0]}x{geo.grid_hw[1]}; base64; --viewer-blocks all: "
                f"{every:.0f} MB raw"),
            Row("viewer: page's video (H.264)", size, None, _megabytes([folder / "video.mp4"]),
                "MB", note=f"{result.size[0]}x{result.size[1]}, with audio if any"),
            Row("viewer: index.html", size, None, _megabytes([folder / "index.html"]), "MB",
                note="inline CSS, scripts, times of every frame"),
        ]
        browser = Browser()
        try:
            page = browser.open(folder / "index.html")
            page.wait_for("() => vidattnViewer.state.drawn >= 0 && "
                          "document.getElementById('video').readyState >= 2")
            timing = page.evaluate("""() => {
                const nav = performance.getEntriesByType("navigation")[0];
                const mark = performance.getEntriesByName("vidattn-first-overlay")[0];
                return [nav.domContentLoadedEventEnd, nav.loadEventEnd, mark.startTime]; }""")
        finally:
            browser.close()
        for label, ms in zip(("DOMContentLoaded", "load event", "first overlay drawn"), timing):
            bench.rows.append(Row(f"viewer page: {label}", size, None, ms, "ms",
                                  note="headless Chromium, file://, from navigation start"))
        pixels = np.random.default_rng(0).integers(0, 255, (DEFAULT_SIZE, DEFAULT_SIZE, 3),
                                                   np.uint8)
        for name in IMAGE_VIEWER_PRESETS:
            model = vidattn.load_model(name, weights="random")
            start = time.perf_counter()
            html = write_image_viewer(model, pixels, Path(tmp) / name, DEFAULT_SIZE)
            seconds = time.perf_counter() - start
            q = model.preset
            tokens = q.tokens_at((DEFAULT_SIZE, DEFAULT_SIZE))
            patches = tokens - q.num_prefix_tokens
            raw = (q.depth * q.num_heads + 1) * tokens * (patches + 4) / 1e6
            data = _megabytes((html.parent / "viewer").glob("*.js"))
            bench.rows.append(Row(f"image viewer data: {name}", hw_str((DEFAULT_SIZE,) * 2), 1,
                                  data, "MB", raw, "raw MB", data / raw,
                                  note=f"T={tokens}; written in {seconds:.1f} s"))


# -- output ----------------------------------------------------------------------------------


# -- part: track -----------------------------------------------------------------------------

TRACK_SET_HW, TRACK_SET_FRAMES, TRACK_SIZE = (144, 256), 24, 144
TRACK_PHOTOS = ("coffee.jpg", "astronaut.jpg")
TRACK_HW, TRACK_FRAMES = (480, 854), 24  # the fps clip, at the dino protocol's own size
TRACK_MEMORY_HW, TRACK_MEMORY_FRAMES = (360, 640), (30, 300)  # the RSS runs, at TRACK_SIZE
TRACK_POINT = (0.5, 0.5)  # the seed point of the fps and RSS runs, as a fraction of (x, y)


def track_set(folder: Path) -> Path:
    """The generated DAVIS-layout set (``vidattn.demo.tracks``), written once."""
    from vidattn.demo import tracks

    root = folder / f"davis_{TRACK_SET_HW[1]}x{TRACK_SET_HW[0]}_{TRACK_SET_FRAMES}f_v1"
    if not (root / "ImageSets").exists():
        sequences = [tracks.synthetic(name, TRACK_SET_FRAMES, TRACK_SET_HW)
                     for name in tracks.SYNTHETIC]
        sequences += [tracks.pan(ROOT / "samples" / photo, TRACK_SET_FRAMES, TRACK_SET_HW)
                      for photo in TRACK_PHOTOS]
        tracks.write_davis(root, sequences)
    return root


def baseline_scores(davis, method) -> dict:
    """A baseline's masks for every sequence of ``davis`` written and scored as track-eval's."""
    from PIL import Image

    from vidattn.track.davis import read_mask, score_folder, write_mask

    with tempfile.TemporaryDirectory() as tmp:
        for seq in davis.sequences:
            frames = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in davis.frames(seq)])
            labels = method(frames, read_mask(davis.annotations(seq)[0]))
            (Path(tmp) / seq).mkdir()
            for path, ids in zip(davis.annotations(seq), labels):
                write_mask(Path(tmp) / seq / path.name, ids)
        return score_folder(davis, tmp).global_row


def track_worker(clip, n_frames):
    """In a fresh process: track ``n_frames`` of ``clip`` with the demo model at short side
    ``TRACK_SIZE``, the masks saved, and print the RSS after loading and the peak since as JSON."""
    from vidattn.options import TrackOptions
    from vidattn.track.frames import open_source
    from vidattn.track.pipeline import track_video
    from vidattn.track.seeds import Seed

    model = vidattn.load_model("demo")
    h, w = open_source(clip).frame_hw
    loaded = _status_mib("VmRSS")
    since = "model load" if reset_peak_rss() else "process start"
    with tempfile.TemporaryDirectory() as tmp:
        opts = TrackOptions(size=TRACK_SIZE, max_frames=n_frames, progress=False,
                            save_masks=Path(tmp) / "masks")
        result = track_video(model, clip, Path(tmp) / "t.mp4",
                             Seed(points=((w * TRACK_POINT[0], h * TRACK_POINT[1]),)), opts)
    print(json.dumps({"frames": result.frames, "seconds": result.seconds, "loaded_mib": loaded,
                      "peak_mib": _status_mib("VmHWM"), "peak_since": since}))


def part_track(bench):
    from vidattn.options import TrackOptions
    from vidattn.track import baselines
    from vidattn.track.davis import DavisFolder
    from vidattn.track.evaluate import evaluate_davis
    from vidattn.track.pipeline import track_video
    from vidattn.track.seeds import Seed

    root = track_set(bench.cache)
    davis = DavisFolder(root)
    size = f"{hw_str(TRACK_SET_HW)}, {len(davis.sequences)} seq x {TRACK_SET_FRAMES}"
    demo = vidattn.load_model("demo")
    scores = {}
    for protocol in ("dino", "dinov3"):
        opts = TrackOptions(protocol=protocol, size=TRACK_SIZE, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            row, _ = evaluate_davis(demo, root, Path(tmp) / "out", opts=opts)
            seconds = time.perf_counter() - started
        scores[protocol] = row.global_row
        frames = len(davis.sequences) * TRACK_SET_FRAMES
        bench.rows.append(Row(f"track-eval J&F, demo (toy), {protocol} protocol", size, None,
                              row.global_row["J&F-Mean"], "J&F",
                              note=f"J {row.global_row['J-Mean']:.3f}, F "
                                   f"{row.global_row['F-Mean']:.3f}; short side {TRACK_SIZE}; "
                                   f"{frames / seconds:.1f} frame/s"))
    for name, method in (("copy the first mask", lambda f, m: baselines.copy_first(m, len(f))),
                         ("Farneback optical flow", baselines.farneback)):
        got = baseline_scores(davis, method)
        bench.rows.append(Row(f"track-eval J&F, baseline: {name}", size, None, got["J&F-Mean"],
                              "J&F", scores["dino"]["J&F-Mean"], "dino protocol (demo)",
                              scores["dino"]["J&F-Mean"] / max(got["J&F-Mean"], 1e-9),
                              note=f"J {got['J-Mean']:.3f}, F {got['F-Mean']:.3f}"))
    frames = TRACK_FRAMES if not bench.args.quick else 10
    clip = bench.clip(TRACK_HW, TRACK_FRAMES)
    for preset, weights in (("demo", None), ("dino_vits16", "random")):
        model = vidattn.load_model(preset, weights=weights)
        point = (TRACK_HW[1] * TRACK_POINT[0], TRACK_HW[0] * TRACK_POINT[1])
        with tempfile.TemporaryDirectory() as tmp:
            result = track_video(model, clip, Path(tmp) / "t.mp4", Seed(points=(point,)),
                                 TrackOptions(max_frames=frames, progress=False))
        bench.rows.append(Row(f"vidattn track, {preset}{' (random weights)' * bool(weights)}",
                              hw_str(TRACK_HW), DEFAULT_BATCH, result.frames / result.seconds,
                              "frame/s", note=f"dino protocol (480x832 input), {result.frames} "
                                              "frames, video written"))
    short, long = TRACK_MEMORY_FRAMES if not bench.args.quick else (10, 100)
    clip = bench.clip(TRACK_MEMORY_HW, long)
    peaks = {}
    for n in (short, long):
        proc = subprocess.run([sys.executable, __file__, "--track-worker", str(clip), str(n)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"track worker failed:\n{proc.stderr[-2000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        peaks[n] = got["peak_mib"]
        bench.rows.append(Row(f"peak RSS, {got['frames']}-frame track", hw_str(TRACK_MEMORY_HW),
                              DEFAULT_BATCH, got["peak_mib"], "MiB", got["loaded_mib"],
                              "RSS after model load", got["peak_mib"] / got["loaded_mib"],
                              note=f"demo, short side {TRACK_SIZE}, masks saved; peak since "
                                   f"{got['peak_since']}, {got['frames'] / got['seconds']:.1f} "
                                   "frame/s"))
    bench.rows.append(Row(f"peak RSS {long} / {short}-frame track", hw_str(TRACK_MEMORY_HW),
                          DEFAULT_BATCH, peaks[long] / peaks[short], "ratio",
                          note="1.0 = flat memory"))



# -- part: explain ---------------------------------------------------------------------------

EXPLAIN_PRESET = "demo_classifier"
EXPLAIN_SCENES, EXPLAIN_SEEDS = 32, 3  # scenes per seed, seeds (--quick: 8 and 2)
EXPLAIN_METRICS = (("segmentation", "pixel_accuracy", "pixel acc."),
                   ("segmentation", "mIoU", "mIoU"), ("segmentation", "mAP", "mAP"))


def explain_cells(runs: list[dict]) -> dict:
    """One method's ``evaluate`` results over the seeds -> ``{column: (mean, std)}`` in percent:
    the segmentation metrics and the four perturbation AUCs (std with ddof 1)."""
    from vidattn.relevance import faithfulness as fa

    columns = {label: [100 * r["segmentation"][key] for r in runs]
               for test, key, label in EXPLAIN_METRICS}
    for explained in fa.EXPLAINED:
        for direction in fa.DIRECTIONS:
            columns[f"{direction[:3]}. AUC ({explained})"] = [
                r["perturbation"][explained][direction]["auc"] for r in runs]
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
            for k, v in columns.items()}


def explain_markdown(cells: dict, times: dict, forward_ms: float, head: str) -> str:
    """The README's faithfulness table: a row per method, ``mean ± std`` per column, the time
    per image and its ratio to the forward pass."""
    columns = list(next(iter(cells.values())))
    arrows = {"pos": " ↓", "neg": " ↑"}
    lines = [head, "", "| method | " + " | ".join(c + arrows.get(c[:3], "") for c in columns)
             + " | ms / image | × forward |", "|---" * (len(columns) + 3) + "|"]
    for method, c in cells.items():
        ms = times.get(method)
        timing = (f"{ms:.1f} | {ms / forward_ms:.1f}" if ms is not None else "- | -")
        lines.append(f"| `{method}` | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in c.values())
                     + f" | {timing} |")
    lines.append("| forward pass alone | " + " | ".join("" for _ in columns)
                 + f" | {forward_ms:.2f} | 1 |")
    return "\n".join(lines) + "\n"


def part_explain(bench):
    from vidattn.demo.classes import HELD_OUT_SEED, labelled_scenes
    from vidattn.errors import VidattnError
    from vidattn.relevance import faithfulness as fa
    from vidattn.relevance.evaluate import evaluate
    from vidattn.relevance.methods import METHODS

    quick = bench.args.quick
    n, seeds = (8, 2) if quick else (EXPLAIN_SCENES, EXPLAIN_SEEDS)
    try:
        model = vidattn.load_model(EXPLAIN_PRESET, precision=bench.args.precision)
    except VidattnError as err:  # the trained weights not there yet: say so in every row
        print(f"explain: {err}; random weights instead", file=sys.stderr)
        model = vidattn.load_model(EXPLAIN_PRESET, weights="random",
                                   precision=bench.args.precision)
    label = f"{EXPLAIN_PRESET}{' (RANDOM weights)' * model.is_random}"
    methods = [*METHODS, fa.FLOOR, fa.CEILING]
    sets = [labelled_scenes(n, seed=HELD_OUT_SEED + k) for k in range(seeds)]
    accuracy = [float((fa.top_class(model, s.images) == s.labels).mean()) for s in sets]
    runs, failed = {m: [] for m in methods}, {}
    for method in methods:
        started = time.perf_counter()
        try:
            for k, scenes in enumerate(sets):
                batches = ({"pixels": scenes.images[i:i + fa.BATCH],
                            "masks": scenes.masks[i:i + fa.BATCH].astype(np.uint8),
                            "labels": scenes.labels[i:i + fa.BATCH]}
                           for i in range(0, n, fa.BATCH))
                runs[method].append(evaluate(model, batches, [method], seed=k)[method])
        except Exception as err:  # noqa: BLE001 - one broken method must not lose the others
            traceback.print_exc()
            failed[method] = f"{type(err).__name__}: {err}"
        print(f"explain: {method} {time.perf_counter() - started:.0f} s", file=sys.stderr,
              flush=True)
    pixels = sets[0].images[:fa.BATCH]
    forward, forward_note = median_seconds(lambda: fa.top_class(model, pixels), bench.effort)
    forward_ms = 1e3 * forward / len(pixels)
    hw = hw_str(pixels.shape[1:3])
    bench.rows.append(Row(f"forward pass, {label}", hw, len(pixels), forward_ms, "ms/image",
                          note=f"{forward_note}; held-out accuracy "
                               + ", ".join(f"{a:.2f}" for a in accuracy)))
    times, cells = {}, {}
    for method in methods:
        if method in failed:
            bench.rows.append(Row(f"explain {method}", hw, None, float("nan"), "", note="FAILED: "
                                  + failed[method][:200]))
            continue
        cells[method] = explain_cells(runs[method])
        summary = ", ".join(f"{k} {m:.1f}±{s:.1f}" for k, (m, s) in cells[method].items())
        if method in METHODS:
            sec, note = median_seconds(
                functools.partial(fa.relevance_maps, model, pixels, method), bench.effort)
            times[method] = 1e3 * sec / len(pixels)
            bench.rows.append(Row(f"explain {method}, {label}", hw, len(pixels), times[method],
                                  "ms/image", forward_ms, "forward pass",
                                  times[method] / forward_ms, note=f"{note}; {summary}"))
        else:
            bound = "floor" if method == fa.FLOOR else "ceiling"
            bench.rows.append(Row(f"explain {method} ({bound})",
                                  hw, None, cells[method]["mIoU"][0], "% mIoU", note=summary))
    if cells:
        head = (f"`{label}` on {n} held-out synthetic scenes x {seeds} seeds "
                f"(`labelled_scenes(n, seed={HELD_OUT_SEED}+k)`), {hw}; percent, mean ± std over "
                f"the seeds; top-1 accuracy on them " + ", ".join(f"{a:.2f}" for a in accuracy)
                + f"; times on batch {len(pixels)}, {backend_device()[1]}")
        path = Path(bench.args.json).with_name("faithfulness.md")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, explain_markdown(cells, times, forward_ms, head).encode())
        print(f"explain: wrote {path}", file=sys.stderr)


def fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return str(x)


def table(head: dict, rows: list[Row]) -> str:
    v = head["versions"]
    lines = [
        f"vidattn bench  {head['date']}" + ("  QUICK (smoke run, do not quote)" * head["quick"]),
        f"machine: {head['machine']}; load average at start {head['load_average_at_start']:.2f}",
        f"backend: keras {v.get('keras')} on {head['backend']} "
        f"({v.get(head['backend']) or v.get(head['backend'] + '-cpu')}), device: {head['device']}"
        + (f"; reference: torch {v.get('torch')} + transformers {v.get('transformers')} on "
           f"{head['torch_device']} ({os.cpu_count()} threads)") * ("torch" in head["parts"]),
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"model: {PRESET}, random weights, {head['precision']}; video size {DEFAULT_SIZE}, "
        f"batch {DEFAULT_BATCH}; "
        f"ran {head['seconds']:.0f} s, load average at end {head['load_average_at_end']:.2f}",
    ]
    cols = ("measure", "size", "batch", "value", "unit", "reference", "vs", "ratio", "note")
    cells = [
        (r.measure, r.size, fmt(r.batch), fmt(r.value), r.unit, fmt(r.reference), r.ref_label,
         "" if r.ratio is None else (f"{r.ratio:.1f}%" if r.ratio_unit == "%" else
                                     f"{r.ratio:.2f}x"), r.note)
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(cols)]
    numeric = {2, 3, 5, 7}

    def line(values):
        return " | ".join(val.rjust(wd) if i in numeric else val.ljust(wd)
                          for i, (val, wd) in enumerate(zip(values, widths))).rstrip()

    rule = "-+-".join("-" * wd for wd in widths)
    return "\n".join(lines + [rule, line(cols), rule] + [line(c) for c in cells] + [rule])


def write_json(path: Path, head: dict, rows: list[Row], errors: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps({"header": head, "rows": [asdict(r) for r in rows],
                                         "errors": errors}, indent=1).encode())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few iterations")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="the models' precision (vidattn's --precision)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run, from {','.join(PARTS)}")
    parser.add_argument("--json", default="out/bench.json", help="where to write the table")
    parser.add_argument("--cache", default="out/bench-cache", help="generated clips")
    parser.add_argument("--dino-repo", metavar="PATH",
                        help="a checkout of facebookresearch/dino: the vs-dino part runs its "
                        "video_generation.py (skipped without it)")
    parser.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="the reference's device; auto: cuda when the backend runs on a GPU")
    parser.add_argument("--memory-worker", nargs=5,
                        metavar=("CLIP", "FRAMES", "PRESET", "FULL", "FEATURES"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--track-worker", nargs=2, metavar=("CLIP", "FRAMES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()  # as the CLI does, so e2e and memory measure what users get
    if args.track_worker:
        track_worker(args.track_worker[0], int(args.track_worker[1]))
        return 0
    if args.memory_worker:
        clip, frames, preset, full, features = args.memory_worker
        memory_worker(clip, int(frames), preset, bool(int(full)), bool(int(features)))
        return 0
    if {"torch", "families"} & set(args.parts) and args.torch_device == "auto":
        try:
            import torch
        except ImportError:
            args.torch_device = "cpu"  # the torch part will report the missing package
        else:
            gpu = backend_device()[0] == "gpu" and torch.cuda.is_available()
            args.torch_device = "cuda" if gpu else "cpu"
    started = time.perf_counter()
    bench = Bench(args)
    head = header(args)
    errors = {}
    runners = {"startup": part_startup, "vs-dino": part_vs_dino, "model": part_model,
               "torch": part_torch,
               "families": part_families, "ceiling": part_ceiling,
               "e2e": part_e2e, "memory": part_memory, "fullres": part_fullres,
               "rollout": part_rollout, "batch": part_batch, "viewer": part_viewer,
               "track": part_track, "explain": part_explain}
    for part in PARTS:
        if part not in args.parts:
            continue
        start = time.perf_counter()
        try:
            runners[part](bench)
        except Exception as err:  # noqa: BLE001 - one failed part must not lose the others
            traceback.print_exc()
            errors[part] = f"{type(err).__name__}: {err}"
        print(f"[{part}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    add_efficiency(bench)
    head["seconds"] = round(time.perf_counter() - started, 1)
    head["load_average_at_end"] = os.getloadavg()[0]
    print(table(head, bench.rows))
    for part, err in errors.items():
        print(f"FAILED {part}: {err}")
    write_json(Path(args.json), head, bench.rows, errors)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
