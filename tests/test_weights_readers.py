"""Checkpoint readers, key mapping and the download cache (vidattn.models.formats, state_dict,
families and hub).

Files are written by the real libraries (torch.save, safetensors, transformers' save_pretrained)
and read back by vidattn's own parsers, which must reproduce every tensor exactly under the
canonical names, refuse hostile pickles without running them, turn damaged files into one-line
errors, and download atomically.
"""

import argparse
import dataclasses
import functools
import http.server
import io
import os
import pickle
import threading
import time

import numpy as np
import pytest
import torch

from tests.support.pickles import torch_zip
from vidattn.errors import VidattnError
from vidattn.models import hub
from vidattn.models.presets import get_preset
from vidattn.models.state_dict import read_checkpoint

DIM, HEADS, DEPTH, PATCH, GRID, CLASSES = 8, 2, 2, 4, 2, 3


def vit_state(seed=0, classes=0, dist=False):
    """A random canonical state dict for a tiny ViT, float32 numpy, torch layouts."""
    rng = np.random.default_rng(seed)
    tokens = GRID * GRID + 1 + dist
    shapes = {
        "cls_token": (1, 1, DIM),
        "pos_embed": (1, tokens, DIM),
        "patch_embed.proj.weight": (DIM, 3, PATCH, PATCH),
        "patch_embed.proj.bias": (DIM,),
        "norm.weight": (DIM,),
        "norm.bias": (DIM,),
    }
    for i in range(DEPTH):
        for name, shape in {
            "norm1.weight": (DIM,), "norm1.bias": (DIM,),
            "attn.qkv.weight": (3 * DIM, DIM), "attn.qkv.bias": (3 * DIM,),
            "attn.proj.weight": (DIM, DIM), "attn.proj.bias": (DIM,),
            "norm2.weight": (DIM,), "norm2.bias": (DIM,),
            "mlp.fc1.weight": (4 * DIM, DIM), "mlp.fc1.bias": (4 * DIM,),
            "mlp.fc2.weight": (DIM, 4 * DIM), "mlp.fc2.bias": (DIM,),
        }.items():  # fmt: skip
            shapes[f"blocks.{i}.{name}"] = shape
    if dist:
        shapes["dist_token"] = (1, 1, DIM)
    for head in ("head", "head_dist")[: (1 + dist) if classes else 0]:
        shapes[f"{head}.weight"], shapes[f"{head}.bias"] = (classes, DIM), (classes,)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def resolve(name, url, weights=None):
    """``hub.resolve`` for preset ``name`` with its official address replaced by ``url``."""
    return hub.resolve(dataclasses.replace(get_preset(name), weights_url=url, hf_repo=None), weights)


def is_cached(name, url):
    preset = dataclasses.replace(get_preset(name), weights_url=url, hf_repo=None)
    return hub.cached_weights(preset) is not None


def to_torch(state, prefix=""):
    return {prefix + k: torch.from_numpy(v.copy()) for k, v in state.items()}


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.float32, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ------------------------------------------------------------------------------- PyTorch .pth


def test_dino_release_pth_is_read_exactly(tmp_path):
    state = vit_state()
    torch.save(to_torch(state), tmp_path / "dino.pth")
    assert_same(read_checkpoint(tmp_path / "dino.pth"), state)


@pytest.mark.parametrize("protocol", [1, 2, 5])
def test_dino_training_checkpoint_picks_network_and_drops_projection_head(tmp_path, protocol):
    teacher, student = vit_state(seed=1), vit_state(seed=2)
    dino_head = {
        "head.mlp.0.weight": torch.ones(16, DIM),
        "head.last_layer.weight_g": torch.ones(1),
    }
    checkpoint = {
        "teacher": {**to_torch(teacher, "backbone."), **dino_head},
        "student": {
            **to_torch(student, "module.backbone."),
            **{"module." + k: v for k, v in dino_head.items()},
        },
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, lr=5e-4, out_dim=[65536]),
        "dino_loss": {"center": torch.zeros(1, 16)},
        "best": np.float64(0.75),
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path, pickle_protocol=protocol)
    assert_same(read_checkpoint(path), teacher)
    assert_same(read_checkpoint(path, checkpoint_key="student"), student)
    with pytest.raises(VidattnError, match="'ema'.*teacher"):
        read_checkpoint(path, checkpoint_key="ema")


def test_model_wrapper_and_strided_views_are_rebuilt(tmp_path):
    """Tensors sharing one storage at offsets, transposed and strided, as torch saves views."""
    state = vit_state()
    tensors = to_torch(state)
    big = torch.arange(5 * 3 * DIM * DIM, dtype=torch.float32).reshape(5, 3 * DIM, DIM)
    tensors["blocks.0.attn.qkv.weight"] = big[2]  # storage offset, shared storage
    tensors["blocks.1.attn.qkv.weight"] = big[4]
    tensors["blocks.0.attn.proj.weight"] = big[1, :DIM].t()  # non-contiguous
    tensors["extra.every_other"] = big[3, ::2, 1]  # strided 1-D
    tensors["extra.empty"] = big[0, :0]
    torch.save({"model": tensors, "epoch": 3}, tmp_path / "views.pt")
    got = read_checkpoint(tmp_path / "views.pt")
    assert_same(got, {k: v.numpy() for k, v in tensors.items()})


def test_half_bfloat16_double_widen_to_float32_and_ints_stay(tmp_path):
    state = to_torch(vit_state())
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].to(torch.bfloat16)
    state["pos_embed"] = state["pos_embed"].to(torch.float16)
    state["cls_token"] = state["cls_token"].to(torch.float64) / 3
    state["extra.steps"] = torch.tensor([1, 2**40], dtype=torch.int64)
    torch.save(state, tmp_path / "mixed.pth")
    got = read_checkpoint(tmp_path / "mixed.pth")
    for k in ("patch_embed.proj.weight", "pos_embed", "cls_token"):
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], state[k].float().numpy(), err_msg=k)
    assert got["extra.steps"].dtype == np.int64 and got["extra.steps"].tolist() == [1, 2**40]

class Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("attack", ["os.system", "builtins.open", "builtins.exec"])
def test_hostile_pickle_is_refused_without_running(tmp_path, attack):
    marker = tmp_path / "pwned"
    payload = {
        "os.system": Evil(os.system, f"touch {marker}"),
        "builtins.open": Evil(open, str(marker), "w"),
        "builtins.exec": Evil(exec, f"open({str(marker)!r}, 'w')"),
    }[attack]
    path = torch_zip(tmp_path / "evil.pth", pickle.dumps({"cls_token": payload}, protocol=2))
    with pytest.raises(VidattnError, match="refused to load") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and attack.split(".")[1] in str(err.value)
    assert not marker.exists()


class FakeStorage:
    pass


class StoragePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", torch.FloatStorage, "0", "cpu", 4)
        return None


@pytest.mark.parametrize("size, stride", [((5,), (1,)), ((2, 2), (1, 3)), ((2,), (-1,))])
def test_tensor_reaching_outside_its_storage_is_refused(tmp_path, size, stride):
    """A crafted size/stride must not make the reader touch memory past the 4-float storage."""
    tensor = Evil(torch._utils._rebuild_tensor_v2, FakeStorage(), 0, size, stride, False, {})
    buf = io.BytesIO()
    StoragePickler(buf, protocol=2).dump({"patch_embed.proj.weight": tensor})
    path = torch_zip(tmp_path / "oob.pth", buf.getvalue(), {"0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(VidattnError, match="damaged checkpoint pickle"):
        read_checkpoint(path)


def test_reconstructor_is_limited_to_argparse_args(tmp_path):
    import collections
    import copyreg

    trick = Evil(copyreg._reconstructor, collections.OrderedDict, object, None)
    path = torch_zip(tmp_path / "trick.pth", pickle.dumps({"args": trick}, protocol=2))
    with pytest.raises(VidattnError, match="damaged checkpoint pickle"):
        read_checkpoint(path)


# -------------------------------------------------------------------------------- safetensors


def test_timm_safetensors_numpy_and_torch_writers(tmp_path):
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    state = vit_state(classes=CLASSES, dist=True)
    save_numpy(state, str(tmp_path / "np.safetensors"), metadata={"format": "np"})
    assert_same(read_checkpoint(tmp_path / "np.safetensors"), state)

    tensors = to_torch(state)
    tensors["blocks.0.attn.qkv.weight"] = tensors["blocks.0.attn.qkv.weight"].to(torch.bfloat16)
    tensors["head_dist.weight"] = tensors["head_dist.weight"].to(torch.float16)
    save_torch(tensors, str(tmp_path / "model.bin"))  # the extension must not matter
    want = {k: v.float().numpy() for k, v in tensors.items()}
    assert_same(read_checkpoint(tmp_path / "model.bin"), want)


def hf_expected(file, prefix=""):
    """Canonical dict built by hand from the safetensors file's own (HF-named) tensors."""
    from safetensors.numpy import load_file

    hf = {k.removeprefix(prefix): v for k, v in load_file(str(file)).items()}
    want = {
        "cls_token": hf["embeddings.cls_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
    }
    for wb in ("weight", "bias"):
        want[f"norm.{wb}"] = hf[f"layernorm.{wb}"]
        for i in range(DEPTH):
            layer = f"encoder.layer.{i}."
            qkv = [hf[f"{layer}attention.attention.{p}.{wb}"] for p in ("query", "key", "value")]
            want[f"blocks.{i}.attn.qkv.{wb}"] = np.concatenate(qkv)
            for ours, theirs in {
                "norm1": "layernorm_before", "norm2": "layernorm_after",
                "attn.proj": "attention.output.dense",
                "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
            }.items():  # fmt: skip
                want[f"blocks.{i}.{ours}.{wb}"] = hf[f"{layer}{theirs}.{wb}"]
    return hf, want


def hf_config(cls):
    return cls(
        hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        intermediate_size=4 * DIM, image_size=GRID * PATCH, patch_size=PATCH, num_labels=CLASSES,
    )  # fmt: skip


def test_hugging_face_vit_model_fuses_qkv_and_drops_pooler(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(hf_config(ViTConfig)).save_pretrained(tmp_path / "vit")
    file = tmp_path / "vit" / "model.safetensors"
    hf, want = hf_expected(file)
    assert any(k.startswith("pooler.") for k in hf)
    got = read_checkpoint(file)
    assert_same(got, want)
    q = hf["encoder.layer.1.attention.attention.query.weight"]
    np.testing.assert_array_equal(got["blocks.1.attn.qkv.weight"][:DIM], q)
    # a model folder stands for its model.safetensors
    assert resolve("vit_b16", None, tmp_path / "vit") == file


def test_hugging_face_classifier_and_distilled_deit(tmp_path):
    from transformers import (
        DeiTConfig,
        DeiTForImageClassificationWithTeacher,
        ViTConfig,
        ViTForImageClassification,
    )

    ViTForImageClassification(hf_config(ViTConfig)).save_pretrained(tmp_path / "vit")
    file = tmp_path / "vit" / "model.safetensors"
    hf, want = hf_expected(file, prefix="vit.")
    want.update({"head.weight": hf["classifier.weight"], "head.bias": hf["classifier.bias"]})
    assert_same(read_checkpoint(file), want)

    DeiTForImageClassificationWithTeacher(hf_config(DeiTConfig)).save_pretrained(tmp_path / "deit")
    file = tmp_path / "deit" / "model.safetensors"
    hf, want = hf_expected(file, prefix="deit.")
    want["dist_token"] = hf["embeddings.distillation_token"]
    for wb in ("weight", "bias"):
        want[f"head.{wb}"] = hf[f"cls_classifier.{wb}"]
        want[f"head_dist.{wb}"] = hf[f"distillation_classifier.{wb}"]
    assert_same(read_checkpoint(file), want)


# ----------------------------------------------------------------------------- damaged files


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    import json

    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + data


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def damaged_files():
    """(name, bytes, expected message fragment) of files that must be refused."""
    pth = torch_bytes(to_torch(vit_state()))
    legacy = io.BytesIO()
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    npz = io.BytesIO()
    np.savez(npz, a=np.ones(3))
    entry = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    return [
        ("truncated.pth", pth[: len(pth) * 2 // 3], "not a readable zip"),
        ("random.pth", np.random.default_rng(0).bytes(4096), "not a checkpoint"),
        ("empty.pth", b"", "empty"),
        ("legacy.pth", legacy.getvalue(), "re-save"),
        ("arrays.npz", npz.getvalue(), "without data.pkl"),
        ("long_header.safetensors", b"\xff\xff\x00\x00\x00\x00\x00\x00{}", "header length"),
        ("bad_json.safetensors", b"\x05\x00\x00\x00\x00\x00\x00\x00{oops", "not valid JSON"),
        ("out_of_range.safetensors", safetensors_bytes({"x": entry}, bytes(8)), "offsets"),
        (
            "wrong_size.safetensors",
            safetensors_bytes({"x": {**entry, "shape": [3, 2]}}, bytes(16)),
            "needs 24",
        ),
        (
            "fp8.safetensors",
            safetensors_bytes({"x": {**entry, "dtype": "F8_E4M3"}}, bytes(16)),
            "unsupported dtype",
        ),
        ("resnet.safetensors", safetensors_bytes({"conv1.weight": entry}, bytes(16)), "conv1"),
        ("no_tensors.pth", torch_bytes({"epoch": 3}), "no tensors.*epoch"),
    ]


def test_damaged_or_foreign_files_give_one_line_errors(tmp_path):
    for name, data, fragment in damaged_files():
        path = write(tmp_path / name, data)
        with pytest.raises(VidattnError, match=fragment) as err:
            read_checkpoint(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, name


def test_missing_weights_file(tmp_path):
    with pytest.raises(VidattnError, match="does not exist"):
        resolve("dino_vits16", "http://127.0.0.1:9/x.pth", tmp_path / "nope.pth")
    with pytest.raises(VidattnError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")


# ---------------------------------------------------------------------------------- download


def test_cache_location_follows_environment(tmp_path, monkeypatch):
    url = "https://example.org/dino/dino_deitsmall16_pretrain.pth"
    monkeypatch.delenv("VIDATTN_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    xdg_target = tmp_path / "xdg/vidattn/dino_vits16/dino_deitsmall16_pretrain.pth"
    assert hub.cached_path("dino_vits16", url) == xdg_target
    monkeypatch.setenv("VIDATTN_HOME", str(tmp_path / "home"))
    target = hub.cached_path("dino_vits16", url)
    assert target == tmp_path / "home/dino_vits16/dino_deitsmall16_pretrain.pth"
    assert not is_cached("dino_vits16", url)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert is_cached("dino_vits16", url) and resolve("dino_vits16", url, None) == target


def test_offline_download_fails_fast_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDATTN_HOME", str(tmp_path))
    url = "http://127.0.0.1:9/dino.pth"  # discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(VidattnError) as err:
        resolve("dino_vits16", url, None)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "--weights PATH" in message and url in message
    assert str(tmp_path / "dino_vits16" / "dino.pth") in message and "\n" not in message
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server: ``/ok/model.safetensors`` (a real checkpoint), ``/short/x.pth``
    (promises more bytes than it sends), ``/html/x.pth`` (an error page); counts requests."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    (tmp_path / "src").mkdir()
    from safetensors.numpy import save_file

    save_file(vit_state(), str(tmp_path / "src" / "model.safetensors"))
    body = (tmp_path / "src" / "model.safetensors").read_bytes()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            content, length = {
                "/ok/model.safetensors": (body, len(body)),
                "/short/x.pth": (body[:100], len(body)),
                "/html/x.pth": (b"<html>login</html>", 18),
            }[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield functools.partial("http://127.0.0.1:{}{}".format, httpd.server_port), hits, body
    httpd.shutdown()
    httpd.server_close()


def test_download_lands_in_cache_once(tmp_path, monkeypatch, server):
    address, hits, body = server
    monkeypatch.setenv("VIDATTN_HOME", str(tmp_path / "cache"))
    url = address("/ok/model.safetensors")
    path = resolve("vit_b16", url, None)
    assert path == tmp_path / "cache/vit_b16/model.safetensors"
    assert path.read_bytes() == body and hits == ["/ok/model.safetensors"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]
    assert resolve("vit_b16", url, None) == path and len(hits) == 1
    assert_same(read_checkpoint(path), vit_state())


@pytest.mark.parametrize(
    "route, reason", [("/short/x.pth", "closed|Incomplete"), ("/html/x.pth", "not a checkpoint")]
)
def test_failed_download_leaves_nothing(tmp_path, monkeypatch, server, route, reason):
    address, hits, _ = server
    monkeypatch.setenv("VIDATTN_HOME", str(tmp_path / "cache"))
    with pytest.raises(VidattnError, match=reason):
        resolve("dino_vits16", address(route), None)
    assert hits == [route]
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("offline", [False, True])
def test_hugging_face_download_fails_fast_offline(tmp_path, monkeypatch, offline):
    """Weights on the Hub, not in its cache, and no way to reach it (nothing listens at the
    endpoint, or HF_HUB_OFFLINE): one line at once, not huggingface_hub's 25 s of retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    start = time.monotonic()
    with pytest.raises(VidattnError) as err:
        hub.resolve(get_preset("vit_b16"))
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "google/vit-base-patch16-224" in message and "--weights PATH" in message
    assert ("HF_HUB_OFFLINE" in message) == offline and "\n" not in message
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
