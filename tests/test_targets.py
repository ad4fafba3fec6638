"""semimoe.data.make_targets against the reference target pipeline (SciPy + scikit-image).

Reference, per image, on the binarised mask ``fg = labels > 0`` (docs/METHOD.md §2):
    sdf      = EDT(fg) / max EDT(fg) - EDT(~fg) / max EDT(~fg), inner boundary set to 0
    boundary = dilation(fg, disk(2)) - fg
Label maps are instance maps with touching glands. Also: the reference backend
forced by ``SEMIMOE_BACKEND=reference`` and, on a GPU, CUDA vs CPU for every op.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries as sk_find_boundaries

from semimoe.data import Targets, make_targets
from semimoe.ops import (distance_transform, find_boundaries, sdf_targets, signed_distance)

# The op modules (the package re-exports functions of the same names).
dt_mod = importlib.import_module("semimoe.ops.distance_transform")
fb_mod = importlib.import_module("semimoe.ops.find_boundaries")


# ------------------------------------------------------------------ inputs
def gland_labels(h: int, w: int, seed: int, n: int = 12, touching: bool = True) -> np.ndarray:
    """int32 instance map of random ellipses; with ``touching`` some share borders
    (a Voronoi split of a blob into several instances)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]
    for i in range(1, n + 1):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(2, max(3, h / 5)), rng.uniform(2, max(3, w / 5))
        t = rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)) / a
        v = (-(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)) / b
        lab[u * u + v * v <= 1] = i
    if touching and lab.any():  # split the top blob into Voronoi cells: touching instances
        ys, xs = rng.integers(h, size=6), rng.integers(w, size=6)
        seeds = np.ones((h, w), bool)
        ids = np.zeros((h, w), np.int32)
        seeds[ys, xs] = False
        ids[ys, xs] = np.arange(1, 7)
        iy, ix = ndi.distance_transform_edt(seeds, return_distances=False, return_indices=True)
        region = lab == lab.max()
        lab[region] = 100 + ids[iy, ix][region]
    # Keep both classes (single-class images: test_degenerate_images).
    if not lab.any():
        lab[h // 2, w // 2] = 1
    if lab.all():
        lab[0, 0] = 0
    return lab


def reference_targets(labels: np.ndarray, radius: int = 2):
    """(mask int64, sdf float64, boundary int64) of one image: the reference pipeline."""
    fg = labels > 0
    if fg.all() or not fg.any():
        raise ValueError("the reference pipeline is undefined on single-class masks")
    inside = ndi.distance_transform_edt(fg)
    outside = ndi.distance_transform_edt(~fg)
    sdf = inside / inside.max() - outside / outside.max()
    sdf[sk_find_boundaries(fg, mode="inner")] = 0.0
    m8 = fg.astype(np.uint8)
    boundary = dilation(m8, disk(radius)) - m8
    return fg.astype(np.int64), sdf, boundary.astype(np.int64)


def assert_targets(t: Targets, labels: np.ndarray, radius: int = 2):
    lab3 = labels if labels.ndim == 3 else labels[None]
    exp = [reference_targets(x, radius) for x in lab3]
    mask, sdf, boundary = (np.stack([e[i] for e in exp]) for i in range(3))
    if labels.ndim == 2:
        mask, sdf, boundary = mask[0], sdf[0], boundary[0]
    assert t.mask.dtype == torch.int64 and t.boundary.dtype == torch.int64
    assert t.sdf.dtype == torch.float32
    assert tuple(t.mask.shape) == tuple(t.sdf.shape) == tuple(t.boundary.shape) == labels.shape
    assert np.array_equal(t.mask.numpy(), mask)
    assert np.array_equal(t.boundary.numpy(), boundary)
    torch.testing.assert_close(t.sdf.double(), torch.from_numpy(sdf), rtol=0, atol=1e-6)


# ================================================================= targets
def test_touching_instances_are_generated():
    lab = gland_labels(96, 128, 0)
    assert sk_find_boundaries(lab, mode="inner").sum() > sk_find_boundaries(lab > 0,
                                                                              mode="inner").sum()


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int16, np.int8, bool])
def test_make_targets_2d(dtype):
    lab = gland_labels(120, 150, 1)
    lab = (lab > 0) if dtype is bool else lab.astype(dtype)
    t = make_targets(torch.from_numpy(lab))
    assert isinstance(t, Targets)
    assert_targets(t, lab)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 4), h=st.integers(8, 200), w=st.integers(8, 200),
       seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30))
def test_make_targets_batches(b, h, w, seed, n):
    lab = np.stack([gland_labels(h, w, seed + i, n) for i in range(b)])
    assert_targets(make_targets(torch.from_numpy(lab)), lab)


def test_make_targets_non_contiguous():
    lab = np.stack([gland_labels(90, 70, i) for i in range(3)])
    t = torch.from_numpy(lab.transpose(0, 2, 1).copy()).transpose(1, 2)
    assert not t.is_contiguous()
    assert_targets(make_targets(t), lab)


def test_make_targets_radius():
    lab = gland_labels(80, 100, 3)
    for r in (1, 3):
        assert_targets(make_targets(torch.from_numpy(lab), radius=r), lab, radius=r)


@pytest.mark.parametrize("normalize", ["image", "none"])
@pytest.mark.parametrize("zero_boundary", [True, False])
def test_make_targets_matches_ops(normalize, zero_boundary):
    lab = torch.from_numpy(np.stack([gland_labels(64, 64, i) for i in range(2)]))
    t = make_targets(lab, normalize=normalize, zero_boundary=zero_boundary)
    assert torch.equal(t.sdf, signed_distance(lab, normalize, zero_boundary))
    assert torch.equal(t.boundary.bool(), find_boundaries(lab, mode="ring", radius=2))
    assert torch.equal(t.mask.bool(), lab != 0)


def test_degenerate_images():
    lab = np.stack([np.zeros((20, 30), np.int32), np.full((20, 30), 5, np.int32),
                    gland_labels(20, 30, 4)])
    t = make_targets(torch.from_numpy(lab))
    assert torch.all(t.sdf[0] == -1) and torch.all(t.boundary[0] == 0) and torch.all(t.mask[0] == 0)
    assert torch.all(t.sdf[1] == 1) and torch.all(t.boundary[1] == 0) and torch.all(t.mask[1] == 1)
    assert_targets(Targets(t.mask[2], t.sdf[2], t.boundary[2]), lab[2])


def test_make_targets_bad_inputs():
    with pytest.raises(TypeError, match="mask"):
        make_targets(torch.rand(8, 8))
    with pytest.raises(ValueError, match="mask"):
        make_targets(torch.zeros(1, 1, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="radius"):
        make_targets(torch.zeros(8, 8, dtype=torch.int32), radius=-1)
    with pytest.raises(ValueError, match="normalize"):
        make_targets(torch.zeros(8, 8, dtype=torch.int32), normalize="foo")


# ============================================================ fallback path
def test_reference_backend_forced(monkeypatch):
    """SEMIMOE_BACKEND=reference: every op runs its reference implementation and agrees."""
    lab = torch.from_numpy(np.stack([gland_labels(70, 90, i) for i in range(3)]))
    fast = (make_targets(lab), distance_transform(lab),
            [find_boundaries(lab, m, c) for m in ("thick", "inner", "outer", "ring")
             for c in (1, 2)])
    chosen = []

    def spy(select):
        def wrapped(op, backends, *args):
            b = select(op, backends, *args)
            chosen.append((op, b.name))
            return b
        return wrapped

    monkeypatch.setattr(dt_mod, "select", spy(dt_mod.select))
    monkeypatch.setattr(fb_mod, "select", spy(fb_mod.select))
    monkeypatch.setenv("SEMIMOE_BACKEND", "reference")
    slow = (make_targets(lab), distance_transform(lab),
            [find_boundaries(lab, m, c) for m in ("thick", "inner", "outer", "ring")
             for c in (1, 2)])
    assert chosen and all(name == "reference" for _, name in chosen), chosen
    assert {op for op, _ in chosen} == {"signed_distance", "distance_transform",
                                        "find_boundaries"}
    for a, b in zip(fast[0], slow[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert torch.equal(fast[1], slow[1])
    for a, b in zip(fast[2], slow[2]):
        assert torch.equal(a, b)
    assert_targets(slow[0], lab.numpy())


def test_unknown_forced_backend_lists_reasons(monkeypatch):
    monkeypatch.setenv("SEMIMOE_BACKEND", "no-such-backend")
    with pytest.raises(RuntimeError, match="no backend can run") as exc:
        distance_transform(torch.zeros(4, 4, dtype=torch.bool))
    assert "cpu" in str(exc.value) and "reference" in str(exc.value)


# ==================================================================== CUDA
@pytest.mark.needs_cuda
def test_cuda_matches_cpu():
    dev = torch.device("cuda")
    lab = np.stack([gland_labels(130, 170, i) for i in range(3)] + [np.zeros((130, 170), np.int32),
                                                                  np.ones((130, 170), np.int32)])
    cpu = torch.from_numpy(lab)
    gpu = cpu.to(dev)
    for fn in (distance_transform,
               lambda m: signed_distance(m),
               lambda m: signed_distance(m, "none", False),
               lambda m: sdf_targets(m, radius=2),
               lambda m: sdf_targets(m, radius=2.5, normalize="none"),
               lambda m: tuple(make_targets(m))):
        a, b = fn(cpu), fn(gpu)
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert y.device.type == "cuda"
            torch.testing.assert_close(y.cpu(), x, rtol=1e-6, atol=1e-6)
    for dtype in (torch.bool, torch.uint8, torch.int32, torch.int64):
        c = (cpu != 0) if dtype == torch.bool else cpu.to(dtype)
        g = c.to(dev)
        for mode in ("thick", "inner", "outer", "ring"):
            for conn in (1, 2):
                for bg in ((0, 1) if dtype == torch.bool else (0, 3)):
                    assert torch.equal(find_boundaries(g, mode, conn, background=bg).cpu(),
                                       find_boundaries(c, mode, conn, background=bg))
    # Non-contiguous CUDA input.
    t = gpu.transpose(1, 2)
    assert torch.equal(distance_transform(t).cpu(), distance_transform(cpu.transpose(1, 2)))
