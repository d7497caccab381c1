"""``vidattn batch``: every video and image of a folder tree, mirrored into an output folder.

Layout (``fmt`` = mp4 or gif)::

    INDIR/a/b/clip.mov    ->  OUTDIR/a/b/clip.mp4      the attention video (``vidattn video``)
    INDIR/a/photo.jpg     ->  OUTDIR/a/photo/          figures + probes.json (``vidattn image``)
    OUTDIR/manifest.jsonl     one JSON line per attempt, appended as the run goes
    OUTDIR/index.html         the gallery: a card per input (``viewer.gallery``), rewritten as
                              the run goes
    OUTDIR/probes.html        the images' figures and numbers on one page
    OUTDIR/_model/            the per-model probe figures
    OUTDIR/_thumbs/, _viewer/ the gallery's thumbnails; the videos' viewers (``--viewer``)

Names that would clash in one output folder (``clip.mov`` and ``clip.mp4``, ``photo.jpg`` and
``photo.png``, a folder ``photo/`` beside ``photo.jpg``, the reserved names above) get ``-2``,
``-3``...: folders keep their names, then a file whose name already is its output name, then the
others in name order. Hidden files and folders, OUTDIR itself, links to folders and links leading
out of INDIR are passed over; files that are neither video nor image are ignored.

Resume: a file is up to date, and skipped, when its latest manifest line says ok with the same size,
modification time (ns), output name and options fingerprint (a hash of the model, its weights and
the options that change that kind of output), and the output is still there. Everything else is
redone. Outputs are only ever replaced where the manifest shows this batch wrote them, unless
``overwrite``: files that were in OUTDIR before are never clobbered by surprise.

Ctrl-C or SIGTERM stop the run within the current file: its partial output is discarded by the
writers, it gets an ``interrupted`` line, and the manifest is never torn (signals wait while a line
is written; a torn last line from a harder kill is ignored on reading).

``BatchRun`` holds the plan and the bookkeeping; ``run_batch`` renders its files one by one here,
``vidattn.batch_ray`` hands them to Ray workers that call the same ``_attempt``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePath

import numpy as np
from tqdm import tqdm

from vidattn import probes as pr
from vidattn.errors import VidattnError, one_line
from vidattn.interrupts import Interrupts, exit_status
from vidattn.io import unique_names
from vidattn.models.presets import PRESETS
from vidattn.options import BatchOptions
from vidattn.report import write_index
from vidattn.video.pipeline import check_explain, render_video
from vidattn.viewer import gallery
from vidattn.viewer.image import write_image_viewer

VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .wmv .flv .mpg .mpeg .ts .mts .m2ts .3gp .ogv .y4m .gif".split()
)
IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .tif .tiff .webp .ppm .pgm .pbm".split()
)
MANIFEST = "manifest.jsonl"
INDEX = gallery.GALLERY
RESERVED = (MANIFEST, INDEX, gallery.PROBES_REPORT, pr.MODEL_FOLDER, gallery.VIEWER_FOLDER,
            gallery.THUMBS_FOLDER)  # OUTDIR's own top-level entries
GALLERY_EVERY_S = 2.0  # the gallery is rewritten after a file at most this often (and at the end)
KINDS = ("video", "image")
EXPLAIN_FIELDS = ("explain_method", "explain_class", "explain_head", "explain_reference")


def classify(name) -> str | None:
    """``"video"`` or ``"image"`` by the file name's extension (any case), else None."""
    suffix = PurePath(name).suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES else "image" if suffix in IMAGE_SUFFIXES else None


@dataclass(frozen=True)
class Item:
    """One input file. ``src``: its path (INDIR joined with ``rel``); ``rel``: its path relative
    to INDIR; ``out``: its output's path relative to OUTDIR (both with ``/``); ``kind``: video or
    image."""

    src: Path
    rel: str
    out: str
    kind: str


@dataclass
class Scan:
    """What ``scan`` found: the files to render or probe in walk order, the entries passed over as
    ``(rel, reason)`` (reason None for a file that is simply not a video or image), and the
    folders that could not be read as ``(rel, reason)``."""

    items: list[Item] = field(default_factory=list)
    ignored: list[tuple[str, str | None]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def output_names(entries, fmt: str = "mp4", reserved=()) -> list[str]:
    """Output names of one folder's ``entries`` ``[(name, kind)]``, kind dir|video|image, in order.

    A folder keeps its name, a video becomes ``<stem>.<fmt>``, an image ``<stem>`` (a folder).
    Clashes (``io.unique_names``: case-insensitive, ``-2``, ``-3``... before the extension) are
    settled in this order: folders first, then files whose name already is their output name,
    then the rest in name order. ``reserved`` names are never given.
    """
    wanted = []
    for name, kind in entries:
        stem = PurePath(name).stem
        wanted.append((name, "") if kind == "dir" else (stem, "") if kind == "image"
                      else (stem, f".{fmt}"))
    order = sorted(range(len(entries)), key=lambda i: (
        entries[i][1] != "dir", "".join(wanted[i]) != entries[i][0], entries[i][0]))
    return unique_names(wanted, reserved, order)


def _entry_kind(entry, root_real: Path, out_real: Path):
    """-> ``(kind, reason)``: kind dir|video|image, "skip" (hidden from the summary: OUTDIR), or
    None with the reason it is passed over (None: not a video or image)."""
    path = Path(entry.path)
    try:
        if entry.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(root_real):
                return None, f"link to {target}, outside the input folder"
            if target.is_relative_to(out_real):
                return None, "link into the output folder"
            if target.is_dir():
                return None, "link to a folder (links to folders are not followed)"
        if entry.is_dir():
            return ("skip", None) if path.resolve() == out_real else ("dir", None)
        if entry.is_file():
            return classify(entry.name), None
    except OSError as err:
        return None, f"cannot read: {err.strerror}"
    return None, "not a regular file (or a broken link)"


def scan(indir, outdir, fmt: str = "mp4") -> Scan:
    """Walk ``indir`` in sorted order (depth first, names compared as strings) and plan one
    output per video and image under ``outdir`` (see the module docstring for the rules)."""
    root, found = Path(indir), Scan()
    root_real, out_real = root.resolve(), Path(outdir).resolve()

    def walk(folder: Path, rel: str, out_rel: str):
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")),
                                 key=lambda e: e.name)
        except OSError as err:
            found.unreadable.append((rel or ".", f"cannot read folder: {err.strerror}"))
            return
        kept = []
        for entry in entries:
            kind, reason = _entry_kind(entry, root_real, out_real)
            if kind in ("dir", "video", "image"):
                kept.append((entry, kind))
            elif kind is None:
                found.ignored.append((rel + entry.name, reason))
        names = output_names([(e.name, k) for e, k in kept], fmt, () if rel else RESERVED)
        for (entry, kind), name in zip(kept, names):
            if kind == "dir":
                walk(Path(entry.path), f"{rel}{entry.name}/", f"{out_rel}{name}/")
            else:
                found.items.append(Item(root / (rel + entry.name), rel + entry.name,
                                        out_rel + name, kind))

    walk(root, "", "")
    return found


def check_folders(indir, outdir) -> tuple[Path, Path]:
    """Raise VidattnError unless ``indir`` is a folder and ``outdir`` is neither it nor around it
    (outputs would land on the inputs); OUTDIR inside INDIR is fine (the walk passes over it)."""
    indir, outdir = Path(indir), Path(outdir)
    if not indir.is_dir():
        raise VidattnError("input folder not found", indir)
    if outdir.exists() and not outdir.is_dir():
        raise VidattnError("output path exists and is not a folder", outdir)
    if indir.resolve().is_relative_to(outdir.resolve()):
        raise VidattnError(f"output folder must not be the input folder {indir} or contain it",
                           outdir)
    return indir, outdir


def make_output_folder(outdir: Path):
    """Create OUTDIR (and its parents) if missing; VidattnError when it cannot be."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VidattnError(f"cannot create the output folder: {err.strerror}", outdir) from None


def work_options(opts: BatchOptions) -> BatchOptions:
    """The options each file is rendered with: ``opts`` without a bar or saved maps of its own
    (the batch shows one bar over the files)."""
    return dataclasses.replace(
        opts, video=dataclasses.replace(opts.video, progress=False, save_maps=None))


class Manifest:
    """``OUTDIR/manifest.jsonl``: one JSON object per line, one line per attempt, each flushed and
    fsync'ed as soon as its file is finished.

    ``latest``: the last line of each input (``rel`` -> record); ``outputs``: every output name a
    line ever claimed (the outputs this batch may replace). Lines that do not parse, such as a last
    line torn by a killed run, are skipped; the next line starts on a fresh line.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.latest: dict[str, dict] = {}
        self.outputs: set[str] = set()
        self._file = None
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        except OSError as err:
            raise VidattnError(f"cannot read the manifest: {err.strerror}", self.path) from None
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("input"), str):
                self._remember(record)
        self._torn = bool(text) and not text.endswith("\n")

    def _remember(self, record):
        self.latest[record["input"]] = record
        if isinstance(record.get("output"), str):
            self.outputs.add(record["output"])

    def append(self, record: dict):
        """Write ``record`` as one line and make it durable before returning."""
        try:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")
                if self._torn:
                    self._file.write("\n")
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            raise VidattnError(f"cannot write the manifest: {err.strerror}", self.path) from None
        self._remember(record)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class BatchResult:
    """What a run did. ``done``, ``up_to_date``: inputs (``rel``); ``failed``: ``(rel, reason)``,
    this run's failures and unreadable folders; ``ignored``: ``(rel, reason)`` as ``Scan``;
    ``finished``: files this run finished (ok or failed); ``interrupted``: stopped by Ctrl-C or
    SIGTERM (``signum``) with ``left`` files not finished (the one it stopped in included)."""

    done: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str | None]] = field(default_factory=list)
    finished: int = 0
    interrupted: bool = False
    signum: int = signal.SIGINT
    left: int = 0

    @property
    def exit_code(self) -> int:
        """128 + the signal if interrupted (130 Ctrl-C, 143 SIGTERM), 1 if anything failed,
        else 0."""
        return exit_status(self.signum) if self.interrupted else 1 if self.failed else 0


def fingerprint(model, kind: str, opts: BatchOptions) -> str:
    """16 hex digits naming everything that shapes a ``kind`` output: the model, its weights and
    that kind's options. A changed fingerprint means the output is redone."""
    if kind == "video":
        video = dataclasses.asdict(opts.video)
        for key in ("progress", "save_maps", "save_features", "viewer") + (
                () if opts.viewer else ("viewer_blocks", "viewer_rollout")) + (
                () if opts.viewer and opts.video.viewer_similarity else ("viewer_similarity",)) + (
                () if opts.video.needs_pca else ("pca_frames", "pca_background")) + (
                () if opts.video.needs_similarity else ("query", "facet", "layer")) + (
                () if opts.video.needs_explain else EXPLAIN_FIELDS):
            video.pop(key)  # what does not shape this output: old fingerprints stay valid
        settings = {**video, "format": opts.format}
    else:
        settings = {"probes": opts.image.image_probes, "size": opts.image.size,
                    "threshold": opts.image.threshold}
        if "pca" in opts.image.image_probes and opts.image.pca_background is not None:
            settings["pca_background"] = opts.image.pca_background
        if "similarity" in opts.image.image_probes:
            settings.update(query=opts.image.query, facet=opts.image.facet,
                            layer=opts.image.layer)
        if "explain" in opts.image.image_probes:
            settings.update({f: getattr(opts.image, f) for f in EXPLAIN_FIELDS})
    if opts.viewer:
        settings["viewer"] = True
        if kind == "image":  # the image viewer stores these features for its similarity
            settings.update(facet=opts.image.facet, layer=opts.image.layer)
    if model.preset != PRESETS.get(model.preset.name):
        # read from a checkpoint's folder and config (--model PATH), or strided: the whole
        # preset, so an edited config (or another folder with the same name) redoes the output
        settings["preset"] = repr(model.preset)
    blob = json.dumps({"kind": kind, "model": model.preset.name, "weights": model.weights_label,
                       **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _complete(outdir: Path, item: Item, viewer: bool) -> bool:
    """Whether ``item``'s finished output is in ``outdir`` (an image's folder is finished by
    probes.json), with its viewer if ``viewer``."""
    path = outdir / item.out
    done = (path / "probes.json").is_file() if item.kind == "image" else path.is_file()
    return done and (not viewer or gallery.viewer_page(outdir, item.out, item.kind).is_file())


def _is_current(record, item: Item, outdir: Path, fp: str, viewer: bool) -> bool:
    """Whether ``record`` (the input's latest manifest line) makes ``item`` up to date: ok, same
    size, mtime_ns, options fingerprint ``fp`` and output name, and the output (with its viewer
    if ``viewer``) still there."""
    if not record or record.get("status") != "ok":
        return False
    try:
        st = item.src.stat()
    except OSError:
        return False
    same = (record.get("size"), record.get("mtime_ns"), record.get("options"), record.get("output"))
    return same == (st.st_size, st.st_mtime_ns, fp, item.out) and _complete(outdir, item, viewer)


def _reason(err: BaseException, item: Item) -> str:
    """One line for the manifest and the summary; the input's own path is not repeated."""
    if isinstance(err, VidattnError):
        text = str(err)
        if err.path is not None and Path(err.path) == item.src:
            text = text[len(err.path) + 2:]
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split())


def _inside(outdir: Path, dst: Path) -> Path:
    """``dst``, checked to resolve inside OUTDIR; its folder is created."""
    if not (dst.parent.resolve() / dst.name).is_relative_to(outdir.resolve()):
        raise VidattnError("output would land outside the output folder (a link there leads "
                           "elsewhere); nothing written", dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VidattnError(f"cannot create the output folder: {err.strerror}", dst.parent) from None
    return dst


def _output_path(outdir: Path, item: Item, claimed: bool, overwrite: bool) -> Path:
    """``OUTDIR/item.out``, checked to resolve inside OUTDIR and not to replace a file this batch
    did not write; its folder is created."""
    dst = outdir / item.out
    if not (claimed or overwrite) and (dst.exists() or dst.is_symlink()):
        raise VidattnError("output exists but this batch's manifest did not write it (use "
                           "--overwrite to replace it)", dst)
    return _inside(outdir, dst)


def _record(model, item: Item, fp: str, **fields) -> dict:
    return {"input": item.rel, "kind": item.kind, "output": item.out, **fields,
            "model": model.preset.name, "weights": model.weights_label, "options": fp,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _attempt(model, item: Item, outdir: Path, opts: BatchOptions, fp: str, claimed: bool) -> dict:
    """Render or probe one file -> its manifest record (status ok or failed, never raises for a
    bad file; KeyboardInterrupt passes through)."""
    started = time.perf_counter()
    stat, status, error, extra = None, "ok", None, {}
    try:
        try:
            stat = item.src.stat()
        except OSError as err:
            raise VidattnError(f"cannot read: {err.strerror}", item.src) from None
        dst = _output_path(outdir, item, claimed, opts.overwrite)
        if item.kind == "video":
            viewer = _inside(outdir, gallery.viewer_folder(outdir, item.out)) if opts.viewer else None
            video = dataclasses.replace(opts.video, viewer=viewer)
            extra["frames"] = render_video(model, item.src, dst, video).frames
        else:
            record = pr.probe_image(model, item.src, dst, opts.image, overwrite=True)
            if opts.viewer:
                write_image_viewer(model, item.src, dst, opts.image.size, opts.image.threshold,
                                   facet=(opts.image.layer, opts.image.facet),
                                   explanation=_explanation(record))
        gallery.make_thumbnail(outdir, item.kind, item.out, item.src)
    except Exception as err:  # noqa: BLE001 - one bad file must not stop the batch
        if opts.raise_unexpected and not isinstance(err, VidattnError):
            raise
        status, error = "failed", _reason(err, item)
    return _record(model, item, fp, size=None if stat is None else stat.st_size,
                   mtime_ns=None if stat is None else stat.st_mtime_ns, status=status, error=error,
                   seconds=round(time.perf_counter() - started, 3), **extra)


def _explanation(record: dict):
    """The explain probe's maps of an image's ``probes.json`` record, for its viewer (a
    ``relevance.methods.Explanation``), or None where it did not run."""
    e = record.get("explain")
    if e is None:
        return None
    from vidattn.relevance.methods import Explanation

    return Explanation(e["classes"], e["methods"], np.asarray(e["values"], np.float64))


def _finish_images(model, outdir: Path, items, latest: dict, fp: str, opts: BatchOptions,
                   refresh_model: bool):
    """Write the per-model figures (if asked for and this run probed images, or they are missing)
    and ``OUTDIR/probes.html`` with every up-to-date image of the tree and the images that failed.
    ``latest``: the manifest's last line of each input (``Manifest.latest``)."""
    entries, failures = [], []
    for item in items:
        record = latest.get(item.rel) or {}
        if record.get("status") == "failed":
            failures.append(f"{item.rel}: {record.get('error')}")
        elif _is_current(record, item, outdir, fp, opts.viewer):
            try:
                text = (outdir / item.out / "probes.json").read_text(encoding="utf-8")
                entries.append((item.out, json.loads(text)))
            except (OSError, ValueError):
                continue
    folder = outdir / pr.MODEL_FOLDER
    wanted = opts.image.model_probes
    if refresh_model or not all((folder / f"{p}.png").is_file() for p in wanted):
        model_files = pr.write_model_probes(model, folder, wanted)
    else:
        model_files = {p: f"{p}.png" for p in wanted}
    write_index(outdir, model, entries, model_files, pr.MODEL_FOLDER, failures,
                gallery.PROBES_REPORT)


class BatchRun:
    """One run's plan and bookkeeping, shared by the local loop (``run_batch``) and the Ray driver
    (``vidattn.batch_ray``), which differ only in who renders the files.

    The plan, made on construction: the scan (or ``found``, a ``Scan`` made before), the options
    fingerprint of each kind (``fps``), the files not up to date (``todo``, in walk order), the
    images (for the index). ``model`` is the loaded model or anything with its ``preset`` and
    ``weights_label`` (the Ray driver's ``ModelInfo``). ``work_opts``: the options each file is
    rendered with (no bar or saved maps of its own).

    The bookkeeping, as files are handed out (``begin``) and finish (``settle``): each file's
    manifest line, the ``result``, one error line on stderr per failure, the bar over the files.
    Used as a context manager around the work: inside, Ctrl-C and SIGTERM raise
    KeyboardInterrupt (``signals``; held while a line is written); on the way out the files still
    in flight get an ``interrupted`` line, the interruption is swallowed into ``result``, and the
    bar and the manifest are closed.
    """

    def __init__(self, model, indir, outdir, opts: BatchOptions, found: Scan | None = None):
        self.model, self.opts = model, opts
        self.indir, self.outdir = check_folders(indir, outdir)
        if found is None:
            found = scan(self.indir, self.outdir, opts.format)
        self.fps = {kind: fingerprint(model, kind, opts) for kind in KINDS}
        self.images = [item for item in found.items if item.kind == "image"]
        if self.images:
            pr.check_size(model, opts.image.size)
        _check_explain(model, found.items, opts)
        make_output_folder(self.outdir)
        self.manifest = Manifest(self.outdir / MANIFEST)
        self.result = BatchResult(failed=list(found.unreadable), ignored=found.ignored)
        self.items = found.items
        self.todo: list[Item] = []
        for item in found.items:
            if _is_current(self.manifest.latest.get(item.rel), item, self.outdir,
                           self.fps[item.kind], opts.viewer):
                self.result.up_to_date.append(item.rel)
            else:
                self.todo.append(item)
        self.work_opts = work_options(opts)
        self.probed = False  # whether this run probed an image (the model figures are redone)
        self.signals = Interrupts()
        self._in_flight: dict[Item, float] = {}  # item -> when it was handed out
        self._bar = None
        self._shown = 0.0  # when the gallery was last written

    def show(self, finished: bool = False):
        """Rewrite the gallery ``OUTDIR/index.html`` from the manifest: at the start, after a file
        at most every ``GALLERY_EVERY_S`` seconds, and at the end (``finished``)."""
        if finished or time.monotonic() - self._shown >= GALLERY_EVERY_S:
            gallery.write_gallery(self.outdir, self.model, self.items, self.manifest.latest,
                                  finished, MANIFEST)
            self._shown = time.monotonic()

    def claimed(self, item: Item) -> bool:
        """Whether a manifest line claims ``item``'s output (this batch may replace it)."""
        return item.out in self.manifest.outputs

    def record(self, item: Item, **fields) -> dict:
        """A manifest line for ``item`` with ``fields`` (status, error, seconds...)."""
        return _record(self.model, item, self.fps[item.kind], **fields)

    def begin(self, item: Item):
        """``item`` is handed out: it gets an ``interrupted`` line if the run stops before it
        settles."""
        self._in_flight[item] = time.perf_counter()
        self._bar.set_postfix_str(item.rel, refresh=True)

    def drop(self, item: Item):
        """``item`` is no longer in flight without a line of its own (it goes back in a queue)."""
        self._in_flight.pop(item, None)

    def settle(self, item: Item, record: dict):
        """Write ``item``'s finished ``record`` (status ok or failed) and count it."""
        with self.signals.deferred():
            self.manifest.append(record)
            self._in_flight.pop(item, None)
            self.result.finished += 1
            self._bar.update(1)
            if record["status"] == "ok":
                self.result.done.append(item.rel)
                self.probed |= item.kind == "image"
            else:
                self.result.failed.append((item.rel, record["error"]))
                tqdm.write(one_line(f"vidattn: error: {item.rel}: {record['error']}"),
                           file=sys.stderr)
        self.show()

    def __enter__(self):
        self._bar = tqdm(total=len(self.todo), unit="file", disable=not self.opts.progress,
                         dynamic_ncols=True, desc="batch")
        self.signals.__enter__()
        self.show()
        return self

    def __exit__(self, kind, err, tb):
        try:
            if isinstance(err, KeyboardInterrupt):
                self.result.interrupted = True
                self.result.signum = self.signals.signum_of(err)
                self.result.left = len(self.todo) - self.result.finished
                with self.signals.deferred():
                    for item, started in list(self._in_flight.items()):
                        self.manifest.append(self.record(
                            item, size=None, mtime_ns=None, status="interrupted",
                            error="interrupted", seconds=round(time.perf_counter() - started, 3)))
                        del self._in_flight[item]
        finally:
            self.signals.__exit__(kind, err, tb)
            self._bar.close()
            self.manifest.close()
        return isinstance(err, KeyboardInterrupt)


def _check_explain(model, items, opts: BatchOptions):
    """One error line before any work when every file of a kind would fail the same way: the
    explain view on videos with a model it cannot explain (``pipeline.check_explain``), or an
    explained class the model does not have for images' explain probe (a model without a head
    skips that probe, as ``vidattn image`` does)."""
    kinds = {item.kind for item in items}
    if "video" in kinds and opts.video.needs_explain:
        check_explain(model.preset, opts.video)
    if "image" in kinds and "explain" in opts.image.image_probes and model.preset.num_classes:
        from vidattn.relevance.targets import check_target

        check_target(model.preset, opts.image.explain_class)


def run_batch(model, indir, outdir, opts: BatchOptions | None = None) -> BatchResult:
    """Render every video and probe every image under ``indir`` into the mirror ``outdir`` with
    the loaded ``model``, skipping what the manifest shows up to date.

    Per-file failures are recorded, printed (one line on stderr) and returned; the run goes on.
    Ctrl-C or SIGTERM end it early with ``interrupted`` set. Raises VidattnError only for the run
    as a whole: bad folders, a ``--size`` the model cannot take, an unwritable manifest.
    """
    run = BatchRun(model, indir, outdir, opts or BatchOptions())
    with run:
        for item in run.todo:
            run.begin(item)
            run.settle(item, _attempt(model, item, run.outdir, run.work_opts,
                                      run.fps[item.kind], run.claimed(item)))
    if run.images and not run.result.interrupted:
        _finish_images(model, run.outdir, run.images, run.manifest.latest, run.fps["image"],
                       run.opts, run.probed)
    run.show(finished=True)
    return run.result


def format_summary(result: BatchResult) -> str:
    """The end-of-run table: counts, then each failure and each entry passed over with a reason."""
    counts = [("done", len(result.done)), ("up to date", len(result.up_to_date)),
              ("failed", len(result.failed)), ("ignored", len(result.ignored))]
    lines = [f"  {label:<11}{n:>6}" for label, n in counts]
    for title, rows in (("failed:", result.failed),
                        ("passed over:", [(r, why) for r, why in result.ignored if why])):
        if rows:
            width = max(len(r) for r, _ in rows)
            lines.append(title)
            lines.extend(f"  {r:<{width}}  {why}" for r, why in rows)
    return "\n".join(lines)
