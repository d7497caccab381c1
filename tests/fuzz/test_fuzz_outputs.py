"""Where outputs may land: input names that are only dots and an extension must not lead
``vidattn image`` out of its output folder (a regression the fuzz suite found)."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from tests.support.reliability import reliability
from vidattn.cli import main


@reliability(("`vidattn image ..png ...png -o OUT --overwrite` (stems `.` and `..`)",
              "probed into OUT/image and OUT/image-2 (regression: wrote into OUT itself and "
              "into its parent)"))
def test_dot_stems_stay_inside_the_output_folder(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("..png", "...png"):
        Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(work / name, format="PNG")
    before = {p for p in tmp_path.rglob("*")}
    args = ["image", str(work / "..png"), str(work / "...png"), "-o", str(work / "out"),
            "--model", "demo", "--size", "64", "--probes", "rollout", "--overwrite", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    new = {p.relative_to(work).as_posix() for p in tmp_path.rglob("*") if p not in before}
    assert new == {"out", "out/index.html", "out/image", "out/image/rollout.png",
                   "out/image/probes.json", "out/image-2", "out/image-2/rollout.png",
                   "out/image-2/probes.json"}
