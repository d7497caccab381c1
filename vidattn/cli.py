"""The ``vidattn`` command line: ``video``, ``image``, ``batch``, ``track``, ``track-eval``,
``explain-eval`` and ``models``.

Every command turns a :class:`VidattnError` into one line on stderr and a non-zero exit, and
any other exception (a bug) into one "internal error" line; ``--debug`` shows the traceback
instead. Ctrl-C and SIGTERM end a command the same way, cleaning up (exit 130 and 143).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import click

from vidattn.errors import VidattnError, one_line
from vidattn.interrupts import Interrupts, exit_status, signal_of
from vidattn.options import (
    PRECISIONS,
    BatchOptions,
    ImageOptions,
    ModelOptions,
    RayOptions,
    TrackOptions,
    VideoOptions,
    cli_fields,
)


FEATURES_HELP = (
    "Also write the final-normed patch tokens of every frame (image) here, streamed as they are "
    "computed: a .npy of float16 (frames, gh*gw, D) and, beside it, a .json with the "
    "timestamps (image names), grid, model and weights. numpy.load(PATH, mmap_mode='r') reads it.")


def _friendly_errors(fn):
    """Run a command body with SIGTERM handled like Ctrl-C. User-facing errors become one line
    and exit 1; unexpected exceptions one "internal error" line (naming the file when the
    exception does) and exit 1; Ctrl-C exits 130 and SIGTERM 143, after the clean-up."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            with Interrupts():
                return fn(*args, **kwargs)
        except VidattnError as err:
            if debug:
                raise
            click.echo(one_line(f"vidattn: error: {err}"), err=True)
            sys.exit(1)
        except KeyboardInterrupt as err:
            if debug:
                raise
            click.echo("vidattn: interrupted; no partial output was kept", err=True)
            sys.exit(exit_status(signal_of(err)))
        except Exception as err:  # noqa: BLE001 - a bug: one line for users, --debug for us
            if debug:
                raise
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            detail = " ".join(f"{type(err).__name__}: {err}".split())
            click.echo(one_line(f"vidattn: error: {where}internal error: {detail} (run with "
                                "--debug for the traceback)"), err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="vidattn")
def main(debug):
    """See what Vision Transformers look at.

    \b
    vidattn video IN.mp4 -o OUT.mp4     DINO self-attention rendered onto a video
    vidattn image PHOTO.jpg -o DIR      the classic ViT probes of one or more images
    vidattn batch INDIR -o OUTDIR       every video and image of a folder tree, resumable
    vidattn track IN.mp4 --point X,Y -o OUT.mp4   follow objects by label propagation
    vidattn track-eval DAVIS -o DIR     score tracking on DAVIS 2017 (J and F)
    vidattn explain-eval --imagenet DIR -o DIR   how faithful the class explanations are
    vidattn models                      the model presets and where their weights come from

    Weights: each preset fetches its official checkpoint once: from torch hub's cache, the
    Hugging Face cache or vidattn's ($VIDATTN_HOME, default ~/.cache/vidattn), else downloaded
    there. Offline, pass a downloaded file with --weights PATH (official .pth, timm or Hugging
    Face .safetensors), or --weights random for an untrained model (its outputs are labelled as
    such). `vidattn models` says which weights are already here. Your own checkpoint:
    --model PATH (a folder with its config.json) or --model hf:ORG/NAME; `vidattn models
    --inspect PATH` says what is read from it.
    """
    from vidattn.runtime import keep_compiled_programs, keep_freed_memory

    keep_freed_memory()
    keep_compiled_programs()


@main.command()
@click.option("--env", is_flag=True,
              help="Instead: what a run here computes on (backend, devices, precision support, "
              "memory budget). Imports the backend, so it takes a few seconds.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="With --env: the precision to report on.")
@click.option("--inspect", metavar="PATH|hf:ORG/NAME",
              help="Instead: what --model PATH (a checkpoint folder, a checkpoint file in one, "
              "or hf:ORG/NAME) reads from it: the publisher's layout, the architecture, the "
              "preprocessing, the classes and the weights file. Builds no model (it reads the few "
              "tensor shapes it checks the config against).")
@_friendly_errors
def models(env, precision, inspect):
    """List the model presets: shape, preprocessing, weights, licence, and whether they are here.

    The "here" column says where a preset's own weights already are: bundled, torch hub's
    cache, vidattn's cache ($VIDATTN_HOME) or Hugging Face's; "-" means the first run downloads
    them (or, for gated weights, that you must request them and pass --weights PATH).
    """
    if env:
        from vidattn.models.device import describe

        click.echo("\n".join(describe(precision)))
        return
    if inspect is not None:
        from vidattn.models import configs

        click.echo("\n".join(configs.describe(configs.read_model(inspect))))
        return
    from vidattn.models.hub import cached_weights
    from vidattn.models.presets import PRESETS

    rows = [("preset", "patch", "width", "depth", "heads", "tokens", "input", "weights", "licence",
             "here")]
    for p in PRESETS.values():
        tokens = "+".join(["cls", "dist"][: p.num_class_tokens]
                          + [f"{p.num_register_tokens}reg"] * bool(p.num_register_tokens)
                          + ["map"] * (p.pool == "map")) or "-"
        rows.append((p.name, p.patch_size, p.embed_dim, p.depth, p.num_heads, tokens,
                     _input_of(p), p.weights_format or "-", p.licence,
                     cached_weights(p) or "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    click.echo("\nSources:")
    for p in PRESETS.values():
        click.echo(f"  {p.name:<20} {p.description}\n  {'':<20} {source_of(p)}")


def _input_of(preset) -> str:
    """A preset's preprocessing for the table: its normalisation's name, or "mean/std" for a
    checkpoint's own ``(mean, std)`` pair (``--inspect`` shows the numbers)."""
    kind = preset.preprocessing
    return kind if isinstance(kind, str) else "mean/std"


def source_of(preset) -> str:
    """Where a preset's weights come from, in one line."""
    if preset.packaged_weights:
        return f"vidattn/data/{preset.packaged_weights}"
    hub = f"https://huggingface.co/{preset.hf_repo}" if preset.hf_repo else None
    if preset.gated:
        return f"gated by its licence: request at {preset.gated}" + f" or {hub}" * bool(hub)
    return " or ".join(s for s in (preset.weights_url, hub) if s) or "none: pass --weights PATH"


def _load(kw, quiet=False):
    """The model the command's ``ModelOptions`` name, with the random-weights note and, for a
    reduced precision without native support here, the note that it will be slow."""
    opts = options_from(ModelOptions, kw)
    model = opts.load()
    _note_random(model, quiet)
    _note_precision(opts.precision, quiet)
    return model


def _note_precision(precision, quiet=False):
    from vidattn.models.device import precision_note

    note = precision_note(precision)
    if note and not quiet:
        click.echo(f"vidattn: note: {note}", err=True)


def _note_random(model, quiet=False):
    """One note on stderr when ``model`` (or a Ray worker's ``ModelInfo``) has random weights."""
    if model.is_random and not quiet:
        click.echo("vidattn: note: random (untrained) weights; outputs are labelled so", err=True)


def _click_option(f):
    """A click option for the options-dataclass field ``f`` (see ``options.option``)."""
    meta, default = f.metadata, f.default
    flag = "--" + f.name.replace("_", "-")
    kwargs = {"default": default, "help": meta["help"], "show_default": default is not None}
    short = [meta["short"]] if "short" in meta else []
    if isinstance(default, bool):  # --x (off by default), or --x/--no-x
        decls = [f"{flag}/--no-{flag[2:]}" if meta.get("flag") is False else flag]
        kwargs.update(is_flag=True)
    else:
        decls = [flag, *short]
        kind = meta.get("type", type(default))
        if "choices" in meta:
            kind = click.Choice(meta["choices"])
        elif "min" in meta or "max" in meta:
            bounded = click.IntRange if kind is int else click.FloatRange
            kind = bounded(meta.get("min"), meta.get("max"),
                           min_open=meta.get("min_open", False), max_open=meta.get("max_open", False))
        kwargs.update(type=kind, metavar=meta.get("metavar"))
        if "flag_value" in meta:  # --x [VALUE]
            kwargs.update(is_flag=False, flag_value=meta["flag_value"])
    if "check" in meta:
        kwargs["callback"] = functools.partial(_checked, meta["check"])
    return click.option(*decls, f.name, **kwargs)


def _checked(check, ctx, param, value):
    """A click callback: ``check(value)``, its VidattnError as click's own usage error."""
    try:
        return check(value)
    except VidattnError as err:
        raise click.BadParameter(str(err), ctx, param) from None


def options_of(cls, only=None):
    """Decorator: the command-line options of the options dataclass ``cls`` (every field with
    help, or those named in ``only``), defaults and help taken from the fields."""
    chosen = [f for f in cli_fields(cls) if only is None or f.name in only]

    def decorate(fn):
        for f in reversed(chosen):
            fn = _click_option(f)(fn)
        return fn

    return decorate


def options_from(cls, kw, **extra):
    """An options dataclass ``cls`` from a command's keyword arguments: each field the command
    line offers, taken from ``kw``, plus ``extra``."""
    return cls(**{f.name: kw[f.name] for f in cli_fields(cls) if f.name in kw}, **extra)


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "dst", type=click.Path(dir_okay=False),
              help="Output video: .mp4 (H.264 + the input's audio), .mov, .mkv or .gif.")
@options_of(ModelOptions)
@options_of(VideoOptions)
@click.option("--save-maps", type=click.Path(dir_okay=False),
              help="Also write the raw per-frame maps (and their times) to this .npz.")
@click.option("--save-features", type=click.Path(dir_okay=False), metavar="PATH.npy",
              help=FEATURES_HELP)
@click.option("--viewer", "viewer", type=click.Path(file_okay=False), metavar="DIR",
              help="Also (or, without -o, only) write a browser viewer into DIR: open "
              "DIR/index.html from the disk to scrub the video with any head's attention, "
              "colormap, opacity and mask threshold changed live.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT (and the viewer DIR) if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_friendly_errors
def video(src, dst, save_maps, save_features, viewer, overwrite, quiet, **kw):
    """Render what a ViT attends to in every frame of SRC into OUTPUT (-o), a browser viewer
    (--viewer DIR), or both.

    \b
    Examples:
      vidattn video clip.mp4 -o attn.mp4                       # head mean, DINO ViT-S/16
      vidattn video clip.mp4 -o heads.mp4 --view heads         # every head in a grid
      vidattn video clip.mp4 -o masks.gif --view masks --gif-width 480
      vidattn video clip.mp4 -o a.mp4 --weights dino_deitsmall16_pretrain.pth --start 5 --end 9
      vidattn video clip.mp4 --viewer clip-viewer/             # open clip-viewer/index.html
      vidattn video clip.mp4 -o pca.mp4 --view pca --pca-background 0.5   # DINOv2's PCA
      vidattn video clip.mp4 -o sim.mp4 --view similarity --query 320,180@2.5

    Frames keep their aspect ratio, timestamps and audio; memory stays flat however long the
    video is. The output appears only once complete (a failed or interrupted run leaves none).

    --view pca fits one PCA of the patch tokens per video, on --pca-frames frames spread
    evenly over the requested range and read by seeking; its axes and colour scale (each
    component's 1st..99th percentile) are fixed then, so a colour means the same part in every
    frame. Blend it with --alpha, or show it beside the frame: --view side-by-side --side-map pca.

    --view similarity takes the final-normed patch token under --query X,Y (frame pixels) in
    the frame at @SECONDS (default: the first rendered) and colours every patch of every frame
    by its cosine similarity to it, 0 to 1 on the colormap in every frame, so a patch that
    matches the query's part of the object lights up wherever it goes (the patch matching of
    DINOv2's and DINOv3's notebooks). --layer and --facet choose the features compared (the
    keys of block 11 are dino-vit-features' choice: --facet key --layer 11).

    \b
    The viewer folder holds index.html, video.mp4 (the kept frames, H.264, with the audio) and
    data/ (every kept frame's maps: each head of the last block and their mean, or of every
    block with --viewer-blocks all, and rollout with --viewer-rollout). The page works from the
    disk, with no server and no network: arrow keys step one frame, space plays and pauses.
    """

    from vidattn.video.pipeline import render_video

    if dst is None and viewer is None:
        raise VidattnError("nothing to write: give -o OUTPUT, --viewer DIR, or both")
    _refuse_existing((dst, viewer, save_features), overwrite)
    opts = options_from(VideoOptions, kw, save_maps=Path(save_maps) if save_maps else None,
                        save_features=Path(save_features) if save_features else None,
                        viewer=Path(viewer) if viewer else None, progress=not quiet)
    _check_explain_view(kw, opts)
    model = _load(kw, quiet)
    result = render_video(model, src, dst, opts)
    if not quiet:
        w, h = result.size
        wrote = [str(result.output)] if result.output else []
        wrote += [str(result.viewer / "index.html")] if result.viewer else []
        click.echo(
            f"wrote {' and '.join(wrote)} ({result.frames} frames, {w}x{h}; "
            f"processed at {result.frames / result.seconds:.3g} frames per second)", err=True,
        )


def _check_explain_view(kw, opts: VideoOptions):
    """``pipeline.check_explain`` on the preset named, before its weights load (a download, for
    a self-supervised preset that could not be explained anyway)."""
    if opts.needs_explain:
        from vidattn.models.presets import get_preset
        from vidattn.video.pipeline import check_explain

        check_explain(get_preset(kw["model"]), opts)


def _refuse_existing(paths, overwrite: bool):
    """One error line for the first of ``paths`` (None: not asked for) that exists, unless
    ``overwrite``; a feature file counts with its .json sidecar."""
    from vidattn.features import sidecar_path

    for path in paths:
        if path is None or overwrite:
            continue
        for taken in [path] + ([sidecar_path(path)] if str(path).endswith(".npy") else []):
            if Path(taken).exists():
                raise VidattnError("output exists (use --overwrite to replace it)", taken)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Output folder (created if missing).")
@options_of(ModelOptions)
@options_of(ImageOptions)
@click.option("--save-features", type=click.Path(dir_okay=False), metavar="PATH.npy",
              help=FEATURES_HELP)
@click.option("--overwrite", is_flag=True, help="Replace the output folders of images done before.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@_friendly_errors
def image(images, outdir, save_features, overwrite, quiet, **kw):
    """Run the classic ViT probes on still IMAGES and write figures, numbers and an index page.

    \b
    Examples:
      vidattn image toucan.jpg -o probes/                    # DINO ViT-S/16, every probe
      vidattn image photos/*.jpg -o probes/ --model vit_b16  # supervised ViT, with top-5 classes
      vidattn image cat.png -o out/ --probes heads,masks --threshold 0.5
      vidattn image cat.png -o out/ --model dino_vits8 --weights dino_deitsmall8_pretrain.pth
      vidattn image cat.png dog.png -o out/ --viewer   # + out/cat/viewer.html: click a patch
      vidattn image cat.jpg dog.jpg -o out/ --probes similarity --query 120,80

    \b
    Probes (the study "Investigating Vision Transformer representations"):
      distance  mean attention distance of every block and head, in pixels (scatter plot)
      rollout   attention rollout through all blocks: input | map x image | overlay
      heads     the last block's CLS attention, one overlay per head
      masks     DINO's masks: the fewest patches holding --threshold of each head's attention
      registers share of the CLS attention on the registers, per block and head (DINOv2 *_reg,
                DINOv3: "Vision Transformers Need Registers")
      norms     norms of the output patch tokens before the final norm: high-norm artifacts
      pca       3 principal components of the patch tokens as RGB (DINOv2), per image and, for
                two images or more, one joint PCA of all of them (--pca-background T)
      similarity  with --query X,Y (pixels of the first image): every image's patches by their
                cosine similarity to that patch's token (patch matching across images)
      filters   the first 128 patch-projection filters (per model)
      posembed  dot-product similarity of the position embeddings (per model)
    Models with a classifier head (vit_b16, deit_*, a ViTForImageClassification folder: its
    id2label names) also get their top-5 classes. Register and storage tokens take part in
    attention but never appear in a map. A model without a class token (SigLIP) pools by a
    probe: heads, masks and the viewer's CLS query show the probe's attention, and rollout
    starts from it.

    \b
    Output:
      OUTDIR/index.html             every image's figures and numbers (open it in a browser)
      OUTDIR/<stem>/<probe>.png     one figure per per-image probe
      OUTDIR/<stem>/probes.json     mean distances, rollout and head peaks, top-5, shapes
      OUTDIR/_model/<probe>.png     the per-model figures, written once per run
      OUTDIR/_model/pca-joint.png   the joint PCA of the run's images (.json: its numbers)
      OUTDIR/<stem>/viewer.html     with --viewer: click any patch to see where it looks, in
                                    any block and head, or rollout, and its similarity (the
                                    cosine of its --facet of block --layer) on every image of
                                    the run (data in <stem>/viewer/)
      OUTDIR/viewer-run.js          with --viewer: the run's images, for the pages' similarity
    Images whose names share a stem get <stem>-2, <stem>-3... The index shows this run's
    images. Each image is resized and centre-cropped as the study does; the maps are drawn on
    that crop. An image that cannot be read (or whose folder exists, without --overwrite) gets
    one error line; the others are still done, and the exit status is 1.
    """
    from tqdm.auto import tqdm

    from vidattn.probes import probe_images

    def report(err):
        tqdm.write(one_line(f"vidattn: error: {err}"), file=sys.stderr)

    _refuse_existing((save_features,), overwrite)
    opts = options_from(ImageOptions, kw,
                        save_features=Path(save_features) if save_features else None)
    model = _load(kw, quiet)
    run = probe_images(model, images, outdir, opts, overwrite, progress=not quiet, on_error=report)
    if not quiet:
        click.echo(f"wrote {run.index} ({len(run.entries)} of {len(images)} images)", err=True)
    if run.failures:
        sys.exit(1)


@main.command()
@click.argument("indir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Output folder: the mirror of INDIR (created if missing).")
@options_of(ModelOptions)
@options_of(VideoOptions)
@options_of(BatchOptions)
@options_of(ImageOptions, only=("probes",))
@options_of(RayOptions)
@click.option("--overwrite", is_flag=True,
              help="Also replace outputs the manifest does not know (files in OUTDIR before).")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bar and no summary table (failures are still listed).")
@_friendly_errors
def batch(indir, outdir, overwrite, quiet, **kw):
    """Render every video and probe every image under INDIR into OUTDIR, resumably.

    \b
    Examples:
      vidattn batch clips/ -o attn/                        # DINO ViT-S/16, head mean
      vidattn batch clips/ -o attn/ --view heads --format gif --gif-width 480
      vidattn batch photos/ -o probes/ --model vit_b16 --probes rollout,heads
      vidattn batch clips/ -o attn/                        # again: only new, changed or failed

    \b
    Videos are rendered as `vidattn video` and images probed as `vidattn image`, with the
    options below (--size and --threshold serve both: for images --size is the side of the
    square crop and must be a multiple of the patch). The layout is mirrored:
      INDIR/a/b/clip.mov   ->  OUTDIR/a/b/clip.mp4   (or clip.gif with --format gif)
      INDIR/a/photo.jpg    ->  OUTDIR/a/photo/       probe figures and probes.json
      OUTDIR/manifest.jsonl    one JSON line per file and attempt: input, output, status, error,
                               seconds, model, weights, size, mtime_ns, options fingerprint
      OUTDIR/index.html        the gallery: a card per file (thumbnail, status, error, links),
                               rewritten as the run goes; open it in a browser
      OUTDIR/probes.html       every image's figures and numbers; OUTDIR/_model/ the model's
      OUTDIR/_viewer/a/b/clip.mp4/index.html   with --viewer: each video's browser viewer (an
                               image's is OUTDIR/a/photo/viewer.html)
    Names that would clash in one folder (clip.mov and clip.mp4, photo.jpg and photo.png) get
    -2, -3... Hidden files and folders, OUTDIR, links to folders and links out of INDIR are
    passed over; other files that are not videos or images are ignored.

    \b
    Re-running skips every file whose last run succeeded with the same size, modification
    time, model, weights and options, and whose output is still there; it redoes the rest.
    A file that fails gets one error line and the run goes on; the exit status is 1 if any
    failed. Ctrl-C (or SIGTERM) stops within the current file, keeps no partial output and
    exits 130 (143 for SIGTERM); the manifest stays intact, so run again to continue. Outputs
    already in OUTDIR that the manifest does not show are never replaced without --overwrite.

    \b
    Many machines (pip install 'vidattn[ray]'):
      vidattn batch clips/ -o attn/ --ray                  # Ray workers on this machine
      vidattn batch /nfs/clips -o /nfs/attn --ray auto --gpus-per-worker 0.5
    With --ray the files are spread over Ray workers, each loading the model once; the
    manifest, the resume rules and the outputs are the same. A file whose worker dies is
    retried on another one (3 tries in all); INDIR, OUTDIR, --weights and a --model folder
    must be paths every node sees. README.md, "Many machines", tells how to start a cluster.
    """
    from vidattn.batch import check_folders, format_summary, run_batch

    check_folders(indir, outdir)
    ray_opts = options_from(RayOptions, kw)
    opts = options_from(
        BatchOptions, kw, video=options_from(VideoOptions, kw, progress=False),
        image=ImageOptions(probes=kw["probes"], size=kw["size"], threshold=kw["threshold"],
                           pca_background=kw["pca_background"], **_explain_given(kw)),
        overwrite=overwrite, progress=not quiet,
        raise_unexpected=click.get_current_context().find_root().params.get("debug", False),
    )
    if ray_opts.ray is None:
        _refuse_ray_options()
        model = _load(kw, quiet)
        result = run_batch(model, indir, outdir, opts)
    else:
        from vidattn.batch_ray import run_batch_ray

        result = run_batch_ray(_loader(kw), indir, outdir, opts,
                               ray_opts, on_model=functools.partial(_note_random, quiet=quiet))
    if not quiet:
        click.echo(format_summary(result))
    if result.interrupted:
        click.echo(f"vidattn: interrupted: {result.finished} done, {result.left} left; re-run "
                   "to continue", err=True)
    if result.exit_code:
        sys.exit(result.exit_code)


def _explain_given(kw) -> dict:
    """The --explain-* options given on a batch's command line, for its images' explain probe
    too (one class and method, as the videos'); the ones not given keep the probe's defaults
    (top3, every method)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {name: kw[name] for name in ("explain_method", "explain_class", "explain_head",
                                        "explain_reference")
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}


def _refuse_ray_options():
    """One error line when Ray's worker options are given without --ray."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = ["--" + f.name.replace("_", "-") for f in cli_fields(RayOptions)
             if ctx.get_parameter_source(f.name) is ParameterSource.COMMANDLINE]
    if given:
        raise VidattnError(f"{', '.join(given)}: only with --ray")


def _loader(kw):
    """The command's ``ModelOptions.load``, for Ray workers to call: a zero-argument function
    that pickles, with a local --weights path and a --model folder made absolute (a worker's
    working folder is its own; each worker reads the folder's config again)."""
    import os

    from vidattn.models.configs import is_model_source

    opts = options_from(ModelOptions, kw)
    if opts.weights not in (None, "random") and os.path.exists(opts.weights):
        opts = dataclasses.replace(opts, weights=os.path.abspath(opts.weights))
    if is_model_source(opts.model) and os.path.exists(opts.model):  # a folder, not hf:ORG/NAME
        opts = dataclasses.replace(opts, model=os.path.abspath(opts.model))
    return opts.load

@main.command()
@click.argument("src", type=click.Path())
@click.option("-o", "--output", "dst", type=click.Path(dir_okay=False),
              help="Output video: .mp4 (H.264 + the input's audio), .mov, .mkv or .gif.")
@click.option("--mask", type=click.Path(dir_okay=False), metavar="FIRST.png",
              help="The seed frame's objects: an indexed (or greyscale) PNG of that frame, 0 "
              "background, ids 1..254 (a DAVIS annotation; a black-and-white PNG is one object).")
@click.option("--point", "points", multiple=True, metavar="X,Y",
              help="An object by one click, in frame pixels (repeat for more objects): the "
              "patches whose features are most like the clicked patch's (see below).")
@click.option("--box", "boxes", multiple=True, metavar="X0,Y0,X1,Y1",
              help="An object by its box, in frame pixels (repeatable): the box's patches that "
              "are more like the inside than the outside.")
@options_of(ModelOptions)
@options_of(TrackOptions)
@click.option("--save-masks", type=click.Path(file_okay=False), metavar="DIR",
              help="Also write every frame's labels as DAVIS does: indexed PNGs with the DAVIS "
              "palette, named as the frames (00000.png ...).")
@click.option("--save-probs", type=click.Path(dir_okay=False), metavar="PATH.npy",
              help="Also write the per-object probabilities on the patch grid, as propagated: "
              "float16 (frames, gh*gw, objects + 1), channel 0 the background, with a .json "
              "sidecar (times, grid, protocol, model).")
@click.option("--overwrite", is_flag=True, help="Replace the outputs if they exist.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_friendly_errors
def track(src, dst, mask, points, boxes, save_masks, save_probs, overwrite, quiet, **kw):
    """Follow objects through SRC (a video file, or a folder of frames such as DAVIS's
    JPEGImages/480p/<sequence>) by label propagation of the model's patch features, as DINO
    evaluates its video features.

    \b
    Examples:
      vidattn track clip.mp4 --point 320,240 -o tracked.mp4
      vidattn track clip.mp4 --mask first.png -o t.mp4 --save-masks masks/
      vidattn track DAVIS/JPEGImages/480p/bike-packing \\
          --mask DAVIS/Annotations/480p/bike-packing/00000.png --save-masks out/bike-packing
      vidattn track clip.mp4 --box 100,80,300,260 --start 4 -o t.mp4 --side-by-side

    \b
    Each later frame takes its labels from the seed frame and the --context frames before it:
    every patch looks for its --topk most similar patches (cosine of the final-normed patch
    tokens; registers never take part) within --neighbourhood patches of where it is, and
    averages their labels, weighted by the affinity. --protocol dino is facebookresearch/dino's
    eval_video_segmentation.py (short side 480, the long side floored to a multiple of 64,
    OpenCV bilinear; exp(cos/0.1); square neighbourhood 12; top-5; the first frame and the 7
    before; the labels upsampled by the patch, min-max per object, argmax). --protocol dinov3 is
    dinov3's segmentation_tracking notebook (short side 960, rounded up to the patch, bicubic;
    softmax at 0.2 over the top-5 within a circle of radius 12). The run says what it used.

    \b
    Seeds: --mask, or --point and --box (one object each). A point's object is the 4-connected
    region around the clicked patch of patches whose similarity s to it is at least
    (1 + median s) / 2; a patch two points claim goes to the more similar. --start is the time
    of the seed frame.

    The video shows each object in its DAVIS palette colour, outlined; audio and timestamps are
    kept as `vidattn video` keeps them. Outputs appear only once complete.
    """
    from vidattn.track.pipeline import track_video

    if dst is None and save_masks is None and save_probs is None:
        raise VidattnError("nothing to write: give -o OUTPUT, --save-masks DIR or --save-probs "
                           "PATH.npy")
    _refuse_existing((dst, save_probs), overwrite)
    if save_masks is not None and Path(save_masks).exists() and not overwrite:
        raise VidattnError("output exists (use --overwrite to replace it)", save_masks)
    seed = _seed(mask, points, boxes)
    opts = options_from(TrackOptions, kw, save_masks=Path(save_masks) if save_masks else None,
                        save_probs=Path(save_probs) if save_probs else None, progress=not quiet)
    model = _load(kw, quiet)
    result = track_video(model, src, dst, seed, opts, model.memory_budget)
    if not quiet:
        wrote = [str(p) for p in (result.output, result.masks, result.probs) if p is not None]
        objects = f"{result.objects} object{'s' * (result.objects != 1)}"
        click.echo(f"wrote {' and '.join(wrote)} ({result.frames} frames, {objects}; "
                   f"{result.frames / result.seconds:.3g} frames per second)", err=True)


def _seed(mask, points, boxes):
    """The ``track.seeds.Seed`` of the command line's --mask, --point and --box."""
    from vidattn.options import parse_numbers
    from vidattn.track.seeds import Seed

    return Seed(mask=Path(mask) if mask else None,
                points=tuple(parse_numbers(p, 2, "--point") for p in points),
                boxes=tuple(parse_numbers(b, 4, "--box") for b in boxes))


@main.command("track-eval")
@click.argument("root", type=click.Path(), metavar="DAVIS_ROOT")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Results folder: <sequence>/<frame>.png and the two CSV files.")
@click.option("--split", default="val", show_default=True,
              help="The list of sequences: DAVIS_ROOT/ImageSets/2017/<split>.txt.")
@click.option("--sequences", metavar="A,B,...", help="Only these sequences of the split.")
@options_of(ModelOptions)
@options_of(TrackOptions, only=("protocol", "size", "neighbourhood", "topk", "temperature",
                                "context", "batch_size"))
@click.option("--overwrite", is_flag=True, help="Replace the results folder if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_friendly_errors
def track_eval(root, outdir, split, sequences, overwrite, quiet, **kw):
    """Score label propagation on a DAVIS 2017 folder as the semi-supervised benchmark does.

    \b
    Example:
      vidattn track-eval DAVIS -o results/ --model dino_vits16 --weights dino_deitsmall16_pretrain.pth

    \b
    DAVIS_ROOT is DAVIS 2017 as it is downloaded: ImageSets/2017/<split>.txt,
    JPEGImages/480p/<sequence>/ and Annotations/480p/<sequence>/. Each sequence is tracked from
    its first annotation (`vidattn track` with the same protocol options) into
    OUT/<sequence>/<frame>.png, then scored with davis2017-evaluation's J (region IoU) and F
    (boundary F-measure): its frame selection (first and last frames left out), void handling
    and boundary threshold. OUT gets global_results-<split>.csv and
    per-sequence_results-<split>.csv in that repository's layout, and the table is printed.
    With real weights, these are the numbers of the papers' tables.
    """
    from vidattn.track.davis import format_table
    from vidattn.track.evaluate import evaluate_davis

    if Path(outdir).exists() and not overwrite:
        raise VidattnError("output exists (use --overwrite to replace it)", outdir)
    opts = options_from(TrackOptions, kw, progress=not quiet)
    names = [s.strip() for s in sequences.split(",") if s.strip()] if sequences else None
    model = _load(kw, quiet)
    scores, protocol = evaluate_davis(model, root, outdir, split, names, opts, model.memory_budget)
    click.echo(f"{protocol}\n{format_table(scores)}")


def _explain_eval_methods(text):
    """--method: comma-separated names of ``methods.METHODS`` and the floor ``random`` (or
    ``all``: every method) -> the list; one line for an unknown name."""
    from vidattn.relevance.faithfulness import FLOOR
    from vidattn.relevance.methods import METHODS

    names = [t.strip() for t in text.split(",") if t.strip()]
    names = [m for n in names for m in (list(METHODS) if n == "all" else [n])]
    known = [*METHODS, FLOOR]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise VidattnError(f"--method {text!r}: choose among all, {', '.join(known)}")
    return list(dict.fromkeys(names))


@main.command("explain-eval")
@click.option("--imagenet", type=click.Path(), metavar="DIR",
              help="ImageNet val for the perturbation test: class subfolders (the ILSVRC2012 "
              "WordNet ids, all of them, or folders named by class index), or a flat folder of "
              "the JPEGs with --labels.")
@click.option("--labels", type=click.Path(), metavar="FILE",
              help="With a flat --imagenet folder: 'NAME INDEX' lines (Caffe's val.txt), the "
              "class index in the model's order.")
@click.option("--segmentation", type=click.Path(), metavar="gtsegs_ijcv.mat",
              help="ImageNet-Segmentation's gtsegs_ijcv.mat (MATLAB v7.3) for the segmentation "
              "test.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Results folder: faithfulness.json and faithfulness.md.")
@click.option("--method", "methods", default="all", show_default=True, metavar="LIST",
              help="Comma-separated relevance methods (those of --explain-method), 'all', and "
              "'random' (the floor: noise on the patch grid).")
@click.option("--limit", type=click.IntRange(1), metavar="N",
              help="Only the first N images of each set (sorted by name; the .mat's order).")
@options_of(ModelOptions)
@click.option("--overwrite", is_flag=True, help="Replace the results folder if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_friendly_errors
def explain_eval(imagenet, labels, segmentation, outdir, methods, limit, overwrite, quiet, **kw):
    """Score how faithful the class explanations of a supervised preset are, with the tests of
    Chefer et al. (CVPR 2021), as hila-chefer/Transformer-Explainability computes them.

    \b
    Examples:
      vidattn explain-eval --segmentation gtsegs_ijcv.mat -o seg/ --model vit_b16
      vidattn explain-eval --imagenet ILSVRC2012/val -o pert/ --method generic,rollout --limit 500
      vidattn explain-eval --imagenet val_flat/ --labels val.txt -o pert/

    \b
    Every map is the method's patch map upsampled bilinearly by the patch and min-max scaled;
    images are squashed to the model input (224x224 for vit_b16).
    Segmentation (imagenet_seg_eval.py; the predicted class's map): foreground where the map is
    above its mean; pixel accuracy and mIoU (background and object) summed over the set, mAP
    the mean per image of the average precision of (1 - map, map) against the mask.
    Perturbation (pertubation_eval_from_hdf5.py): 10%, 20% ... 90% of the pixels set to black,
    most relevant first (positive: lower is better) or least relevant first (negative: higher
    is better), for maps of the predicted class and of the labelled class; the AUC of the
    top-1 accuracy over 0..100% removed, in percent.

    --model must have a classifier: vit_b16, deit_b16, deit_b16_distilled (the toy
    demo_classifier too), or a classifier's own folder (--model PATH, its classes named by
    its config). OUT appears only when complete. Every difference from the reference
    code is listed in vidattn/relevance/faithfulness.py; the README's "Faithfulness" has the
    toy model's table.
    """
    from vidattn.models.presets import get_preset
    from vidattn.relevance.evaluate import format_table, open_inputs, run_explain_eval

    if Path(outdir).exists() and not overwrite:
        raise VidattnError("output exists (use --overwrite to replace it)", outdir)
    names = _explain_eval_methods(methods)
    inputs = open_inputs(get_preset(kw["model"]), segmentation, imagenet, labels)
    model = _load(kw, quiet)
    results = run_explain_eval(model, outdir, names, inputs, limit, progress=not quiet)
    click.echo(format_table(results["results"]))
