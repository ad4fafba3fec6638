"""The CPU kernels on a busy machine: 1 thread vs N threads, idle and under load, in one run.

    python benchmarks/bench_under_load.py                       # 1024², CRAG, GlaS; 1 busy process
    python benchmarks/bench_under_load.py --load 1 2 --sizes 1024x1024
    python -m pytest benchmarks/bench_under_load.py --benchmark-only   # small smoke configuration

Many labs share CPU nodes between jobs. A kernel whose threads spin-wait, or
split the work statically, then runs slower at N threads than at 1 (measured
on the OpenMP kernels this pool replaced: 6x slower at 2 threads with one other
busy process on a 2-core machine). This benchmark starts background load
generators (processes that spin on a core each, the "other jobs") in the same
run, and times ``distance_transform`` and ``make_targets`` on gland masks
(benchmarks/conftest.gland_batch) at 1 thread and at the machine's thread
count, with and without the load. Conditions are interleaved round by round so
that drifts in the machine's speed hit all of them alike; medians are
reported, and the ratio 1t / Nt is the median of the per-round ratios. Every
result is checked to equal the 1-thread result.

The claim under test: at every load, N threads are never slower than 1
(``1t / Nt >= 1``).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from conftest import gland_batch  # noqa: E402
from semimoe.data import make_targets  # noqa: E402
from semimoe.ops import distance_transform  # noqa: E402


def _spin(stop) -> None:
    """A load generator: keep one core busy until ``stop`` is set."""
    x = 0
    while not stop.is_set():
        for _ in range(10000):
            x += 1


class Load:
    """``with Load(k):`` k busy processes for the duration of the block."""

    def __init__(self, k: int):
        self.k = k
        ctx = mp.get_context("spawn")  # no copy of this process's threads
        self.stop = ctx.Event()
        self.procs = [ctx.Process(target=_spin, args=(self.stop,), daemon=True) for _ in range(k)]

    def __enter__(self):
        for p in self.procs:
            p.start()
        time.sleep(0.3 if self.k else 0)  # let them reach full speed
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


def _ops(size_id: str) -> Dict[str, Callable[[], object]]:
    mask, labels = gland_batch(size_id)
    m, lab = torch.from_numpy(mask), torch.from_numpy(labels)
    return {"EDT": lambda: distance_transform(m), "targets": lambda: make_targets(lab)}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return all(torch.equal(x, y) for x, y in zip(a, b))


def measure(size_id: str, loads: List[int], threads: List[int], rounds: int,
            log=print) -> List[dict]:
    """Median seconds per (op, load, threads); conditions interleaved per round."""
    rows = []
    ops = _ops(size_id)
    original = torch.get_num_threads()
    try:
        for op, fn in ops.items():
            torch.set_num_threads(1)
            expected = fn()
            for k in loads:
                times = {t: [] for t in threads}
                with Load(k):
                    for t in threads:  # warm-up, and the exactness check
                        torch.set_num_threads(t)
                        assert _same(fn(), expected), f"{op} at {t} threads differs from 1 thread"
                    for _ in range(rounds):
                        for t in threads:
                            torch.set_num_threads(t)
                            t0 = time.perf_counter()
                            fn()
                            times[t].append(time.perf_counter() - t0)
                med = {t: statistics.median(v) for t, v in times.items()}
                # Paired per round (the conditions of one round ran back to
                # back), so slow drifts of the machine cancel out.
                ratio = {t: statistics.median(a / b for a, b in zip(times[threads[0]], times[t]))
                         for t in threads}
                row = dict(op=op, size=size_id, load=k, median_s=med, ratio=ratio)
                rows.append(row)
                log(_format(row, threads))
    finally:
        torch.set_num_threads(original)
    return rows


def _format(row: dict, threads: List[int]) -> str:
    med = row["median_s"]
    cells = "  ".join(f"{t}t {med[t] * 1e3:8.2f} ms" for t in threads)
    ratios = "  ".join(f"1t/{t}t {row['ratio'][t]:5.2f}x" for t in threads[1:])
    return f"{row['op']:<8} {row['size']:<15} busy processes {row['load']}  {cells}  {ratios}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["GlaS-522x775", "1024x1024", "CRAG-1516x1512"])
    ap.add_argument("--load", nargs="+", type=int, default=[0, 1],
                    help="numbers of busy background processes to run under (default 0 1)")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args(argv)
    threads = sorted(set([1] + args.threads))
    print(f"semimoe kernels under load: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.rounds} interleaved rounds, median times")
    worst = float("inf")
    for size in args.sizes:
        for row in measure(size, args.load, threads, args.rounds):
            worst = min([worst] + [row["ratio"][t] for t in threads[1:]])
    print(f"worst 1t / Nt over all rows: {worst:.2f}x (>= 1: more threads never slower; "
          f"median of the per-round ratios)")
    return 0


def test_under_load_smoke(benchmark):
    """Small configuration: 2 threads with one busy process give the 1-thread result."""
    rows = measure("512x512", loads=[1], threads=[1, 2], rounds=3, log=lambda s: None)
    assert {r["op"] for r in rows} == {"EDT", "targets"}
    mask = torch.from_numpy(gland_batch("512x512")[0])
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with Load(1):
            got = benchmark(distance_transform, mask)
    finally:
        torch.set_num_threads(original)
    torch.set_num_threads(1)
    try:
        assert torch.equal(got, distance_transform(mask))
    finally:
        torch.set_num_threads(original)


if __name__ == "__main__":
    sys.exit(main())
