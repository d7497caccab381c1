"""``--model PATH`` and ``--model hf:ORG/NAME`` on bad model folders: a table of named bad ones
through ``vidattn image``, a Hub name offline through the real command, and publishers' configs
with any field dropped or replaced by any JSON value. Every case loads a working model or ends
in one line naming the file, with nothing written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import event, given
from hypothesis import strategies as st

import vidattn
from tests.support import publishers
from tests.support.clirun import assert_one_error
from tests.support.clirun import run as run_subprocess
from tests.support.fuzzing import examples
from tests.support.reliability import reliability
from vidattn import cli
from vidattn.errors import VidattnError
from vidattn.models.configs import read_model

CHELSEA = Path(__file__).resolve().parents[2] / "samples" / "chelsea.jpg"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Publishers' folders (tiny random weights), written once: layout -> folder."""
    root = tmp_path_factory.mktemp("model-seeds")
    made = {}
    for name, publish in (("vit_classifier", publishers.publish_vit_classifier),
                          ("phikon", publishers.publish_phikon),
                          ("dinov2_registers", publishers.publish_dinov2_registers),
                          ("uni", publishers.publish_uni),
                          ("openclip", publishers.publish_openclip)):
        (root / name).mkdir()
        publish(root / name)
        made[name] = root / name
    return made


def _copy(seeds, name, folder: Path) -> Path:
    target = folder / name
    shutil.copytree(seeds[name], target)
    return target


def _edit(folder: Path, change, file="config.json") -> Path:
    config = json.loads((folder / file).read_text())
    change(config)
    (folder / file).write_text(json.dumps(config))
    return folder


def _missing_width(seeds, tmp):
    folder = _edit(_copy(seeds, "vit_classifier", tmp), lambda c: c.pop("hidden_size"))
    return folder, folder / "model.safetensors"


def _heads_not_dividing(seeds, tmp):
    folder = _edit(_copy(seeds, "vit_classifier", tmp),
                   lambda c: c.update(num_attention_heads=3))
    return folder, folder / "config.json"


def _more_blocks(seeds, tmp):
    folder = _edit(_copy(seeds, "vit_classifier", tmp), lambda c: c.update(num_hidden_layers=3))
    return folder, folder / "model.safetensors"


def _other_weights(seeds, tmp):
    folder = _copy(seeds, "vit_classifier", tmp)
    shutil.copy(seeds["phikon"] / "model.safetensors", folder / "model.safetensors")
    return folder, folder / "model.safetensors"


def _unknown_type(seeds, tmp):
    folder = _edit(_copy(seeds, "vit_classifier", tmp), lambda c: c.update(model_type="swin"))
    return folder, folder / "config.json"


def _cut_config(seeds, tmp):
    folder = _copy(seeds, "phikon", tmp)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    return folder, folder / "config.json"


def _label_gap(seeds, tmp):
    folder = _edit(_copy(seeds, "vit_classifier", tmp),
                   lambda c: c.update(id2label={"0": "cat", "2": "teapot"}))
    return folder, folder / "config.json"


def _no_weights(seeds, tmp):
    folder = _copy(seeds, "phikon", tmp)
    (folder / "model.safetensors").unlink()
    return folder, folder


def _sharded(seeds, tmp):
    folder = _copy(seeds, "phikon", tmp)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    return folder, folder


def _unknown_timm(seeds, tmp):
    folder = _edit(_copy(seeds, "uni", tmp), lambda c: c.update(architecture="vit_base_resnet"))
    return folder, folder / "config.json"


def _resnet_tower(seeds, tmp):
    folder = _edit(_copy(seeds, "openclip", tmp),
                   lambda c: c["model_cfg"]["vision_cfg"].update(layers=[3, 4, 6, 3]),
                   "open_clip_config.json")
    return folder, folder / "open_clip_config.json"


# (id, input tried, what vidattn does, maker -> (the --model folder, the file named), message)
CASES = [
    ("missing field", "`--model FOLDER` whose config.json lacks hidden_size",
     "error naming the weights: the config says width 768 (transformers' default), the patch "
     "embedding is 64 wide", _missing_width, "config says width 768 and patch 8"),
    ("contradiction", "a config.json whose 64-wide model has 3 heads",
     "error naming config.json: hidden size 64 is not divisible by 3 heads", _heads_not_dividing,
     "not divisible"),
    ("more blocks", "a config.json saying 3 blocks beside weights of 2",
     "error naming the weights: the config says 3 blocks, the weights hold 2", _more_blocks,
     "config says 3 blocks, the weights hold 2"),
    ("other weights", "a classifier's config.json beside another model's weights (same width "
     "and patch, another grid, feed-forward and no head)",
     "error naming the weights: the config says a feed-forward width of 192, the weights' "
     "is 256", _other_weights, "config says a feed-forward width of 192, the weights' is 256"),
    ("unknown type", "a config.json with model_type swin",
     "error naming config.json: model_type 'swin' is not one vidattn reads (lists them)",
     _unknown_type, "model_type 'swin' is not one vidattn reads"),
    ("cut config", "a config.json cut in half", "error: is not valid JSON", _cut_config,
     "not valid JSON"),
    ("label gap", "a classifier's id2label with indices 0 and 2",
     "error: id2label indices are not 0..1", _label_gap, r"id2label indices are not 0\.\.1"),
    ("no weights", "a model folder with config.json and no weights",
     "error naming the folder: config.json but no weights file beside it", _no_weights,
     "no weights file beside it"),
    ("sharded", "a folder of sharded weights (model.safetensors.index.json)",
     "error naming the folder: sharded weights are not supported, save them as one file",
     _sharded, "sharded weights"),
    ("unknown timm", "a timm config.json naming an architecture vidattn does not compute",
     "error naming config.json: the timm architecture is not one vidattn reads (lists them)",
     _unknown_timm, "timm architecture 'vit_base_resnet'"),
    ("resnet tower", "an OpenCLIP config whose image tower is a ResNet",
     "error naming open_clip_config.json: a ResNet tower, not a ViT", _resnet_tower,
     "ResNet tower"),
]


@reliability(*[(tried, outcome + "; nothing written") for _, tried, outcome, _, _ in CASES])
@pytest.mark.parametrize("make, message", [pytest.param(m, e, id=i) for i, _, _, m, e in CASES])
def test_bad_model_folders(seeds, tmp_path, make, message):
    folder, named = make(seeds, tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.main, ["image", str(CHELSEA), "-o", str(out), "--model",
                                           str(folder), "--quiet"])
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(f"vidattn: error: {named}: "), lines
    assert re.search(message, lines[0]), lines
    assert not out.exists()


@reliability(("`vidattn image --model hf:ORG/NAME` with HF_HUB_OFFLINE=1 and an empty HF_HOME "
              "(subprocess)",
              "exit 1 at once, one line: hf:ORG/NAME: config.json is not in the Hugging Face "
              "cache and HF_HUB_OFFLINE is set; nothing written"))
def test_hub_name_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    proc = run_subprocess("image", CHELSEA, "-o", "out", "--model", "hf:someone/some-vit",
                          cwd=tmp_path)
    assert_one_error(proc, "hf:someone/some-vit")
    assert "HF_HUB_OFFLINE" in proc.stderr and not (tmp_path / "out").exists()


def _leaves(node, prefix=()):
    """Every key path of a JSON object, nested objects included."""
    for key, value in node.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2, 2**40), st.sampled_from([0, 1, 3, 7]),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
              st.sampled_from(["gelu", "silu", "relu", "vit", "dinov2", "SwiGLUPacked"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=4), inner, max_size=2)),
    max_leaves=4)
_CONFIG = {"vit_classifier": "config.json", "dinov2_registers": "config.json",
           "uni": "config.json", "openclip": "open_clip_config.json"}


@reliability(("publishers' configs (transformers ViT classifier, DINOv2 with registers, timm, "
              "OpenCLIP) with any field dropped or replaced by any JSON value (null, NaN, "
              "2^40, strings, lists, objects)",
              "read and loaded (a forward pass gives finite features), or one error naming the "
              "config or the weights"))
@examples(15)
@given(data=st.data())
def test_mutated_configs_load_or_fail_cleanly(data, seeds, scratch):
    name = data.draw(st.sampled_from(sorted(_CONFIG)), label="layout")
    folder = scratch / name
    if not folder.exists():
        shutil.copytree(seeds[name], folder)
    shutil.copy(seeds[name] / _CONFIG[name], folder / _CONFIG[name])  # undo the last example
    config = json.loads((folder / _CONFIG[name]).read_text())
    path = data.draw(st.sampled_from(list(_leaves(config))), label="key")
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans(), label="drop"):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_JSON, label="value")
    (folder / _CONFIG[name]).write_text(json.dumps(config))
    try:
        model = vidattn.load_model(read_model(str(folder)))
    except VidattnError as err:
        assert err.path is not None and Path(err.path).parent in (folder, folder.parent), err
        assert "\n" not in str(err)
        event("error")
        return
    side = 2 * model.preset.patch_size
    features = model.run(np.zeros((1, side, side, 3), np.float32))["features"]
    assert np.isfinite(features).all()
    event("ok")
