"""What an explanation is asked to explain, fuzzed: any ``--explain-class`` text or number
(ImageNet names with typos, indices in and out of range, odd digits), and damaged reference
images (``--explain-reference``). Each ends in a class, a written probe, or one error line and
nothing written."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

import vidattn
from tests.support.fuzzing import examples, write_damaged
from tests.support.reliability import reliability
from vidattn.errors import VidattnError
from vidattn.models.presets import get_preset
from vidattn.options import ImageOptions
from vidattn.preprocess import imagenet_labels
from vidattn.probes import probe_images
from vidattn.relevance.targets import check_target, resolve

pytestmark = pytest.mark.filterwarnings("error")

IMAGENET = get_preset("vit_b16")  # a 1000-way head: ImageNet's names
UNNAMED = dataclasses.replace(IMAGENET, name="unnamed", num_classes=10)


def _typo(data) -> str:
    """An ImageNet name with a few characters dropped, doubled or changed."""
    name = list(data.draw(st.sampled_from(imagenet_labels(short=True)), label="name"))
    for _ in range(data.draw(st.integers(0, 3), label="typos")):
        i = data.draw(st.integers(0, max(len(name) - 1, 0)))
        edit = data.draw(st.sampled_from(["drop", "double", "change"]))
        if edit == "drop" and len(name) > 1:
            del name[i]
        elif edit == "double":
            name.insert(i, name[i])
        else:
            name[i] = data.draw(st.characters(codec="utf-8"))
    return "".join(name)


CLASSES = st.one_of(st.integers(-5, 1100), st.integers(-5, 1100).map(str),
                    st.text(st.sampled_from("0123456789²٣ top-_ \t"), max_size=6),
                    st.text(max_size=12))


@reliability(("any `--explain-class`: ImageNet names with typos, indices in and out of range "
              "(as numbers and as text, with superscript or Arabic-Indic digits), topK, any text; "
              "on a 1000-way head and on a head without names",
              "the class, or one error line (an unknown name with the nearest names, an index "
              "out of range, a name for a head without names, a topK that is not one)"))
@examples(200)
@given(data=st.data())
def test_random_class_targets_resolve_or_fail_cleanly(data):
    typo = data.draw(st.booleans(), label="a typo of a name")
    target = _typo(data) if typo else data.draw(CLASSES, label="target")
    preset = data.draw(st.sampled_from([IMAGENET, UNNAMED]), label="preset")
    try:
        text = ImageOptions(probes="explain", explain_class=target).explain_class
        check_target(preset, text)
        if str(text).startswith("top"):
            event("topK")
            return
        index = resolve(preset, text, np.zeros((1, preset.num_classes)))
    except VidattnError as err:
        assert "\n" not in str(err), err
        event("error")
        return
    assert 0 <= int(index[0]) < preset.num_classes
    event("class")


@pytest.fixture(scope="module")
def headless():
    preset = dataclasses.replace(get_preset("dino_vits16"), name="tiny_dino", embed_dim=32,
                                 depth=2, num_heads=2)
    return vidattn.load_model(preset, weights="random")


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    path = tmp_path_factory.mktemp("probed") / "probed.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(path)
    return path


@reliability(("a damaged seed image (cut, flipped, overwritten, spliced) given as "
              "`--explain-reference` to a preset without a head",
              "the explain probe written (the similarity to it), or one error line naming the "
              "reference before any image is probed, and nothing written"))
@examples(10)
@given(data=st.data())
def test_damaged_references_explain_or_fail_cleanly(data, headless, probed, seed_images, scratch):
    reference, out = write_damaged(data, seed_images, scratch, "reference"), scratch / "out"
    opts = ImageOptions(probes="explain", size=32, explain_method="generic",
                        explain_reference=str(reference))
    try:
        run = probe_images(headless, [probed], out, opts, overwrite=True, progress=False)
    except VidattnError as err:
        assert err.path == str(reference) and "\n" not in str(err), err
        assert not any(out.rglob("*.*"))
        event("error")
        return
    ((name, record),) = run.entries
    assert record["explain"]["classes"][0]["name"].startswith("similarity to case")
    assert (out / name / "explain.png").stat().st_size > 0
    for item in sorted(out.rglob("*"), key=lambda p: -len(p.parts)):  # the next example's
        item.unlink() if item.is_file() else item.rmdir()
    event("ok")
