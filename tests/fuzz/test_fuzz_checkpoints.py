"""Checkpoints: damaged seeds, pickles naming hostile globals, misused allowed globals, random
safetensors headers, and a table of named bad files. Every case loads finite float weights into
the demo model or ends in one VidattnError naming the file; no pickle ever runs code."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import vidattn
from tests.support.corpus import FAMILY_PRESETS, demo_state, family_preset
from tests.support.fuzzing import examples, write_damaged
from tests.support.pickles import pickle_text, torch_zip
from tests.support.reliability import reliability
from vidattn.errors import VidattnError
from vidattn.models import formats
from vidattn.models.state_dict import read_checkpoint
from vidattn.models.vit import load_state_dict

# A warning is noise on a CLI user's terminal: here it fails the case.
pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(scope="module")
def backbone():
    return vidattn.load_model("demo", weights="random").backbone


def _load_or_refuse(backbone, path) -> str:
    """Read ``path`` into ``backbone`` (the demo's, or a family's): "ok", or "error" with a
    VidattnError naming it."""
    try:
        state = read_checkpoint(path, backbone.preset)
        load_state_dict(backbone, state, source=str(path))
    except VidattnError as err:
        assert err.path == str(path), err
        return "error"
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in state.values())
    return "ok"


@reliability(("the demo weights as .pth (torch zip) and .safetensors, cut, flipped, overwritten "
              "or spliced (headers, zip directory, pickle, tensor data)",
              "loaded (every weight finite), or one error naming the file (damaged pickle or "
              "zip, bad safetensors header, wrong shape, NaN or infinite values)"))
@examples(60)
@given(data=st.data())
def test_damaged_checkpoints_load_or_fail_cleanly(data, backbone, seed_checkpoints, scratch):
    path = write_damaged(data, seed_checkpoints, scratch, "checkpoint")
    event(_load_or_refuse(backbone, path))
@pytest.fixture(scope="module")
def family_backbones():
    return {name: vidattn.load_model(family_preset(name), weights="random").backbone
            for name in FAMILY_PRESETS}


@reliability(("DINOv2-with-registers and DINOv3 weights (SwiGLU) as official .pth, timm and "
              "Hugging Face safetensors, cut, flipped, overwritten or spliced",
              "loaded into the family's model (every weight finite, the key bias masked), or "
              "one error naming the file"))
@pytest.mark.parametrize("group", list(FAMILY_PRESETS))
@examples(30)
@given(data=st.data())
def test_damaged_family_checkpoints_load_or_fail_cleanly(group, data, family_backbones,
                                                          family_checkpoints, scratch):
    path = write_damaged(data, family_checkpoints[group], scratch, "checkpoint")
    event(_load_or_refuse(family_backbones[group], path))


def test_family_seeds_load_as_they_are(family_backbones, family_checkpoints):
    """The undamaged seeds load: the damaged runs start from real files."""
    for group, files in family_checkpoints.items():
        for path in files.values():
            assert _load_or_refuse(family_backbones[group], path) == "ok", path


HOSTILE = [("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "Popen"),
           ("subprocess", "check_output"), ("builtins", "eval"), ("builtins", "exec"),
           ("builtins", "open"), ("builtins", "getattr"), ("builtins", "__import__"),
           ("__builtin__", "eval"), ("importlib", "import_module"), ("runpy", "run_path"),
           ("shutil", "rmtree"), ("pickle", "loads"), ("torch", "load"), ("numpy", "load"),
           ("torch.serialization", "load"), ("torch._utils", "_rebuild_tensor"),
           ("copyreg", "__newobj__"), ("collections", "namedtuple"), ("webbrowser", "open"),
           ("pty", "spawn"), ("code", "interact"), ("ctypes", "CDLL")]


@st.composite
def hostile_pickle(draw, command: str):
    """A pickle that reaches a dangerous callable through GLOBAL, STACK_GLOBAL or INST, calls it
    with ``command``, and hides the call at some depth in a dict of lists."""
    module, name = draw(st.sampled_from(HOSTILE))
    how = draw(st.sampled_from(["GLOBAL", "STACK_GLOBAL", "INST"]))
    arg = pickle_text(command)
    if how == "GLOBAL":
        call = b"c" + f"{module}\n{name}\n".encode() + b"(" + arg + b"tR"
    elif how == "STACK_GLOBAL":
        call = pickle_text(module) + pickle_text(name) + b"\x93(" + arg + b"tR"
    else:
        call = b"(" + arg + b"i" + f"{module}\n{name}\n".encode()
    for _ in range(draw(st.integers(0, 3))):
        call = draw(st.sampled_from([b"}" + pickle_text("cls_token") + call + b"s",
                                     b"]" + call + b"a"]))
    return module, name, b"\x80\x04" + call + b"."


@reliability(("a .pth whose pickle names a dangerous callable (os.system, eval, exec, open, "
              "subprocess, __import__, getattr, ... 25 of them) through GLOBAL, STACK_GLOBAL or "
              "INST, at any depth",
              "error: refused to load: the pickle calls MODULE.NAME, which is not tensor data; "
              "nothing runs"))
@examples(40)
@given(data=st.data())
def test_hostile_pickles_never_run(data, scratch):
    marker = scratch / "pwned"
    module, name, pickled = data.draw(hostile_pickle(f"touch {marker}"), label="pickle")
    path = torch_zip(scratch / "evil.pth", pickled)
    with pytest.raises(VidattnError, match=f"refused to load.*{module}.{name}") as err:
        read_checkpoint(path)
    assert err.value.path == str(path) and not marker.exists()


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=8),
                     st.binary(max_size=16), st.sampled_from(["latin1", "f4", "<u2", "O", "V99"]))


def _pickled(value) -> bytes:
    return pickle.dumps(value, protocol=2)


@reliability(("a .pth whose pickle calls the callables it may use (tensor rebuilding, "
              "OrderedDict, argparse, numpy dtype and scalar, codecs) with arbitrary arguments",
              "loaded if it is a real state dict, else one error naming the file (damaged "
              "checkpoint pickle, holds no tensors)"))
@examples(60)
@given(data=st.data())
def test_allowed_globals_with_any_arguments(data, backbone, scratch):
    module, name = data.draw(st.sampled_from(sorted(formats._ALLOWED)), label="global")
    args = data.draw(st.lists(_SCALARS, max_size=6), label="args")
    pickled = (b"\x80\x02}" + pickle_text("patch_embed.proj.weight") + b"c"
               + f"{module}\n{name}\n".encode() + _pickled(tuple(args))[2:-1] + b"Rs.")
    path = torch_zip(scratch / "misuse.pth", pickled, {"0": bytes(64)})
    event(_load_or_refuse(backbone, path))


_DTYPE_CODES = sorted(formats._DTYPES) + ["F8_E4M3", "f32", ""]
_ENTRY = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(_DTYPE_CODES), st.integers()),
    "shape": st.one_of(st.lists(st.one_of(st.integers(0, 16), st.integers(-1, 2**64)),
                                max_size=4), st.text(max_size=3)),
    "data_offsets": st.lists(st.one_of(st.integers(0, 64), st.integers(-2**63, 2**64)),
                             max_size=3),
})
_NAMES = st.one_of(st.sampled_from(["patch_embed.proj.weight", "cls_token", "pos_embed",
                                    "__metadata__"]), st.text(max_size=12))


@reliability(("a .safetensors with a random JSON header: unknown or wrong dtypes, negative or "
              "absurd shapes (2^64), offsets outside the data or overlapping",
              "error naming the file and the bad entry, before any tensor is read"))
@examples(60)
@given(header=st.dictionaries(_NAMES, st.one_of(_ENTRY, st.integers(), st.text(max_size=4)),
                              max_size=4),
       size=st.integers(0, 96))
def test_random_safetensors_headers(header, size, backbone, scratch):
    head = json.dumps(header).encode()
    path = scratch / "random.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + bytes(size))
    event(_load_or_refuse(backbone, path))


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Storage:
    """Pickled as a persistent reference to storage record 0 of four floats."""


class _StoragePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _Storage) else None


def _expanded_view(path):
    """A tensor over four floats that declares 100000 x 100000 elements with stride 0."""
    tensor = _Evil(torch._utils._rebuild_tensor_v2, _Storage(), 0, (100000, 100000), (0, 0),
                   False, {})
    buf = io.BytesIO()
    _StoragePickler(buf, protocol=2).dump({"patch_embed.proj.weight": tensor})
    return torch_zip(path, buf.getvalue(), {"0": bytes(16)})


def _zip_bomb(path):
    """A storage record of 64 MiB of zeros, deflated to ~65 KB."""
    state = {"patch_embed.proj.weight": torch.zeros(2**24)}
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(buf) as plain, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for info in plain.infolist():
            z.writestr(info.filename, plain.read(info.filename))
    return path


def _patched_flags(path):
    """A torch zip whose central directory marks a storage record "compressed patched data" (flag
    bit 5), a zip feature Python's zipfile does not implement."""
    buf = io.BytesIO()
    torch.save({"patch_embed.proj.weight": torch.zeros(4)}, buf)
    data = bytearray(buf.getvalue())
    entry = data.rfind(b"PK\x01\x02", 0, data.rfind(b"data/0"))
    data[entry + 8] |= 0x20
    return _file(path, bytes(data))


def _torch_state(path, transform):
    """The demo weights, each passed through ``transform``, saved by torch."""
    state = {k: torch.from_numpy(np.ascontiguousarray(transform(v)))
             for k, v in demo_state().items()}
    torch.save(state, path)
    return path


def _file(path, data: bytes):
    path.write_bytes(data)
    return path


def _nan(v):
    v = v.copy()
    v.flat[0] = np.nan
    return v


# (id, input tried, what vidattn does, file name, maker, expected error)
CASES = [
    ("random", "4 KB of random bytes named .pth", "error: not a checkpoint (shows its first bytes)",
     "random.pth", lambda p: _file(p, np.random.default_rng(0).bytes(4096)),
     "not a checkpoint"),
    ("int weights", "every weight stored as int32", "error: not floating point (names them)",
     "ints.pth", lambda p: _torch_state(p, lambda v: v.astype(np.int32)), "not floating point"),
    ("nan", "a weight holding NaN", "error: NaN or infinite values (names the tensor)",
     "nan.pth", lambda p: _torch_state(p, _nan), "NaN or infinite"),
    ("float64 overflow", "float64 weights beyond float32's range (1e300)",
     "error: NaN or infinite values (no overflow warning)",
     "huge.pth", lambda p: _torch_state(p, lambda v: v.astype(np.float64) * 1e300),
     "NaN or infinite"),
    ("wrong shape", "weights of another model size (half the width)",
     "error: does not fit the preset, listing wrong shapes",
     "half.pth", lambda p: _torch_state(p, lambda v: v[..., : max(1, v.shape[-1] // 2)]),
     "wrong shape"),
    ("expanded view", "a tensor over 4 floats declaring 100000x100000 elements (stride 0)",
     "error: damaged checkpoint pickle (an overlapping view), nothing allocated (regression: was "
     "a MemoryError)", "view.pth", _expanded_view, "overlapping view"),
    ("odd dtype call", "a pickle calling numpy.dtype with odd arguments (`dtype('f8', 'z')`)",
     "error: damaged checkpoint pickle, and no numpy warning on the terminal (regression)",
     "dtype.pth", lambda p: torch_zip(p, b"\x80\x02}" + pickle_text("patch_embed.proj.weight")
                                      + b"cnumpy\ndtype\n(" + pickle_text("f8")
                                      + pickle_text("z") + b"tRs."),
     "other than a type name"),
    ("zip feature", "a .pth whose zip directory marks a storage record with a flag zipfile does "
     "not implement (damaged bytes)", "error: storage record is damaged (regression: was a "
     "NotImplementedError)", "flags.pth", _patched_flags, "storage record .* is damaged"),
    ("zip bomb", "a .pth whose storage record is deflated (64 MiB of zeros in 65 KB)",
     "error: compressed record refused before inflating (regression: was inflated)",
     "bomb.pth", _zip_bomb, "compressed"),
]


@reliability(*[(tried, outcome) for _, tried, outcome, _, _, _ in CASES])
@pytest.mark.parametrize("name, make, expected",
                         [pytest.param(n, m, e, id=i) for i, _, _, n, m, e in CASES])
def test_bad_checkpoints(backbone, tmp_path, name, make, expected):
    path = make(tmp_path / name)
    with pytest.raises(VidattnError, match=expected) as err:
        load_state_dict(backbone, read_checkpoint(path), source=str(path))
    assert err.value.path == str(path) and "\n" not in str(err.value)
