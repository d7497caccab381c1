"""The choice of XLA's CPU matmul: oneDNN only for the work and the TensorFlow where it was
measured faster, once per process, never over the user's own flags.

XLA stops the process at a flag it does not know, so a wrong version gate would crash every run
on another TensorFlow; these cases pin the gate."""

import os

import pytest

from vidattn.models import compile as compile_step

MEASURED = next(iter(compile_step.XLA_CPU_FLAGS))
FLAGS = compile_step.XLA_CPU_FLAGS[MEASURED]
MANY = compile_step.ONEDNN_MIN_ROWS  # rows of a batch of short sequences (8 x 197 at 224)


@pytest.fixture
def fresh_process(monkeypatch):
    """No choice made yet, no XLA_FLAGS, an x86 machine."""
    monkeypatch.setattr(compile_step, "_xla_cpu_chosen", False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(compile_step.platform, "machine", lambda: "x86_64")
    return monkeypatch


@pytest.mark.parametrize(
    "version, machine, user, rows, chunked, expected",
    [
        (f"{MEASURED}.0", "x86_64", None, MANY, False, FLAGS),
        (f"{MEASURED}.3", "AMD64", "--xla_dump_to=/tmp/x", MANY, False,
         f"--xla_dump_to=/tmp/x {FLAGS}"),
        (f"{MEASURED}.0", "x86_64", None, 197, False, None),  # one 224 image: Eigen was faster
        (f"{MEASURED}.0", "x86_64", None, 16322, True, None),  # chunked --full-res: Eigen too
        ("2.99.0", "x86_64", None, MANY, False, None),  # another XLA may not know the flags
        (f"{MEASURED}.0", "aarch64", None, MANY, False, None),  # oneDNN's x86 kernels
        (f"{MEASURED}.0", "x86_64", "--xla_cpu_use_onednn=false", MANY, False,
         "--xla_cpu_use_onednn=false"),
    ],
    ids=["batch", "appended-to-user-flags", "one-image", "chunked", "other-version", "arm",
         "user-chose"],
)
def test_onednn_only_where_measured_faster(fresh_process, version, machine, user, rows, chunked,
                                           expected):
    if user is not None:
        fresh_process.setenv("XLA_FLAGS", user)
    fresh_process.setattr(compile_step.platform, "machine", lambda: machine)
    compile_step.choose_xla_cpu_matmul(rows, chunked, version)
    assert os.environ.get("XLA_FLAGS") == expected


def test_the_first_compile_chooses_for_the_process(fresh_process):
    version = f"{MEASURED}.1"
    compile_step.choose_xla_cpu_matmul(197, False, version)  # first: a single image
    compile_step.choose_xla_cpu_matmul(MANY, False, version)  # XLA has read its flags by now
    assert "XLA_FLAGS" not in os.environ
    fresh_process.setattr(compile_step, "_xla_cpu_chosen", False)
    compile_step.choose_xla_cpu_matmul(MANY, False, version)
    compile_step.choose_xla_cpu_matmul(MANY, False, version)
    assert os.environ["XLA_FLAGS"] == FLAGS  # added once
