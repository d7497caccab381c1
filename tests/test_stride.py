"""Overlapping patches (``--stride``) against dino-vit-features' ``patch_vit_resolution``.

The reference (ShirAmir/dino-vit-features ``extractor.py``) takes a torch ViT, sets its patch
convolution's stride and replaces its position interpolation with ``_fix_pos_enc``. Here the
torch ViT is Hugging Face's ``ViTModel`` (the DINO checkpoints' port), patched the same two ways:
``nn.Conv2d`` strides and the reference's interpolation written out with ``F.interpolate``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import vidattn
from tests.support.checkpoints import hf_forward, peaky_hf_vit
from tests.support.reliability import reliability
from vidattn import cli
from vidattn.cells import cell_centres, cell_index, grid_shape, map_to_frame
from vidattn.models.presets import get_preset, with_stride

TINY = dataclasses.replace(get_preset("dino_vits16"), name="tiny", embed_dim=64, depth=2,
                           num_heads=4)
SIZE = (96, 128)  # not square, not the native 224
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "tour.mp4"


def fix_pos_enc(pos_embed, patch: int, stride: int, h: int, w: int):
    """The reference's ``interpolate_pos_encoding`` for an ``h x w`` input: the grid
    ``1 + (side - patch) // stride``, bicubic at scale ``(grid + 0.1) / sqrt(N)`` with
    ``recompute_scale_factor=False``, and the positions as stored where the grid is native and
    the input square."""
    n = pos_embed.shape[1] - 1
    gh, gw = 1 + (h - patch) // stride, 1 + (w - patch) // stride
    if gh * gw == n and h == w:
        return pos_embed
    m, dim = int(math.sqrt(n)), pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / m, (gw + 0.1) / m), mode="bicubic",
                         align_corners=False, recompute_scale_factor=False)
    assert grid.shape[-2:] == (gh, gw)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)], 1)


def patched(model, stride: int):
    """``patch_vit_resolution`` applied to a Hugging Face ViT."""
    emb = model.embeddings
    emb.patch_embeddings.projection.stride = (stride, stride)
    emb.interpolate_pos_encoding = lambda x, h, w: fix_pos_enc(
        emb.position_embeddings, emb.patch_size, stride, h, w)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stride")
    reference = peaky_hf_vit(TINY)
    reference.save_pretrained(folder)
    return reference, folder / "model.safetensors"


@pytest.mark.parametrize("stride", [8, 4])
def test_strided_model_equals_patch_vit_resolution(checkpoint, stride):
    """Positions, attention of every block, CLS features and patch tokens at two strides."""
    reference, path = checkpoint
    reference = patched(reference, stride)
    ours = vidattn.load_model(TINY, weights=path, stride=stride)
    grid = tuple(1 + (side - 16) // stride for side in SIZE)
    assert ours.preset.grid_at(SIZE) == grid
    assert ours.preset.tokens_at(SIZE) == 1 + grid[0] * grid[1]

    want_pos = fix_pos_enc(reference.embeddings.position_embeddings, 16, stride, *SIZE)
    np.testing.assert_allclose(np.asarray(ours.backbone.position_embeddings(grid)),
                               want_pos.detach().numpy(), atol=1e-5, rtol=0)

    images = np.random.default_rng(stride).normal(size=(2, *SIZE, 3)).astype(np.float32)
    ref_features, ref_attn = hf_forward(reference, images)
    with torch.no_grad():
        ref_tokens = reference(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                               interpolate_pos_encoding=True).last_hidden_state[:, 1:].numpy()
    out = ours.run(images, attention="all", tokens=True)
    assert ref_attn[-1].shape[-1] == 1 + grid[0] * grid[1]
    for block, (a, b) in enumerate(zip(out["attention"], ref_attn)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=f"block {block}")
    np.testing.assert_allclose(out["features"], ref_features, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["patch_tokens"], ref_tokens, atol=1e-4, rtol=0)


def test_stride_of_the_patch_size_changes_nothing():
    preset = get_preset("dino_vits16")
    assert with_stride(preset, 16) is preset and with_stride(preset, None) is preset
    assert with_stride(preset, 8).grid_at((224, 224)) == (27, 27)
    assert with_stride(get_preset("deit_b16"), 4).pos_resize == "offset"  # the reference's rule


@reliability(("`--stride` where no reference defines it (DINOv3's RoPE), not dividing the "
              "patch, or 0", "exit 1 (0: click's usage error, exit 2), one line saying why "
              "and the strides that would do, no output"))
@pytest.mark.parametrize("preset, stride, words", [
    ("dinov3_vits16", 8, "RoPE, and no reference"), ("dino_vits16", 6, "one of 1, 2, 4, 8"),
    ("demo", 16, "one of 1, 2, 4"), ("demo", 0, "0 is not in the range x>=1"),
])
def test_strides_without_a_reference_are_refused(tmp_path, preset, stride, words):
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(cli.main, ["video", str(SAMPLE), "-o", str(out), "-m", preset,
                                           "--weights", "random", "--stride", str(stride), "-q"])
    assert result.exit_code == (2 if stride == 0 else 1) and words in result.output
    if stride:
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("patch, stride", [(16, 16), (16, 8), (14, 7), (8, 2)])
def test_cells_are_centred_where_their_patch_is(patch, stride):
    """Cell i is the patch [i s, i s + p): its centre maps back to i, and drawing a grid with
    "nearest" gives each pixel the cell whose centre is nearest (ties aside), as the seeds and
    the queries choose cells (``cell_index``)."""
    side = 4 * patch
    gh = grid_shape((side, side), patch, stride)[0]
    assert gh == 1 + (side - patch) // stride
    np.testing.assert_array_equal(cell_index(cell_centres(gh, patch, stride), gh, patch, stride),
                                  np.arange(gh))
    grid = np.arange(gh * gh, dtype=np.float32).reshape(gh, gh)
    drawn = map_to_frame(grid, (side, side), None, patch, "nearest", stride)
    centres = np.arange(side) + 0.5
    off_tie = np.abs((centres - patch / 2) / stride % 1 - 0.5) > 1e-6
    want = cell_index(centres, gh, patch, stride)
    rows, cols = np.ix_(want[off_tie], want[off_tie])
    np.testing.assert_array_equal(drawn[np.ix_(off_tie, off_tie)], grid[rows, cols])
    peak = np.zeros_like(grid)
    peak[1, 2] = 1
    y, x = np.unravel_index(map_to_frame(peak, (side, side), None, patch, "linear",
                                         stride).argmax(), (side, side))
    assert abs(y + 0.5 - (stride + patch / 2)) <= 0.5  # the planted cell's centre
    assert abs(x + 0.5 - (2 * stride + patch / 2)) <= 0.5
