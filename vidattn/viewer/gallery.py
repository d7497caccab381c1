"""``vidattn batch``'s gallery, ``OUTDIR/index.html``: one card per input with a thumbnail, its
status, its error line if it failed, and links to its outputs, its viewer and the probe report.

The page is static HTML (no script), links only relative paths to files that exist when it is
written, and is rewritten atomically as the run goes (``write_gallery``), from the manifest's last
line of each input: so after a resume it shows every input of the tree, done before or now.

Batch layout around it::

    OUTDIR/index.html                 this gallery
    OUTDIR/probes.html                the images' probe report (``report.write_index``)
    OUTDIR/_thumbs/<output>.jpg       a thumbnail per output: a video's first rendered frame, an
                                      image's first probe figure
    OUTDIR/_viewer/<output>/          a video's viewer (``--viewer``); an image's viewer is
                                      ``OUTDIR/<output>/viewer.html``, in its own folder
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import quote

import av
import numpy as np
from PIL import Image

from vidattn.errors import VidattnError
from vidattn.io import atomic_path
from vidattn.options import IMAGE_PROBES
from vidattn.preprocess import load_image, resize_frame
from vidattn.viewer import image as image_viewer
from vidattn.viewer import video as video_viewer
from vidattn.viewer.pages import write_page

__all__ = [
    "GALLERY", "PROBES_REPORT", "THUMBS_FOLDER", "VIEWER_FOLDER", "Card", "cards",
    "make_thumbnail", "viewer_folder", "viewer_page", "write_gallery",
]

GALLERY = "index.html"
PROBES_REPORT = "probes.html"
VIEWER_FOLDER = "_viewer"
THUMBS_FOLDER = "_thumbs"
THUMB_WIDTH = 320
STATUS = {"ok": "done", "failed": "failed", "interrupted": "interrupted", None: "waiting"}


def href(rel: str) -> str:
    """A relative URL to OUTDIR's ``rel`` (``/``-separated), each part percent-encoded."""
    return quote(rel, safe="/")


def viewer_folder(outdir, out: str) -> Path:
    """Where a video whose output is ``out`` (relative to OUTDIR) gets its viewer."""
    return Path(outdir, VIEWER_FOLDER, out)


def viewer_page(outdir, out: str, kind: str) -> Path:
    """The viewer page of the output ``out`` of a ``kind`` input."""
    return (viewer_folder(outdir, out) / video_viewer.PAGE if kind == "video"
            else Path(outdir, out, image_viewer.PAGE))


def _thumb_path(outdir: Path, out: str) -> Path:
    return Path(outdir, THUMBS_FOLDER, f"{out}.jpg")


def make_thumbnail(outdir, kind: str, out: str, source) -> Path | None:
    """Write ``OUTDIR/_thumbs/<out>.jpg``, ``THUMB_WIDTH`` wide: a video output's middle frame, or an
    image's first probe figure (its input when it has none). A thumbnail is a nicety: one that
    cannot be made is left out (None) and the card says "no preview"."""
    outdir = Path(outdir)
    try:
        if kind == "video":
            picture = _middle_frame(outdir / out)
        else:
            figures = [outdir / out / f"{p}.png" for p in IMAGE_PROBES]
            found = [f for f in figures if f.is_file()]
            picture = load_image(found[0] if found else source)
        h, w = picture.shape[:2]
        size = (max(1, round(h * THUMB_WIDTH / w)), THUMB_WIDTH)
        thumb = _thumb_path(outdir, out)
        thumb.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(thumb) as tmp:
            Image.fromarray(np.ascontiguousarray(resize_frame(picture, size))).save(
                tmp, format="JPEG", quality=82)
        return thumb
    except (VidattnError, OSError, ValueError, StopIteration, av.FFmpegError):
        return None


def _middle_frame(path) -> np.ndarray:
    """The frame shown halfway through the video at ``path`` (the first one at or after it; its
    start is often a black fade-in or a title), uint8 RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        middle = (container.duration or 0) / av.time_base / 2
        if middle > 0:
            container.seek(int(middle * av.time_base))
        for frame in container.decode(stream):
            if frame.time is None or frame.time >= middle:
                return frame.to_ndarray(format="rgb24")
    raise ValueError("no frame")


@dataclass
class Card:
    """One input on the gallery: ``rel`` its path under INDIR, its ``kind``, ``status`` (done,
    failed, interrupted, waiting), ``error`` line, ``links`` ``[(label, href)]`` to files that
    exist, ``thumb`` (href or None), ``seconds`` its last attempt took."""

    rel: str
    kind: str
    status: str
    error: str | None = None
    links: list[tuple[str, str]] = field(default_factory=list)
    thumb: str | None = None
    seconds: float | None = None


def _links(outdir: Path, out: str, kind: str) -> list[tuple[str, str]]:
    """The files of a finished output, as ``(label, href)``, those that exist."""
    wanted = [("viewer", viewer_page(outdir, out, kind).relative_to(outdir).as_posix())]
    if kind == "video":
        wanted.insert(0, ("video", out))
    else:
        wanted += [(p, f"{out}/{p}.png") for p in IMAGE_PROBES]
        wanted.append(("probes.json", f"{out}/probes.json"))
    found = [(label, href(rel)) for label, rel in wanted if (outdir / rel).is_file()]
    if kind == "image" and (outdir / PROBES_REPORT).is_file():
        found.append(("report", f"{PROBES_REPORT}#{href(out)}"))
    return found


def cards(outdir, items, latest: dict) -> list[Card]:
    """A card per item (``rel``, ``out``, ``kind``: batch's ``Item``), from ``latest`` (the
    manifest's last record of each input, by ``rel``)."""
    outdir, result = Path(outdir), []
    for item in items:
        record = latest.get(item.rel) or {}
        status = STATUS.get(record.get("status"), "waiting")
        card = Card(item.rel, item.kind, status, record.get("error"), seconds=record.get("seconds"))
        if status == "done":
            card.links = _links(outdir, item.out, item.kind)
            thumb = _thumb_path(outdir, item.out)
            card.thumb = href(thumb.relative_to(outdir).as_posix()) if thumb.is_file() else None
        result.append(card)
    return result


def _card_html(card: Card) -> str:
    picture = (f'<img src="{card.thumb}" alt="" loading="lazy">' if card.thumb else
               f'<span class="none">{"no preview" if card.status == "done" else card.status}</span>')
    target = dict(card.links).get("viewer") or (card.links[0][1] if card.links else None)
    thumb = (f'<a class="thumb" href="{target}">{picture}</a>' if target and card.thumb
             else f'<div class="thumb">{picture}</div>')
    took = f" · {card.seconds:.1f} s" if card.seconds is not None else ""
    parts = [thumb, '<div class="body">', f'<div class="name">{escape(card.rel)}</div>',
             f'<div><span class="badge {card.status}">{card.status}</span>{card.kind}{took}</div>']
    if card.error:
        parts.append(f'<p class="error">{escape(card.error)}</p>')
    if card.links:
        links = "".join(f'<a href="{link}">{escape(label)}</a>' for label, link in card.links)
        parts.append(f'<div class="links">{links}</div>')
    parts.append("</div>")
    return f'<div class="card">{"".join(parts)}</div>'


def write_gallery(outdir, model, items, latest: dict, finished: bool, manifest: str) -> Path:
    """Write ``OUTDIR/index.html`` atomically from ``cards(outdir, items, latest)`` -> its path.
    ``finished``: the run is over (else the page says it is still being written); ``manifest``:
    the manifest's name in OUTDIR, linked once it exists."""
    outdir = Path(outdir)
    found = cards(outdir, items, latest)
    counts = {s: sum(c.status == s for c in found) for s in STATUS.values()}
    p = model.preset
    title = f"vidattn batch · {outdir.name} · {p.name} · {model.weights_label}"
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    state = f"finished {when}" if finished else f"running: this page was last written {when}"
    extra = [f'<a href="{PROBES_REPORT}">probe report</a>'] if (outdir / PROBES_REPORT).is_file() \
        else []
    if (outdir / manifest).is_file():
        extra.append(f'<a href="{href(manifest)}">manifest</a>')
    body = [
        f'<header><h1>{escape(title)}</h1><p class="meta">{len(found)} input(s) · '
        f'{escape(state)} · {" · ".join(extra)}</p>',
        '<p class="random">RANDOM (untrained) WEIGHTS: these maps are noise, not what a trained '
        'model attends to.</p>' if model.is_random else "",
        '<p class="summary">' + "".join(
            f'<span><span class="badge {s}">{s}</span>{n}</span>' for s, n in counts.items() if n)
        + "</p></header>",
        f'<main><div class="cards">{"".join(_card_html(c) for c in found)}</div></main>',
    ]
    return write_page(outdir / GALLERY, title, "\n".join(body))
