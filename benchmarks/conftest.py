"""Collect ``bench_<op>.py`` modules, so that ``pytest benchmarks/ --benchmark-only`` finds them.

(pytest's default ``python_files`` only matches ``test_*.py``.) Modules that the
configured patterns already match, or that are named on the command line,
are left to pytest's own collector.
"""
import fnmatch

import pytest


def pytest_collect_file(file_path, parent):
    if not (file_path.name.startswith("bench_") and file_path.suffix == ".py"):
        return None
    if parent.session.isinitpath(file_path):
        return None
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


# --------------------------------------------------------------------------
# Shared by bench_distance_transform.py, bench_targets.py and
# bench_find_boundaries.py: realistic gland masks at the datasets' sizes, and a
# side-by-side "peer / ours" table printed at the end of the run.
import dataclasses  # noqa: E402
import functools  # noqa: E402
from typing import Dict, List, Tuple  # noqa: E402

import numpy as np  # noqa: E402

# id -> (B, H, W): 512², GlaS (522 x 775), 1024², CRAG (1516 x 1512), a training batch.
GLAND_SIZES = {
    "512x512": (1, 512, 512),
    "GlaS-522x775": (1, 522, 775),
    "1024x1024": (1, 1024, 1024),
    "CRAG-1516x1512": (1, 1516, 1512),
    "8x512x512": (8, 512, 512),
}


def _gland_image(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One bool mask of 30-60 irregular ellipses covering 30-40 % of the image."""
    n = int(rng.integers(30, 61))
    cover = rng.uniform(0.30, 0.40)
    mean_r = np.sqrt(cover * h * w / (n * np.pi))
    m = np.zeros((h, w), bool)
    for _ in range(4 * n):
        if m.mean() >= cover:
            break
        r = mean_r * rng.uniform(0.6, 1.4)
        a, b = r * rng.uniform(0.7, 1.4), r * rng.uniform(0.7, 1.4)
        t = rng.uniform(0, np.pi)
        amp, phase = rng.uniform(0, 0.12, 4), rng.uniform(0, 2 * np.pi, 4)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ext = 1.5 * max(a, b)
        y0, y1 = int(max(0, cy - ext)), int(min(h, cy + ext + 1))
        x0, x1 = int(max(0, cx - ext)), int(min(w, cx + ext + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(t) + dx * np.sin(t)) / a
        v = (-dy * np.sin(t) + dx * np.cos(t)) / b
        ang = np.arctan2(v, u)
        # Wobbly outline: radius modulated by a few low angular frequencies.
        wob = 1 + sum(amp[k] * np.cos((k + 2) * ang + phase[k]) for k in range(4))
        m[y0:y1, x0:x1] |= u * u + v * v <= wob * wob
    return m


@functools.lru_cache(maxsize=None)
def gland_batch(size_id: str, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(bool mask (B, H, W), int32 instance labels (B, H, W)) for a GLAND_SIZES id."""
    from scipy import ndimage as ndi

    B, H, W = GLAND_SIZES[size_id]
    rng = np.random.default_rng(seed)
    mask = np.stack([_gland_image(H, W, rng) for _ in range(B)])
    labels = np.stack([ndi.label(x)[0].astype(np.int32) for x in mask])
    return mask, labels


@pytest.fixture(params=list(GLAND_SIZES))
def size_id(request) -> str:
    """Parametrizes a benchmark over the GLAND_SIZES ids."""
    return request.param


@pytest.fixture(scope="session")
def gland_inputs():
    """``gland_inputs(size_id) -> (mask, labels)``: cached NumPy arrays, see gland_batch."""
    return gland_batch


def timed(benchmark, fn, budget_s: float = 0.6, max_rounds: int = 200):
    """``benchmark.pedantic`` with as many rounds as fit in ``budget_s`` (two trial
    calls decide, the first one also warms up), so slow peers at large sizes run
    a fixed few rounds. Returns the result of a trial call."""
    import time

    trials = []
    for _ in range(2):
        t0 = time.perf_counter()
        result = fn()
        trials.append(time.perf_counter() - t0)
    dt = max(min(trials), 1e-6)
    min_rounds = 5 if dt < 0.1 else 3
    rounds = int(min(max_rounds, max(min_rounds, budget_s / dt)))
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    return result


@dataclasses.dataclass
class _Row:
    comparison: str
    size: str
    impl: str
    median_s: float


class _RatioTable:
    """Collects medians and prints "peer / ours" per (comparison, size) at the end."""

    def __init__(self):
        self.rows: List[_Row] = []
        # comparison -> the implementations that are "ours" (first one is the base)
        self.ours: Dict[str, List[str]] = {}

    def add(self, comparison: str, size: str, impl: str, benchmark, ours: bool = False):
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # benchmarks disabled (--benchmark-disable) or skipped
            return
        self.rows.append(_Row(comparison, size, impl, stats.stats.median))
        if ours:
            lst = self.ours.setdefault(comparison, [])
            if impl not in lst:
                lst.append(impl)

    # pytest hook, called because the instance is registered as a plugin.
    def pytest_terminal_summary(self, terminalreporter):
        if not self.rows:
            return
        tr = terminalreporter
        tr.write_sep("=", "semimoe: peer / ours (median times; ratio > 1: ours is faster)")
        fmt = "{:<11} {:<15} {:<22} {:>10} {:>13} {:>13}"
        for comparison in dict.fromkeys(r.comparison for r in self.rows):
            ours = self.ours.get(comparison, [])
            base_names = ours[:2]
            tr.write_line("")
            tr.write_line(fmt.format("comparison", "size", "implementation", "median",
                                     *(f"x/{n}" for n in base_names)))
            for size in dict.fromkeys(r.size for r in self.rows if r.comparison == comparison):
                rows = {r.impl: r.median_s for r in self.rows
                        if r.comparison == comparison and r.size == size}
                bases = [rows.get(n) for n in base_names]
                for impl, t in rows.items():
                    ratios = [f"{t / b:.2f}x" if b else "-" for b in bases]
                    tr.write_line(fmt.format(comparison, size, impl, _fmt_time(t), *ratios))


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


@pytest.fixture(scope="session")
def ratio_table(request):
    """Session-wide _RatioTable, registered as a plugin so it prints its summary."""
    pm = request.config.pluginmanager
    table = pm.get_plugin("semimoe-ratio-table")
    if table is None:
        table = _RatioTable()
        pm.register(table, "semimoe-ratio-table")
    return table


@pytest.fixture
def torch_threads():
    """``torch_threads(n)`` sets torch's intra-op threads (the kernels use that
    count); the original count is restored after the test."""
    import torch

    original = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(original)


@pytest.fixture
def run_timed(benchmark):
    """``run_timed(fn)``: :func:`timed` with this test's ``benchmark``; returns fn()."""
    return functools.partial(timed, benchmark)


@pytest.fixture(scope="session")
def gland_image():
    """``gland_image(h, w, rng) -> bool mask``: the generator behind gland_batch."""
    return _gland_image
