"""A hypothesis strategy that damages a seed file the way downloads, disks and senders do.

``damaged(seeds)`` picks one seed (name -> bytes) and applies one to three of: truncation at an
offset, bytes flipped (XOR), a run overwritten with values that make size fields absurd (0x00,
0xFF, 0x7F, 0x80), and a splice with the tail of another seed. Offsets favour the first and last
kilobyte, where containers keep their headers and indexes (MP4 moov, zip directory, PNG IHDR),
but can land anywhere, in packets and tensor data too.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

EDGE = 1024
SIZE_BYTES = (0x00, 0xFF, 0x7F, 0x80)


@dataclass(frozen=True)
class Damaged:
    """A damaged copy of the seed ``name``: its ``data`` and the ``steps`` that made it."""

    name: str
    data: bytes
    steps: tuple[str, ...]

    @property
    def suffix(self) -> str:
        return "." + self.name.rsplit(".", 1)[-1]


def _offset(draw, n: int) -> int:
    """An offset in ``range(n)`` (n >= 1): near the start, near the end, or anywhere."""
    where = draw(st.sampled_from(("start", "end", "anywhere")))
    if where == "start":
        return draw(st.integers(0, min(n, EDGE) - 1))
    if where == "end":
        return draw(st.integers(max(0, n - EDGE), n - 1))
    return draw(st.integers(0, n - 1))


@st.composite
def damaged(draw, seeds: dict[str, bytes]) -> Damaged:
    names = sorted(seeds)
    name = draw(st.sampled_from(names))
    data = bytearray(seeds[name])
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("truncate", "flip", "overwrite", "splice")))
        if kind == "splice" or not data:
            other = seeds[draw(st.sampled_from(names))]
            cut, start = _offset(draw, len(data) + 1), _offset(draw, len(other))
            data = data[:cut] + other[start:]
            steps.append(f"splice at {cut} with another seed from {start}")
        elif kind == "truncate":
            cut = _offset(draw, len(data))
            data = data[:cut]
            steps.append(f"truncate to {cut}")
        elif kind == "flip":
            for _ in range(draw(st.integers(1, 16))):
                at = _offset(draw, len(data))
                data[at] ^= draw(st.integers(1, 255))
            steps.append("flip bytes")
        else:
            at = _offset(draw, len(data))
            run = bytes([draw(st.sampled_from(SIZE_BYTES))]) * draw(st.integers(1, 8))
            data[at : at + len(run)] = run
            steps.append(f"overwrite {run.hex()} at {at}")
    return Damaged(name, bytes(data), tuple(steps))
