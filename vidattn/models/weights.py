"""Checkpoint files -> one canonical state dict, and the download cache for official weights.

Readers (no torch, no safetensors package at run time):

* PyTorch zip checkpoints (``torch.save`` since 1.6: ``.pth``, ``.pt``, ``.bin``), parsed by a
  restricted unpickler that can rebuild tensors and a few plain data types and nothing else, so
  a hostile checkpoint cannot run code. Covers DINO releases and DINO training checkpoints.
* safetensors (timm, Hugging Face), parsed and bounds-checked here.

The format is told by the file's first bytes, not its extension. :func:`canonicalize` then maps
the layouts (DINO, DINO training, timm, Hugging Face ViT/DeiT) onto one naming, timm's, with
torch layouts, every floating tensor float32:

    cls_token (1, 1, D)        dist_token (1, 1, D)        pos_embed (1, T, D)
    patch_embed.proj.weight (D, 3, p, p)                   patch_embed.proj.bias (D,)
    blocks.{i}.norm1/norm2.{weight,bias} (D,)
    blocks.{i}.attn.qkv.weight (3D, D), .bias (3D,)        rows q, k, v; heads contiguous
    blocks.{i}.attn.proj.{weight (D, D), bias}             blocks.{i}.mlp.fc1/fc2.{weight,bias}
    norm.{weight,bias} (D,)    head.{weight (C, D), bias}  head_dist.{weight, bias}

Keys it does not know pass through unchanged; the model reports them.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import math
import mmap
import os
import pickle
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from vidattn.errors import VidattnError

DOWNLOAD_TIMEOUT_S = 5.0  # per socket operation: connecting, and each read of the download

# safetensors dtype code -> numpy dtype of the stored elements (bf16 is read as its uint16 bits).
_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}  # fmt: skip
# torch's pickled storage type names -> the same codes (an untyped storage is raw bytes).
_TORCH_STORAGES = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16",
    "BFloat16Storage": "BF16", "LongStorage": "I64", "IntStorage": "I32",
    "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8", "BoolStorage": "BOOL",
    "UntypedStorage": "U8",
}  # fmt: skip
# torch.save before 1.6 wrote a bare pickle that starts with this magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_MAX_SAFETENSORS_HEADER = 100 * 2**20


class _Lazy:
    """A tensor not read yet: ``load()`` returns it as a fresh numpy array.

    Training checkpoints hold optimiser state and projection heads several times the size of the
    backbone; only the tensors :func:`canonicalize` keeps are ever read.
    """

    def __init__(self, load):
        self.load = load


def _finish(view: np.ndarray, code: str) -> np.ndarray:
    """Copy ``view`` into a native-byte-order array; bf16 (uint16 bits) is widened to float32."""
    if code == "BF16":
        return (view.astype(np.uint32) << 16).view(np.float32)
    return view.astype(view.dtype.newbyteorder("="))


# --------------------------------------------------------------------------------- safetensors


def _read_safetensors(path: Path) -> dict[str, _Lazy]:
    """Parse a safetensors file: 8-byte little-endian header length, JSON header, raw data.

    Every entry is validated (dtype, shape, offsets inside the data, byte count matching the
    shape) before anything is returned; the data is memory-mapped and read on demand.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise VidattnError(
                f"safetensors header length {header_len} does not fit in the file ({size} bytes):"
                " truncated or not a safetensors file",
                path,
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise VidattnError(f"safetensors header is not valid JSON ({exc})", path) from None
        if not isinstance(header, dict):
            raise VidattnError("safetensors header is not a JSON object", path)
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    start, data_len = 8 + header_len, size - 8 - header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code, shape, (begin, _) = _check_safetensors_entry(name, info, data_len, path)
        tensors[name] = _Lazy(
            lambda code=code, shape=shape, offset=start + begin: _finish(
                np.frombuffer(data, _DTYPES[code], math.prod(shape), offset).reshape(shape), code
            )
        )
    return tensors


def _check_safetensors_entry(name, info, data_len, path):
    """Validate one header entry; returns ``(dtype code, shape, (begin, end))``."""

    def bad(reason):
        return VidattnError(f"safetensors entry {name!r} {reason}", path)

    if not isinstance(info, dict):
        raise bad("is not a JSON object")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if code not in _DTYPES:
        raise bad(f"has unsupported dtype {code!r} (supported: {', '.join(_DTYPES)})")
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise bad(f"has an invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise bad(f"has data offsets {offsets!r} outside the {data_len}-byte data section")
    nbytes = math.prod(shape) * np.dtype(_DTYPES[code]).itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise bad(f"spans {offsets[1] - offsets[0]} bytes but {code} {shape} needs {nbytes}")
    return code, tuple(shape), tuple(offsets)


# ------------------------------------------------------------------------ PyTorch zip checkpoints


class _StorageType:
    """What ``torch.FloatStorage`` & co. unpickle to: just the element type code."""

    def __init__(self, code):
        self.code = code


class _Storage:
    """One storage record of a torch zip (``<archive>/data/<key>``), read on demand."""

    def __init__(self, archive: zipfile.ZipFile, record: str, code: str, numel: int, order: str):
        self.archive, self.record, self.code, self.numel = archive, record, code, numel
        self.dtype = np.dtype(_DTYPES[code]).newbyteorder(order)

    def tensor(self, offset, size, stride) -> np.ndarray:
        """The elements of ``size`` at ``offset`` with element ``stride``s, copied out."""
        path = self.archive.filename
        try:
            raw = _read_record(self.archive, self.record)
        except KeyError:
            raise VidattnError(f"storage record {self.record} is missing", path) from None
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
            # NotImplementedError: zipfile's word for flags and versions it does not know
            raise VidattnError(f"storage record {self.record} is damaged ({exc})", path) from None
        if len(raw) != self.numel * self.dtype.itemsize:
            raise VidattnError(
                f"storage record {self.record} has {len(raw)} bytes, expected"
                f" {self.numel} x {self.dtype.itemsize}",
                path,
            )
        flat = np.frombuffer(raw, self.dtype)
        if math.prod(size) == 0:
            return _finish(np.empty(size, self.dtype), self.code)
        strides = tuple(s * self.dtype.itemsize for s in stride)
        view = np.lib.stride_tricks.as_strided(flat[offset:], size, strides, writeable=False)
        return _finish(view, self.code)


def _is_index_tuple(value):
    return isinstance(value, tuple) and all(type(n) is int and n >= 0 for n in value)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    """``torch._utils._rebuild_tensor_v2`` in numpy: a lazy strided view into ``storage``.

    The view is bounds-checked here, so a crafted stride can never read outside the storage, and
    may not hold more elements than its storage: an overlapping view (stride 0) of four floats
    could otherwise declare a size that takes any amount of memory to copy out.
    """
    if not (isinstance(storage, _Storage) and type(offset) is int and offset >= 0):
        raise ValueError("a tensor without a valid storage")
    if not (_is_index_tuple(size) and _is_index_tuple(stride) and len(size) == len(stride)):
        raise ValueError(f"a tensor with invalid size {size!r} / stride {stride!r}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if math.prod(size) and last >= storage.numel:
        raise ValueError(f"a tensor reaching past its storage ({last} >= {storage.numel})")
    if math.prod(size) > storage.numel:
        raise ValueError(f"a tensor of {math.prod(size)} elements over a storage of "
                         f"{storage.numel} (an overlapping view)")
    return _Lazy(lambda: storage.tensor(offset, size, stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    """``torch._utils._rebuild_parameter[_with_state]``: a parameter is just its tensor."""
    if not isinstance(data, _Lazy):
        raise ValueError("a parameter without tensor data")
    return data


class _OrderedDict(collections.OrderedDict):
    """What ``collections.OrderedDict`` unpickles to: a private subclass, so that a pickle's
    BUILD on the class object cannot alter the real one."""


class _Namespace(argparse.Namespace):
    """What ``argparse.Namespace`` (DINO's saved ``args``) unpickles to; private like above."""


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` as protocol 0/1 pickles use it, for ``_Namespace`` only."""
    if cls is not _Namespace or base is not object or state is not None:
        raise ValueError("copyreg._reconstructor used for something other than argparse args")
    return _Namespace()


def _numpy_scalar(dtype, data):
    """``numpy._core.multiarray.scalar`` for plain (non-object) dtypes: metrics in args."""
    if not (isinstance(dtype, np.dtype) and not dtype.hasobject and isinstance(data, bytes)):
        raise ValueError("a numpy scalar that is not plain numeric data")
    return np.frombuffer(data, dtype, 1)[0]


def _numpy_dtype(name, align=False, copy=False):
    """``numpy.dtype`` as pickles call it (``dtype("f8", False, True)``): plain arguments only,
    so that odd ones fail here instead of reaching numpy (which warns on the terminal)."""
    if not (isinstance(name, str) and type(align) is bool and type(copy) is bool):
        raise ValueError("numpy.dtype called with something other than a type name and flags")
    return np.dtype(name, align, copy)


def _latin1(text, encoding):
    """``_codecs.encode(text, "latin1")``: how protocol-2 pickles spell ``bytes``."""
    if not (isinstance(text, str) and encoding == "latin1"):
        raise ValueError("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


# The only globals a checkpoint's pickle may name (protocol-2 pickles use Python 2 module names).
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): _OrderedDict,
    ("argparse", "Namespace"): _Namespace,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _latin1,
    **{
        (module, name): _StorageType(code)
        for name, code in _TORCH_STORAGES.items()
        for module in ("torch", "torch.storage")
    },
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch zip; any global outside ``_ALLOWED`` is refused before
    it is even looked up, so nothing but tensor rebuilding and plain data can execute."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, order: str):
        super().__init__(file)
        self.archive, self.prefix, self.order = archive, prefix, order

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise VidattnError(
                f"refused to load: the pickle calls {module}.{name}, which is not tensor data",
                self.archive.filename,
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5):
            raise ValueError(f"unknown persistent id {pid!r}")
        typename, storage_type, key, _location, numel = pid
        if typename not in ("storage", b"storage") or not isinstance(storage_type, _StorageType):
            raise ValueError(f"unknown persistent id {pid!r}")
        if isinstance(key, bytes):
            key = key.decode("ascii")
        if not (isinstance(key, str) and type(numel) is int and numel >= 0):
            raise ValueError(f"invalid storage reference {pid!r}")
        record = f"{self.prefix}data/{key}"
        return _Storage(self.archive, record, storage_type.code, numel, self.order)


def _read_record(archive: zipfile.ZipFile, name: str) -> bytes:
    """The bytes of the zip record ``name``; KeyError if it is missing."""
    _check_stored(archive, name)
    return archive.read(name)


def _check_stored(archive: zipfile.ZipFile, name: str):
    """Refuse a compressed record before inflating it: torch.save stores records uncompressed
    (to memory-map them), and a few compressed kilobytes can inflate to any size (a zip bomb);
    a stored record can hold no more than the file's own bytes."""
    if archive.getinfo(name).compress_type != zipfile.ZIP_STORED:
        raise VidattnError(f"record {name} is compressed, which torch.save never does: refused "
                           "(a zip bomb can inflate to any size)", archive.filename)


def _unpickle_torch_zip(archive: zipfile.ZipFile):
    """The object a torch zip checkpoint holds, tensors as :class:`_Lazy` reading ``archive``."""
    path = archive.filename
    pickles = sorted((n for n in archive.namelist() if n.endswith("data.pkl")), key=len)
    if not pickles:
        raise VidattnError("is a zip archive without data.pkl: not a PyTorch checkpoint", path)
    prefix = pickles[0][: -len("data.pkl")]
    try:
        byteorder = prefix + "byteorder"
        big = byteorder in archive.namelist() and _read_record(archive, byteorder) == b"big"
        _check_stored(archive, pickles[0])
        with archive.open(pickles[0]) as f:
            return _RestrictedUnpickler(f, archive, prefix, ">" if big else "<").load()
    except VidattnError:
        raise
    except Exception as exc:  # anything a damaged pickle or zip can raise while parsing
        reason = f"{type(exc).__name__}: {exc}"
        raise VidattnError(f"damaged checkpoint pickle ({reason})", path) from None


# ------------------------------------------------------------------------------------- entry


def _sniff(path: Path) -> str:
    """``"zip"``, ``"safetensors"``; raises for anything else, saying what it looks like."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except IsADirectoryError:
        raise VidattnError("is a directory, expected a .pth or .safetensors file", path) from None
    except OSError as exc:
        raise VidattnError(f"cannot read checkpoint ({exc.strerror or exc})", path) from None
    if head.startswith(b"PK"):
        return "zip"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        raise VidattnError(
            "is in PyTorch's legacy (pre-1.6) format; re-save it with a newer torch:"
            " torch.save(torch.load(old), new)",
            path,
        )
    if not head:
        raise VidattnError("is empty, not a checkpoint", path)
    raise VidattnError(
        f"is not a checkpoint: expected a PyTorch .pth (zip) or .safetensors file, found bytes"
        f" {head[:8].hex(' ')}",
        path,
    )


def read_checkpoint(path, checkpoint_key: str = "teacher") -> dict[str, np.ndarray]:
    """Read a ``.pth`` (torch zip) or ``.safetensors`` file into the canonical state dict.

    ``checkpoint_key`` picks the network of a DINO training checkpoint (``teacher``/``student``).
    Every failure (missing, truncated, foreign or hostile file) is a one-line VidattnError.
    """
    path = Path(path)
    if _sniff(path) == "safetensors":
        return canonicalize(_read_safetensors(path), path, checkpoint_key)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise VidattnError(
            f"is not a readable zip checkpoint, truncated or damaged? ({exc})", path
        ) from None
    with archive:
        return canonicalize(_unpickle_torch_zip(archive), path, checkpoint_key)


# ---------------------------------------------------------------------------- key normalisation

# Hugging Face ViT/DeiT names (after the ``vit.``/``deit.`` prefix) -> canonical names.
_LAYER, _WB = r"encoder\.layer\.(\d+)\.", r"\.(weight|bias)"
_HF_RENAMES = [
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"embeddings\.cls_token", "cls_token"),
        (r"embeddings\.distillation_token", "dist_token"),
        (r"embeddings\.position_embeddings", "pos_embed"),
        (r"embeddings\.patch_embeddings\.projection" + _WB, r"patch_embed.proj.\1"),
        (_LAYER + r"layernorm_before" + _WB, r"blocks.\1.norm1.\2"),
        (_LAYER + r"layernorm_after" + _WB, r"blocks.\1.norm2.\2"),
        (_LAYER + r"attention\.output\.dense" + _WB, r"blocks.\1.attn.proj.\2"),
        (_LAYER + r"intermediate\.dense" + _WB, r"blocks.\1.mlp.fc1.\2"),
        (_LAYER + r"output\.dense" + _WB, r"blocks.\1.mlp.fc2.\2"),
        (r"layernorm" + _WB, r"norm.\1"),
        (r"(?:cls_)?classifier" + _WB, r"head.\1"),
        (r"distillation_classifier" + _WB, r"head_dist.\1"),
    )
]
_HF_QKV = re.compile(_LAYER + r"attention\.attention\.(query|key|value)" + _WB)
_HF_UNUSED = re.compile(r"pooler\.|embeddings\.mask_token$")  # not part of the forward pass
_HF_MARKER = re.compile(r"((vit|deit)\.)?embeddings\.patch_embeddings\.")


def _is_tensor(value):
    return isinstance(value, (_Lazy, np.ndarray))


def _load(value) -> np.ndarray:
    return value.load() if isinstance(value, _Lazy) else np.asarray(value)


def _some_keys(mapping, n=8) -> str:
    keys = [str(k) for k in mapping]
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} keys)" if len(keys) > n else "") or "none"


def _select_network(raw, path, checkpoint_key):
    """Descend through wrappers (``teacher``/``student``, ``state_dict``, ``model``) to the
    dict that holds the tensors."""
    state = raw
    while isinstance(state, dict):
        wrappers = (checkpoint_key, "state_dict", "model")
        inner = next((state[k] for k in wrappers if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        found = "a single tensor" if _is_tensor(state) else f"a {type(state).__name__}"
        raise VidattnError(f"holds {found}, not a dict of tensors", path)
    if not any(_is_tensor(v) for v in state.values()) and {"teacher", "student"} & set(state):
        raise VidattnError(
            f"has no {checkpoint_key!r} network (checkpoint_key); entries: {_some_keys(state)}",
            path,
        )
    return state


def _strip_prefixes(tensors):
    """Drop ``module.`` (DistributedDataParallel) and ``_orig_mod.`` (torch.compile); where keys
    live under ``backbone.`` (DINO training), keep only those: the rest is the DINO head."""
    stripped = {}
    for key, value in tensors.items():
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        stripped[key] = value
    backbone = {k[len("backbone.") :]: v for k, v in stripped.items() if k.startswith("backbone.")}
    return backbone or stripped


def _from_hugging_face(tensors, path):
    """Rename Hugging Face ViT/DeiT keys; fuse each layer's query/key/value into ``qkv`` (rows
    q, k, v, as timm stores them). Unknown keys pass through; pooler/mask token are dropped."""
    out, qkv = {}, collections.defaultdict(dict)
    for key, value in tensors.items():
        key = re.sub(r"^(vit|deit)\.", "", key)
        if _HF_UNUSED.match(key):
            continue
        if m := _HF_QKV.fullmatch(key):
            qkv[f"blocks.{m[1]}.attn.qkv.{m[3]}"][m[2]] = value
            continue
        for pattern, replacement in _HF_RENAMES:
            if pattern.fullmatch(key):
                key = pattern.sub(replacement, key)
                break
        out[key] = value
    for name, parts in qkv.items():
        if len(parts) != 3:
            found = "/".join(sorted(parts))
            raise VidattnError(f"{name}: found only {found} of query/key/value", path)
        out[name] = _Lazy(
            lambda p=parts: np.concatenate([_load(p[k]) for k in ("query", "key", "value")])
        )
    return out


def canonicalize(raw, path, checkpoint_key: str = "teacher") -> dict[str, np.ndarray]:
    """Map what a checkpoint file holds onto canonical names; floating tensors become float32.

    ``raw``: the file's top-level object (values numpy arrays or lazy tensors). Handles plain
    state dicts (DINO release, timm), DINO training checkpoints (``checkpoint_key`` network,
    ``module.``/``backbone.`` prefixes, projection head dropped), ``state_dict``/``model``
    wrappers, and Hugging Face ViT/DeiT names. Raises VidattnError naming ``path`` when no ViT
    weights are found, listing some of the keys seen.
    """
    state = _select_network(raw, path, checkpoint_key)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and _is_tensor(v)}
    if not tensors:
        raise VidattnError(f"holds no tensors; keys seen: {_some_keys(state)}", path)
    tensors = _strip_prefixes(tensors)
    if any(_HF_MARKER.match(k) for k in tensors):
        tensors = _from_hugging_face(tensors, path)
    if "patch_embed.proj.weight" not in tensors:
        raise VidattnError(
            f"unrecognised checkpoint layout (no ViT patch embedding); keys seen: "
            f"{_some_keys(tensors)}",
            path,
        )
    out = {}
    for key, value in tensors.items():
        array = _load(value)
        with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused on loading
            out[key] = array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array
    return out


# ------------------------------------------------------------------------------ cache, download


def cache_dir() -> Path:
    """``$VIDATTN_HOME``, else ``$XDG_CACHE_HOME/vidattn``, else ``~/.cache/vidattn``."""
    if os.environ.get("VIDATTN_HOME"):
        return Path(os.environ["VIDATTN_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vidattn"


def cached_path(preset_name: str, url: str) -> Path:
    """Where the preset's download lives in the cache: ``<cache>/<preset>/<url basename>``."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise VidattnError(f"cannot name a cache file after the download address {url}")
    return cache_dir() / preset_name / name


def is_cached(preset_name: str, url: str | None) -> bool:
    """Whether the preset's official weights are already downloaded."""
    return url is not None and cached_path(preset_name, url).is_file()


def resolve_weights(preset_name: str, url: str | None, weights=None) -> Path:
    """The checkpoint file to read: ``weights`` if given (it must exist; a Hugging Face model
    folder means its ``model.safetensors``), else the cached download of ``url``, fetched now
    if missing."""
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            if not (path / "model.safetensors").is_file():
                raise VidattnError("is a folder without model.safetensors", path)
            return path / "model.safetensors"
        if not path.is_file():
            raise VidattnError("weights file does not exist", path)
        return path
    if url is None:
        raise VidattnError(f"preset {preset_name!r} has no download address; pass weights=PATH")
    target = cached_path(preset_name, url)
    if not target.is_file():
        _download(preset_name, url, target)
    return target


def _download(preset_name: str, url: str, target: Path):
    """Fetch ``url`` into ``target`` atomically: a temporary file in the same folder, renamed
    into place once complete and recognised as a checkpoint; any failure leaves nothing."""
    from tqdm import tqdm

    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            url, timeout=DOWNLOAD_TIMEOUT_S
        ) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc=f"downloading {preset_name} weights",
            ) as bar:  # fmt: skip
                received = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise OSError(f"connection closed after {received} of {total} bytes")
        _sniff(Path(tmp))  # an HTML error page is not a checkpoint: refuse it here
        os.replace(tmp, target)
    except (OSError, http.client.HTTPException, ValueError, VidattnError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        elif isinstance(exc, urllib.error.URLError):
            reason = str(exc.reason)
        elif isinstance(exc, VidattnError):
            reason = "the server sent something that is not a checkpoint"
        else:
            reason = str(exc) or type(exc).__name__
        raise VidattnError(
            f"cannot download weights for {preset_name} from {url} ({reason}). Download the file"
            f" elsewhere and pass it with weights=PATH (CLI: --weights PATH), or place it at"
            f" {target}."
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
