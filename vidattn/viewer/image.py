"""``vidattn image --viewer``: a page per image; click any patch to see where it looks.

Beside the image's figures (``OUTDIR/<stem>/``)::

    viewer.html              the page (``static/image.html``, ``image.js``)
    viewer/input.png         the ``size x size`` crop the model saw
    viewer/block-NN.js       block NN's attention: for each head and each of the T query tokens,
                             its row over the P patch keys
    viewer/rollout.js        the rollout matrix's rows over the patch keys (``rollout_matrix``)

A block's chunk is ``heads * T`` float32 scales, then ``heads * T * P`` bytes, each row as bytes of
its own maximum over the patches (``pages.quantize``; the columns of the prefix tokens, class
tokens and registers, which no map shows, are left out); rollout's is ``T`` scales and ``T * P``
bytes. So the data is
``(depth * heads + 1) * T * (P + 4)`` bytes, a third more in base64: about 2.9 MB for ViT-S/16 at
224 (T = 197) and 89 MB for ViT-B/8 (T = 785). The page loads the block it shows, when it shows it.

The data folder is written into a temporary folder and moved into place whole, then the page: a
``viewer.html`` is never there without its data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vidattn import attention as am
from vidattn.io import discard_folder, publish_folder, temporary_folder
from vidattn.options import DEFAULT_SIZE, DEFAULT_THRESHOLD
from vidattn.preprocess import display_image, load_image, preprocess_image
from vidattn.viewer.pages import (
    colormap_tables,
    page_meta,
    quantize,
    write_chunk,
    write_viewer_page,
)

__all__ = ["PAGE", "write_image_viewer"]

PAGE = "viewer.html"
DATA_FOLDER = "viewer"
IMAGE_NAME = "input.png"
ALPHA = 0.6  # as the probe figures


def write_image_viewer(model, image, outdir, size: int = DEFAULT_SIZE,
                       threshold: float = DEFAULT_THRESHOLD, name: str | None = None) -> Path:
    """Write the viewer of one image (a path or uint8 RGB ``(H, W, 3)``) into the folder
    ``outdir`` (made if missing, its earlier viewer replaced) -> the page's path. ``size``: the
    square crop's side, a multiple of the patch; ``threshold``: the mask control's first value;
    ``name``: shown as the title (default: the file name)."""
    pixels = image if isinstance(image, np.ndarray) else load_image(image)
    name = name or (Path(image).name if not isinstance(image, np.ndarray) else "image")
    p = model.preset
    out = model.run(preprocess_image(pixels, p.preprocessing, size), attention="all")
    attns, n_prefix = out["attention"], p.num_prefix_tokens
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    temp = temporary_folder(outdir / DATA_FOLDER)
    try:
        Image.fromarray(display_image(pixels, size)).save(temp / IMAGE_NAME, format="PNG")
        keys = []
        for b, attn in enumerate(attns):
            data, scales = quantize(attn[0, :, :, n_prefix:])
            keys.append(f"block-{b:02d}")
            write_chunk(temp, keys[-1], scales, data)
        data, scales = quantize(am.rollout_matrix(attns)[0, :, n_prefix:])
        write_chunk(temp, "rollout", scales, data)
        publish_folder(temp, outdir / DATA_FOLDER)
    except BaseException:
        discard_folder(temp)
        raise
    grid = size // p.patch_size
    meta = page_meta(
        model, kind="image", source=name, image=f"{DATA_FOLDER}/{IMAGE_NAME}", size=size,
        grid=[grid, grid], tokens=n_prefix + grid * grid,
        chunks={"folder": DATA_FOLDER, "blocks": keys, "rollout": "rollout"},
        colormaps=colormap_tables(),
        defaults={"colormap": "inferno", "alpha": ALPHA, "threshold": threshold, "mode": "heat"},
    )
    label = "RANDOM WEIGHTS · " if model.is_random else ""
    return write_viewer_page(outdir / PAGE, "image", f"{label}{name} · {p.name} · vidattn", meta)
