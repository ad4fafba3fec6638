"""Thick boundaries of instance label maps: semimoe.ops.find_boundaries (int32 and
int64 labels, 1 and 2 threads) vs ``skimage.segmentation.find_boundaries``.

    pytest benchmarks/bench_find_boundaries.py --benchmark-only

Labels: ``scipy.ndimage.label`` of the realistic gland masks (int32), and the
same labels as int64 for ours; skimage gets the int32 labels (looped over the
batch). Outputs are checked to be identical before timing.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.segmentation import find_boundaries as sk_find_boundaries

from semimoe.ops import find_boundaries

COMPARISON = "boundaries"


def _skimage(labels: np.ndarray) -> np.ndarray:
    return np.stack([sk_find_boundaries(x, mode="thick") for x in labels])


_truth_cache = {}


def truth(size_id, gland_inputs):
    if size_id not in _truth_cache:
        _truth_cache[size_id] = _skimage(gland_inputs(size_id)[1])
    return _truth_cache[size_id]


@pytest.mark.parametrize("dtype,threads", [(torch.int32, 1), (torch.int32, 2), (torch.int64, 1)],
                         ids=["int32-1t", "int32-2t", "int64-1t"])
def test_ours(benchmark, run_timed, ratio_table, gland_inputs, torch_threads, size_id, dtype,
              threads):
    benchmark.group = f"{COMPARISON} {size_id}"
    labels = torch.from_numpy(gland_inputs(size_id)[1]).to(dtype)
    torch_threads(threads)
    got = run_timed(lambda: find_boundaries(labels, mode="thick"))
    assert np.array_equal(got.numpy(), truth(size_id, gland_inputs))
    name = f"ours@{threads}t" if dtype == torch.int32 else f"ours {str(dtype)[6:]}@{threads}t"
    ratio_table.add(COMPARISON, size_id, name, benchmark, ours=dtype == torch.int32)


def test_skimage(benchmark, run_timed, ratio_table, gland_inputs, size_id):
    benchmark.group = f"{COMPARISON} {size_id}"
    labels = gland_inputs(size_id)[1]
    got = run_timed(lambda: _skimage(labels))
    assert np.array_equal(got, truth(size_id, gland_inputs))
    ratio_table.add(COMPARISON, size_id, "skimage int32", benchmark)
