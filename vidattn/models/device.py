"""What a run computes on: the Keras backend, its GPUs, their free memory, and whether a reduced
precision has native support here.

Everything that asks the backend imports it lazily: ``vidattn models`` and every ``--help`` stay
instant, and only ``vidattn models --env`` and a model run pay for it.
"""

from __future__ import annotations

import os
import platform
import subprocess

__all__ = ["backend", "describe", "free_memory", "gpus", "precision_note"]

# A reduced precision runs natively on a GPU, or on a CPU with one of these /proc/cpuinfo flags;
# elsewhere the backend emulates it, correctly but slower than float32.
NATIVE_CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def backend() -> str:
    """The Keras backend a run uses ("tensorflow", "jax" or "torch"), without importing it."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def gpus() -> list[str]:
    """The GPUs the Keras backend computes on, described ("NVIDIA H100 80GB HBM3"); empty on a
    CPU. Imports the backend."""
    name = backend()
    try:
        if name == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if name == "jax":
            import jax

            return [f"{d.platform}: {d.device_kind}" for d in jax.devices() if d.platform != "cpu"]
        import tensorflow as tf

        return [tf.config.experimental.get_device_details(d).get("device_name", d.name)
                for d in tf.config.list_physical_devices("GPU")]
    except (ImportError, RuntimeError):
        return []


def free_memory() -> int | None:
    """Free memory in bytes of the first GPU the backend computes on, or None on a CPU."""
    if not gpus():
        return None
    name = backend()
    try:
        if name == "torch":
            import torch

            return torch.cuda.mem_get_info()[0]
        if name == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0) or None
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        return int(out.split()[0]) * 2**20
    except (OSError, RuntimeError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def precision_note(precision: str) -> str | None:
    """One line when ``precision`` ("fp32", "bf16", "fp16") has no native support here (a CPU
    without the instructions for it): it runs, emulated, but slower than fp32. None when it is
    native (a GPU, a CPU that has them, or fp32)."""
    if precision == "fp32" or gpus():
        return None
    flags = NATIVE_CPU_FLAGS[precision]
    if _cpu_flags() & set(flags):
        return None
    return (f"{precision} has no native support on this CPU (no {' or '.join(flags)}): it runs, "
            "but slower than fp32")


def describe(precision: str = "fp32") -> list[str]:
    """``vidattn models --env``: the backend and its version, the devices, the precision and
    its support, and the memory a run's planner would budget."""
    import importlib.metadata as md

    from vidattn.models.memory import HEADROOM, available_memory, format_bytes

    name = backend()
    dist = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",), "torch": ("torch",)}
    version = next((f"{d} {md.version(d)}" for d in dist.get(name, ())
                    if _installed(md, d)), "not installed")
    devices = gpus()
    note = precision_note(precision)
    return [
        f"backend:   {name} ({version}; choose with KERAS_BACKEND=tensorflow|jax|torch), "
        f"keras {md.version('keras')}",
        f"devices:   {', '.join(devices) if devices else 'CPU only'}; CPU: {_cpu_name()}, "
        f"{os.cpu_count()} cores",
        f"precision: {precision}" + (f" ({note})" if note else " (native here)"),
        f"memory:    a run may take {format_bytes(HEADROOM * available_memory())} "
        f"({int(HEADROOM * 100)}% of what is free {'on the GPU' if devices else 'in RAM'}; "
        "--memory-budget sets it)",
    ]


def _installed(md, dist) -> bool:
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        return False
    return True
