"""The HTML index of a ``vidattn image`` run: every image's figures and numbers on one page.

``OUTDIR/index.html`` (``OUTDIR/probes.html`` in a batch, whose index is the gallery) is
self-contained (inline CSS, no scripts, nothing fetched) and links only relative paths, so the
folder can be moved, zipped or served as it is. ``probe_html`` is one image's section of it as a
fragment for a notebook, the figures embedded (``vidattn.probe``).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from urllib.parse import quote

from vidattn.io import atomic_path
from vidattn.viewer.image import PAGE as VIEWER_PAGE

# The page's own layout; everything else is scoped to the .vidattn block, so that the same rules
# style a notebook's inline results (probe_html) without touching the notebook around them.
_PAGE_CSS = "body { margin: 2em auto; max-width: 1200px; padding: 0 1em; }"
_CSS = """
.vidattn { font: 15px/1.45 system-ui, sans-serif; color: #222; }
.vidattn h1 { margin-bottom: 0.2em; }
.vidattn h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
.vidattn .random { background: #b22222; color: #fff; padding: 0.6em 1em; font-weight: bold; }
.vidattn .errors { background: #fff3f3; border-left: 4px solid #b22222; padding: 0.5em 1em; }
.vidattn .figs { display: flex; flex-wrap: wrap; gap: 12px; }
.vidattn .figs figure { margin: 0; } .vidattn .figs img { max-width: 560px; max-height: 460px;
       border: 1px solid #ddd; } .vidattn figcaption { font-size: 13px; color: #555; }
.vidattn table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
.vidattn td, .vidattn th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
.vidattn th { background: #f2f2f2; } .vidattn td.name { text-align: left; }
.vidattn .meta { color: #555; }
"""
RANDOM_BANNER = ('<p class="random">RANDOM (untrained) WEIGHTS: these maps are noise, not what a '
                 "trained model attends to.</p>")


def _href(*parts: str) -> str:
    """A relative URL to the file at ``parts`` (folder names and file name), percent-encoded."""
    return "/".join(quote(part) for part in parts)


def _figures(urls: dict) -> str:
    """``{probe: url}`` as pictures; a url is a relative path (the picture links to its file) or
    a ``data:`` URI (embedded once, unlinked)."""

    def figure(probe, url):
        img = f'<img src="{escape(url)}" alt="{escape(probe)}" loading="lazy">'
        if not url.startswith("data:"):
            img = f'<a href="{escape(url)}">{img}</a>'
        return f"<figure>{img}<figcaption>{escape(probe)}</figcaption></figure>"

    return f'<div class="figs">{"".join(figure(p, u) for p, u in urls.items())}</div>'


def _top5_table(top: list) -> str:
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{t['class']}</td><td class=name>{escape(str(t['name'] or '-'))}"
        f"</td><td>{100 * t['probability']:.2f} %</td></tr>"
        for i, t in enumerate(top)
    )
    return ("<table><tr><th>rank</th><th>class</th><th>name</th><th>probability</th></tr>"
            f"{rows}</table>")


def _distance_table(dist: dict) -> str:
    per_block = dist["per_block_head"]
    heads = len(per_block[0])
    head = "".join(f"<th>head {k}</th>" for k in range(heads))
    rows = "".join(
        f"<tr><th>block {b}</th>{''.join(f'<td>{v:.1f}</td>' for v in values)}"
        f"<td><b>{mean:.1f}</b></td></tr>"
        for b, (values, mean) in enumerate(zip(per_block, dist["per_block_mean"]))
    )
    return (f"<table><caption>mean attention distance ({escape(dist['unit'])})</caption>"
            f"<tr><th></th>{head}<th>mean</th></tr>{rows}</table>")


def _image_section(record: dict, urls: dict, anchor: str = "", json_url: str = "",
                   viewer_url: str = "") -> str:
    """One image's heading, numbers and figures (``urls``: ``{probe: url}``), from its
    ``probes.json`` record; ``json_url`` links the record's file and ``viewer_url`` its browser
    viewer where there are some."""
    h, w = record["image_size"]
    size = record["input_size"][0]
    json_link = f' · <a href="{escape(json_url)}">probes.json</a>' if json_url else ""
    viewer_link = f' · <a href="{escape(viewer_url)}">viewer</a>' if viewer_url else ""
    heading = f' id="{escape(anchor)}"' if anchor else ""
    parts = [
        f'<h2{heading}>{escape(Path(record["image"]).name)}</h2>',
        f'<p class="meta">{escape(record["image"])} · {w}x{h} px · model input {size}x{size}, '
        f'{record["shapes"]["tokens"]} tokens{json_link}{viewer_link}</p>',
    ]
    if "top5" in record:
        parts.append(_top5_table(record["top5"]))
    if "rollout_peak" in record:
        peak = record["rollout_peak"]
        parts.append(f'<p>rollout peak: patch row {peak["row"]}, column {peak["col"]} '
                     f'(pixel y={peak["y"]:.0f}, x={peak["x"]:.0f} of the crop)</p>')
    parts.append(_figures(urls))
    if "mean_attention_distance" in record:
        parts.append(_distance_table(record["mean_attention_distance"]))
    return "\n".join(parts)


def _title(model, what: str) -> str:
    return f"{what} · {model.preset.name} · weights: {model.weights_label}"


def fragment(random: bool, *parts: str) -> str:
    """HTML ``parts`` as one block for a notebook, styled as the index (styles scoped to the
    block, so the notebook around it is untouched), after the RANDOM banner if ``random``."""
    banner = [RANDOM_BANNER] if random else []
    return f'<div class="vidattn"><style>{_CSS}</style>' + "\n".join(banner + list(parts)) + \
        "</div>"


def probe_html(model, record: dict, urls: dict, model_urls: dict) -> str:
    """One image's section of the index, as a notebook ``fragment``: the same numbers and
    figures, with ``urls`` and ``model_urls`` (``{probe: url}``, typically ``data:`` URIs) for
    the image's and the model's figures."""
    parts = [f'<p class="meta">{escape(_title(model, "vidattn.probe"))}</p>',
             _image_section(record, urls)]
    if model_urls:
        parts.append(f"<h2>Model</h2>{_figures(model_urls)}")
    return fragment(model.is_random, *parts)


def write_index(outdir, model, entries, model_files, model_folder, failures=(),
                name="index.html"):
    """Write ``outdir/name`` atomically -> its path.

    entries:     ``[(folder, record), ...]``, each image's folder name under ``outdir`` and its
                 ``probes.json`` record (``probes.probe_image``), in input order.
    model_files: ``{probe: file name}`` of the model-level figures in ``outdir/model_folder``.
    failures:    one-line errors (``"path: problem"``) of the images that could not be done.
    Each image's interactive viewer (``vidattn image --viewer``) is linked where it exists.
    """
    p = model.preset
    title = _title(model, "vidattn probes")
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="meta">{len(entries)} image(s); ViT patch {p.patch_size}, depth {p.depth}, '
            f"{p.num_heads} heads, {p.num_class_tokens} class token(s), "
            f"{p.num_register_tokens} register(s)</p>"]
    if model.is_random:
        body.append(RANDOM_BANNER)
    if failures:
        items = "".join(f"<li>{escape(msg)}</li>" for msg in failures)
        body.append(f'<div class="errors"><b>Not processed</b><ul>{items}</ul></div>')
    if entries:
        links = " · ".join(f'<a href="#{escape(folder)}">{escape(folder)}</a>'
                           for folder, _ in entries)
        body.append(f"<p>Images: {links}</p>")
    if model_files:
        model_urls = {probe: _href(model_folder, f) for probe, f in model_files.items()}
        body.append(f"<h2>Model</h2>{_figures(model_urls)}")
    body.extend(
        _image_section(record, {probe: _href(folder, f) for probe, f in record["files"].items()},
                       anchor=folder, json_url=_href(folder, "probes.json"),
                       viewer_url=_href(folder, VIEWER_PAGE)
                       if (Path(outdir) / folder / VIEWER_PAGE).is_file() else "")
        for folder, record in entries)
    html = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{_PAGE_CSS}{_CSS}</style></head>"
            '<body class="vidattn">\n'
            + "\n".join(body) + "\n</body></html>\n")
    path = Path(outdir) / name
    with atomic_path(path) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
    return path
