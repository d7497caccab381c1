"""The real ``vidattn`` command in a subprocess, bounded in time and memory, and the checks every
CLI robustness test makes on what it leaves behind."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

MEMORY_CAP = 6 * 2**30  # address space: TensorFlow reserves ~3 GiB; a runaway allocation fails
TIMEOUT_S = 180
DEMO = ["--model", "demo", "--size", "64"]


def _as_from_a_terminal():
    """In the child: Ctrl-C's default action, as in a terminal. A shell starts background jobs
    with SIGINT ignored, and Python keeps an ignored SIGINT, so a suite run as `... &` would
    otherwise see vidattn shrug off the tests' Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cap_memory():
    _as_from_a_terminal()
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _env():
    # Fewer glibc arenas keep TensorFlow's many threads within the address-space cap.
    return {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONUNBUFFERED": "1",
            "MALLOC_ARENA_MAX": "2"}


def start(*args, cwd, capped=True) -> subprocess.Popen:
    """``vidattn ARGS`` running in ``cwd``, stdout and stderr piped as text; ``capped=False``
    for ``--ray``, whose servers and workers would inherit the cap (Ray maps its object store,
    30 % of the machine's memory, in one piece) and without RAY_ADDRESS (a local instance)."""
    env = {k: v for k, v in _env().items() if capped or k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "vidattn", *map(str, args)], cwd=cwd,
                            env=env, preexec_fn=_cap_memory if capped else _as_from_a_terminal,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(*args, cwd, capped=True) -> subprocess.CompletedProcess:
    """``vidattn ARGS`` to completion; a run past ``TIMEOUT_S`` fails the test."""
    proc = start(*args, cwd=cwd, capped=capped)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"vidattn {' '.join(map(str, args))} ran past {TIMEOUT_S} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def partial_files(folder) -> list[Path]:
    """Temporary outputs (the writers' ``.NAME.partial-XXXX`` files) anywhere under ``folder``."""
    return [p for p in Path(folder).rglob("*") if ".partial-" in p.name]


def assert_one_error(proc, path):
    """Exit 1 and stderr exactly one ``vidattn: error:`` line that names ``path``."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"vidattn: error: {path}: "), lines
    assert "Traceback" not in proc.stderr


def manifest_lines(outdir) -> list[dict]:
    """Every line of ``OUTDIR/manifest.jsonl``, each of which must parse."""
    text = (Path(outdir) / "manifest.jsonl").read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]
