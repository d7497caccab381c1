"""``vidattn batch --ray``: the same batch with its files spread over the workers of a Ray cluster.

The driver (this process) plans the run exactly as the local batch does and keeps its books
(``batch.BatchRun``: the scan, the options fingerprints, the files not up to date, then one
manifest line per finished file), so the manifest, its statuses and the resume rules are the
local ones, and only the driver writes ``manifest.jsonl``. Each worker is a Ray actor that loads
the model once (``Worker.start``), then takes one file per call and runs the local batch's own
``_attempt`` on it, writing the output atomically straight into OUTDIR; the file's manifest
record streams back to the driver as soon as it is done, in whatever order files finish.

Why actors driven by ``ray.wait`` (``_Workers``) and not ``ray.util.ActorPool`` or Ray Data's
``map_batches``: ActorPool puts an actor that died back on its idle list (it has no call to
remove one) and matches results to files only by their order; Ray Data retries failed blocks on
its own terms, fails the whole dataset when they run out, and brings pyarrow and pandas along.
The batch needs one file per call, a file tried again only when its worker died (never when the
file itself failed), a bounded number of times, then recorded as failed while the rest goes on:
so the driver keeps a small table of its actors and of the file each one holds.

Shared storage: workers read INDIR and write OUTDIR at the driver's paths (made absolute). The
driver writes a marker file into OUTDIR, and each worker checks that it sees the marker and INDIR
before it loads the model; when one does not, the run stops with one line saying so.

Faults:

- a worker killed in the middle of a file (``ray.kill``, the OOM killer, a lost node) cleans
  nothing up: the driver removes the temporary files left beside that file's output
  (``io.remove_partials``), starts a worker in the dead one's place and hands the file to the
  next free worker; after ``RayOptions.attempts`` tries it is recorded as failed with the reason;
- a file that fails for its own reasons (corrupt, unreadable) comes back from ``_attempt`` as a
  ``failed`` record like any result: recorded once, never retried;
- Ctrl-C or SIGTERM on the driver kills the workers (a Ray actor cannot be interrupted in the
  middle of a call), removes their temporary files, records the files that had finished and
  marks those in flight ``interrupted``; the manifest stays whole and a second run does the rest.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vidattn import probes as pr
from vidattn.batch import (
    BatchResult,
    BatchRun,
    Item,
    _attempt,
    _finish_images,
    check_folders,
    make_output_folder,
    scan,
    work_options,
)
from vidattn.errors import VidattnError, one_line
from vidattn.interrupts import Interrupted, Interrupts
from vidattn.io import remove_partials, write_bytes_atomic
from vidattn.models.api import RANDOM
from vidattn.models.presets import Preset
from vidattn.options import BatchOptions, RayOptions
from vidattn.runtime import keep_freed_memory
from vidattn.viewer.gallery import PROBES_REPORT, viewer_folder

try:
    import ray
    from ray.exceptions import RayError, RayTaskError
except ImportError:  # the optional extra: vidattn[ray]
    ray = None

__all__ = ["ModelInfo", "RayBatchResult", "Worker", "run_batch_ray"]

POLL_S = 0.5  # longest wait for a result between two looks at the signals
KILL_WAIT_S = 10.0  # longest wait for killed workers to be gone before their files are cleaned
MARKER_WAIT_S = 10.0  # how long a worker looks for the driver's marker file in OUTDIR
# Several workers may share a GPU (--gpus-per-worker 0.5): TensorFlow and JAX would each take all
# of its memory on first use, so that the second worker fails; these make them take what they use.
SHARED_GPU_ENV = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs of the workers' model, without loading it: the preset and weights
    label (the fingerprints and manifest lines take them from here, as from a ``Model``), and the
    node that reported it."""

    preset: Preset
    weights_label: str
    node: str

    @property
    def is_random(self) -> bool:
        return self.weights_label.startswith(RANDOM)


class Worker:
    """The body of one Ray actor: ``start`` checks the shared folders and loads the model once;
    then each ``attempt`` renders or probes one file straight into OUTDIR and returns its
    manifest record; ``finish_images`` writes the model figures and the index.

    ``load``: a picklable function of no arguments returning the model; ``marker``: the path and
    content of the file the driver wrote into OUTDIR; ``opts``: ``batch.work_options``.
    """

    def __init__(self, load, indir: Path, outdir: Path, marker: tuple[Path, str],
                 opts: BatchOptions):
        self.load, self.indir, self.outdir, self.marker = load, indir, outdir, marker
        self.opts = opts
        self.model = None
        for name, value in SHARED_GPU_ENV.items():
            os.environ.setdefault(name, value)
        keep_freed_memory()  # as the command line does for a local run

    def start(self) -> ModelInfo:
        node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
        if not self._sees_marker():
            raise VidattnError(f"not the same folder for the Ray worker on {node}: every node must "
                               "see OUTDIR at this path (a shared file system)", self.outdir)
        if not self.indir.is_dir():
            raise VidattnError(f"not found by the Ray worker on {node}: every node must see "
                               "INDIR at this path (a shared file system)", self.indir)
        self.model = self.load()
        return ModelInfo(self.model.preset, self.model.weights_label, node)

    def _sees_marker(self) -> bool:
        """Whether the driver's marker is in OUTDIR here, looking again for ``MARKER_WAIT_S``: a
        network file system may serve a cached listing of OUTDIR for a while."""
        path, token = self.marker
        deadline = time.monotonic() + MARKER_WAIT_S
        while True:
            try:
                if path.read_text(encoding="utf-8") == token:
                    return True
            except OSError:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)

    def attempt(self, item: Item, fp: str, claimed: bool) -> dict:
        return _attempt(self.model, item, self.outdir, self.opts, fp, claimed)

    def finish_images(self, images, latest: dict, fp: str, refresh: bool):
        _finish_images(self.model, self.outdir, images, latest, fp, self.opts, refresh)


@dataclass
class RayBatchResult(BatchResult):
    """``BatchResult`` and how the Ray run went: ``workers`` asked for; ``startup_seconds``: from
    connecting to Ray until the first worker had its model; ``round_trips``: one
    ``(rel, driver_s, worker_s)`` per file result, seconds from handing it out to its record on
    the driver and seconds the worker spent on it (the difference is Ray's overhead)."""

    workers: int = 0
    startup_seconds: float = 0.0
    round_trips: list[tuple[str, float, float]] = field(default_factory=list)


class _Workers:
    """The run's actors and what each is doing: starting (its ``start`` call in flight), idle, or
    busy with one file. A worker that dies is replaced; its file comes back as an event. Workers
    are named ``vidattn-batch-<run>-<k>`` (as Ray's dashboard and ``ray list actors`` show them)."""

    def __init__(self, args, ray_opts: RayOptions, count: int, name: str):
        self.args, self.count, self.name = args, count, name
        self.actor = ray.remote(Worker)
        self.resources = {"num_cpus": ray_opts.cpus_per_worker,
                          "num_gpus": ray_opts.gpus_per_worker}
        self.starting: dict = {}  # start() ref -> actor
        self.idle: list = []
        self.busy: dict = {}  # attempt() ref -> (actor, item, handed out at)
        self.everyone: list = []  # every actor started, to kill at the end
        self.info: ModelInfo | None = None
        self.deaths_at_start = 0
        self.dirty: set[Path] = set()  # outputs whose writer was killed: cleaned again at the end
        for _ in range(count):
            self._add()

    def _add(self):
        """Start one more worker, named ``NAME-k`` (k = 1, 2... as they are started)."""
        actor = self.actor.options(
            name=f"{self.name}-{len(self.everyone) + 1}", max_restarts=0, max_task_retries=0,
            **self.resources).remote(*self.args)
        self.everyone.append(actor)
        self.starting[actor.start.remote()] = actor

    def hand(self, item: Item, fp: str, claimed: bool):
        actor = self.idle.pop()
        self.busy[actor.attempt.remote(item, fp, claimed)] = (actor, item, time.perf_counter())

    def wait(self) -> list:
        """Wait up to ``POLL_S`` for calls to return -> events ``(item, outcome, handed out at)``,
        outcome the file's record or the RayError that ended its worker. Workers done starting
        join the idle ones; the first one's ``ModelInfo`` becomes ``info``."""
        refs = [*self.busy, *self.starting]
        if not refs:
            raise VidattnError("no Ray worker is left to do the files")
        ready, rest = ray.wait(refs, num_returns=1, timeout=POLL_S)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        events = []
        for ref in ready:
            if ref in self.starting:
                self._started(ref)
                continue
            actor, item, handed = self.busy.pop(ref)
            try:
                outcome = ray.get(ref)
                self.idle.append(actor)
            except RayTaskError as err:  # our code raised: a bug (--debug) or a run-wide error
                raise _cause(err) from None
            except RayError as err:  # the worker died under the file
                outcome = err
                self._clean(item)
                self._add()
            events.append((item, outcome, handed))
        return events

    def _started(self, ref):
        actor = self.starting.pop(ref)
        try:
            info = ray.get(ref)
        except RayTaskError as err:
            raise _cause(err) from None
        except RayError as err:
            self.deaths_at_start += 1
            if self.deaths_at_start > self.count:
                raise VidattnError("Ray workers keep dying while they load the model (last: "
                                   f"{_death(err)})") from None
            self._add()
            return
        if self.info is None:
            self.info = info
        elif (info.preset, info.weights_label) != (self.info.preset, self.info.weights_label):
            # the whole preset: each worker reads a --model folder's config itself
            raise VidattnError(
                f"the Ray workers loaded different models: {self.info.weights_label} on "
                f"{self.info.node}, {info.weights_label} on {info.node}; pass --weights PATH "
                "(or --model PATH) with a file every node sees")
        self.idle.append(actor)

    def _clean(self, item: Item):
        """Remove what a killed writer left of ``item``'s output (and of its viewer); again at
        the end of the run."""
        outdir, opts = self.args[2], self.args[4]
        paths = [outdir / item.out]
        if opts.viewer and item.kind == "video":
            paths.append(viewer_folder(outdir, item.out))
        for path in paths:
            remove_partials(path)
            self.dirty.add(path)

    def call(self, method: str, *args):
        """``method(*args)`` on an idle worker, its result."""
        while not self.idle:
            self.wait()
        try:
            return ray.get(getattr(self.idle[-1], method).remote(*args))
        except RayTaskError as err:
            raise _cause(err) from None
        except RayError as err:
            raise VidattnError(f"the Ray worker doing {method} died: {_death(err)}") from None

    def stop(self) -> list:
        """Kill every worker, wait (a while) until they are gone, and remove the temporary files
        of the files they held -> ``(item, record, handed out at)`` of those whose record had come
        back by then."""
        for actor in self.everyone:
            ray.kill(actor)
        finished = []
        if self.busy:
            ready, _ = ray.wait(list(self.busy), num_returns=len(self.busy), timeout=KILL_WAIT_S)
            for ref in ready:
                actor, item, handed = self.busy.pop(ref)
                try:
                    finished.append((item, ray.get(ref), handed))
                except RayError:
                    self._clean(item)
        for _, item, _ in self.busy.values():
            self._clean(item)
        self.busy.clear()
        self.everyone.clear()
        return finished

    def sweep(self):
        """Remove, once every worker is gone, what killed writers may have left after
        ``_clean``."""
        for path in self.dirty:
            remove_partials(path)


def _cause(err: RayTaskError) -> BaseException:
    """What to raise for an exception raised inside a worker: a VidattnError as itself (one line
    on the command line), anything else as Ray gives it (with the worker's traceback)."""
    return err.cause if isinstance(err.cause, VidattnError) else err


def _death(err: RayError) -> str:
    """Why a worker died, in one sentence from Ray's message of several lines and paragraphs (Ray
    says "The actor is dead because ..." for actors)."""
    lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
    line = next((line for line in lines if line.startswith("The actor is dead because")),
                next((line for line in lines if "memory" in line.lower()), lines[0] if lines else ""))
    return f"{type(err).__name__}: {line.split('. ')[0].rstrip('.')}".rstrip(": ")


@contextlib.contextmanager
def _keeping_signal(signals: Interrupts):
    """Re-raise an interruption as :class:`Interrupted` with the signal ``signals`` handled: Ray's
    calls turn the exception our handler raised inside them into a plain KeyboardInterrupt."""
    try:
        yield
    except KeyboardInterrupt as err:
        raise Interrupted(signals.signum_of(err)) from None


def _connect(address: str) -> bool:
    """Join the cluster at ``address`` ("" -> ``ray.init()``'s own rule: RAY_ADDRESS, else a new
    local instance). Returns whether this call connected (and so must disconnect); a process
    already connected to Ray keeps its connection."""
    if ray.is_initialized():
        return False
    sigterm = signal.getsignal(signal.SIGTERM)
    # A new local instance says, every time, that it enabled token authentication: nothing to do.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    try:
        ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        where = address or os.environ.get("RAY_ADDRESS") or "a new local instance"
        raise VidattnError(f"cannot start or join Ray ({where}): {first}") from None
    finally:
        if sigterm is not None:  # ray.init's handler exits on the spot; ours cleans up first
            signal.signal(signal.SIGTERM, sigterm)
    return True


def _worker_count(opts: RayOptions, files: int) -> int:
    """``opts.workers``, or as many as the cluster's CPUs (and GPUs) hold; at most one per file
    (at least one: the workers also tell the driver which weights they loaded)."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    fits = cpus / opts.cpus_per_worker
    if opts.gpus_per_worker:
        fits = min(fits, gpus / opts.gpus_per_worker)
    if fits < 1:
        raise VidattnError(
            f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs: not enough for one worker of "
            f"--cpus-per-worker {opts.cpus_per_worker:g} --gpus-per-worker "
            f"{opts.gpus_per_worker:g}")
    return max(1, min(opts.workers or int(fits + 1e-9), files))


def _dispatch(run: BatchRun, workers: _Workers, attempts: int, frames, trips: list):
    """Hand ``run.todo`` to the workers and settle each result as it comes; a file whose worker
    died goes back to the front of the queue until it has had ``attempts`` tries."""
    queue, tries = collections.deque(run.todo), collections.Counter()

    def settle(item, record, handed):
        run.settle(item, record)
        frames.update(record.get("frames", 0))
        trips.append((item.rel, time.perf_counter() - handed, record["seconds"]))

    try:
        while queue or workers.busy:
            while queue and workers.idle:
                item = queue.popleft()
                run.begin(item)
                workers.hand(item, run.fps[item.kind], run.claimed(item))
            for item, outcome, handed in workers.wait():
                if isinstance(outcome, dict):
                    settle(item, outcome, handed)
                    continue
                tries[item] += 1
                if tries[item] < attempts:
                    if run.opts.progress:
                        tqdm.write(one_line(f"vidattn: note: {item.rel}: its Ray worker died "
                                            f"({_death(outcome)}); trying again"), file=sys.stderr)
                    run.drop(item)
                    queue.appendleft(item)
                    continue
                run.settle(item, run.record(
                    item, size=None, mtime_ns=None, status="failed",
                    error=f"its Ray worker died {attempts} times while working on it (last: "
                          f"{_death(outcome)})",
                    seconds=round(time.perf_counter() - handed, 3)))
    except KeyboardInterrupt:
        with run.signals.deferred():
            for item, record, handed in workers.stop():
                settle(item, record, handed)
        raise


def run_batch_ray(load, indir, outdir, opts: BatchOptions | None = None,
                  ray_opts: RayOptions | None = None, on_model=None) -> RayBatchResult:
    """``batch.run_batch`` on Ray: the same files, outputs, manifest and result, rendered by Ray
    workers that each call ``load()`` (a picklable function returning the model) once.

    ``ray_opts``: where (``ray``: "" for ``ray.init()``'s default, "auto", an address; a process
    already connected to Ray uses that connection) and how many workers of what size.
    ``on_model(info)`` is called with the workers' ``ModelInfo`` once the first one is ready.
    Raises VidattnError for the run as a whole: bad folders, Ray not installed or not reachable,
    folders a worker does not see, a model that does not load.
    """
    if ray is None:
        raise VidattnError("--ray needs Ray: pip install 'vidattn[ray]'")
    opts, ray_opts = opts or BatchOptions(), ray_opts or RayOptions(ray="")
    indir, outdir = (path.absolute() for path in check_folders(indir, outdir))
    found = scan(indir, outdir, opts.format)
    make_output_folder(outdir)
    started = time.perf_counter()
    connected = _connect(ray_opts.ray)
    token = secrets.token_hex(8)
    marker = outdir / f".vidattn-ray-{token}"
    workers = None
    try:
        with Interrupts() as signals, _keeping_signal(signals):
            write_bytes_atomic(marker, token.encode())
            count = _worker_count(ray_opts, len(found.items))
            if opts.progress:
                have, nodes = ray.cluster_resources(), sum(n["Alive"] for n in ray.nodes())
                tqdm.write(f"vidattn: ray: {count} workers ({ray_opts.cpus_per_worker:g} CPU, "
                           f"{ray_opts.gpus_per_worker:g} GPU each) on {nodes} node(s) with "
                           f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs",
                           file=sys.stderr)
            workers = _Workers((load, indir, outdir, (marker, token), work_options(opts)),
                               ray_opts, count, f"vidattn-batch-{token}")
            while workers.info is None:
                workers.wait()
            startup = time.perf_counter() - started
            if on_model is not None:
                on_model(workers.info)
            run = BatchRun(workers.info, indir, outdir, opts, found)
            trips = []
            with run, tqdm(unit="frame", desc="frames", disable=not opts.progress,
                           dynamic_ncols=True, leave=False) as frames:  # under the files' bar
                _dispatch(run, workers, ray_opts.attempts, frames, trips)
            if run.images and not run.result.interrupted:
                workers.dirty.update((outdir / PROBES_REPORT, outdir / pr.MODEL_FOLDER))
                latest = {item.rel: run.manifest.latest.get(item.rel) for item in run.images}
                workers.call("finish_images", run.images, latest, run.fps["image"], run.probed)
            run.show(finished=True)
        result = RayBatchResult(**{f.name: getattr(run.result, f.name)
                                   for f in dataclasses.fields(BatchResult)},
                                workers=count, startup_seconds=startup, round_trips=trips)
        walk = {item.rel: i for i, item in enumerate(found.items)}  # as the local run lists them
        result.done.sort(key=walk.get)
        result.failed.sort(key=lambda failure: walk.get(failure[0], -1))  # unreadable folders first
        return result
    finally:
        if workers is not None:
            workers.stop()
        if connected:
            ray.shutdown()
        if workers is not None:
            workers.sweep()
        marker.unlink(missing_ok=True)
