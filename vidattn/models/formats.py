"""Checkpoint file formats -> nested Python objects whose tensors are read on demand.

Two formats, told apart by the file's first bytes rather than its extension, and nothing here
knows what a ViT is (``state_dict`` and the families map names):

* safetensors (timm, Hugging Face), read through the ``safetensors`` package, which validates the
  header (dtypes, shapes, offsets) before any tensor is read.
* PyTorch zip checkpoints (``torch.save`` since 1.6: ``.pth``, ``.pt``, ``.bin``), parsed by a
  restricted unpickler that can rebuild tensors and a few plain data types and nothing else, so a
  hostile checkpoint cannot run code, and torch is not needed to read one.

``open_checkpoint(path)`` gives the file's top-level object: a dict of :class:`LazyTensor` for
safetensors; for a torch zip whatever was pickled (dicts, lists, numbers, argparse namespaces) with
each tensor a :class:`LazyTensor`. ``LazyTensor.load()`` gives a native-byte-order numpy array, every
floating type widened to float32 where numpy lacks it (bfloat16) and kept otherwise.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import pickle
import zipfile
from pathlib import Path

import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy, so the package can return it
import numpy as np
from safetensors import SafetensorError, safe_open

from vidattn.errors import VidattnError

__all__ = ["LazyTensor", "load_tensor", "open_checkpoint", "sniff"]

# dtype code (safetensors' names) -> bytes per element, for the codes a checkpoint may hold.
_SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
# the same codes -> numpy dtype of the stored elements, for torch storages (bf16 as uint16 bits).
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
_MAX_SAFETENSORS_HEADER = 100 * 2**20  # the package's own limit


class LazyTensor:
    """A tensor not read yet: ``load()`` returns it as a fresh numpy array.

    Training checkpoints hold optimiser state and projection heads several times the size of the
    backbone; only the tensors a model keeps are ever read.
    """

    def __init__(self, load):
        self.load = load


def load_tensor(value) -> np.ndarray:
    """A :class:`LazyTensor` read now, or an array as it is."""
    return value.load() if isinstance(value, LazyTensor) else np.asarray(value)


def _finish(view: np.ndarray, code: str | None = None) -> np.ndarray:
    """Copy ``view`` into a native-byte-order array; bfloat16 (``ml_dtypes``' type, or uint16 bits
    with ``code`` BF16) is widened to float32, exactly (its bits are float32's top half)."""
    if code == "BF16":
        return (view.astype(np.uint32) << 16).view(np.float32)
    if view.dtype == ml_dtypes.bfloat16:
        return view.astype(np.float32)
    return view.astype(view.dtype.newbyteorder("="))


# --------------------------------------------------------------------------------- safetensors


def _read_safetensors(path: Path):
    """``(tensors, handle)``: the tensors of a safetensors file as :class:`LazyTensor`, read
    through the ``safetensors`` package, and the open handle to close after reading them.

    The package checks the header when the file is opened (JSON, dtypes, shapes, offsets that
    cover the data exactly once) and memory-maps the data. bfloat16 reads through ``ml_dtypes``
    and is widened to float32; 8-, 6- and 4-bit floats and complex numbers are refused (no ViT
    checkpoint stores them).
    """
    try:
        handle = safe_open(path, framework="np")
        dtypes = {name: handle.get_slice(name).get_dtype() for name in handle.keys()}
    except SafetensorError as exc:
        raise VidattnError(_safetensors_problem(path, exc), path) from None
    for name, code in dtypes.items():
        if code not in _SAFETENSORS_DTYPES:
            raise VidattnError(_unsupported(name, code), path)
    tensors = {name: LazyTensor(lambda name=name: _finish(handle.get_tensor(name)))
               for name in dtypes}
    return tensors, handle


def _unsupported(name, code) -> str:
    return (f"safetensors entry {name!r} has unsupported dtype {code!r} "
            f"(supported: {', '.join(_SAFETENSORS_DTYPES)})")


# The package's words for a damaged header (after "Error while deserializing header: ") -> ours.
_SAFETENSORS_PROBLEMS = {
    "invalid header length": "safetensors header length does not fit in the file: truncated or "
                             "not a safetensors file",
    "header too small": "too short for a safetensors header: truncated",
    "header too large": "safetensors header is over the 100 MB limit",
    "invalid JSON in header": "safetensors header is not valid JSON",
    "incomplete metadata, file not fully covered": "safetensors data offsets do not cover the "
                                                   "data section exactly: truncated or padded",
}


def _safetensors_problem(path: Path, exc: Exception) -> str:
    """The package's complaint about a damaged header as one line of ours. Where it blames a
    tensor without naming it, the first entry whose byte span does not fit its dtype and shape
    is named (read from the header, on this error path only)."""
    reason = str(exc).removeprefix("Error while deserializing header: ")
    for known, ours in _SAFETENSORS_PROBLEMS.items():
        if reason.startswith(known):
            detail = reason[len(known):].lstrip(": ")
            return f"{ours} ({detail})" if detail else ours
    if reason.startswith("invalid offset for tensor"):
        name = reason.split("`")[1] if reason.count("`") == 2 else "?"
        return f"safetensors entry {name!r} has data offsets outside the data or overlapping another"
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(length, _MAX_SAFETENSORS_HEADER)))
        for name, info in header.items():
            if name != "__metadata__" and info["dtype"] not in _SAFETENSORS_DTYPES:
                return _unsupported(name, info["dtype"])
            begin, end = info["data_offsets"]
            needed = math.prod(info["shape"]) * _SAFETENSORS_DTYPES[info["dtype"]]
            if end - begin != needed:
                return (f"safetensors entry {name!r} spans {end - begin} bytes but "
                        f"{info['dtype']} {info['shape']} needs {needed} ({reason})")
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        pass
    return f"bad safetensors header ({reason})"


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
    return LazyTensor(lambda: storage.tensor(offset, size, stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    """``torch._utils._rebuild_parameter[_with_state]``: a parameter is just its tensor."""
    if not isinstance(data, LazyTensor):
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
    """The object a torch zip checkpoint holds, tensors as :class:`LazyTensor` reading ``archive``."""
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


def sniff(path: Path) -> str:
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


@contextlib.contextmanager
def open_checkpoint(path):
    """Context manager: the top-level object of a ``.pth`` (torch zip) or ``.safetensors`` file,
    its tensors as :class:`LazyTensor` that can be loaded until the block ends (the file is then
    closed). Every failure (missing, truncated, foreign or hostile file) is a one-line
    VidattnError naming ``path``."""
    path = Path(path)
    if sniff(path) == "safetensors":
        tensors, handle = _read_safetensors(path)
        with handle:
            yield tensors
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise VidattnError(
            f"is not a readable zip checkpoint, truncated or damaged? ({exc})", path
        ) from None
    with archive:
        yield _unpickle_torch_zip(archive)
