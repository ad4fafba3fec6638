"""Exact EDT: semimoe (1 and 2 threads) vs SciPy vs the ``edt`` package, same masks.

    pytest benchmarks/bench_distance_transform.py --benchmark-only

Inputs: realistic gland masks (conftest.gland_batch) at 512², GlaS 522x775,
1024², CRAG 1516x1512 and a batch of 8 x 512². Each implementation is checked
against ``scipy.ndimage.distance_transform_edt`` before it is timed; batches are
looped over images for the peers (they have no batch axis: a 3-D array would be
a 3-D transform). One benchmark group per size_id; the ratio table at the end of
the run gives peer / ours.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from semimoe.ops import distance_transform

COMPARISON = "EDT"


def _scipy(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndi.distance_transform_edt(m) for m in mask])


_truth_cache = {}


def truth(size_id, gland_inputs):
    if size_id not in _truth_cache:
        _truth_cache[size_id] = _scipy(gland_inputs(size_id)[0]).astype(np.float32)
    return _truth_cache[size_id]


@pytest.mark.parametrize("threads", [1, 2])
def test_ours(benchmark, run_timed, ratio_table, gland_inputs, torch_threads, size_id, threads):
    benchmark.group = f"{COMPARISON} {size_id}"
    mask = torch.from_numpy(gland_inputs(size_id)[0])
    torch_threads(threads)
    got = run_timed(lambda: distance_transform(mask))
    exp = torch.from_numpy(truth(size_id, gland_inputs))
    torch.testing.assert_close(got, exp, rtol=1e-6, atol=0)
    ratio_table.add(COMPARISON, size_id, f"ours@{threads}t", benchmark, ours=True)


def test_scipy(benchmark, run_timed, ratio_table, gland_inputs, size_id):
    benchmark.group = f"{COMPARISON} {size_id}"
    mask = gland_inputs(size_id)[0]
    got = run_timed(lambda: _scipy(mask))
    assert np.array_equal(got.astype(np.float32), truth(size_id, gland_inputs))
    ratio_table.add(COMPARISON, size_id, "scipy", benchmark)


@pytest.mark.parametrize("parallel", [1, 2])
def test_edt_package(benchmark, run_timed, ratio_table, gland_inputs, size_id, parallel):
    edt = pytest.importorskip("edt")
    benchmark.group = f"{COMPARISON} {size_id}"
    mask = gland_inputs(size_id)[0].view(np.uint8)

    def run():
        return np.stack([edt.edt(m, parallel=parallel) for m in mask])

    got = run_timed(run)
    np.testing.assert_allclose(got, truth(size_id, gland_inputs), rtol=1e-6, atol=0)
    ratio_table.add(COMPARISON, size_id, f"edt pkg parallel={parallel}", benchmark)
