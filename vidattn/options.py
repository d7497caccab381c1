"""What each command can be told: every option, its default and its help, declared once.

The dataclasses here are the single home of the rendering and probing options. The library takes
them as they are (``render_video(model, src, dst, VideoOptions(view="heads"))``), and the command
line builds its ``--options`` from their fields (``cli.options_of``): the default, the allowed
values and the help text each field carries in ``metadata``. So a default changes in one place.

This module imports nothing heavy (no numpy, Keras or OpenCV): ``vidattn --help`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from vidattn.errors import VidattnError

__all__ = [
    "DEFAULT_BATCH", "DEFAULT_PRESET", "DEFAULT_SIZE", "DEFAULT_THRESHOLD", "FORMATS",
    "EXPLAIN_HEADS", "EXPLAIN_METHODS", "FACETS", "IMAGE_PROBES", "MODEL_PROBES", "PRECISIONS",
    "PROBES", "SIDE_MAPS", "VIEWER_BLOCKS", "VIEWS",
    "TRACK_PROTOCOLS", "X264_PRESETS", "BatchOptions", "ImageOptions", "ModelOptions", "RayOptions",
    "TrackOptions", "VideoOptions", "check_ray_address", "parse_numbers", "parse_probes",
]

DEFAULT_PRESET = "dino_vits16"  # the model of the commands and of vidattn.probe / vidattn.render
DEFAULT_SIZE = 224  # the resolution the presets were trained at (DINOv2's 518 aside)
DEFAULT_RESAMPLE = "bicubic"  # the study's resize filter (a preset's ``resample`` may differ)
DEFAULT_BATCH = 8
DEFAULT_THRESHOLD = 0.6  # DINO's masks keep 60 % of each head's attention mass
VIEWS = ("heads", "mean", "masks", "rollout", "pca", "similarity", "explain", "side-by-side")
SIDE_MAPS = ("mean", "rollout", "pca", "similarity", "explain")
# A block's patch features, for similarity: its output tokens (with the final norm, as DINO's and
# DINOv2's get_intermediate_layers return them), or the keys, queries or values its attention
# uses (heads side by side, as dino-vit-features concatenates them; after RoPE for DINOv3).
FACETS = ("token", "key", "query", "value")
FORMATS = ("mp4", "gif")
IMAGE_PROBES = ("distance", "rollout", "heads", "masks", "registers", "norms", "pca", "similarity",
                "explain")
EXPLAIN_METHODS = ("generic", "grad-rollout", "gradcam", "attention", "rollout",  # relevance
                   "transformer-attribution", "attnlrp", "cp-lrp")
EXPLAIN_HEADS = ("cls", "dist", "mean")  # distilled DeiT's heads: CLS, distillation, their mean
MODEL_PROBES = ("filters", "posembed")
PROBES = IMAGE_PROBES + MODEL_PROBES
PRECISIONS = ("fp32", "bf16", "fp16")
VIEWER_BLOCKS = ("last", "all")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow")
# Encoding shares the cores with the model, so the default is the fastest preset. CPU time per
# 720p frame measured here at the same CRF: ultrafast 9 ms, superfast 15 ms, veryfast 23 ms, with
# files about 2.8x and 1.5x the size of veryfast's for the first two (--x264-preset to choose).
DEFAULT_X264_PRESET = "ultrafast"
DEFAULT_CRF = 23  # H.264 quality of every video vidattn writes
DEFAULT_PCA_FRAMES = 32  # frames a video's PCA is fitted on: ~6000 tokens at 224, one second


def option(default, help: str, **cli):  # noqa: A002 - "help" as click names it
    """A dataclass field that is also a command-line option: ``help`` is its --help text; ``cli``
    says how the command line takes it: ``choices`` (a tuple), ``min``/``max`` (bounds, open with
    ``min_open``/``max_open``), ``type`` (for a None default: int, float or str), ``flag``
    (False: a bool shown as ``--x/--no-x`` rather than a bare ``--x``), ``flag_value`` (the value
    of the option given without one: ``--x [VALUE]``), ``check`` (a function that raises
    VidattnError for a bad value, run as the command line is read), ``short`` (a one-letter
    alias such as ``-m``)."""
    return field(default=default, metadata={"help": help, **cli})


def _check_memory_budget(text):
    from vidattn.models.memory import parse_bytes

    return None if text is None else parse_bytes(text)


@dataclass
class ModelOptions:
    """Which model the commands load and how much memory a forward pass may take."""

    model: str = option(
        DEFAULT_PRESET, "Model preset (`vidattn models` lists them), or your own checkpoint: a "
        "folder with its config.json (transformers, timm, OpenCLIP), a checkpoint file in one, "
        "or hf:ORG/NAME on the Hugging Face Hub (`vidattn models --inspect PATH` says what it "
        "reads).", metavar="PRESET|PATH|hf:ORG/NAME", short="-m")
    weights: str | None = option(
        None, "Checkpoint file (official .pth, timm or Hugging Face .safetensors, or a Hugging "
        "Face model folder), or 'random' for untrained weights (outputs are labelled RANDOM). "
        "Default: the preset's official weights, from a cache or downloaded once.", type=str,
        metavar="PATH|random")
    checkpoint_key: str = option(
        "teacher", "Network to load from a DINO training checkpoint (teacher or student).")
    memory_budget: int | None = option(
        None, "Working memory a forward pass may take, as 8G, 512M or bytes. Default: 80% of "
        "what is available when the run starts (free GPU memory on a GPU). Attention is "
        "computed in query chunks and the batch lowered (said in one line) to stay within it; "
        "a frame that cannot fit is refused at once, naming the largest --size that would.",
        type=str, metavar="SIZE", check=_check_memory_budget)
    precision: str = option(
        "fp32", "Arithmetic of the model's matmuls: fp32 (exact), or bf16 / fp16 (faster on GPUs "
        "and CPUs that have them; the softmax and the maps stay float32). Everything a reduced "
        "precision makes is labelled with it.", choices=PRECISIONS)
    stride: int | None = option(
        None, "Dense features: overlapping patches S pixels apart (S divides the patch size) for "
        "a finer grid of every map, PCA, similarity and track, as dino-vit-features' "
        "patch_vit_resolution makes them (learned positions only: not DINOv3). The grid grows "
        "as (p / S)^2 and attention as its square. Default: the patch size.", type=int,
        metavar="S", min=1)

    def load(self):
        """``vidattn.load_model`` with these options."""
        from vidattn.models.api import load_model

        return load_model(self.model, weights=self.weights, checkpoint_key=self.checkpoint_key,
                          memory_budget=self.memory_budget, precision=self.precision,
                          stride=self.stride)


def _check_pca_background(value):
    """A VidattnError (one line, from the command's body) unless ``value`` is None or in (0, 1)."""
    if value is not None and not 0 < value < 1:
        raise VidattnError(f"--pca-background must be between 0 and 1 (exclusive), got {value}")


def check_features_path(path):
    """A VidattnError naming ``path`` unless it is None or names a .npy file (--save-features:
    the tokens go there, their .json sidecar beside it)."""
    if path is not None and Path(path).suffix.lower() != ".npy":
        raise VidattnError("--save-features must name a .npy file", path)


def pca_background_option():
    """The --pca-background field of VideoOptions and ImageOptions (declared here, once)."""
    return option(
        None, "pca: remove the background as DINOv2 does: a patch is background when its first "
        "principal component, scaled to 0..1 by the fit sample's 1st and 99th percentiles, is "
        "at most T; the component's sign is chosen so that the foreground (above T) is the "
        "smaller part of the sample. The colours are then fitted on the foreground alone. T in "
        "(0, 1), e.g. 0.5. Default: keep every patch.", type=float, metavar="T")


def facet_option():
    """The --facet field of VideoOptions and ImageOptions (declared here, once)."""
    return option(
        "token", "similarity: the patch features compared: token (the block's output tokens, "
        "final-normed), or the key, query or value of its attention (heads side by side). "
        "dino-vit-features' inspect_similarity.py compares the keys of block 11 (--facet key "
        "--layer 11).", choices=FACETS)


def layer_option():
    """The --layer field of VideoOptions and ImageOptions (declared here, once)."""
    return option(
        -1, "similarity: the block whose features are compared, from 0; negative counts from the "
        "end: -1 the last (default), -2 the one before, which matches parts better for DINO v1 "
        "(dinov2 issue 357).", type=int)


def _check_methods(text):
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    unknown = [n for n in names if n not in EXPLAIN_METHODS]
    if unknown or not names:
        raise VidattnError(f"--explain-method {text!r}: choose among {', '.join(EXPLAIN_METHODS)}")
    return ",".join(names)


def _check_method(text):
    """One method (a video draws one map per frame)."""
    name = _check_methods(text)
    if "," in name:
        raise VidattnError(f"--explain-method {text!r}: a video draws one map per frame; choose "
                           f"one of {', '.join(EXPLAIN_METHODS)}")
    return name


def _check_explain_class(text):
    text = str(text).strip()
    if text.startswith("top") and not text[3:].isdecimal():  # "top²" is a digit, not a number
        raise VidattnError(f"--explain-class {text!r}: topK takes a number, e.g. top1 or top3")
    if text.startswith("top") and int(text[3:]) < 1:
        raise VidattnError(f"--explain-class {text!r}: topK counts from top1")
    return text


def _check_one_class(text):
    """One class per frame: top1, an index or a name."""
    text = _check_explain_class(text)
    if text.startswith("top") and text != "top1":
        raise VidattnError(f"--explain-class {text!r}: a video explains one class per frame: "
                           "top1, an index or a name")
    return text


METHODS_HELP = (
    "generic (Chefer et al. ICCV 2021), grad-rollout (vit-explain, its layer pairing fixed), "
    "gradcam (pytorch-grad-cam's ViT recipe), attention and rollout (the class-agnostic "
    "baselines of Chefer's code), transformer-attribution (Chefer et al. CVPR 2021's LRP), "
    "attnlrp (Achtibat et al. ICML 2024) and cp-lrp (its ViT example's variant, attention "
    "held constant)")


def explain_method_option(one: bool = False):
    """The --explain-method field of ImageOptions (a list: every method by default) and, with
    ``one``, of VideoOptions (one method, generic by default): declared here, once."""
    if one:
        return option(
            EXPLAIN_METHODS[0], f"--view explain: the relevance method, as its reference "
            f"computes it: {METHODS_HELP}.", metavar="METHOD", check=_check_method)
    return option(
        ",".join(EXPLAIN_METHODS), f"explain: comma-separated relevance methods, each as its "
        f"reference computes it: {METHODS_HELP}.", metavar="LIST", check=_check_methods)


def explain_class_option(one: bool = False):
    """The --explain-class field of ImageOptions (top3 by default) and, with ``one``, of
    VideoOptions (one class per frame, top1 by default): declared here, once."""
    if one:
        return option(
            "top1", "--view explain: the class explained in every frame: top1 (each frame's most "
            "probable, named with its probability on the frame), a class index, or a class name "
            "(tabby cat; near misses get suggestions).", metavar="top1|INDEX|NAME",
            check=_check_one_class)
    return option(
        "top3", "explain: the classes explained: topK (each image's K most probable), a class "
        "index, or an ImageNet-1k name (tabby cat; near misses get suggestions).",
        metavar="topK|INDEX|NAME", check=_check_explain_class)


def explain_head_option():
    """The --explain-head field of ImageOptions and VideoOptions (declared here, once)."""
    return option(
        "mean", "explain: distilled DeiT's head: cls, dist (distillation) or mean (their "
        "average, timm's prediction).", choices=EXPLAIN_HEADS)


def explain_reference_option():
    """The --explain-reference field of ImageOptions and VideoOptions (declared here, once):
    the embedding target of ``relevance.targets``."""
    return option(
        None, "explain: a reference image; what is explained is then the cosine similarity of "
        "the CLS feature to the reference's (centre-cropped at --size), not a class: for the "
        "presets without a classifier head (DINO, DINOv2, DINOv3), and any other. Every "
        "gradient method runs from it; a reference identical to the input explains nothing "
        "(the similarity is at its maximum, where its gradient is 0).", type=str,
        metavar="PATH")


def cli_fields(cls):
    """The fields of an options dataclass that the command line offers (those with help)."""
    return [f for f in fields(cls) if "help" in f.metadata]


@dataclass
class VideoOptions:
    """How ``vidattn video`` renders (and ``vidattn batch`` renders each video)."""

    view: str = option(
        "mean", "heads: a grid with every head's CLS attention; mean: the head mean; masks: "
        "DINO's threshold masks, one colour per head; rollout: attention rollout through all "
        "blocks; pca: three principal components of the patch features as red, green and "
        "blue, one basis for the whole video (--pca-frames); similarity: each patch's cosine "
        "similarity to the patch at --query, in every frame; explain (classifier presets): "
        "why the model says a class, a relevance map from its gradients (--explain-method), "
        "the class and its probability written on each frame; side-by-side: the frame beside "
        "the map (--side-map). A model without a class token (SigLIP) shows its pooling "
        "probe's attention wherever CLS attention is named, and rollout starts from it.",
        choices=VIEWS)
    side_map: str = option("mean", "Map shown by --view side-by-side.", choices=SIDE_MAPS)
    size: int = option(
        DEFAULT_SIZE, "Short side, in pixels, of the frames the model sees (aspect kept, padded "
        "to a multiple of the patch). 224 is what the models were trained at and keeps CPU "
        "renders near real time. For images (batch): the side of the square centre crop, a "
        "multiple of the patch.", min=16)
    full_res: bool = option(
        False, "Run the model at the native frame size, as DINO's own video demo (slow: tokens "
        "grow with the area).")
    batch_size: int = option(DEFAULT_BATCH, "Frames per model call.", min=1)
    threshold: float = option(
        DEFAULT_THRESHOLD, "--view masks (and the masks probe of images): share of each head's "
        "attention mass to keep.", min=0, max=1, min_open=True)
    alpha: float = option(0.5, "Opacity of the overlay.", min=0, max=1)
    colormap: str = option("inferno", "Any matplotlib colormap name.")
    captions: bool = option(True, "Head numbers and frame times on the frames.", flag=False)
    smooth: float = option(
        1.0, "Exponential smoothing of the maps across frames, time constant in frames (1 = off; "
        "3 calms flicker).", min=1)
    start: float | None = option(None, "Start time in seconds.", type=float, min=0)
    end: float | None = option(None, "End time in seconds.", type=float, min=0)
    every: int = option(1, "Keep every N-th frame.", min=1)
    max_frames: int | None = option(None, "Stop after this many frames.", type=int, min=1)
    crf: int = option(DEFAULT_CRF, "H.264 quality: lower is better and larger.", min=0, max=51)
    x264_preset: str = option(
        DEFAULT_X264_PRESET, "H.264 speed/size trade-off. Slower presets make smaller files for "
        "the same quality (--crf) but take CPU from the model: at 720p veryfast makes files "
        "about a third the size for 2.5x the encoding time.", choices=X264_PRESETS)
    gif_fps: float | None = option(None, "GIF output: frame-rate cap.", type=float, min=0.1)
    gif_width: int | None = option(None, "GIF output: width cap.", type=int, min=16)
    audio: bool = option(
        True, "Copy the input's audio into MP4/MOV/MKV outputs; --no-audio makes a silent video "
        "(for an input whose audio is damaged or in an unknown codec).", flag=False)
    pca_frames: int = option(
        DEFAULT_PCA_FRAMES, "pca: frames the one PCA basis of the video is fitted on, spread "
        "evenly over the requested range (--start, --end, --max-frames) and each read by "
        "seeking; their patch tokens' 1st and 99th percentiles fix the colour scale, so "
        "colours mean the same in every frame and do not flicker.", min=1)
    pca_background: float | None = pca_background_option()
    query: str | None = option(
        None, "similarity: the query patch, X,Y in frame pixels, and @SECONDS the time of the "
        "frame it is taken from (default: the first frame rendered), e.g. 320,180@2.5. Its "
        "final-normed patch token is compared with every patch of every frame (cosine, drawn "
        "from 0 to 1 on the colormap, the same scale in every frame).", type=str,
        metavar="X,Y[@SECONDS]")
    facet: str = facet_option()
    layer: int = layer_option()
    explain_method: str = explain_method_option(one=True)
    explain_class: str = explain_class_option(one=True)
    explain_head: str = explain_head_option()
    explain_reference: str | None = explain_reference_option()
    viewer_blocks: str = option(
        "last", "--viewer: the blocks whose maps (every head and their mean) the viewer stores: "
        "the last, or all (depth times the data).", choices=VIEWER_BLOCKS)
    viewer_rollout: bool = option(
        False, "--viewer: store attention rollout too (always with --view rollout or "
        "--side-map rollout).")
    viewer_similarity: bool = option(
        False, "--viewer: also store every frame's patch features (the last block's final-normed "
        "tokens, reduced to 32 directions, int8), so that a click on a patch shows its cosine "
        "similarity in every frame; the page says the reduction's largest error.")
    save_maps: Path | None = None  # also write the raw per-frame maps here (.npz)
    save_features: Path | None = None  # also stream the patch tokens here (.npy + .json)
    viewer: Path | None = None  # also write the browser viewer into this folder
    progress: bool = True  # a progress bar on stderr

    def __post_init__(self):
        if self.view not in VIEWS:
            raise VidattnError(f"unknown view {self.view!r}; choose one of {', '.join(VIEWS)}")
        if self.side_map not in SIDE_MAPS:
            raise VidattnError(f"side map must be one of {', '.join(SIDE_MAPS)}")
        _check_threshold(self.threshold)
        if self.smooth < 1:
            raise VidattnError(f"--smooth must be >= 1 (1 = off), got {self.smooth}")
        if self.viewer_blocks not in VIEWER_BLOCKS:
            raise VidattnError(f"--viewer-blocks must be one of {', '.join(VIEWER_BLOCKS)}")
        _check_pca_background(self.pca_background)
        check_features_path(self.save_features)
        if self.needs_similarity != (self.query is not None):
            raise VidattnError("--query X,Y[@SECONDS] goes with --view similarity (or "
                               "--side-map similarity), and they need it")
        self.query_point  # noqa: B018 - parsed now: a bad --query fails before any work
        _check_facet(self.facet)
        _check_method(self.explain_method)
        _check_one_class(self.explain_class)
        if self.explain_head not in EXPLAIN_HEADS:
            raise VidattnError(f"--explain-head must be one of {', '.join(EXPLAIN_HEADS)}")
        if self.viewer is not None:
            _refuse_feature_viewer(self)

    @property
    def needs_explain(self) -> bool:
        return self.view == "explain" or (self.view == "side-by-side"
                                          and self.side_map == "explain")

    @property
    def needs_pca(self) -> bool:
        return self.view == "pca" or (self.view == "side-by-side" and self.side_map == "pca")

    @property
    def needs_similarity(self) -> bool:
        return self.view == "similarity" or (self.view == "side-by-side"
                                             and self.side_map == "similarity")

    @property
    def query_point(self) -> tuple[float, float, float | None] | None:
        """``--query`` as ``(x, y, seconds or None)``; None without one."""
        if self.query is None:
            return None
        point, _, seconds = str(self.query).partition("@")
        x, y = parse_numbers(point, 2, "--query")
        if not seconds:
            return x, y, None
        (t,) = parse_numbers(seconds, 1, "--query's @SECONDS")
        return x, y, t

    @property
    def needs_rollout(self) -> bool:
        return self.view == "rollout" or (self.view == "side-by-side" and self.side_map == "rollout")

    @property
    def viewer_has_rollout(self) -> bool:
        """Whether the viewer stores rollout: asked for, or computed for the view anyway."""
        return self.viewer is not None and (self.viewer_rollout or self.needs_rollout)


def _refuse_feature_viewer(video: VideoOptions):
    """The browser viewer shows attention: one error line when it is asked for with a pca or a
    similarity view."""
    if video.needs_pca or video.needs_similarity or video.needs_explain:
        which = "pca" if video.needs_pca else "similarity" if video.needs_similarity else "explain"
        raise VidattnError(f"--viewer shows attention; it cannot be combined with "
                           f"{'an' if which == 'explain' else 'a'} {which} view")


def _check_facet(facet: str):
    if facet not in FACETS:
        raise VidattnError(f"--facet must be one of {', '.join(FACETS)}, got {facet!r}")


def _check_threshold(value: float):
    if not 0 < value <= 1:
        raise VidattnError(f"--threshold must be in (0, 1], got {value}")


def parse_probes(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma list such as ``"distance,heads"`` -> probe names in canonical order."""
    names = {t.strip() for t in text.split(",") if t.strip()}
    if "all" in names:
        return PROBES
    unknown = sorted(names - set(PROBES))
    if unknown or not names:
        raise VidattnError(f"unknown probe(s) {', '.join(unknown) or repr(text)}; choose all or "
                           f"any of {','.join(PROBES)}")
    return tuple(p for p in PROBES if p in names)


@dataclass
class ImageOptions:
    """What ``vidattn image`` probes (and ``vidattn batch`` probes on each image)."""

    probes: tuple[str, ...] | str = option(
        "all", "Comma-separated probes: distance, rollout, heads, masks, registers, norms, pca, "
        "similarity (per image; similarity runs with --query, and all includes it only then), "
        "filters, posembed (per model). A probe a model cannot have (registers without "
        "registers, posembed without learned positions, explain without a classifier head) is "
        "skipped and said so.", metavar="all|LIST")
    size: int = option(
        DEFAULT_SIZE, "Side of the square centre crop the model sees (a multiple of the patch).",
        min=1)
    threshold: float = option(
        DEFAULT_THRESHOLD, "masks: share of each head's attention mass to keep.", min=0, max=1,
        min_open=True)
    viewer: bool = option(
        False, "Also write a browser page per image, DIR/<stem>/viewer.html: click a patch to see "
        "where it looks, in any block and head, or rollout (stores every block's attention).")
    pca_background: float | None = pca_background_option()
    query: str | None = option(
        None, "similarity: the query patch, X,Y in the pixels of the first image (of each image "
        "in a batch). Every image's map is the cosine similarity of its final-normed patch "
        "tokens to that patch's token.", type=str, metavar="X,Y")
    facet: str = facet_option()
    layer: int = layer_option()
    explain_method: str = explain_method_option()
    explain_class: str = explain_class_option()
    explain_head: str = explain_head_option()
    explain_reference: str | None = explain_reference_option()
    save_features: Path | None = None  # also write every image's patch tokens here (.npy + .json)

    def __post_init__(self):
        if isinstance(self.probes, str):
            asked = "similarity" in {t.strip() for t in self.probes.split(",")}
            self.probes = parse_probes(self.probes)
            if self.query is None and not asked:  # "all" without --query: no similarity
                self.probes = tuple(p for p in self.probes if p != "similarity")
        if ("similarity" in self.probes) != (self.query is not None):
            raise VidattnError("--query X,Y goes with the similarity probe, and it needs it")
        self.query_point  # noqa: B018 - parsed now: a bad --query fails before any work
        _check_facet(self.facet)
        _check_methods(self.explain_method)
        _check_explain_class(self.explain_class)
        _check_threshold(self.threshold)
        _check_pca_background(self.pca_background)
        check_features_path(self.save_features)

    @property
    def query_point(self) -> tuple[float, float] | None:
        """``--query`` as ``(x, y)`` in image pixels; None without one."""
        return None if self.query is None else parse_numbers(self.query, 2, "--query")

    @property
    def image_probes(self) -> list[str]:
        """The per-image probes asked for, in canonical order."""
        return [p for p in IMAGE_PROBES if p in self.probes]

    @property
    def model_probes(self) -> list[str]:
        """The per-model probes asked for, in canonical order."""
        return [p for p in MODEL_PROBES if p in self.probes]


@dataclass
class BatchOptions:
    """What ``vidattn batch`` is told besides its folders.

    video: the options of every video render (its ``progress`` and ``save_maps`` are ignored:
    batch shows one bar over the files). image: the probes of every image. The rest are options.
    """

    video: VideoOptions = field(default_factory=VideoOptions)
    image: ImageOptions = field(default_factory=ImageOptions)
    format: str = option("mp4", "Container of the rendered videos.", choices=FORMATS)
    viewer: bool = option(
        False, "Also write a browser viewer for every video (OUTDIR/_viewer/<output>/index.html) "
        "and image (its folder's viewer.html), linked from the gallery OUTDIR/index.html.")
    overwrite: bool = False  # also replace outputs the manifest does not know (OUTDIR's own)
    progress: bool = True  # a bar over the files
    raise_unexpected: bool = False  # let a bug's exception out instead of recording it (--debug)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise VidattnError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.viewer:
            _refuse_feature_viewer(self.video)


def check_ray_address(address: str | None) -> str | None:
    """``address`` unless it cannot be a Ray address: None or "" (no address), ``auto``,
    ``local``, or anything with a port (``HOST:PORT``, ``ray://HOST:PORT``). A folder name is
    refused, as it is what ``--ray INDIR`` would take when INDIR follows --ray."""
    if address and address not in ("auto", "local") and ":" not in address:
        raise VidattnError(f"{address!r} is not a Ray address (auto, local, HOST:PORT or "
                           "ray://HOST:PORT); to start a local Ray instance put --ray after "
                           "INDIR, or write --ray=ADDRESS")
    return address


@dataclass
class RayOptions:
    """Where ``vidattn batch --ray`` runs and how its workers are sized (see ``batch_ray``).

    ray: None runs the batch here, without Ray; "" starts a local Ray instance (or joins the
    cluster RAY_ADDRESS names, as ``ray.init()`` does); "auto", "HOST:PORT" or "ray://HOST:PORT"
    join a cluster. attempts: how many times a file is tried when its worker dies under it.
    """

    ray: str | None = option(
        None, "Run the batch on Ray. Without ADDRESS: a new local Ray instance with this "
        "machine's cores (or the cluster RAY_ADDRESS names); auto: the cluster this machine "
        "joined with `ray start`; or HOST:PORT, ray://HOST:PORT. Every node must see INDIR and "
        "OUTDIR at the same paths (a shared file system).", type=str, metavar="[ADDRESS]",
        flag_value="", check=check_ray_address)
    workers: int | None = option(
        None, "--ray: workers, each a Ray actor that loads the model once. Default: as many as "
        "the cluster's CPUs (and GPUs) hold, at most one per file.", type=int, min=1)
    cpus_per_worker: float = option(
        1.0, "--ray: CPUs each worker reserves (fractions allowed).", min=0, min_open=True)
    gpus_per_worker: float = option(
        0.0, "--ray: GPUs each worker reserves; 0.5 puts two workers on each GPU (fractions "
        "below 1, whole numbers above).", min=0)
    attempts: int = 3

    def __post_init__(self):
        check_ray_address(self.ray)
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise VidattnError(f"--gpus-per-worker {self.gpus_per_worker}: a fraction must be "
                               "below 1 (Ray shares a GPU, never spans part of one)")
        if self.attempts < 1:
            raise VidattnError(f"attempts must be at least 1, got {self.attempts}")


TRACK_PROTOCOLS = ("dino", "dinov3")


NUMBERS_SHAPE = {1: "SECONDS", 2: "X,Y, in frame pixels", 4: "X0,Y0,X1,Y1, in frame pixels"}


def parse_numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    """``"X,Y"`` (``count`` comma-separated finite numbers, >= 0) -> floats, else a one-line
    VidattnError naming the option ``what`` (1 number: seconds; 2: a point; 4: a box)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(0 <= v < float("inf") for v in values):
        raise VidattnError(f"{what} {text!r}: expected {count} comma-separated numbers >= 0 "
                           f"({NUMBERS_SHAPE.get(count, '')})")
    return values


@dataclass
class TrackOptions:
    """How ``vidattn track`` propagates a first frame's objects through a video, and draws them.

    The protocol fields left None take the protocol's own value (``track.protocols``); the
    seed (``--mask``, ``--point``, ``--box``) is a ``track.seeds.Seed``, given apart."""

    protocol: str | None = option(
        None, "Label propagation as in: dino (facebookresearch/dino eval_video_segmentation.py: "
        "short side 480, square neighbourhood 12, top-5, exp(cos/0.1)) or dinov3 (dinov3's "
        "segmentation_tracking notebook: short side 960, circle of radius 12, top-5, softmax at "
        "0.2); both use the first frame and the 7 frames before. Default: the model family's "
        "(dinov3 for DINOv3 presets, dino for the others).", choices=TRACK_PROTOCOLS)
    size: int | None = option(
        None, "Short side, in pixels, the frames are resized to (default: the protocol's).",
        type=int, min=16)
    neighbourhood: int | None = option(
        None, "Size of the neighbourhood a patch may take its label from, in patches (default: "
        "the protocol's, 12; 0 = the whole frame).", type=int, min=0)
    topk: int | None = option(
        None, "Keys each patch takes its label from (default: the protocol's, 5).", type=int,
        min=1)
    temperature: float | None = option(
        None, "Temperature of the affinity (default: the protocol's, 0.1 or 0.2).", type=float,
        min=0, min_open=True)
    context: int | None = option(
        None, "Previous frames a frame takes labels from, besides the first (default: the "
        "protocol's, 7).", type=int, min=0)
    start: float | None = option(
        None, "Time, in seconds, of the frame the seed belongs to; tracking starts there.",
        type=float, min=0)
    end: float | None = option(None, "End time in seconds.", type=float, min=0)
    max_frames: int | None = option(None, "Stop after this many frames.", type=int, min=1)
    batch_size: int = option(DEFAULT_BATCH, "Frames per model call.", min=1)
    alpha: float = option(0.5, "Opacity of the masks' colour.", min=0, max=1)
    side_by_side: bool = option(
        False, "Show the similarity map beside the masks: each patch's cosine similarity to the "
        "nearest object's mean feature in the first frame.")
    colormap: str = option("inferno", "Matplotlib colormap of the similarity map.")
    captions: bool = option(True, "Frame times and the protocol on the frames.", flag=False)
    crf: int = option(DEFAULT_CRF, "H.264 quality: lower is better and larger.", min=0, max=51)
    x264_preset: str = option(DEFAULT_X264_PRESET, "H.264 speed/size trade-off.",
                              choices=X264_PRESETS)
    audio: bool = option(True, "Copy the input's audio into the output video.", flag=False)
    save_masks: Path | None = None  # also write DAVIS-style indexed PNGs into this folder
    save_probs: Path | None = None  # also stream the per-object probabilities here (.npy)
    progress: bool = True

    def __post_init__(self):
        if self.protocol is not None and self.protocol not in TRACK_PROTOCOLS:
            raise VidattnError(f"unknown protocol {self.protocol!r}; choose "
                               f"{', '.join(TRACK_PROTOCOLS)}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise VidattnError(f"--end ({self.end:g}) must be after --start ({self.start:g})")
        if self.save_probs is not None and Path(self.save_probs).suffix.lower() != ".npy":
            raise VidattnError("--save-probs must name a .npy file", self.save_probs)
