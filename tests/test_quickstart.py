"""samples/quickstart.ipynb, run top to bottom on a real IPython kernel, as a person would."""

import base64
import io
import re
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from PIL import Image

NOTEBOOK = Path(__file__).parent.parent / "samples" / "quickstart.ipynb"


def test_the_committed_notebook_has_no_outputs():
    """Outputs are made by running it, never committed: they would bloat git with pictures and
    go stale (nbstripout, or Jupyter's "Clear All Outputs", before committing)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "widgets" not in nb.metadata


@pytest.fixture(scope="module")
def executed():
    """The notebook after a run on an IPython kernel (ipykernel) in its own folder, as Jupyter
    runs it. The timeout only stops a hung kernel."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # ipykernel's own spec, on this interpreter: no python3 kernel installed elsewhere stands in
    kernel = KernelManager(kernel_name="python3",
                           kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    NotebookClient(nb, km=kernel, timeout=600,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def cell_calling(nb, text):
    """The one code cell whose source contains ``text``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    assert len(cells) == 1, text
    return cells[0]


def html_of(cell) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


def test_every_cell_runs_without_error(executed):
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, "\n".join(f"{e.ename}: {e.evalue}" for e in errors)


def test_the_probe_shows_the_report_figures_of_the_demo_model(executed):
    html = html_of(cell_calling(executed, 'vidattn.probe("chelsea.jpg", model=model)'))
    pictures = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(pictures) == 8  # distance, rollout, heads, masks, norms, pca; filters, posembed
    with Image.open(io.BytesIO(base64.b64decode(pictures[1]))) as rollout:
        assert rollout.format == "PNG" and rollout.width > 500
    assert "demo · weights: demo (bundled toy)" in html and "RANDOM" not in html
    assert "mean attention distance" in html and "chelsea.jpg" in html
    numbers = "".join(o.get("text", "") for o in cell_calling(executed, "result.masks.sum").outputs)
    assert "rollout (28, 28) · head maps (4, 28, 28) · masks (4, 28, 28)" in numbers


def test_save_writes_the_files_of_vidattn_image(executed):
    listing = cell_calling(executed, "result.save(folder)").outputs[-1]["data"]["text/plain"]
    names = re.findall(r"'([^']+)'", listing)
    assert names == ["_model/filters.png", "_model/posembed.png", "chelsea/distance.png",
                     "chelsea/heads.png", "chelsea/masks.png", "chelsea/norms.png",
                     "chelsea/pca.png", "chelsea/probes.json", "chelsea/rollout.png",
                     "index.html"]


def test_the_video_plays_inline(executed):
    cell = cell_calling(executed, 'vidattn.render("tour.mp4"')
    html = html_of(cell)
    assert "<video " in html and "RANDOM" not in html
    video = re.search(r'src="data:video/mp4;base64,([A-Za-z0-9+/=]+)"', html)
    assert base64.b64decode(video.group(1))[4:8] == b"ftyp"  # an MP4 file
    assert "view heads" in html and "demo · weights: demo (bundled toy)" in html
    assert "72 frames" in html  # three seconds at 24 fps
    bars = [o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" in
            o.get("data", {})]
    assert len(bars) == 1  # the progress bar is a notebook widget (tqdm.auto)


def test_random_weights_say_random(executed):
    html = html_of(cell_calling(executed, 'weights="random"'))
    assert "RANDOM (untrained) WEIGHTS" in html and html.count("<img ") == 2
