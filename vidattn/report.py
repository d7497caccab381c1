"""The HTML index of a ``vidattn image`` run: every image's figures and numbers on one page.

``OUTDIR/index.html`` (``OUTDIR/probes.html`` in a batch, whose index is the gallery) is self-contained (inline CSS, no scripts, nothing fetched) and links only
relative paths, so the folder can be moved, zipped or served as it is.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from urllib.parse import quote

from vidattn.io import atomic_path
from vidattn.viewer.image import PAGE as VIEWER_PAGE

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em;
       color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
.random { background: #b22222; color: #fff; padding: 0.6em 1em; font-weight: bold; }
.errors { background: #fff3f3; border-left: 4px solid #b22222; padding: 0.5em 1em; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; }
.figs figure { margin: 0; } .figs img { max-width: 560px; max-height: 460px;
       border: 1px solid #ddd; } figcaption { font-size: 13px; color: #555; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f2f2f2; } td.name { text-align: left; }
.meta { color: #555; }
"""


def _href(*parts: str) -> str:
    """A relative URL to the file at ``parts`` (folder names and file name), percent-encoded."""
    return "/".join(quote(part) for part in parts)


def _figures(folder: str, files: dict) -> str:
    items = "".join(
        f'<figure><a href="{_href(folder, f)}"><img src="{_href(folder, f)}" alt="{escape(probe)}"'
        f' loading="lazy"></a><figcaption>{escape(probe)}</figcaption></figure>'
        for probe, f in files.items()
    )
    return f'<div class="figs">{items}</div>'


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


def _image_section(outdir: Path, folder: str, record: dict) -> str:
    h, w = record["image_size"]
    size = record["input_size"][0]
    parts = [
        f'<h2 id="{escape(folder)}">{escape(Path(record["image"]).name)}</h2>',
        f'<p class="meta">{escape(record["image"])} · {w}x{h} px · model input {size}x{size}, '
        f'{record["shapes"]["tokens"]} tokens · <a href="{_href(folder, "probes.json")}">'
        "probes.json</a>"
        + (f' · <a href="{_href(folder, VIEWER_PAGE)}">viewer</a>'
           if (outdir / folder / VIEWER_PAGE).is_file() else "") + "</p>",
    ]
    if "top5" in record:
        parts.append(_top5_table(record["top5"]))
    if "rollout_peak" in record:
        peak = record["rollout_peak"]
        parts.append(f'<p>rollout peak: patch row {peak["row"]}, column {peak["col"]} '
                     f'(pixel y={peak["y"]:.0f}, x={peak["x"]:.0f} of the crop)</p>')
    parts.append(_figures(folder, record["files"]))
    if "mean_attention_distance" in record:
        parts.append(_distance_table(record["mean_attention_distance"]))
    return "\n".join(parts)


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
    title = f"vidattn probes · {p.name} · {model.weights_label}"
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="meta">{len(entries)} image(s); ViT patch {p.patch_size}, depth {p.depth}, '
            f"{p.num_heads} heads, {p.num_class_tokens} class token(s)</p>"]
    if model.is_random:
        body.append('<p class="random">RANDOM (untrained) WEIGHTS: these maps are noise, not what '
                    "a trained model attends to.</p>")
    if failures:
        items = "".join(f"<li>{escape(msg)}</li>" for msg in failures)
        body.append(f'<div class="errors"><b>Not processed</b><ul>{items}</ul></div>')
    if entries:
        links = " · ".join(f'<a href="#{escape(folder)}">{escape(folder)}</a>'
                           for folder, _ in entries)
        body.append(f"<p>Images: {links}</p>")
    if model_files:
        body.append(f"<h2>Model</h2>{_figures(model_folder, model_files)}")
    body.extend(_image_section(Path(outdir), folder, record) for folder, record in entries)
    html = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    path = Path(outdir) / name
    with atomic_path(path) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
    return path
