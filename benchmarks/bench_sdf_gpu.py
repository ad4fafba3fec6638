"""GPU Semi-MoE targets: semimoe's batched CUDA kernels vs a cupyx loop vs our CPU op.

    pytest benchmarks/bench_sdf_gpu.py --benchmark-only     (skips without CUDA)

Peer: ``cupyx.scipy.ndimage.distance_transform_edt`` (PBA+, one image at a
time) looped over the batch -- the fastest GPU EDT users have -- with the rest
of the target pipeline (per-image max normalisation, inner boundary zeroed,
disk(2) ring) done in CuPy elementwise ops on the GPU. Ours: one
``make_targets`` call on the CUDA batch. Also ours on the CPU (same batch, all
threads). Outputs are checked to agree before timing. Times are medians of
synchronised calls.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semimoe.data import make_targets

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

COMPARISON = "gpu targets"
SIZES = {"16x1024x1024": (16, 1024, 1024), "8xCRAG-1516x1512": (8, 1516, 1512)}
_cache = {}


def batch(size_id, gland_image):
    if size_id not in _cache:
        B, H, W = SIZES[size_id]
        rng = np.random.default_rng(7)
        _cache[size_id] = torch.from_numpy(np.stack([gland_image(H, W, rng) for _ in range(B)]))
    return _cache[size_id]


def cupy_targets(mask_cp):
    import cupy as cp
    from cupyx.scipy.ndimage import distance_transform_edt

    sdfs, rings = [], []
    for fg in mask_cp:
        din = distance_transform_edt(fg, float64_distances=False)
        dout = distance_transform_edt(~fg, float64_distances=False)
        sdf = din / din.max() - dout / dout.max()
        sdf[fg & (din == 1)] = 0  # inner boundary: a 4-neighbour is background
        sdfs.append(sdf)
        rings.append(~fg & (dout * dout <= 4.0))
    return cp.stack(sdfs), cp.stack(rings)


def synced(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


@pytest.fixture(params=list(SIZES))
def gpu_size(request):
    return request.param


@pytest.fixture
def masks(gpu_size, gland_image):
    return batch(gpu_size, gland_image)


def test_cuda_ours(benchmark, run_timed, ratio_table, gpu_size, masks):
    benchmark.group = f"{COMPARISON} {gpu_size}"
    m = masks.cuda()
    got = run_timed(synced(lambda: make_targets(m)))
    ref = make_targets(masks)  # CPU kernel
    torch.testing.assert_close(got.sdf.cpu(), ref.sdf, rtol=0, atol=1e-6)
    assert torch.equal(got.boundary.cpu(), ref.boundary)
    ratio_table.add(COMPARISON, gpu_size, "ours-cuda", benchmark, ours=True)


def test_cuda_cupyx_loop(benchmark, run_timed, ratio_table, gpu_size, masks):
    cp = pytest.importorskip("cupy")
    pytest.importorskip("cupyx.scipy.ndimage")
    benchmark.group = f"{COMPARISON} {gpu_size}"
    m_cp = cp.asarray(masks.numpy())
    sdf, ring = run_timed(synced(lambda: cupy_targets(m_cp)))
    ours = make_targets(masks.cuda())
    torch.testing.assert_close(torch.as_tensor(sdf, device="cuda").float(), ours.sdf,
                               rtol=0, atol=1e-5)
    assert torch.equal(torch.as_tensor(ring, device="cuda"), ours.boundary.bool())
    ratio_table.add(COMPARISON, gpu_size, "cupyx-loop", benchmark)


def test_cuda_vs_our_cpu(benchmark, run_timed, ratio_table, gpu_size, masks):
    benchmark.group = f"{COMPARISON} {gpu_size}"
    m = masks
    run_timed(lambda: make_targets(m), budget_s=1.0)
    ratio_table.add(COMPARISON, gpu_size, f"ours-cpu@{torch.get_num_threads()}t", benchmark)
