"""Process-wide settings for the command line: what a long video run needs from the C allocator,
and where compiled programs are kept between runs.

Rendering a 720p video makes a dozen 1-4 MB arrays per frame (decoded frame, heat map, colours,
blend, YUV planes). glibc serves blocks that large with fresh ``mmap`` calls and returns them on
``free``, so every frame pays a page fault for each of ~3,000 new 4 KiB pages: measured here, 12 of
the 21 ms an overlay takes at 720p. Keeping freed memory in the heap lets the next frame reuse the
same pages: blocks under ``_KEEP_BYTES`` (16 MiB: a float32 RGB 720p frame is 11 MB) come from
the heap, and the heap keeps up to that much free memory at its top. The heap's holes and free
top are not handed back between frames, so the limit is small: with 256 MiB a 720p render's
peak RSS kept growing with its length (1,382 MiB after 60 frames, 1,487 after 200). With 32 MiB
a 360p render still grew in steps of 21 MiB, one every few hundred frames, to 1,238 MiB after
1,500 frames (the block is not a NumPy array: tracemalloc sees none that large, so it is the
backend's or the codecs'); with 16 MiB that block is mapped afresh on each use, and the peak
levels off: 1,041, 1,088 and 1,085 MiB after 60, 600 and 1,500 frames (``scripts/bench.py
--only memory``). A 1080p frame's float32 arrays (25 MB) are mapped afresh too.

But each thread that allocates gets an arena of its own, and each arena keeps its freed memory:
with a reader, a preparing and a rendering thread beside the main one, a 400-frame track grew by
500 MB before it levelled off. So the arenas are capped at ``ARENAS`` (the threads share them;
the large arrays are few per frame, so the lock is little contended): the same track then
levels off 120 MB above its size after the first batch.

Compiling the model for a video's input shape takes seconds on a CPU (XLA, on TensorFlow and
JAX), each run again. ``keep_compiled_programs`` has both backends keep their compiled programs
under ``$VIDATTN_HOME/compiled/`` (``compile_cache_dir``), so the second run of a shape loads
them instead. It is safe to share: each backend keys an entry on the whole program (its HLO, any
constant in it included) and compile options, and vidattn passes the weights as inputs
(``compile.compiled``: TensorFlow's variables are captured resources, JAX's are jit arguments),
so a new checkpoint reuses a program and cannot change it, while a change to the model's code
changes the program and so the key. What the keys leave out is in the folder's name: the
backend's version and the CPU's instruction-set flags (XLA compiles for the host CPU: a folder
shared between machines must not hand AVX-512 code to a CPU without it).

Only the CLI calls these; importing vidattn as a library changes nothing in the host process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib.metadata
import os
import platform
from pathlib import Path

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENAS = 2
_KEEP_BYTES = 16 * 2**20  # blocks under this come from the heap; the heap keeps this much free


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve blocks under ``_KEEP_BYTES`` from the heap and to keep up
    to that much freed heap, instead of mapping and unmapping each large block, in at most
    ``ARENAS`` arenas. Returns False (and does nothing) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
                and mallopt(_M_ARENA_MAX, ARENAS))


# The backends' own settings, read when each is imported. JAX caches only programs that took a
# second to compile and skips small entries unless told: ours compile in 0.5-2 s, so all of them.
_JAX_CACHE = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
_TF_CACHE_FLAG = "--tf_xla_persistent_cache_directory"


def compile_cache_dir(backend: str) -> Path:
    """``$VIDATTN_HOME/compiled/<backend>-<its version>-<hash of the CPU's flags>``."""
    from vidattn.models.hub import cache_dir

    package = {"tensorflow": "tensorflow", "jax": "jaxlib"}[backend]
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    host = hashlib.sha256(f"{platform.machine()} {platform.processor()} {flags}".encode())
    return cache_dir() / "compiled" / f"{backend}-{version}-{host.hexdigest()[:12]}"


def keep_compiled_programs() -> bool:
    """Point TensorFlow's XLA cache (``TF_XLA_FLAGS``) and JAX's compilation cache at
    ``compile_cache_dir``, in ``os.environ`` before either backend is imported; settings already
    there win (a user's own cache folder, or ``JAX_COMPILATION_CACHE_DIR=`` to turn it off).
    Returns whether a cache was set up. A folder that cannot be made or written is left out
    (TensorFlow fails the model's call on a cache folder it cannot open), and so is one with a
    space in its path, since ``TF_XLA_FLAGS`` is split at spaces."""
    environ = os.environ
    backend = environ.get("KERAS_BACKEND", "tensorflow")
    tf_cache = backend == "tensorflow" and _TF_CACHE_FLAG not in environ.get("TF_XLA_FLAGS", "")
    jax_cache = backend == "jax" and "JAX_COMPILATION_CACHE_DIR" not in environ
    if not (tf_cache or jax_cache):
        return False
    folder = compile_cache_dir(backend)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    if not os.access(folder, os.W_OK | os.X_OK) or (tf_cache and " " in str(folder)):
        return False
    if tf_cache:
        flag = f"{_TF_CACHE_FLAG}={folder}"
        environ["TF_XLA_FLAGS"] = f"{environ.get('TF_XLA_FLAGS', '')} {flag}".strip()
    else:
        environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
        for name, value in _JAX_CACHE.items():
            environ.setdefault(name, value)
    return True
