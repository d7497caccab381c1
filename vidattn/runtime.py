"""Process-wide settings for the command line: what a long video run needs from the C allocator.

Rendering a 720p video makes a dozen 1-4 MB arrays per frame (decoded frame, heat map, colours,
blend, YUV planes). glibc serves blocks that large with fresh ``mmap`` calls and returns them on
``free``, so every frame pays a page fault for each of ~3,000 new 4 KiB pages: measured here, 12 of
the 21 ms an overlay takes at 720p. Keeping freed memory in the heap lets the next frame reuse the
same pages. Peak memory is unchanged (the same arrays are live at the peak); freed blocks are
simply not handed back to the kernel between frames.

But each thread that allocates gets an arena of its own, and each arena keeps its freed memory:
with a reader, a preparing and a rendering thread beside the main one, a 400-frame track grew by
500 MB before it levelled off. So the arenas are capped at ``ARENAS`` (the threads share them;
the large arrays are few per frame, so the lock is little contended): the same track then
levels off 120 MB above its size after the first batch.

Only the CLI calls this; importing vidattn as a library changes nothing in the host process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENAS = 2
_KEEP_BYTES = 256 * 2**20  # blocks under this come from the heap; the heap keeps this much free


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve blocks under 256 MiB from the heap and to keep up to 256 MiB
    of freed heap, instead of mapping and unmapping each large block, in at most ``ARENAS``
    arenas. Returns False (and does nothing) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
                and mallopt(_M_ARENA_MAX, ARENAS))
