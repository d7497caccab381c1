"""A tiny ImageNet-Segmentation ``gtsegs_ijcv.mat`` in the real layout, for the explain-eval
tests and the fuzz suite's seeds."""

from __future__ import annotations

import h5py
import numpy as np


def write_gtsegs(path, images, masks):
    """A gtsegs_ijcv.mat as MATLAB v7.3 writes it: ``/value/img`` and ``/value/gt`` (N, 1)
    references, images stored (3, W, H), each mask behind a (1, 1) cell of references."""
    n = len(images)
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img = np.empty((n, 1), dtype=h5py.ref_dtype)
        gt = np.empty((n, 1), dtype=h5py.ref_dtype)
        for i, (image, mask) in enumerate(zip(images, masks)):
            img[i, 0] = refs.create_dataset(f"i{i}", data=image.transpose(2, 1, 0)).ref
            m = refs.create_dataset(f"m{i}", data=mask.T.astype(np.uint8))
            cell = np.empty((1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = m.ref
            gt[i, 0] = refs.create_dataset(f"c{i}", data=cell).ref
        f.create_dataset("value/img", data=img)
        f.create_dataset("value/gt", data=gt)
    return path
