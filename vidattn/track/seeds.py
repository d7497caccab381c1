"""The seed of a track: the labels ``(H, W)`` uint8 of its first frame (0 background, ids 1..N).

Three ways to give it (``Seed``):

- a mask (``--mask FIRST.png``): an indexed or single-channel PNG of the first frame, as DAVIS
  annotates it (``davis.read_mask``); it must have the frame's size and at least one object;
- points (``--point X,Y``, one object each, in frame pixels): the object is the patches whose
  features are most like the clicked patch's. The rule, per point: the cosine similarity ``s``
  of every patch's feature to the clicked patch's (so ``s = 1`` there); the patches with
  ``s >= (1 + median(s)) / 2``, i.e. closer to the clicked patch than to a typical patch of the
  frame by at least half the way; of those, the 4-connected region that holds the clicked patch.
  A patch claimed by two points goes to the one it is more similar to;
- boxes (``--box X0,Y0,X1,Y1``, one object each): the patches whose centres lie in the box
  (at least the one under the box's centre), less those more similar to the mean feature of the
  patches outside the box than to the mean feature of those inside it.

Points and boxes are decided on the patch grid of the first frame's features (``grid_hw``, the
protocol's working size) and drawn back onto the frame with each pixel taking its patch's label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vidattn.cells import cell_centres, cell_index
from vidattn.errors import VidattnError
from vidattn.features import unit_rows
from vidattn.track.davis import read_mask

MAX_OBJECTS = 255  # ids 1..255 of a uint8 DAVIS mask (255 is DAVIS's void: refused as an id)


@dataclass(frozen=True)
class Seed:
    """What the first frame's labels come from: ``mask`` (a PNG path), or ``points``
    ``((x, y), ...)`` and ``boxes`` ``((x0, y0, x1, y1), ...)`` in frame pixels (points first,
    then boxes, take ids 1, 2, ...)."""

    mask: Path | None = None
    points: tuple[tuple[float, float], ...] = field(default=())
    boxes: tuple[tuple[float, float, float, float], ...] = field(default=())

    def __post_init__(self):
        given = (self.mask is not None) + bool(self.points or self.boxes)
        if given != 1:
            raise VidattnError("give the first frame's objects as --mask PNG, or as --point X,Y "
                               "and --box X0,Y0,X1,Y1 (not both)")
        if len(self.points) + len(self.boxes) > MAX_OBJECTS - 1:
            raise VidattnError(f"at most {MAX_OBJECTS - 1} objects (points and boxes)")

    @property
    def needs_features(self) -> bool:
        return self.mask is None


def cell_of(x: float, y: float, frame_hw, working_hw, grid_hw, patch: int,
            stride: int | None = None) -> tuple[int, int]:
    """The patch ``(row, col)`` under frame pixel ``(x, y)``: the frame was resized to
    ``working_hw`` and its bottom/right cut to the grid (a pixel in the cut part takes the last
    row or column); with overlapping patches ``stride`` apart, the one centred nearest
    (``cells.cell_index``)."""
    (fh, fw), (h, w), (gh, gw) = frame_hw, working_hw, grid_hw
    return (int(cell_index(int(y * h / fh), gh, patch, stride)),
            int(cell_index(int(x * w / fw), gw, patch, stride)))


def check_inside(points_or_corners, frame_hw, what: str, edge: bool = False, path=None) -> None:
    """One error line (naming the video ``path``) for a coordinate outside the ``(H, W)`` frame
    (``edge``: the far edges ``x = W`` and ``y = H`` count as inside, as a box's exclusive corner
    may lie there)."""
    h, w = frame_hw
    for x, y in points_or_corners:
        if not (0 <= x < w + edge and 0 <= y < h + edge):
            raise VidattnError(f"{what} {x:g},{y:g} is outside the {w}x{h} frame", path)


def labels_from_mask(path, frame_hw) -> np.ndarray:
    """The mask PNG at ``path`` as labels ``(H, W)`` uint8, checked against the frame."""
    labels = read_mask(path)
    if labels.shape != tuple(frame_hw):
        raise VidattnError(f"mask is {labels.shape[1]}x{labels.shape[0]} but the first frame is "
                           f"{frame_hw[1]}x{frame_hw[0]}", path)
    if (labels == MAX_OBJECTS).any():
        raise VidattnError(f"mask uses id {MAX_OBJECTS} (DAVIS's void): a seed needs ids "
                           f"1..{MAX_OBJECTS - 1}", path)
    if not labels.any():
        raise VidattnError("mask holds no object (every pixel is 0)", path)
    return labels


def grid_labels(seed: Seed, tokens, frame_hw, working_hw, grid_hw, patch: int,
                path=None, stride: int | None = None) -> np.ndarray:
    """Points and boxes -> labels on the patch grid ``(gh, gw)`` uint8, from the first frame's
    patch features ``tokens`` ``(gh * gw, D)`` (see the module docstring for the rules); errors
    name ``path``, the video."""
    check_inside(seed.points, frame_hw, "point", path=path)
    check_inside([c for b in seed.boxes for c in (b[:2], b[2:])], frame_hw, "box corner",
                 edge=True, path=path)
    for box in seed.boxes:
        if not (box[2] > box[0] and box[3] > box[1]):
            raise VidattnError("box {:g},{:g},{:g},{:g} is empty: give X0,Y0,X1,Y1 with X1 > X0 "
                               "and Y1 > Y0".format(*box), path)
    gh, gw = grid_hw
    unit = unit_rows(tokens)
    scores, regions = [], []
    for x, y in seed.points:
        r, c = cell_of(x, y, frame_hw, working_hw, grid_hw, patch, stride)
        sim = (unit @ unit[r * gw + c]).reshape(gh, gw)
        keep = (sim >= (1 + np.median(sim)) / 2).astype(np.uint8)
        _, parts = cv2.connectedComponents(keep, connectivity=4)
        scores.append(sim)
        regions.append(parts == parts[r, c])
    for box in seed.boxes:
        inside = _box_cells(box, frame_hw, working_hw, grid_hw, patch, stride)
        flat = inside.ravel()
        sim_in = (unit @ unit_rows(unit[flat].mean(0))).reshape(gh, gw)
        region = inside
        if not flat.all():
            sim_out = (unit @ unit_rows(unit[~flat].mean(0))).reshape(gh, gw)
            region = inside & (sim_in >= sim_out)
            if not region.any():  # every patch is more like the outside: keep the closest one
                region = np.zeros_like(inside)
                region.flat[np.argmax(np.where(inside, sim_in - sim_out, -np.inf))] = True
        scores.append(sim_in)
        regions.append(region)
    score = np.where(np.stack(regions), np.stack(scores), -np.inf)  # (objects, gh, gw)
    best = np.argmax(score, axis=0)
    return np.where(np.isfinite(score.max(0)), best + 1, 0).astype(np.uint8)


def _box_cells(box, frame_hw, working_hw, grid_hw, patch, stride) -> np.ndarray:
    """bool ``(gh, gw)``: the patches whose centres, in frame pixels, lie in ``box``; at least
    the patch under the box's centre."""
    x0, y0, x1, y1 = box
    (fh, fw), (h, w), (gh, gw) = frame_hw, working_hw, grid_hw
    cy = cell_centres(gh, patch, stride) * fh / h
    cx = cell_centres(gw, patch, stride) * fw / w
    cells = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
    r, c = cell_of((x0 + x1) / 2, (y0 + y1) / 2, frame_hw, working_hw, grid_hw, patch, stride)
    cells[r, c] = True
    return cells


def frame_labels(grid, frame_hw, working_hw, patch: int, stride: int | None = None) -> np.ndarray:
    """Grid labels ``(gh, gw)`` -> frame labels ``(H, W)``: each pixel takes the label of the
    patch it falls in (``cell_of``), so a seed drawn from points shows the patches it chose."""
    (fh, fw), (h, w) = frame_hw, working_hw
    gh, gw = grid.shape
    rows = cell_index(np.arange(fh) * h // fh, gh, patch, stride)
    cols = cell_index(np.arange(fw) * w // fw, gw, patch, stride)
    return np.ascontiguousarray(grid[rows[:, None], cols[None, :]])
