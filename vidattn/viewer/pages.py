"""What the viewer pages share: compact map data in script chunks, the colour tables, and a page
filled from its template in ``static/`` (CSS and scripts inlined, so a page is one file beside its
data)."""

from __future__ import annotations

import base64
import importlib.resources
import json
import re
from html import escape
from pathlib import Path

import numpy as np

from vidattn import draw
from vidattn.io import atomic_path

__all__ = [
    "CHUNK_FUNCTION", "COLORMAPS", "chunk_script", "colormap_tables", "page_meta", "quantize",
    "write_chunk", "write_page", "write_viewer_page",
]

CHUNK_FUNCTION = "vidattnChunk"  # what a chunk script calls: vidattnChunk("KEY", "BASE64")
COLORMAPS = ("inferno", "viridis", "magma", "plasma", "turbo", "jet", "gray")  # the pages' choice
_STATIC = importlib.resources.files("vidattn.viewer") / "static"


def quantize(values) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative float ``(..., n)`` -> ``(uint8 (..., n), float32 (...))``: each vector along the
    last axis as bytes of its own maximum, ``byte = round(255 * v / max)``, and that maximum as
    its scale (an all-zero vector: bytes 0, scale 0). ``byte / 255 * scale`` gives ``v`` back
    within half a step, ``scale / 510``."""
    values = np.maximum(np.asarray(values, np.float32), 0)
    scale = values.max(axis=-1, keepdims=True)
    ratio = np.divide(values, scale, out=np.zeros_like(values), where=scale > 0)
    return np.rint(ratio * 255).astype(np.uint8), scale[..., 0]


def write_chunk(folder, key: str, *arrays) -> None:
    """Write ``folder/KEY.js``, a script handing the pages the bytes of ``arrays`` one after the
    other (float arrays as little-endian float32, others as uint8). ``key`` is letters, digits
    and ``-`` only. The folder is a temporary one, published whole, so the file is written
    directly."""
    raw = b"".join(
        np.ascontiguousarray(a, "<f4" if np.asarray(a).dtype.kind == "f" else np.uint8).tobytes()
        for a in arrays
    )
    Path(folder, f"{key}.js").write_text(chunk_script(key, raw), encoding="ascii")


def chunk_script(key: str, raw: bytes) -> str:
    """The text of a chunk script handing the pages ``raw`` under ``key``:
    ``vidattnChunk("KEY","BASE64");`` (``common.js`` ``VA.load`` receives it)."""
    return f'{CHUNK_FUNCTION}("{key}","{base64.b64encode(raw).decode("ascii")}");\n'


def colormap_tables(extra: str | None = None) -> dict[str, str]:
    """``{name: base64 of its (256, 3) uint8 LUT}`` for ``COLORMAPS`` and ``extra`` (the one the
    run was asked for, any matplotlib name): the pages colour exactly as the rendered videos."""
    names = COLORMAPS if extra in (None, *COLORMAPS) else (extra, *COLORMAPS)
    return {n: base64.b64encode(draw.colormap_lut(n).tobytes()).decode("ascii") for n in names}


def page_meta(model, **fields) -> dict:
    """What every viewer page says about the model: preset, weights, RANDOM flag, geometry of its
    tokens, the colour tables and one colour per head, then ``fields`` (which may replace any:
    the image viewer's prefix rows count a pooling probe)."""
    p = model.preset
    return {
        "model": p.name, "weights": model.weights_label, "random": model.is_random,
        "patch": p.patch_size, "stride": p.cell_stride, "depth": p.depth, "heads": p.num_heads,
        "prefix_tokens": p.num_prefix_tokens, "head_colors": draw.head_colors(p.num_heads),
        **fields,
    }


def _asset(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def _json_for_html(meta: dict) -> str:
    """JSON that is inert inside ``<script type="application/json">`` whatever strings it holds
    (file names are the user's): ``<``, ``>`` and ``&`` escaped, so no ``</script>`` can end it."""
    text = json.dumps(meta, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_page(path, title: str, body: str, meta: dict | None = None,
               script: str | None = None) -> Path:
    """Write a page to ``path``, atomically: ``static/page.html`` with ``title`` (escaped here),
    the shared CSS and ``body`` (HTML the caller has escaped); with a ``script``, ``meta`` as
    JSON for it, then ``common.js`` and ``static/SCRIPT``."""
    scripts = ""
    if script:
        scripts = (f'<script type="application/json" id="vidattn-meta">{_json_for_html(meta or {})}'
                   f'</script>\n<script>{_asset("common.js")}\n{_asset(script)}</script>')
    fills = {"@@TITLE@@": escape(title), "@@STYLE@@": _asset("viewer.css"), "@@BODY@@": body,
             "@@SCRIPTS@@": scripts}
    # one pass: text filled in is never searched for marks again (a file name may hold one)
    html = re.sub("|".join(fills), lambda match: fills[match.group(0)], _asset("page.html"))
    with atomic_path(path) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
    return Path(path)


def write_viewer_page(path, kind: str, title: str, meta: dict) -> Path:
    """A viewer page: the shared header (title, model, RANDOM banner, status line), then
    ``static/KIND.html`` with the shared controls (``controls.html``) in it, run by
    ``static/KIND.js`` (kind: video or image)."""
    body = _asset(f"{kind}.html").replace("@@CONTROLS@@", _asset("controls.html"))
    return write_page(path, title, _asset("header.html") + body, meta, f"{kind}.js")
