"""The reference study's formulas, written out plainly (loops and full matrix products), for the
tests to compare vidattn's vectorised maths against."""

import numpy as np


def random_attention(rng, n, heads, n_cls, grid_hw, dtype=np.float64):
    """Softmax-normalised random attention ``(n, heads, T, T)``, peaky enough to be non-uniform."""
    t = n_cls + grid_hw[0] * grid_hw[1]
    logits = rng.normal(scale=3.0, size=(n, heads, t, t))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(dtype)


def study_distance_matrix(patch_size, grid_hw):
    """The study's compute_distance_matrix loop, with row-major (row, col) positions on gh x gw."""
    gh, gw = grid_hw
    p = gh * gw
    d = np.zeros((p, p))
    for i in range(p):
        for j in range(p):
            if i != j:
                ri, ci, rj, cj = i // gw, i % gw, j // gw, j % gw
                d[i, j] = patch_size * np.linalg.norm([ri - rj, ci - cj])
    return d


def study_mean_distance(attn, n_cls, grid_hw, patch_size):
    weights = attn[..., n_cls:, n_cls:]
    d = study_distance_matrix(patch_size, grid_hw)[None, None]
    return np.mean(np.sum(weights * d, axis=-1), axis=-1)


def study_rollout(attns, n_cls, grid_hw):
    """The study's attention_rollout_map, batched: full T x T matrices multiplied first to last."""
    maps = []
    for i in range(attns[0].shape[0]):
        mat = np.stack([a[i] for a in attns]).astype(np.float64).mean(axis=1)  # (L, T, T)
        aug = mat + np.eye(mat.shape[-1])
        aug = aug / aug.sum(-1)[..., None]
        joint = aug[0]
        for n in range(1, len(aug)):
            joint = aug[n] @ joint
        v = joint[0, n_cls:].reshape(grid_hw)
        maps.append(v / v.max())
    return np.stack(maps)
