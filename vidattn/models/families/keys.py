"""What the family mappings share: renaming keys by patterns, and tensors made lazily from others
(fused query/key/value, concatenated halves, constants), so that nothing is read before the model
knows it wants it."""

from __future__ import annotations

import collections
import re

import numpy as np

from vidattn.errors import VidattnError
from vidattn.models.formats import LazyTensor, load_tensor

__all__ = ["concat", "constant", "rename", "renames", "transformed"]


def renames(pairs):
    """Compiled ``(pattern, replacement)`` pairs for :func:`rename`."""
    return [(re.compile(pattern), replacement) for pattern, replacement in pairs]


def concat(parts, axis=0) -> LazyTensor:
    """One lazy tensor: ``parts`` (tensors or lazy tensors) concatenated along ``axis``."""
    return LazyTensor(lambda: np.concatenate([load_tensor(p) for p in parts], axis=axis))


def transformed(value, fn) -> LazyTensor:
    """One lazy tensor: ``fn`` (a reshape, a slice of rows) of ``value`` (a tensor or lazy
    tensor), applied when it is read."""
    return LazyTensor(lambda: fn(load_tensor(value)))


def constant(value) -> LazyTensor:
    """A tensor the file does not hold but the family's own code computes (a float32 array)."""
    return LazyTensor(lambda: np.asarray(value, np.float32))


def rename(tensors, pairs, qkv=None, unused=None, path=None, parts=("query", "key", "value")):
    """Rename keys by the first matching pattern of ``pairs`` (from :func:`renames`); drop keys
    matching ``unused``; gather separate query/key/value tensors that ``qkv`` matches (groups:
    layer index, one of ``parts`` (the names of query, key and value), ``weight|bias``) and fuse
    them, rows q, k, v, into ``blocks.{i}.attn.qkv.*`` as the official code stores them. Keys
    matching nothing pass through. A triple with a part missing raises VidattnError naming
    ``path``."""
    out, split = {}, collections.defaultdict(dict)
    for key, value in tensors.items():
        if unused is not None and unused.match(key):
            continue
        if qkv is not None and (m := qkv.fullmatch(key)):
            split[f"blocks.{m[1]}.attn.qkv.{m[3]}"][m[2]] = value
            continue
        for pattern, replacement in pairs:
            if pattern.fullmatch(key):
                key = pattern.sub(replacement, key)
                break
        out[key] = value
    for name, found in split.items():
        if len(found) != 3:
            raise VidattnError(f"{name}: found only {'/'.join(sorted(found))} of "
                               f"{'/'.join(parts)}", path)
        out[name] = concat([found[k] for k in parts])
    return out
