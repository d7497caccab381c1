"""The memory planner: before any work, how much a forward pass will take, and the batch size and
attention tiling that keep it within a budget.

A ViT's attention holds ``heads x T x T`` scores per image and block: 1.6 GB for one 1080p frame
through ViT-S/16 (8160 tokens), 25 GB through ViT-S/8 (32,400 tokens). So the planner estimates a
call's working memory from the preset, the input size, the batch and what the caller asks for
(``estimate``), and ``plan`` picks, in this order of preference, attention in one piece
(fastest, for up to ``DIRECT_MAX_TOKENS`` tokens; ``layers.FUSED_ATTENTION`` says whether the
backend's fused kernel runs it), then query chunks of ``CHUNKS`` rows
(exact, and bounded: ``heads x chunk x T``), then a smaller batch. When one image cannot fit even
so, it says which input size would.

The explanations' backward pass (``vidattn.relevance.methods.backward_pass``) cannot chunk: it
holds every block's whole attention, its gradient and the activations the gradient needs
(``backward_estimate``); ``explain_plan`` bounds its batch (images of a probe, frames of a
video) the same way, with the same one-line refusal.

The budget is the memory available when the plan is made (``available_memory``: free device
memory on a GPU, else the RAM the system says is available), times ``HEADROOM``, unless the user
sets one (``--memory-budget``, ``parse_bytes``). Working memory only: the model's weights are
already loaded when a plan is made.

Nothing here imports Keras or numpy: the command line reads ``parse_bytes`` at start-up.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vidattn.errors import VidattnError

__all__ = ["CHUNKS", "DIRECT_MAX_TOKENS", "Plan", "available_memory", "backward_estimate",
           "estimate", "explain_plan", "format_bytes", "parse_bytes", "plan"]

CHUNKS = (1024, 256, 64)  # query rows per chunk, largest first
DIRECT_MAX_TOKENS = 4096  # beyond this, chunks run as fast and hold far less
HEADROOM = 0.8  # of the available memory: the estimate is not exact, and others need some
FLOAT = 4  # bytes
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GB"``, ``"800MiB"`` or a plain number of bytes -> bytes
    (powers of 1024). Raises VidattnError for anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if m is None or float(m[1]) <= 0:
        raise VidattnError(f"not a memory size: {text!r} (say 8G, 512M or a number of bytes)")
    return int(float(m[1]) * _UNITS[m[2].upper()])


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``"1.6 GB"``, ``"512 MB"`` (powers of 1024)."""
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.0f} KB"


def available_memory() -> int:
    """Bytes free for a forward pass: the free memory of the GPU the Keras backend computes on
    (``device.free_memory``), else the RAM available without swapping (``MemAvailable``)."""
    from vidattn.models.device import free_memory

    gpu = free_memory()
    if gpu is not None:
        return gpu
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


@dataclass(frozen=True)
class Plan:
    """A call's plan: images per model call, the query chunk size (None: attention in one
    piece), the estimated working memory of one call, and the budget it was planned for."""

    batch: int
    chunk: int | None
    bytes: int
    budget: int


def estimate(preset, input_hw, batch: int, attention="none", rollout=False, tokens=False,
             chunk=None, extra_per_image: int = 0) -> int:
    """Working memory in bytes of one forward pass of ``batch`` images ``input_hw`` (multiples of
    the patch) that returns ``attention`` ("none", "cls", "cls_all", "last", "all"), the rollout
    row and the patch tokens, with attention in query chunks of ``chunk`` (None: in one piece), plus
    ``extra_per_image`` bytes the caller holds per image (frames in its queues).

    Per image: a block's activations (tokens, their norm, q/k/v, the attention output, the
    feed-forward's hidden layer), the attention scores of one block three times over (scores,
    exponentials, probabilities; ``heads x T x T``, or ``heads x chunk x T`` in chunks), what is
    returned (every block's ``T x T`` for "all", the last for "last", twice: in the graph and
    copied out), rollout's per-block means (``depth x T x T``; in chunks, each block's input,
    ``depth x T x D``), and the input image."""
    p = preset
    t = p.tokens_at(input_hw)
    d, h, depth = p.embed_dim, p.num_heads, p.depth
    full = attention in ("last", "all") or (rollout and chunk is None)
    per_image = t * (8 * d + 2 * p.hidden) + 3 * h * (t if full or chunk is None else chunk) * t
    per_image += 2 * h * t * t * {"all": depth, "last": 1}.get(attention, 0)
    if rollout:
        per_image += depth * t * (t if chunk is None else d)
    if tokens:
        per_image += 2 * t * d
    per_image += 3 * input_hw[0] * input_hw[1]
    return batch * (FLOAT * per_image + extra_per_image)


def backward_estimate(preset, input_hw, batch: int, extra_per_image: int = 0) -> int:
    """Working memory in bytes of one backward pass of the explanations (``relevance_pass``
    differentiated by ``gradients.value_and_gradients``, then a method's float64 arithmetic) on
    ``batch`` images ``input_hw``, plus ``extra_per_image`` bytes the caller holds per image.

    Per image and block, ``heads x T x T`` floats 9 times over: on the gradient tape the scores,
    the probabilities and the probabilities plus their zero offset (3); the zero offsets given
    (numpy and tensor, 2), their gradients (tensor and numpy, 2) and the attention returned
    (tensor and numpy, 2). Besides: every block's activations (``forward``'s, all kept for the
    gradient), one block's scores' gradients while it is differentiated and a method's float64
    product of one block's attention and gradient (6 more ``heads x T x T``), the last block's
    tapped tokens and their gradient (4 ``T x D``), and the input image. Nothing of it can be
    chunked: every method needs every block's whole ``T x T``."""
    p = preset
    t = p.tokens_at(input_hw)
    h, depth = p.num_heads, p.depth
    activations = t * (8 * p.embed_dim + 2 * p.hidden)
    per_image = depth * (9 * h * t * t + activations) + 6 * h * t * t + 4 * t * p.embed_dim
    per_image += 3 * input_hw[0] * input_hw[1]
    return batch * (FLOAT * per_image + extra_per_image)


def explain_plan(preset, input_hw, batch: int, budget: int | None = None,
                 extra_per_image: int = 0, sizes=None) -> Plan:
    """The plan of the explanations' backward pass for up to ``batch`` images ``input_hw``
    (``backward_estimate``; its ``chunk`` is always None): the largest batch that fits
    ``budget`` (None: ``available_memory() * HEADROOM``), else the one-line VidattnError of
    ``plan`` naming the largest input that would fit. The video view calls it with its frames
    (``extra_per_image``: what it holds per frame) as the image probe does with its images."""
    return plan(preset, input_hw, batch, budget=budget, extra_per_image=extra_per_image,
                sizes=sizes, backward=True)


def _estimator(backward: bool):
    """``estimate``'s arguments after the batch -> bytes: the forward pass's, or (``backward``)
    the backward pass's, which takes no chunk and asks for nothing."""
    if backward:
        return lambda p, hw, n, _wants, _chunk, extra: backward_estimate(p, hw, n, extra)
    return lambda p, hw, n, wants, chunk, extra: estimate(p, hw, n, *wants, chunk, extra)


def plan(preset, input_hw, batch: int, attention="none", rollout=False, tokens=False,
         budget: int | None = None, extra_per_image: int = 0, sizes=None,
         backward: bool = False) -> Plan:
    """The plan for up to ``batch`` images ``input_hw``: the largest batch (never above
    ``batch``) and, for it, attention in one piece where it is the fast way and fits, else the
    largest chunk that fits. ``budget``: bytes (None: ``available_memory() * HEADROOM``).

    Raises VidattnError when one image cannot fit. The message names the largest input that
    would: given ``sizes = (size, size_to_input_hw)`` (the caller's ``--size`` and how it turns
    a size into an input size), the largest ``--size`` that fits; else the largest square input
    (a multiple of the patch). ``backward``: plan the explanations' backward pass instead
    (``explain_plan``; ``attention``, ``rollout`` and ``tokens`` are then ignored).
    """
    budget = int(budget if budget is not None else available_memory() * HEADROOM)
    p, need_of, wants = preset, _estimator(backward), (attention, rollout, tokens)
    tokens_n = p.tokens_at(input_hw)
    chunks = ((None,) if tokens_n <= DIRECT_MAX_TOKENS else ()) + tuple(
        c for c in CHUNKS if c < tokens_n)
    chunks = (None,) if backward else chunks or (None,)
    for n in range(batch, 0, -1):
        for chunk in chunks:
            need = need_of(p, input_hw, n, wants, chunk, extra_per_image)
            if need <= budget:
                return Plan(n, chunk, need, budget)
    need = need_of(p, input_hw, 1, wants, chunks[-1], extra_per_image)
    what = "the explanation's backward pass (every block's attention and its gradient)" if (
        backward) else {"all": "every block's attention", "last": "the last block's attention"}.get(
        attention, "the attention maps")
    fits = _what_fits(p, wants, budget, extra_per_image, input_hw, sizes, need_of)
    raise VidattnError(
        f"{what} of one {input_hw[0]}x{input_hw[1]} input ({tokens_n} tokens) through "
        f"{p.name} needs about {format_bytes(need)}, over the memory budget of "
        f"{format_bytes(budget)}; {fits} (or raise --memory-budget)")


def _what_fits(preset, wants, budget, extra, input_hw, sizes, need_of) -> str:
    """The largest ``--size`` (or square side) whose one-image plan fits ``budget``; ``wants``:
    ``(attention, rollout, tokens)``, ``need_of``: the estimate (``_estimator``)."""
    p = preset

    def fits(hw):
        t = p.tokens_at(hw)
        chunk = None if t <= DIRECT_MAX_TOKENS else CHUNKS[-1]
        return need_of(p, hw, 1, wants, chunk, extra) <= budget

    size, to_hw = sizes or (max(input_hw), lambda s: (s, s))
    lo, hi = p.patch_size, max(p.patch_size, size)
    if not fits(to_hw(lo)):
        return f"even the smallest input ({lo} pixels) does not fit"
    while hi - lo > 1:  # the largest size that fits, by bisection (memory grows with size)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(to_hw(mid)) else (lo, mid)
    if sizes is None:
        lo = lo // p.patch_size * p.patch_size
        return f"the largest square input that fits is {lo}x{lo}"
    return f"the largest --size that fits is {lo}"

