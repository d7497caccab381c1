"""The notebook API: ``vidattn.probe`` and ``vidattn.render``, from a photo or a video to what a
ViT attends to in one line, shown inline in Jupyter.

>>> result = vidattn.probe("photo.jpg", model="demo")   # the figures of `vidattn image`, inline
>>> result.rollout.shape, result.heads.shape              # the numbers, as numpy arrays
>>> result.save("probes/")                                # the files `vidattn image` writes
>>> vidattn.render("clip.mp4", model="demo", view="heads", end=3)   # an inline <video>

Both are the commands' own code: ``probe`` is ``probes.measure`` (the forward pass and numbers of
``vidattn image``), its display is the report's HTML (``report.probe_html``) with the figures
embedded, and ``save`` is ``probes.probe_images``, the body of ``vidattn image``; ``render`` is
``render_video`` with ``VideoOptions``, whose fields are its keyword options. Models load once:
``model=`` takes a loaded ``Model``, a preset name or a model source (a checkpoint folder,
``hf:ORG/NAME``: as ``--model``), and names go through a small cache
(``model_for``). Everything shown from a random-weight model says RANDOM.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import functools
import inspect
import os
import shutil
import tempfile
import textwrap
import weakref
from dataclasses import dataclass
from html import escape
from pathlib import Path

from vidattn import probes as pr
from vidattn import report
from vidattn.errors import VidattnError
from vidattn.models.api import RANDOM, Model, load_model
from vidattn.models.configs import is_model_source
from vidattn.models.presets import get_preset
from vidattn.options import DEFAULT_PRESET, ImageOptions, VideoOptions
from vidattn.preprocess import as_rgb, load_image
from vidattn.video.pipeline import render_video

__all__ = ["MODEL_CACHE_SIZE", "ProbeResult", "RenderResult", "clear_model_cache", "explain",
           "model_for", "probe", "render"]

# Presets loaded by name stay loaded, the most recently used first: a ViT-B holds ~350 MB, so
# two of them, enough to compare a model with another or with its random twin.
MODEL_CACHE_SIZE = 2
# Videos up to this size are embedded in the notebook (it then shows them anywhere it is opened);
# a larger one is linked by its path relative to the kernel's folder.
EMBED_LIMIT = 32 * 2**20
_MIME = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime",
         ".mkv": "video/x-matroska", ".gif": "image/gif"}


# -- models ----------------------------------------------------------------------------------------


def model_for(model=DEFAULT_PRESET, weights=None, checkpoint_key=None) -> Model:
    """The model ``probe`` and ``render`` run: ``model`` itself when it is a loaded ``Model``,
    else the preset it names with ``weights`` (as ``load_model``), loaded once per session;
    ``model`` may also be a checkpoint folder, a checkpoint file in one, or ``hf:ORG/NAME``
    (``presets.get_preset``).

    The cache holds the ``MODEL_CACHE_SIZE`` most recently used, keyed by preset, weights and
    checkpoint key; a weights file is keyed by its resolved path, size and modification time, so
    a file replaced on disk is read again, and a model folder by what its config says and its
    weights file's key, so an edited folder is read again. Random weights are drawn once per
    session too, so every call with ``weights="random"`` shows the same untrained model (a
    fresh ``load_model`` draws new ones: its ``seed`` fixes only the class tokens and position
    embeddings).
    """
    if isinstance(model, Model):
        if weights is not None or checkpoint_key is not None:
            raise VidattnError("weights= and checkpoint_key= go with a preset name, not with a "
                               "Model already loaded")
        return model
    return _cached_model(_model_key(model), _weights_key(weights), checkpoint_key)


def _model_key(model: str):
    """``model`` as a cache key: a preset name (or a Preset) as it is; a model source as ``(its
    Preset, its weights file's key)``, read now (``get_preset`` reads a folder once per
    modification)."""
    if not isinstance(model, str) or not is_model_source(model):
        return model
    preset = get_preset(model)
    return preset, _weights_key(preset.weights_path)


def _weights_key(weights):
    """``weights`` as a cache key: None and "random" as they are, a file as
    ``(resolved path, size, mtime_ns)`` (sizes None for a missing file: ``load_model`` says so)."""
    if weights is None or weights == RANDOM:
        return weights
    path = Path(weights).expanduser().resolve()
    try:
        stat = path.stat()
    except OSError:
        return os.fspath(path), None, None
    return os.fspath(path), stat.st_size, stat.st_mtime_ns


def clear_model_cache() -> None:
    """Forget the models ``model_for`` keeps (freed once nothing else holds them)."""
    _cached_model.cache_clear()


@functools.lru_cache(maxsize=MODEL_CACHE_SIZE)
def _cached_model(model_key, weights_key, checkpoint_key) -> Model:
    preset = model_key[0] if isinstance(model_key, tuple) else model_key
    weights = weights_key[0] if isinstance(weights_key, tuple) else weights_key
    extra = {} if checkpoint_key is None else {"checkpoint_key": checkpoint_key}
    return load_model(preset, weights=weights, **extra)


def _takes_options(cls):
    """Decorator: the function's ``**options`` are the fields of the options dataclass ``cls``:
    its signature lists them with their defaults (Jupyter's Shift-Tab shows them) and its
    docstring ends with their help, both read from the fields."""

    def decorate(fn):
        chosen = dataclasses.fields(cls)
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
                   for f in chosen]
        fn.__signature__ = sig.replace(parameters=params)
        lines = [textwrap.fill(f"{f.name}={f.default!r}: {f.metadata['help']}" if "help" in
                               f.metadata else f"{f.name}={f.default!r}", 96,
                               initial_indent="    ", subsequent_indent="        ")
                 for f in chosen]
        fn.__doc__ += (f"\n    Options (``{cls.__name__}``, as the command line's):\n\n"
                       + "\n".join(lines) + "\n")
        return fn

    return decorate


def _model_line(what: str, model: Model) -> str:
    """``what · preset · weights``, the weights called RANDOM when they are."""
    weights = "RANDOM (untrained) weights" if model.is_random else f"weights: {model.weights_label}"
    return f"{what} · {model.preset.name} · {weights}"


# -- images ----------------------------------------------------------------------------------------


class ProbeResult:
    """What ``probe`` measured on one image. Displayed in Jupyter as the report's figures and
    tables; ``save`` writes the files of ``vidattn image``.

    Numbers (numpy; None for a probe not run):
      image           uint8 ``(size, size, 3)``: the centre crop the model saw, the maps' canvas
      mean_distances  ``(depth, heads)`` mean attention distance in pixels (``distance``)
      rollout         ``(gh, gw)`` attention rollout through every block, peak 1 (``rollout``)
      heads           ``(heads, gh, gw)`` the last block's CLS attention per head (``heads``,
                      ``masks``)
      masks           ``(heads, gh, gw)`` bool, DINO's masks (``masks``, ``opts.threshold``)
      top5            ``[{class, name, probability}]`` for presets with a classifier head
      explanation     the ``explain`` probe's maps (``relevance.methods.Explanation``: ``classes``,
                      ``methods``, ``maps`` ``(classes, methods, gh, gw)`` raw)
      record          the ``probes.json`` record: the numbers above in lists, shapes, the model
    ``model`` is the Model, ``opts`` the ImageOptions, ``source`` the path or name.
    """

    def __init__(self, model: Model, measured: pr.ImageProbes):
        a = measured.analysis
        self.model, self.measured = model, measured
        self.source, self.opts = measured.source, measured.opts
        self.image, self.mean_distances, self.rollout = a.display, a.distances, a.rollout
        self.heads, self.masks, self.top5 = a.heads, measured.masks, measured.top5
        self.explanation = measured.explanation

    @property
    def record(self) -> dict:
        return pr.probe_record(self.model, self.measured)

    def figures(self) -> dict:
        """``{probe: matplotlib Figure}``: every figure of the image, then of the model."""
        makers = {**pr.image_figures(self.model, self.measured),
                  **pr.model_figures(self.model, self.opts.model_probes)}
        return {probe: make() for probe, make in makers.items()}

    def save(self, folder, overwrite: bool = False) -> Path:
        """Write into ``folder`` what ``vidattn image SOURCE -o FOLDER`` writes (the same files,
        byte for byte): ``<stem>/<probe>.png``, ``<stem>/probes.json``, ``_model/`` and
        ``index.html``. Returns the path of index.html. Raises VidattnError, writing nothing, if
        ``folder/<stem>`` holds files and not ``overwrite``."""
        return pr.probe_images(self.model, [self.measured], folder, self.opts, overwrite).index

    @functools.cached_property
    def _html(self) -> str:
        """The report's section of this image with its figures embedded, drawn when first shown."""

        def embedded(makers):
            return {p: _data_uri(pr.png_bytes(make()), "image/png") for p, make in makers.items()}

        return report.probe_html(self.model, self.record,
                                 embedded(pr.image_figures(self.model, self.measured)),
                                 embedded(pr.model_figures(self.model, self.opts.model_probes)))

    def _repr_html_(self) -> str:
        return self._html

    def __repr__(self) -> str:
        probes = ",".join(self.opts.probes)
        return f"<{_model_line('ProbeResult', self.model)} · {self.source} · {probes}>"


@_takes_options(ImageOptions)
def probe(image, model=DEFAULT_PRESET, weights=None, *, name=None, checkpoint_key=None,
          **options) -> ProbeResult:
    """Run the probes of ``vidattn image`` on one image -> a ``ProbeResult`` (shown inline).

    image:   a path, a Pillow image or a uint8 RGB ``(H, W, 3)`` array.
    model:   a preset name (``vidattn models`` lists them), a checkpoint folder or
             ``hf:ORG/NAME`` (as ``--model``), or a Model from ``load_model``.
    weights: with a preset name: None (official), a checkpoint path, or "random".
    name:    the name the figures and ``save`` use (default: the path as given; for pixels,
             a Pillow image's file name, else "image").
    """
    m = model_for(model, weights, checkpoint_key)
    opts = ImageOptions(**options)
    if isinstance(image, (str, os.PathLike)):
        pixels, source = load_image(image), image
    else:
        pixels, source = as_rgb(image), getattr(image, "filename", "") or "image"
    return ProbeResult(m, pr.measure(m, pixels, name or source, opts))


def explain(image, model="vit_b16", weights=None, *, method="generic", target="top1",
            head="mean", reference=None, checkpoint_key=None, **options) -> ProbeResult:
    """Why the model says a class: ``probe`` with the ``explain`` probe alone -> a
    ``ProbeResult`` whose ``explanation`` holds the maps (shown inline as the figure).

    method: one relevance method or a comma list (``options.EXPLAIN_METHODS``); target: "top1",
    "topK", a class index or an ImageNet-1k name; head: distilled DeiT's "cls", "dist" or
    "mean"; reference: the path of a reference image, to explain the cosine similarity of the
    CLS feature to its CLS feature instead of a class (``--explain-reference``: for a preset
    without a classifier head, which is otherwise one error line). ``options``: more
    ImageOptions (``size``...)."""
    from vidattn.relevance.targets import check_classifier

    m = model_for(model, weights, checkpoint_key)
    if reference is None:
        check_classifier(m.preset)
    return probe(image, m, probes="explain", explain_method=method, explain_class=str(target),
                 explain_head=head, explain_reference=None if reference is None
                 else os.fspath(reference), **options)


# -- videos ----------------------------------------------------------------------------------------


@dataclass
class RenderResult:
    """A video ``render`` wrote, shown inline in Jupyter as an HTML5 ``<video>`` (a GIF as an
    image). ``output``: its path; ``frames``, ``size`` ``(width, height)``, ``seconds`` (wall
    time); the source, view, model and weights it was rendered with. ``temporary``: the file is
    render's own and is deleted with this object (or at exit)."""

    output: Path
    source: str
    view: str
    frames: int
    size: tuple[int, int]
    seconds: float
    model_line: str
    random: bool
    temporary: bool = False

    def __post_init__(self):
        if self.temporary:
            weakref.finalize(self, Path(self.output).unlink, missing_ok=True)

    def _repr_html_(self) -> str:
        path = Path(self.output)
        mime = _MIME.get(path.suffix.lower(), "video/mp4")
        size = path.stat().st_size
        if size <= EMBED_LIMIT:
            src, note = _data_uri(path.read_bytes(), mime), ""
        elif not self.temporary and path.resolve().is_relative_to(Path.cwd()):
            src = escape(os.path.relpath(path.resolve()))
            note = f" · linked, not embedded ({size / 2**20:.0f} MB)"
        else:
            src, note = "", (f" · {size / 2**20:.0f} MB, too large to embed: pass output= a path "
                             "in the notebook's folder to see it here")
        if not src:
            media = ""
        elif mime == "image/gif":
            media = f'<img src="{src}" alt="attention video" style="max-width: 100%">'
        else:
            media = (f'<video controls loop playsinline preload="auto" style="max-width: 100%">'
                     f'<source src="{src}" type="{mime}"></video>')
        w, h = self.size
        caption = (f"{escape(Path(self.source).name)} · view {escape(self.view)} · "
                   f"{escape(self.model_line)} · {self.frames} frames, {w}x{h}{escape(note)}")
        return report.fragment(self.random, media, f'<p class="meta">{caption}</p>')

    def __repr__(self) -> str:
        return f"<RenderResult {self.model_line} · {self.output} · {self.frames} frames>"


@_takes_options(VideoOptions)
def render(video, output=None, model=DEFAULT_PRESET, weights=None, *, checkpoint_key=None,
           overwrite: bool = False, **options) -> RenderResult:
    """Render what a ViT attends to in every (kept) frame of ``video``, as ``vidattn video``
    does -> a ``RenderResult``, shown inline as a video, with a progress bar (a widget in
    Jupyter).

    output:    .mp4 (H.264 + the input's audio), .mov, .mkv or .gif; None: a temporary .mp4
               that lives as long as the result (it is embedded in the notebook when shown).
    model:     a preset name, a checkpoint folder or ``hf:ORG/NAME``, or a Model from
               ``load_model``; weights: with a name.
    overwrite: replace ``output`` if it exists.
    """
    opts = VideoOptions(**options)
    temporary = output is None
    if temporary:
        fd, output = tempfile.mkstemp(suffix=".mp4", prefix=f"{Path(video).stem}-{opts.view}-",
                                      dir=_scratch())
        os.close(fd)
    elif Path(output).exists() and not overwrite:
        raise VidattnError("output exists (use overwrite=True to replace it)", output)
    m = model_for(model, weights, checkpoint_key)
    try:
        done = render_video(m, video, output, opts)
    except BaseException:
        if temporary:
            Path(output).unlink(missing_ok=True)
        raise
    return RenderResult(done.output, os.fspath(video), opts.view, done.frames, done.size,
                        done.seconds, _model_line("vidattn.render", m), m.is_random, temporary)


@functools.cache
def _scratch() -> Path:
    """This session's folder for ``render``'s own outputs, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="vidattn-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

