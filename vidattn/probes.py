"""The reference study's still-image probes: numbers, and a figure for each.

Per image (one forward pass of the ``size x size`` centre crop the model sees, ``analyse``):

- ``distance``: mean attention distance per block and head, in pixels (Dosovitskiy et al.; Raghu
  et al.), drawn as the study's scatter: block on x, one point per head.
- ``rollout``: attention rollout through every block (Abnar & Zuidema): input | map x image |
  colormap overlay.
- ``heads``: the last block's CLS attention, one overlay per head (DINO's heatmaps).
- ``masks``: DINO's threshold masks, the smallest set of patches holding ``keep`` of each head's
  CLS attention mass.
- ``norms``: the output patch tokens' norms before the final norm (high-norm artifacts).
- ``similarity`` (with ``--query X,Y``): the cosine similarity of every patch token to the token
  of the query patch, at ``X,Y`` in the first image of the run (each image's own in a batch),
  drawn on every image: the patch matching of the DINOv2 and DINOv3 notebooks.
- ``pca``: three principal components of the final-normed patch tokens as red, green and blue
  (DINOv2's Figure 1; ``features.fit_basis``), with the explained variance ratio of each; and,
  over a run of several images, one joint PCA of all their tokens drawn as one figure
  (``OUTDIR/_model/pca-joint.png``), so the same part of different objects gets the same colour.
- top-5 ImageNet-1k classes, for presets with a 1000-way head (numbers only).

Per model (the same for every image): ``filters``, the first 128 patch-projection filters, and
``posembed``, the dot-product similarity of the patch position embeddings.

Maps are drawn on ``preprocess.display_image``, the exact crop the model saw, so a map's cell
``(i, j)`` covers pixels ``[i*p, (i+1)*p) x [j*p, (j+1)*p)`` of the picture it is drawn on.
Figures are plain ``matplotlib.figure.Figure`` objects on the Agg canvas, never registered with
pyplot: nothing stays open, however many images a batch renders. Every title names the preset and
the weights; random weights are called out in red.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from tqdm.auto import tqdm

from vidattn import attention as am
from vidattn import draw
from vidattn.cells import cell_index
from vidattn.errors import VidattnError
from vidattn.features import FeatureWriter, PcaBasis, fit_basis, model_meta, similarity_maps
from vidattn.io import unique_names, write_bytes_atomic
from vidattn.options import DEFAULT_SIZE, IMAGE_PROBES, MODEL_PROBES, ImageOptions
from vidattn.preprocess import crop_point, display_image, load_image, preprocess_image
from vidattn.relevance.targets import class_names
from vidattn.report import write_index
from vidattn.viewer.image import ImageRun

MODEL_FOLDER = "_model"  # OUTDIR/_model/ holds the model-level figures of a run (and a batch's)
JOINT_PCA = "pca-joint"  # OUTDIR/_model/pca-joint.png and .json: the joint PCA of a run's images
JOINT_PANELS = 24  # the joint figure shows the first 24 images (the fit takes them all)

COLORMAP = "inferno"
ALPHA = 0.6  # the study's heatmap opacity
DPI = 100
MAX_FILTERS = 128  # the study shows the first 128 filters, 8 rows of 16
FILTER_COLUMNS = 16


# -- numbers ---------------------------------------------------------------------------------------


def check_size(model, size: int) -> None:
    """Raise VidattnError unless ``size`` (the square crop's side) is a positive multiple of the
    model's patch size: the model takes whole patches only."""
    p = model.preset.patch_size
    if size < p or size % p:
        raise VidattnError(f"--size {size} must be a multiple of the patch size {p} "
                           f"of {model.preset.name} (e.g. {max(1, round(size / p)) * p})")


def mean_distances(model, attns, grid_hw) -> np.ndarray:
    """Mean attention distance in pixels, ``(N, depth, heads)``, from the per-block attention
    ``model.run(..., attention="all")`` returns (a list of ``(N, heads, T, T)``, first block
    first), with the model's prefix tokens removed and the pixels between neighbouring patches
    (the patch size, or the stride of overlapping ones) as the unit."""
    s, n_prefix = model.preset.cell_stride, model.preset.num_prefix_tokens
    return np.stack([am.mean_attention_distance(a, n_prefix, grid_hw, s) for a in attns], axis=1)


def average_mean_distance(model, images, size: int = DEFAULT_SIZE, batch_size: int = 8) -> np.ndarray:
    """The study's mean attention distance averaged over many images, ``(depth, heads)`` pixels.

    ``images``: paths or uint8 RGB ``(H, W, 3)`` arrays, preprocessed as ``preprocess_image``; the
    model runs on batches of ``batch_size`` and a ``RunningMean`` accumulates, so memory holds one
    batch's attention however many images there are. An unreadable file raises VidattnError.
    """
    check_size(model, size)
    grid = model.preset.grid_at((size, size))
    running = am.RunningMean()
    batch = []

    def flush():
        out = model.run(np.concatenate(batch), attention="all")
        running.add(mean_distances(model, out["attention"], grid))
        batch.clear()

    for image in images:
        pixels = image if isinstance(image, np.ndarray) else load_image(image)
        batch.append(preprocess_image(pixels, model.preset.preprocessing, size,
                                      model.preset.resample))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return running.mean


def rollout_maps(model, rows, grid_hw) -> np.ndarray:
    """Attention rollout through every block, from ``model.run(..., rollout=True)["rollout"]``
    ``(N, T)`` -> ``(N, gh, gw)`` peaking at 1 (see ``attention.rollout_map``)."""
    return am.rollout_map(rows, model.preset.num_prefix_tokens, grid_hw)


def head_maps(model, out, grid_hw) -> np.ndarray:
    """The last block's CLS attention per head (a pooling probe's, for a model without a class
    token: ``attention.class_rows``) from ``model.run``'s ``out``, ``(N, heads, gh, gw)``,
    unscaled."""
    return am.cls_maps(am.class_rows(out), model.preset.num_prefix_tokens, grid_hw)


def register_shares(model, attns) -> np.ndarray:
    """The share of the CLS token's attention that goes to the registers, per block and head,
    ``(N, depth, heads)``, from every block's attention."""
    start = model.preset.num_class_tokens
    stop = start + model.preset.num_register_tokens
    return np.stack([am.cls_share(a, start, stop) for a in attns], axis=1)


def not_applicable(model, probe: str, opts: ImageOptions | None = None) -> str | None:
    """Why ``model`` cannot have ``probe`` with ``opts``, or None when it can (``explain``
    without a classifier head can, given a reference image)."""
    if probe == "registers" and not model.preset.num_register_tokens:
        return "the model has no register tokens"
    if probe == "posembed" and model.patch_position_embeddings() is None:
        return "the model has no learned position embeddings (RoPE)"
    if probe == "explain" and not model.preset.num_classes and not (
            opts and opts.explain_reference):
        from vidattn.relevance.targets import HOW_TO_REFER

        return f"the model has no classifier head, so no class to explain: {HOW_TO_REFER}"
    return None


def top_classes(model, logits, k: int = 5) -> list[dict]:
    """The ``k`` most probable classes of one image's logits ``(C,)``, best first: dicts of
    ``class`` (index), ``name`` (``relevance.targets.class_names``: the model's own names, such
    as a checkpoint config's ``id2label``, else ImageNet-1k's short name for a 1000-way head,
    else None) and ``probability`` (softmax)."""
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    names = class_names(model.preset, short=True)
    best = np.argsort(-probs, kind="stable")[:k]
    return [
        {"class": int(i), "name": names[i] if names else None, "probability": float(probs[i])}
        for i in best
    ]


def filter_images(model, limit: int = MAX_FILTERS) -> np.ndarray:
    """The first ``limit`` patch-projection filters as RGB images in [0, 1], ``(n, p, p, 3)``.

    The study's scaling: sklearn's ``MinMaxScaler`` on the ``(p*p*3, D)`` kernel, i.e. each filter
    (column) is min-max scaled on its own; a constant filter becomes 0, as sklearn does.
    """
    filters = model.patch_filters()  # (p, p, 3, D)
    p, d = filters.shape[0], filters.shape[-1]
    flat = filters.reshape(-1, d)[:, :limit].astype(np.float64)
    low, span = flat.min(axis=0), np.ptp(flat, axis=0)
    scaled = (flat - low) / np.where(span > 0, span, 1.0)
    return np.moveaxis(scaled.reshape(p, p, 3, -1), -1, 0)


def position_similarity(model) -> np.ndarray:
    """Dot products of the patch position embeddings (class tokens dropped), ``(P, P)``,
    ``P = grid**2`` patches in row-major order."""
    pos = model.patch_position_embeddings().astype(np.float64)
    return pos @ pos.T


@dataclass
class Analysis:
    """What one forward pass of one image gives the per-image probes.

    The attention itself is not kept: for a ViT-B/8 every block's ``(heads, T, T)`` is hundreds of
    MB, and the probes need only these reductions of it. Fields are None for probes not asked for.

    image_hw:  ``(H, W)`` of the source image.
    display:   uint8 ``(size, size, 3)``, the crop the model saw.
    grid_hw:   ``(gh, gw)`` patch grid.
    tokens:    tokens per image, prefix tokens included.
    distances: ``(depth, heads)`` mean attention distance in pixels.
    rollout:   ``(gh, gw)`` rollout map, peak 1.
    heads:     ``(heads, gh, gw)`` last-block CLS attention.
    registers: ``(depth, heads)`` share of the CLS attention that goes to the registers.
    norms:     ``(gh, gw)`` norms of the output patch tokens before the final norm.
    patch_tokens: ``(gh * gw, D)`` final-normed patch tokens (``pca``, saved features).
    facet_tokens: ``(gh * gw, D)`` the patch features ``similarity`` compares.
    logits:    ``(C,)`` where the preset has a head.
    """

    image_hw: tuple[int, int]
    display: np.ndarray
    grid_hw: tuple[int, int]
    tokens: int
    distances: np.ndarray | None = None
    rollout: np.ndarray | None = None
    heads: np.ndarray | None = None
    registers: np.ndarray | None = None
    norms: np.ndarray | None = None
    patch_tokens: np.ndarray | None = None
    facet_tokens: np.ndarray | None = None
    logits: np.ndarray | None = None


def analyse(model, image, size: int = DEFAULT_SIZE, probes=IMAGE_PROBES,
            tokens: bool = False, facet=(-1, "token")) -> Analysis:
    """Run the model once on an image (a path or uint8 RGB ``(H, W, 3)``) for ``probes``.

    Only as much attention as the probes need leaves the model: every block for ``distance`` and
    ``registers``, the class tokens' rows of the last for ``heads`` and ``masks``, none
    otherwise (top-5 needs only
    logits); ``rollout`` is computed inside the model, and the patch tokens leave it only for
    ``norms`` and ``pca``, or with ``tokens`` (saved features); ``similarity`` takes the
    ``facet`` ``(block, kind)`` (``Model.run``).
    """
    check_size(model, size)
    pixels = image if isinstance(image, np.ndarray) else load_image(image)
    probes = set(probes)
    mode = ("all" if probes & {"distance", "registers"} else
            "cls" if probes & {"heads", "masks"} else "none")
    tokens = tokens or bool(probes & {"norms", "pca"})
    p = model.preset
    out = model.run(preprocess_image(pixels, p.preprocessing, size, p.resample), attention=mode,
                    rollout="rollout" in probes, tokens=tokens,
                    facet=facet if "similarity" in probes else None)
    attns = out["attention"]
    grid = model.preset.grid_at((size, size))
    return Analysis(
        image_hw=tuple(pixels.shape[:2]),
        display=display_image(pixels, size, p.resample),
        grid_hw=grid,
        tokens=model.preset.tokens_at((size, size)),
        distances=mean_distances(model, attns, grid)[0] if "distance" in probes else None,
        rollout=rollout_maps(model, out["rollout"], grid)[0] if "rollout" in probes else None,
        heads=head_maps(model, out, grid)[0] if probes & {"heads", "masks"} else None,
        registers=register_shares(model, attns)[0] if "registers" in probes else None,
        norms=out["patch_norms"][0].reshape(grid) if "norms" in probes else None,
        patch_tokens=out["patch_tokens"][0] if tokens else None,
        facet_tokens=out["facet_tokens"][0] if "facet_tokens" in out else None,
        logits=out["logits"][0] if "logits" in out else None,
    )


# -- pictures --------------------------------------------------------------------------------------


def upsample(maps, image_hw, patch: int, stride: int | None = None) -> np.ndarray:
    """Grid maps ``(..., gh, gw)`` scaled to peak 1 and upsampled (bilinear) onto the square crop
    they came from, ``image_hw`` -> float32 ``(..., H, W)`` in [0, 1]: the heat that the figures
    draw, in the display image's own pixel coordinates (``cells.map_to_frame``)."""
    return draw.map_to_frame(am.normalize_maps(maps), image_hw, None, patch, stride=stride)


def heat_overlay(display, heat, alpha: float = ALPHA, colormap=COLORMAP) -> np.ndarray:
    """uint8 display image ``(H, W, 3)`` with ``(H, W)`` heat as a colormap glow -> uint8 image."""
    return draw.overlay(display, heat, draw.colormap_lut(colormap), alpha)


def mask_image(display, masks, preset, colors, alpha: float = 0.45):
    """Grid masks ``(k, gh, gw)`` bool drawn onto the uint8 display image, mask i in
    ``colors[i]``, as DINO shows them: whole cells (nearest upsampling), tinted and outlined."""
    return draw.draw_masks(display, masks, colors, alpha, preset.patch_size,
                           interpolation="nearest", stride=preset.stride)


def _figure(model, what: str, width: float, height: float) -> Figure:
    """A ``width x height`` inch Figure on the Agg canvas, titled with the probe, the preset and
    the weights; widened if the title would not fit. Random weights get a red title that says
    so, since their maps are noise."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if model.is_random:
        title = fig.suptitle(f"{what}\n{model.preset.name} · RANDOM (untrained) WEIGHTS",
                             color="firebrick", fontweight="bold", fontsize=13)
    else:
        title = fig.suptitle(f"{what}\n{model.preset.name} · weights: {model.weights_label}",
                             fontsize=13)
    needed = title.get_window_extent(fig.canvas.get_renderer()).width / DPI + 0.4
    fig.set_figwidth(max(width, needed))
    return fig


def _panel_figure(model, what: str, panels, cols=None) -> Figure:
    """A titled figure of same-sized uint8 images, ``panels`` = ``[(title, image), ...]``, in the
    grid ``draw.grid_shape`` picks (or ``cols`` columns), each panel 3 inches wide."""
    h, w = panels[0][1].shape[:2]
    rows, cols = draw.grid_shape(len(panels), (h, w), cols)
    fig = _figure(model, what, 3 * cols, 3 * rows * h / w + 1)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
        ax.set(xticks=[], yticks=[])  # hidden axes still lay their ticks out: a third of the time
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=11)
    return fig


def _named(what: str, name: str, limit: int = 40) -> str:
    """``what · name``, a long name shortened in the middle so titles stay one figure wide."""
    if len(name) > limit:
        name = f"{name[: limit // 2 - 1]}…{name[-(limit // 2):]}"
    return f"{what} · {name}" if what and name else what or name


def distance_figure(model, distances, name: str = "") -> Figure:
    """The study's scatter of ``(depth, heads)`` mean attention distances: block on x, distance
    in pixels on y, one point per head, one colour per block."""
    depth, heads = distances.shape
    fig = _figure(model, _named("Mean attention distance", name), 9, 7)
    ax = fig.add_subplot()
    colors = draw.colormap_lut("viridis")[np.linspace(0, 230, depth).astype(int)] / 255
    for b in range(depth):
        ax.scatter(np.full(heads, b), distances[b], color=colors[b], s=36, label=f"block {b}",
                   edgecolors="black", linewidths=0.4, zorder=3)
    ax.set_xlabel("Transformer block", fontsize=12)
    ax.set_ylabel("Mean attention distance (pixels)", fontsize=12)
    ax.set_xticks(range(depth))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.4)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9,
              title=f"{heads} heads each", title_fontsize=9)
    return fig


def rollout_figure(model, display, rollout_map, name: str = "", top=None) -> Figure:
    """The study's rollout display on the uint8 display image: input | map x image | overlay.
    ``rollout_map`` is ``(gh, gw)``; ``top`` (``top_classes`` output) adds the prediction."""
    what = _named("Attention rollout", name)
    if top:
        what += f" · predicted: {top[0]['name'] or top[0]['class']} ({top[0]['probability']:.0%})"
    heat = upsample(rollout_map, display.shape[:2], model.preset.patch_size, model.preset.stride)
    masked = (heat[..., None] * display).astype(np.uint8)
    panels = [
        ("Input (the crop the model saw)", display),
        ("Rollout map × image", masked),
        ("Rollout overlay", heat_overlay(display, heat)),
    ]
    return _panel_figure(model, what, panels, cols=3)


def heads_figure(model, display, maps, name: str = "") -> Figure:
    """Last-block CLS attention ``(heads, gh, gw)`` overlaid per head on the display image, one
    labelled panel per head, each map scaled to its own peak."""
    what = _named("Last-block CLS attention per head (each scaled to its peak)", name)
    heats = upsample(maps, display.shape[:2], model.preset.patch_size, model.preset.stride)
    panels = [(f"head {k}", heat_overlay(display, heat)) for k, heat in enumerate(heats)]
    return _panel_figure(model, what, panels)


def masks_figure(model, display, masks, keep: float, name: str = "") -> Figure:
    """DINO's threshold masks ``(heads, gh, gw)`` bool: one panel per head in its colour, with its
    patch count, and a last panel with every head."""
    colors, p = draw.head_colors(len(masks)), model.preset
    panels = [(f"head {k}: {int(m.sum())} patches", mask_image(display, m[None], p, [c]))
              for k, (m, c) in enumerate(zip(masks, colors))]
    panels.append(("all heads", mask_image(display, masks, p, colors, alpha=0.25)))
    what = _named(f"DINO masks: fewest patches holding {keep:.0%} of each head's CLS attention",
                  name)
    return _panel_figure(model, what, panels)


def registers_figure(model, shares, name: str = "") -> Figure:
    """The share of the CLS token's attention that goes to the registers, ``(depth, heads)``, as
    a block x head grid with each cell's percentage."""
    depth, heads = shares.shape
    what = _named(f"CLS attention on the {model.preset.num_register_tokens} registers", name)
    fig = _figure(model, what, max(6.0, 0.7 * heads + 2.5), max(5.0, 0.42 * depth + 2))
    ax = fig.add_subplot()
    shown = ax.imshow(100 * shares, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (b, h), value in np.ndenumerate(100 * shares):
        ax.text(h, b, f"{value:.0f}", ha="center", va="center", fontsize=7,
                color="black" if value > 60 else "white")
    ax.set_xlabel("head")
    ax.set_ylabel("block")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(depth))
    fig.colorbar(shown, ax=ax, shrink=0.85, label="% of the CLS attention")
    return fig


def norms_figure(model, display, norms, name: str = "") -> Figure:
    """Output patch-token norms ``(gh, gw)``, taken before the final LayerNorm (which would
    even them out; this is where the high-norm artifact tokens of a ViT without registers live,
    as in dinov2 issue 373): the crop, the norm of each patch over it (whole patches, so a lone
    high-norm token stays one cell), and their histogram, where artifacts are a separate mode."""
    p = model.preset
    low, span = norms.min(), np.ptp(norms)
    scaled = (norms - low) / span if span > 0 else np.zeros_like(norms)
    heat = draw.map_to_frame(scaled, display.shape[:2], None, p.patch_size, "nearest", p.stride)
    fig = _figure(model, _named("Output patch-token norms (before the final norm)", name), 13,
                  4.6)
    axes = fig.subplots(1, 3)
    axes[0].imshow(display)
    axes[0].set_title("Input (the crop the model saw)", fontsize=11)
    axes[1].imshow(heat_overlay(display, heat, alpha=0.75))
    axes[1].set_title(f"Norm per patch ({low:.1f} dark to {norms.max():.1f} bright)", fontsize=11)
    for ax in axes[:2]:
        ax.set_axis_off()
    axes[2].hist(norms.ravel(), bins=40 if np.ptp(norms) > 0 else 1, color="slategray")
    axes[2].set_xlabel("patch-token norm")
    axes[2].set_ylabel("patches")
    axes[2].axvline(float(np.median(norms)), color="firebrick", lw=1, label="median")
    axes[2].legend(fontsize=9)
    return fig


def _pca_panels(model, display, basis: PcaBasis, tokens, grid_hw):
    """The colours of one image's patches ``(gh * gw, D)`` under ``basis``, whole patches on the
    crop's pixel grid (``(size, size, 3)`` uint8, black where background), and those colours
    blended over the crop (the background left untouched)."""
    drawn = basis.draw(tokens).reshape(*grid_hw, 4)
    hw, p = display.shape[:2], model.preset
    patches = upsample_nearest(draw.to_uint8(drawn[..., :3] * drawn[..., 3:]), hw, p)
    return patches, draw.blend(display, patches, upsample_nearest(drawn[..., 3], hw, p) * ALPHA)


def upsample_nearest(grid_map, image_hw, preset) -> np.ndarray:
    """``(gh, gw, ...)`` -> ``(H, W, ...)``: each pixel of the crop takes its nearest cell
    (``cells.cell_index``; whole patches without overlap, as DINO shows its cells)."""
    (h, w), (gh, gw) = image_hw, grid_map.shape[:2]
    p, s = preset.patch_size, preset.stride
    rows, cols = cell_index(np.arange(h) + 0.5, gh, p, s), cell_index(np.arange(w) + 0.5, gw, p, s)
    return grid_map[rows[:, None], cols[None, :]]


def _explained(basis: PcaBasis) -> str:
    return " / ".join(f"{v:.0%}" for v in basis.colours.explained)


def pca_figure(model, display, basis: PcaBasis, tokens, grid_hw, name: str = "") -> Figure:
    """One image's patch-token PCA (``basis`` fitted on its own ``(gh * gw, D)`` tokens): input |
    the first three components as red, green, blue | blended over the input."""
    patches, blended = _pca_panels(model, display, basis, tokens, grid_hw)
    what = _named("Patch features: 3 principal components as RGB", name)
    panels = [("Input (the crop the model saw)", display),
              (f"PCA (explained variance {_explained(basis)})", patches),
              ("PCA over the input", blended)]
    return _panel_figure(model, what, panels, cols=3)


def joint_pca_figure(model, items, basis: PcaBasis) -> Figure:
    """The joint PCA of a run: ``items`` ``[(name, display, tokens, grid_hw), ...]`` each drawn
    as its crop beside its colours under the one ``basis`` fitted on all their tokens, so the
    same part of different objects has the same colour."""
    panels = [(_named("", name), draw.side_by_side(display, _pca_panels(
        model, display, basis, tokens, grid)[0])) for name, display, tokens, grid in items]
    what = (f"Joint PCA of the patch features of {len(items)} images "
            f"(explained variance {_explained(basis)})")
    return _panel_figure(model, what, panels)


def similarity_figure(model, display, similarity, query: dict, own: bool, features: str,
                      name: str = "") -> Figure:
    """One image's similarity map ``(gh, gw)`` (cosine, drawn 0..1 on the colormap, not
    rescaled): the input (with the query patch outlined, ``own``: the query is this image's) |
    the overlay. ``query``: ``Query.record()``; ``features``: what was compared, for the title."""
    p, s = model.preset.patch_size, model.preset.cell_stride
    shown = display.copy()
    if own:  # the query's patch, p x p at its cell (overlapping ones: s apart)
        top, left = query["row"] * s, query["col"] * s
        box = shown[top:top + p, left:left + p]
        box[[0, -1], :], box[:, [0, -1]] = 255, 255
    heat = draw.map_to_frame(np.clip(similarity, 0, 1), display.shape[:2], None, p, stride=s)
    where = f"{Path(query['image']).name} at {query['x']:g},{query['y']:g}"
    panels = [("Input, query patch outlined" if own else "Input (the crop)", shown),
              (f"Cosine of {features}, 0 to 1", heat_overlay(display, heat))]
    return _panel_figure(model, _named(f"Similarity to the patch of {where}", name), panels,
                         cols=2)


def filters_figure(model, filters) -> Figure:
    """Patch-projection filters ``(n, p, p, 3)`` in [0, 1] as one mosaic, 16 per row."""
    n, p = filters.shape[:2]
    zoom = max(1, math.ceil(32 / p))  # whole pixels per filter pixel, so the gaps stay thin
    tiles = np.repeat(np.repeat(np.rint(filters * 255).astype(np.uint8), zoom, 1), zoom, 2)
    mosaic = draw.grid(list(tiles), cols=FILTER_COLUMNS, pad=2, bg=255)
    total = model.preset.embed_dim
    what = f"Patch-projection filters: {f'first {n} of' if n < total else 'all'} {total}" \
        " (each min-max scaled)"
    fig = _figure(model, what, 13, 12.8 * mosaic.shape[0] / mosaic.shape[1] + 1)
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    return fig


def explain_figure(model, display, explanation, name: str = "") -> Figure:
    """The ``explain`` probe: a row per class (its name and probability), a column per method,
    each map over its own peak on the crop."""
    e = explanation
    what = _named("Why this class: class-specific relevance (each map over its peak)", name)
    panels = []
    for c, per_method in zip(e.classes, e.maps):
        value = (f"{c['probability']:.0%}" if c.get("probability") is not None
                 else f"cosine {c['similarity']:.2f}")
        label = f"{c['name'] or c['class']} ({value})"
        heats = upsample(np.maximum(per_method, 0), display.shape[:2], model.preset.patch_size,
                         model.preset.stride)
        panels += [(f"{method} · {label}", heat_overlay(display, heat))
                   for method, heat in zip(e.methods, heats)]
    return _panel_figure(model, what, panels, cols=len(e.methods))


def posembed_figure(model, similarity) -> Figure:
    """Position-embedding similarity ``(P, P)`` as an inferno image with a colorbar."""
    g = math.isqrt(len(similarity))
    fig = _figure(model, f"Position-embedding similarity ({g}x{g} patches, dot product)", 7.5, 7)
    ax = fig.add_subplot()
    shown = ax.imshow(similarity, cmap=COLORMAP, interpolation="nearest")
    ax.set_xlabel("patch (row by row)")
    ax.set_ylabel("patch (row by row)")
    fig.colorbar(shown, ax=ax, shrink=0.85, label="dot product")
    return fig


def figure_image(fig: Figure) -> np.ndarray:
    """Draw ``fig`` once on its Agg canvas -> uint8 RGB ``(H, W, 3)``, ``H, W = figsize * DPI``."""
    fig.canvas.draw()
    return np.array(fig.canvas.buffer_rgba())[..., :3]


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes: drawn once and encoded by Pillow (half the time of ``savefig``, which
    lays a constrained-layout figure out again). The files and the notebook's inline pictures are
    both these bytes."""
    buffer = io.BytesIO()
    Image.fromarray(figure_image(fig)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically."""
    write_bytes_atomic(path, png_bytes(fig))
    return Path(path)


# -- one image's probes ----------------------------------------------------------------------------


@dataclass
class ImageProbes:
    """Everything the per-image probes measured on one image: what its figures and ``probes.json``
    are made of (``image_figures``, ``probe_record``).

    source:   the image's path as given, or a name for pixels passed in memory; its stem names the
              image's output folder and its file name the figures.
    opts:     the options it was probed with.
    analysis: the forward pass's reductions (``Analysis``).
    probes:   the per-image probes that ran: those of ``opts.image_probes`` the model can have.
    masks:    ``(heads, gh, gw)`` bool, DINO's masks holding ``opts.threshold`` of each head's
              attention (the ``masks`` probe), else None.
    top5:     ``top_classes`` for presets with a classifier head, else None.
    skipped:  ``{probe: why}`` for the probes of ``opts`` the model cannot have.
    pca:      the image's own ``PcaBasis`` (the ``pca`` probe), else None.
    similarity: ``(gh, gw)`` cosine of each patch token to the query token (the
              ``similarity`` probe), else None; ``query``: where that token is from
              (``Query``).
    explanation: the ``explain`` probe's maps (``relevance.methods.Explanation``), else None.
    """

    source: str
    opts: ImageOptions
    analysis: Analysis
    probes: list[str]
    masks: np.ndarray | None = None
    top5: list[dict] | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    pca: PcaBasis | None = None
    similarity: np.ndarray | None = None
    query: Query | None = None
    explanation: object | None = None


@dataclass(frozen=True)
class Query:
    """The query patch of the ``similarity`` probe: ``image`` (its source), ``x, y`` (image
    pixels), ``row, col`` (its patch in the crop the model saw) and ``token`` ``(D,)``."""

    image: str
    x: float
    y: float
    row: int
    col: int
    token: np.ndarray

    def record(self) -> dict:
        return {"image": self.image, "x": self.x, "y": self.y, "row": self.row, "col": self.col}


def _features(opts: ImageOptions) -> str:
    """What the similarity probe compares, in words: "token of block -1"."""
    return f"{opts.facet} of block {opts.layer}"


def query_of(model, pixels, source, opts: ImageOptions, analysis: Analysis) -> Query:
    """The ``Query`` at ``opts.query_point`` of the image ``pixels`` (analysed, with its patch
    tokens); a point outside the crop the model sees is a VidattnError naming ``source``."""
    x, y = opts.query_point
    at = crop_point(x, y, pixels.shape[:2], opts.size)
    if at is None:
        h, w = pixels.shape[:2]
        raise VidattnError(f"--query {x:g},{y:g} is outside the part of the {w}x{h} image the "
                           f"model sees (its {opts.size}x{opts.size} centre crop)", source)
    p, s, (gh, gw) = model.preset.patch_size, model.preset.stride, analysis.grid_hw
    row, col = int(cell_index(at[1], gh, p, s)), int(cell_index(at[0], gw, p, s))
    return Query(os.fspath(source), x, y, row, col, analysis.facet_tokens[row * gw + col])


def measure(model, pixels, source, opts: ImageOptions | None = None,
            query: Query | None = None, reference=None) -> ImageProbes:
    """Run the per-image probes of ``opts`` that ``model`` can have on uint8 RGB ``pixels``
    ``(H, W, 3)`` (one forward pass, ``analyse``); the others are skipped with the reason.
    ``source`` is the path they were read from, or a name. ``similarity`` compares with
    ``query`` (None: this image's own patch at ``opts.query_point``); ``explain`` explains the
    similarity to ``reference`` (a ``relevance.targets.Embedding``; None: that of
    ``opts.explain_reference`` where given, else ``opts.explain_class``)."""
    opts = opts or ImageOptions()
    skipped = {q: why for q in opts.image_probes if (why := not_applicable(model, q, opts))}
    probes = [q for q in opts.image_probes if q not in skipped]
    a = analyse(model, pixels, opts.size, probes, tokens=opts.save_features is not None,
                facet=(opts.layer, opts.facet))
    masks = am.threshold_masks(a.heads, opts.threshold) if "masks" in probes else None
    top = top_classes(model, a.logits) if a.logits is not None else None
    basis = fit_basis(a.patch_tokens, opts.pca_background) if "pca" in probes else None
    similarity = None
    if "similarity" in probes:
        query = query or query_of(model, pixels, source, opts, a)
        similarity = similarity_maps(a.facet_tokens[None], query.token, a.grid_hw)[0]
    explanation = None
    if "explain" in probes:
        from vidattn.relevance.methods import explain_image  # the gradients' backends, on demand

        explanation = explain_image(
            model, preprocess_image(pixels, model.preset.preprocessing, opts.size,
                                    model.preset.resample)[0],
            reference or explain_target(model, opts), opts.explain_method.split(","),
            opts.explain_head)
    return ImageProbes(os.fspath(source), opts, a, probes, masks, top, skipped, basis,
                       similarity, query if similarity is not None else None, explanation)


def explain_target(model, opts: ImageOptions):
    """What the ``explain`` probe explains: the ``relevance.targets.Embedding`` of
    ``opts.explain_reference`` (read and run once; a missing or unreadable file is one
    VidattnError naming it), else ``opts.explain_class``."""
    if opts.explain_reference is None:
        return opts.explain_class
    from vidattn.relevance.targets import reference_target

    return reference_target(model, opts.explain_reference, opts.size)


def image_figures(model, m: ImageProbes) -> dict:
    """``{probe: make}`` for the per-image probes ``m`` ran, in canonical order; ``make()`` draws
    that probe's Figure (each costs a second or so, hence drawn on demand)."""
    a, name, keep = m.analysis, Path(m.source).name, m.opts.threshold
    figures = {
        "distance": lambda: distance_figure(model, a.distances, name),
        "rollout": lambda: rollout_figure(model, a.display, a.rollout, name, m.top5),
        "heads": lambda: heads_figure(model, a.display, a.heads, name),
        "masks": lambda: masks_figure(model, a.display, m.masks, keep, name),
        "registers": lambda: registers_figure(model, a.registers, name),
        "norms": lambda: norms_figure(model, a.display, a.norms, name),
        "pca": lambda: pca_figure(model, a.display, m.pca, a.patch_tokens, a.grid_hw, name),
        "similarity": lambda: similarity_figure(model, a.display, m.similarity,
                                                m.query.record(), m.query.image == m.source,
                                                _features(m.opts), name),
        "explain": lambda: explain_figure(model, a.display, m.explanation, name),
    }
    return {probe: figures[probe] for probe in m.probes}


def model_figures(model, probes=MODEL_PROBES) -> dict:
    """``{probe: make}`` for the model-level probes among ``probes`` that ``model`` can have, in
    canonical order."""
    figures = {
        "filters": lambda: filters_figure(model, filter_images(model)),
        "posembed": lambda: posembed_figure(model, position_similarity(model)),
    }
    return {probe: figures[probe] for probe in MODEL_PROBES
            if probe in probes and not not_applicable(model, probe)}


def probe_record(model, m: ImageProbes) -> dict:
    """The ``probes.json`` record of ``m``: the image, the model, shapes, the numbers, the files."""
    a, size, p = m.analysis, m.opts.size, model.preset.patch_size
    wanted = m.probes
    record = {
        "image": m.source,
        "image_size": list(a.image_hw),
        "input_size": [size, size],
        "model": {
            "preset": model.preset.name, "weights": model.weights_label,
            "random_weights": model.is_random, "patch_size": p,
            "stride": model.preset.cell_stride, "depth": model.preset.depth,
            "heads": model.preset.num_heads, "class_tokens": model.preset.num_class_tokens,
            "register_tokens": model.preset.num_register_tokens, "precision": model.precision,
        },
        "shapes": {
            "input": [1, size, size, 3], "grid": list(a.grid_hw), "tokens": a.tokens,
            "attention_per_block": [1, model.preset.num_heads, a.tokens, a.tokens],
        },
        "probes": wanted,
        "files": {probe: f"{probe}.png" for probe in wanted},
    }
    if m.skipped:
        record["skipped"] = m.skipped
    if a.distances is not None:
        record["mean_attention_distance"] = {
            "unit": "pixels", "per_block_head": a.distances.tolist(),
            "per_block_mean": a.distances.mean(axis=1).tolist(),
        }
    if a.rollout is not None:
        row, col = am.peak_location(a.rollout)
        record["rollout_peak"] = {"row": row, "col": col, "y": (row + 0.5) * p,
                                  "x": (col + 0.5) * p}
    if a.heads is not None:
        record["head_peaks"] = [list(am.peak_location(h)) for h in a.heads]
    if m.masks is not None:
        record["masks"] = {"keep": m.opts.threshold,
                           "patches_per_head": m.masks.sum((1, 2)).tolist()}
    if a.registers is not None:
        record["register_attention"] = {
            "meaning": "share of the CLS token's attention on the registers",
            "per_block_head": a.registers.tolist(),
            "per_block_mean": a.registers.mean(axis=1).tolist(),
        }
    if a.norms is not None:
        median = float(np.median(a.norms))
        order = np.argsort(-a.norms, axis=None, kind="stable")[:5]
        record["patch_token_norms"] = {
            "median": median, "max": float(a.norms.max()),
            "max_over_median": float(a.norms.max() / median) if median > 0 else None,
            "top5": [[int(r), int(c), float(a.norms[r, c])]
                     for r, c in zip(*np.unravel_index(order, a.norms.shape))],
        }
    if m.pca is not None:
        record["pca"] = pca_record(m.pca)
    if m.similarity is not None:
        peak = np.unravel_index(int(np.argmax(m.similarity)), m.similarity.shape)
        record["similarity"] = {"features": _features(m.opts), "measure": "cosine",
                                "query": m.query.record(), "max": float(m.similarity.max()),
                                "peak": [int(peak[0]), int(peak[1])],
                                "mean": float(m.similarity.mean())}
    if m.explanation is not None:
        e = m.explanation
        record["explain"] = {
            "methods": e.methods, "classes": e.classes, "head": m.opts.explain_head,
            **({"reference": os.fspath(m.opts.explain_reference)}
               if m.opts.explain_reference is not None else {}),
            "maps": "raw, on the patch grid (no min-max), maps[class][method][row][column]",
            "values": e.maps.tolist(),
        }
    if m.top5 is not None:
        record["top5"] = m.top5
    return record


def pca_record(basis: PcaBasis) -> dict:
    """The ``probes.json`` numbers of a PCA: what was decomposed and what each component holds."""
    return {"tokens": "final-normed patch tokens", "components": ["red", "green", "blue"],
            **basis.record()}


# -- files -----------------------------------------------------------------------------------------


def folder_names(paths) -> list[str]:
    """One output folder name per input path: its stem, with ``-2``, ``-3``... for repeats (first
    come, first served; ``io.unique_names``) and never ``MODEL_FOLDER``. A stem that would name no
    folder of its own (``..png``, ``...png``: "." and "..", the output folder and its parent)
    becomes ``image``."""
    stems = [Path(path).stem for path in paths]
    return unique_names([("image" if s in ("", ".", "..") else s, "") for s in stems],
                        reserved=(MODEL_FOLDER,))


def write_model_probes(model, folder, probes=MODEL_PROBES) -> dict[str, str]:
    """Write the model-level figures among ``probes`` that the model can have into ``folder``
    (replacing any there) -> ``{probe: file name}``."""
    figures = model_figures(model, probes)
    if figures:
        Path(folder).mkdir(parents=True, exist_ok=True)
    for probe, make in figures.items():
        save_figure(make(), Path(folder) / f"{probe}.png")
    return {probe: f"{probe}.png" for probe in figures}


def _json_lines(record: dict) -> str:
    """JSON with one top-level key per line, each value compact: readable, and a block's row of
    head distances stays on one line."""
    lines = (f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in record.items())
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _check_folder(outdir: Path, overwrite: bool) -> None:
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())) and not overwrite:
        raise VidattnError("output folder exists (use --overwrite to replace it)", outdir)


def write_probes(model, m: ImageProbes, outdir, overwrite: bool = False) -> dict:
    """Write the figures of ``m`` into the folder ``outdir``, ``<probe>.png`` each, then
    ``probes.json`` (last: its presence means the folder is complete) -> the record.

    Raises VidattnError, before writing anything, when ``outdir`` holds files (unless
    ``overwrite``) or is a file. Figures of probes not run this time are removed.
    """
    outdir = Path(outdir)
    _check_folder(outdir, overwrite)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise VidattnError("output folder path is a file", outdir) from None
    for stale in ["probes.json"] + [f"{q}.png" for q in IMAGE_PROBES if q not in m.probes]:
        (outdir / stale).unlink(missing_ok=True)
    for probe, make in image_figures(model, m).items():
        save_figure(make(), outdir / f"{probe}.png")
    record = probe_record(model, m)
    write_bytes_atomic(outdir / "probes.json", _json_lines(record).encode("utf-8"))
    return record


def probe_image(model, path, outdir, opts: ImageOptions | None = None,
                overwrite: bool = False) -> dict:
    """Run the per-image probes of ``opts`` on the image at ``path`` and write them into the
    folder ``outdir`` (``write_probes``). Model-level probes are skipped here
    (``write_model_probes``).

    Raises VidattnError for an unreadable image or, unless ``overwrite``, when ``outdir`` already
    holds files: both before the forward pass, and before anything is written. Returns the
    ``probes.json`` record.
    """
    return write_probes(model, _measure_file(model, path, outdir, opts, overwrite), outdir,
                        overwrite)


def _measure_file(model, path, outdir, opts, overwrite, query=None,
                  reference=None) -> ImageProbes:
    """``measure`` the image at ``path``, after checking that it reads and that ``outdir`` may be
    written (``probe_image``)."""
    pixels = load_image(path)
    _check_folder(Path(outdir), overwrite)
    return measure(model, pixels, path, opts, query, reference)


def _run_query(model, first, opts: ImageOptions) -> Query:
    """The ``similarity`` probe's query of a run: the patch at ``opts.query_point`` of its first
    image (a path, or ``ImageProbes`` measured before); errors name that image and stop the
    run, as no image's map could be drawn without it."""
    if isinstance(first, ImageProbes):
        return first.query
    pixels = load_image(first)
    analysis = analyse(model, pixels, opts.size, ("similarity",), facet=(opts.layer, opts.facet))
    return query_of(model, pixels, first, opts, analysis)


def write_joint_pca(model, folder, items, threshold=None) -> dict[str, str]:
    """Fit one PCA on the patch tokens of every image of a run, ``items`` ``[(name, display,
    tokens, grid_hw), ...]``, and write its figure (the first ``JOINT_PANELS`` images) and
    numbers into ``folder``: ``pca-joint.png`` and ``pca-joint.json`` -> ``{JOINT_PCA: file}``."""
    basis = fit_basis(np.concatenate([tokens for _, _, tokens, _ in items]), threshold)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_figure(joint_pca_figure(model, items[:JOINT_PANELS], basis), folder / f"{JOINT_PCA}.png")
    record = {"images": [name for name, *_ in items], **pca_record(basis)}
    write_bytes_atomic(folder / f"{JOINT_PCA}.json", _json_lines(record).encode("utf-8"))
    return {JOINT_PCA: f"{JOINT_PCA}.png"}


@dataclass
class ProbeRun:
    """What ``probe_images`` wrote: ``index`` (the path of index.html), ``entries``
    ``[(folder, record), ...]`` of the images done, in input order, and ``failures``, one line
    (``"path: problem"``) per image that could not be done."""

    index: Path
    entries: list[tuple[str, dict]]
    failures: list[str]


def probe_images(model, images, outdir, opts: ImageOptions | None = None, overwrite: bool = False,
                 progress: bool = False, on_error=None) -> ProbeRun:
    """What ``vidattn image`` does: probe each of ``images`` into ``outdir/<folder>/``
    (``folder_names``: the stem, ``-2``... for repeats), with its browser viewer there if
    ``opts.viewer`` (files only; ``viewer.image.ImageRun``: each page also shows the similarity
    of a clicked patch's ``opts.facet`` of block ``opts.layer`` on every image of the run, listed
    in ``outdir/viewer-run.js``), then write the model-level figures into ``outdir/_model/`` and
    ``outdir/index.html`` with every image done and every failure.

    images:   paths, or ``ImageProbes`` already measured with ``opts`` (the notebook's
              ``probe(...).save``): written without another forward pass.
    on_error: called with the VidattnError of an image that fails, and the run goes on (the
              command prints it); None: the error is raised and the run stops there, before the
              model figures and the index.
    progress: a bar over the images (``tqdm.auto``: a widget in Jupyter).

    With ``similarity`` among the probes, every image's map compares with the patch at
    ``opts.query`` of the first image (``_run_query``: an error there stops the run). With ``pca``
    among the probes and two images or more, one PCA fitted on all the images'
    patch tokens is drawn as ``outdir/_model/pca-joint.png`` (``write_joint_pca``); the tokens
    are kept as float16 until then. ``opts.save_features`` streams every image's patch tokens
    into a .npy with a .json sidecar naming the images (``features.FeatureWriter``).

    Raises VidattnError up front for an ``opts.size`` the model cannot take or an ``outdir``
    that is a file.
    """
    opts = opts or ImageOptions()
    check_size(model, opts.size)
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise VidattnError("output path exists and is not a folder", out) from None
    images = list(images)
    names = folder_names([i.source if isinstance(i, ImageProbes) else i for i in images])
    entries, failures, joint = [], [], []
    grid = model.preset.grid_at((opts.size, opts.size))
    query = _run_query(model, images[0], opts) if "similarity" in opts.image_probes else None
    reference = None
    if "explain" in opts.image_probes:  # a class or reference that cannot be: before any work
        from vidattn.relevance.targets import check_classifier, check_target

        if opts.image_probes == ["explain"] and opts.explain_reference is None:
            check_classifier(model.preset)  # nothing else to do: one line, no output
        check_target(model.preset, opts.explain_class)
        if opts.explain_reference is not None:
            reference = explain_target(model, opts)
    features = None if opts.save_features is None else FeatureWriter(
        opts.save_features, grid, model.preset.embed_dim, model_meta(model), index="images")
    viewers = ImageRun(out, (opts.layer, opts.facet)) if opts.viewer else None
    try:
        for image, name in zip(tqdm(images, unit="image", disable=not progress,
                                    dynamic_ncols=True), names):
            try:
                measured = isinstance(image, ImageProbes)
                m = image if measured else _measure_file(model, image, out / name, opts,
                                                         overwrite, query, reference)
                record = write_probes(model, m, out / name, overwrite)
                if viewers is not None and not measured:
                    viewers.write(model, image, name, opts.size, opts.threshold,
                                  m.explanation)
            except VidattnError as err:
                if on_error is None:
                    raise
                on_error(err)
                failures.append(str(err))
                continue
            entries.append((name, record))
            a = m.analysis
            if m.pca is not None:
                tokens = a.patch_tokens.astype(np.float16)  # a run's worth is kept
                joint.append((Path(m.source).name, a.display, tokens, grid))
            if features is not None:
                features.write(a.patch_tokens[None], [m.source])
        if viewers is not None:
            viewers.finish()
        model_files = write_model_probes(model, out / MODEL_FOLDER, opts.model_probes)
        if len(joint) > 1:
            model_files.update(write_joint_pca(model, out / MODEL_FOLDER, joint,
                                               opts.pca_background))
        else:  # a joint PCA of an earlier run would not be this run's
            for stale in (f"{JOINT_PCA}.png", f"{JOINT_PCA}.json"):
                (out / MODEL_FOLDER / stale).unlink(missing_ok=True)
        index = write_index(out, model, entries, model_files, MODEL_FOLDER, failures)
        if features is not None:
            features.close()
    except BaseException:
        if features is not None:
            features.abort()
        if viewers is not None:  # the pages written so far see each other
            viewers.finish()
        raise
    return ProbeRun(index, entries, failures)
