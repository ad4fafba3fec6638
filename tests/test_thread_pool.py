"""The CPU kernels' own thread pool (csrc/ops/cpu/pool.h): same results at any
thread count, safe when called from several Python threads at once, and
usable in a forked child (DataLoader workers) after the parent used it."""
from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from semimoe._backend import cpu_ext
from semimoe.data import make_targets
from semimoe.ops import distance_transform, find_boundaries

pytestmark = pytest.mark.skipif(cpu_ext() is None, reason="semimoe._C not built")


def _masks(b=3, h=301, w=257, seed=0):
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.standard_normal((b, h, w)), (0, 6, 6))
    return torch.from_numpy(noise > 0.02)


def _at_threads(n, fn):
    original = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(original)


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_results_do_not_depend_on_threads(threads, monkeypatch):
    import semimoe._backend as backend

    monkeypatch.setattr(backend, "MIN_PIXELS_PER_THREAD", 1)  # really use `threads` threads
    m = _masks()
    lab = torch.from_numpy(ndi.label(m[0].numpy())[0].astype(np.int32))
    ops = {
        "edt": lambda: distance_transform(m),
        "targets": lambda: make_targets(m),
        "boundaries": lambda: find_boundaries(lab, mode="thick"),
    }
    one = {k: _at_threads(1, f) for k, f in ops.items()}
    many = {k: _at_threads(threads, f) for k, f in ops.items()}
    exp = np.stack([ndi.distance_transform_edt(x) for x in m.numpy()]).astype(np.float32)
    assert torch.equal(one["edt"], torch.from_numpy(exp))
    for k in ops:
        a, b = one[k], many[k]
        pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
        assert all(torch.equal(x, y) for x, y in pairs), k


def test_concurrent_calls_from_python_threads(monkeypatch):
    import semimoe._backend as backend

    monkeypatch.setattr(backend, "MIN_PIXELS_PER_THREAD", 1)
    masks = [_masks(2, 200, 180, seed) for seed in range(6)]
    expected = [_at_threads(1, lambda m=m: distance_transform(m)) for m in masks]
    got = [None] * len(masks)
    errors = []

    def work(i):
        try:
            for _ in range(5):
                got[i] = distance_transform(masks[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def run():
        ts = [threading.Thread(target=work, args=(i,)) for i in range(len(masks))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        return ts

    ts = _at_threads(2, run)
    assert not errors and not any(t.is_alive() for t in ts)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def _child(q):
    # As a DataLoader worker: PyTorch's own OpenMP pool is not usable after a
    # fork (it is set to 1 thread there); the kernels are asked for 2 threads.
    import numpy as np_

    import torch as t

    from semimoe._backend import cpu_ext as ext

    t.set_num_threads(1)
    m = np_.zeros((1, 600, 600), np_.uint8)
    m[0, 100:500, 100:500] = 1
    out = np_.empty(m.shape, np_.float32)
    ext().distance_transform(m.ctypes.data, out.ctypes.data, 1, 600, 600, 2)
    q.put((float(out.max()), ext().pool_size()))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="no fork")
def test_forked_child_after_parent_used_the_pool(monkeypatch):
    import semimoe._backend as backend

    monkeypatch.setattr(backend, "MIN_PIXELS_PER_THREAD", 1)
    _at_threads(2, lambda: distance_transform(_masks(1, 400, 400)))  # parent's pool is up
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(60)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive, "the forked child hung in the kernels' thread pool"
    assert p.exitcode == 0
    value, helpers = q.get(timeout=5)
    assert value == 200.0
    assert helpers <= 1  # a fresh pool in the child (no helper if no core was idle)


def _spin(stop):
    while not stop.is_set():
        pass


@pytest.mark.skipif((__import__("os").cpu_count() or 1) > 16, reason="one busy process per core")
def test_no_helper_waits_for_a_busy_core():
    """With every core busy, a call runs on the calling thread alone; idle, it may use more."""
    import os
    import time

    ext = cpu_ext()
    assert 1 <= ext.available_threads(4) <= 4
    assert ext.available_threads(1) == 1
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(os.cpu_count() or 1)]
    for p in procs:
        p.start()
    try:
        time.sleep(1.0)
        seen = [ext.available_threads(4) for _ in range(5)]
    finally:
        stop.set()
        for p in procs:
            p.join(10)
    assert max(seen) == 1, seen
