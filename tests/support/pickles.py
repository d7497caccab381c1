"""Hand-made torch checkpoints: a zip laid out as ``torch.save`` writes it around any pickle, and
the pickle opcodes the hostile-checkpoint tests spell by hand."""

from __future__ import annotations

import struct
import zipfile


def torch_zip(path, pickled: bytes, records=None, compress=zipfile.ZIP_STORED):
    """A zip laid out as torch.save writes it, with an arbitrary data.pkl and storage records."""
    with zipfile.ZipFile(path, "w", compress) as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
        for key, data in (records or {}).items():
            z.writestr(f"archive/data/{key}", data)
    return path


def pickle_text(value: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4) or BINUNICODE."""
    raw = value.encode()
    return (b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + struct.pack("<I", len(raw))
            ) + raw
