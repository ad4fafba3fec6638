"""The CUDA kernels' distance-transform algorithm, run on the host.

``semimoe._C._edt_gpu_layout`` calls the very per-thread functions the CUDA
kernels call (csrc/ops/common/edt_transposed.h: transposed passes, packed
interleaved hull, row distances kept in the output buffer), so these tests
check the GPU algorithm on machines without a GPU. Ground truth: SciPy and
scikit-image.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

from semimoe._backend import cpu_ext

DIST, SIGNED, RING = 0, 1, 2


def gpu_layout(kind, m, normalize=1, zero_boundary=True, r2=4):
    B, H, W = m.shape
    m = np.ascontiguousarray(m, dtype=np.uint8)
    out = np.full(m.shape, np.nan, np.float32)
    ring = np.full(m.shape, 7, np.uint8)
    cpu_ext()._edt_gpu_layout(kind, m.ctypes.data, out.ctypes.data if kind != RING else 0,
                              ring.ctypes.data if kind != DIST else 0, B, H, W, normalize,
                              zero_boundary, r2)
    return out, ring


def expected_sdf(fg):
    if not fg.any():
        return np.full(fg.shape, -1.0)
    if fg.all():
        return np.ones(fg.shape)
    pin, pout = ndimage.distance_transform_edt(fg), ndimage.distance_transform_edt(~fg)
    sdf = pin / pin.max() - pout / pout.max()
    sdf[find_boundaries(fg, mode="inner")] = 0
    return sdf


masks = st.tuples(st.integers(1, 3), st.integers(1, 70), st.integers(1, 70),
                  st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))


def make(spec):
    B, H, W, p, seed = spec
    rng = np.random.default_rng(seed)
    m = rng.random((B, H, W)) < p
    if seed % 3 == 0:  # blobs instead of noise
        m = ndimage.binary_dilation(rng.random((B, H, W)) < p * 0.05,
                                    structure=np.ones((1, 3, 3)), iterations=3)
    return m


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks)
def test_gpu_algorithm_matches_scipy_and_skimage(spec):
    m = make(spec)
    dist, _ = gpu_layout(DIST, m)
    sdf, ring = gpu_layout(SIGNED, m)
    _, ring_only = gpu_layout(RING, m)
    for b in range(m.shape[0]):
        if (~m[b]).any():
            ref = ndimage.distance_transform_edt(m[b]).astype(np.float32)
            np.testing.assert_allclose(dist[b], ref, rtol=1e-6, atol=0)
        else:
            assert np.isinf(dist[b]).all()
        np.testing.assert_allclose(sdf[b], expected_sdf(m[b]), rtol=0, atol=1e-6)
        want_ring = dilation(m[b].astype(np.uint8), disk(2)).astype(bool) & ~m[b]
        np.testing.assert_array_equal(ring[b].astype(bool), want_ring)
        np.testing.assert_array_equal(ring_only[b].astype(bool), want_ring)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 9), (2, 9, 1), (1, 33, 47)])
def test_gpu_algorithm_equals_cpu_kernel_bitwise(shape):
    rng = np.random.default_rng(sum(shape))
    m = (rng.random(shape) < 0.4).astype(np.uint8)
    B, H, W = shape
    for normalize in (0, 1):
        sdf, ring = gpu_layout(SIGNED, m, normalize=normalize)
        cpu_sdf = np.empty(shape, np.float32)
        cpu_ring = np.empty(shape, np.uint8)
        cpu_ext().signed_distance(m.ctypes.data, cpu_sdf.ctypes.data, cpu_ring.ctypes.data, B, H,
                                  W, normalize, True, 4, 2)
        np.testing.assert_array_equal(sdf, cpu_sdf)
        np.testing.assert_array_equal(ring, cpu_ring)


def test_gpu_algorithm_unnormalised_and_single_class():
    m = np.zeros((3, 5, 6), bool)
    m[1] = True
    m[2, 2, 3] = True
    sdf, _ = gpu_layout(SIGNED, m, normalize=0, zero_boundary=False)
    assert np.isneginf(sdf[0]).all() and np.isposinf(sdf[1]).all()
    pout = ndimage.distance_transform_edt(~m[2])
    np.testing.assert_allclose(sdf[2], np.where(m[2], 1.0, -pout), atol=1e-6)
