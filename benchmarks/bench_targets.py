"""Full Semi-MoE target set: semimoe.data.make_targets (1 and 2 threads) vs the
reference pipeline (SciPy + scikit-image per image, as the Semi-MoE DataLoader).

    pytest benchmarks/bench_targets.py --benchmark-only

Reference, per image of the batch (docs/METHOD.md §2): two SciPy EDTs, per-image max
normalisation, skimage ``find_boundaries(mode="inner")`` zeroing, and the ring
``skimage.morphology.dilation(mask, disk(2)) - mask``. Both produce the int64
mask, float32 SDF and int64 boundary; they are checked to agree before timing.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

from semimoe.data import make_targets

COMPARISON = "targets"
DISK2 = disk(2)


def reference_targets(mask: np.ndarray):
    masks, sdfs, rings = [], [], []
    for m in mask:
        fg = m > 0
        inside = ndi.distance_transform_edt(fg)
        outside = ndi.distance_transform_edt(~fg)
        sdf = inside / inside.max() - outside / outside.max()
        sdf[find_boundaries(fg, mode="inner")] = 0
        m8 = fg.astype(np.uint8)
        masks.append(fg.astype(np.int64))
        sdfs.append(sdf.astype(np.float32))
        rings.append((dilation(m8, DISK2) - m8).astype(np.int64))
    return np.stack(masks), np.stack(sdfs), np.stack(rings)


_truth_cache = {}


def truth(size_id, gland_inputs):
    if size_id not in _truth_cache:
        _truth_cache[size_id] = reference_targets(gland_inputs(size_id)[1])
    return _truth_cache[size_id]


def check(got, exp):
    mask, sdf, boundary = exp
    assert np.array_equal(np.asarray(got[0]), mask)
    assert np.array_equal(np.asarray(got[2]), boundary)
    np.testing.assert_allclose(np.asarray(got[1], dtype=np.float64), sdf, rtol=0, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_ours(benchmark, run_timed, ratio_table, gland_inputs, torch_threads, size_id, threads):
    benchmark.group = f"{COMPARISON} {size_id}"
    labels = torch.from_numpy(gland_inputs(size_id)[1])  # int32 instance labels
    torch_threads(threads)
    got = run_timed(lambda: make_targets(labels))
    check([x.numpy() for x in got], truth(size_id, gland_inputs))
    ratio_table.add(COMPARISON, size_id, f"ours@{threads}t", benchmark, ours=True)


def test_reference_pipeline(benchmark, run_timed, ratio_table, gland_inputs, size_id):
    benchmark.group = f"{COMPARISON} {size_id}"
    labels = gland_inputs(size_id)[1]
    got = run_timed(lambda: reference_targets(labels))
    check(got, truth(size_id, gland_inputs))
    ratio_table.add(COMPARISON, size_id, "scipy+skimage", benchmark)
