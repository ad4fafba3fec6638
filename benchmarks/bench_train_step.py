"""One Semi-MoE training step: semimoe's CPU path vs the released code's choices, in one run.

    python benchmarks/bench_train_step.py                     # cpu-demo config, 1 thread
    python benchmarks/bench_train_step.py --preset paper --steps 3
    python benchmarks/bench_train_step.py --variant "train.channels_last=false"  # one more side
    python -m pytest benchmarks/bench_train_step.py --benchmark-only   # small smoke configuration

Two trainers of the same configuration, seed and data, stepped alternately
(so that load changes on a shared machine hit both alike); the median step
time of each is reported with the ratio. A step is everything
``Trainer.train_step`` does: targets of the labeled batch, both forward and
backward passes (unlabeled then labeled), the pseudo-labels, the losses, the
gradient clipping and the optimiser steps. The batch is drawn outside the
timing.

* ``reference path``: the released code's implementation choices, run by
  semimoe: NCHW tensors, targets computed per image with SciPy and
  scikit-image (two EDTs, a boundary, a dilation), gating and fusion as
  unfused PyTorch and each decoder upsample materialised before its 3x3
  convolution (``SEMIMOE_BACKEND=reference`` for every op), BatchNorm and
  ReLU as separate ops. The maths is the same; this is not the authors'
  code (which semimoe does not copy), so treat the ratio as semimoe's gain
  from its implementation choices.
* ``semimoe``: the default: channels-last, the C++ targets kernel, the fused
  gating op, the decoder's upsample + 3x3 convolutions as transposed convolutions
  (:func:`semimoe.ops.upsample_conv2d`).

The allocator setting ``train.keep_memory`` (:mod:`semimoe.memory`) is
process-wide: once the semimoe side applies it, the reference side runs with
it too, so the ratio leaves its gain out. Run once with
``train.keep_memory=false`` (every side on the system allocator) and once
without to see it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from semimoe._backend import forced  # noqa: E402
from semimoe.config import make_config  # noqa: E402
from semimoe.training import Trainer  # noqa: E402




class Stepper:
    """A set-up Trainer whose ``step()`` runs and times one training iteration."""

    def __init__(self, preset: str, overrides: List[str], threads: int, steps: int, backend=None):
        run_dir = tempfile.mkdtemp(prefix="semimoe-bench-step-")
        cfg = make_config(preset, None, [f"run_dir={run_dir}", "train.progress=false",
                                         f"train.threads={threads}", "train.device=cpu", *overrides])
        self.backend = backend
        self.trainer = Trainer(cfg, log=lambda *a: None)
        self.batches = self.trainer.prepare_steps(steps)
        self.it = 0

    def step(self) -> float:
        labeled, unlabeled = next(self.batches)
        with forced(self.backend):
            t0 = time.perf_counter()
            stats = self.trainer.train_step(self.it, labeled, unlabeled)
            float(stats["loss"].detach())  # the step is done when its loss exists
            dt = time.perf_counter() - t0
        self.it += 1
        return dt


def measure(preset: str, overrides: List[str], threads: int, steps: int, warmup: int = 1,
            log=print, variants: Sequence[str] = ()) -> dict:
    """Median step times and ratios; each of ``variants`` (space-separated
    overrides, e.g. ``"train.channels_last=false"``) adds a semimoe side."""
    sides = {
        "reference path": Stepper(preset, ["train.channels_last=false", *overrides], threads,
                                  steps + warmup, backend="reference"),
        "semimoe": Stepper(preset, overrides, threads, steps + warmup),
    }
    for v in variants:
        sides[f"semimoe {v}"] = Stepper(preset, [*overrides, *v.split()], threads, steps + warmup)
    times = {k: [] for k in sides}
    first = {k: 0.0 for k in sides}
    for i in range(steps + warmup):
        for name, s in sides.items():
            dt = s.step()
            if i >= warmup:
                times[name].append(dt)
            else:
                first[name] += dt
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: med["reference path"] / v for k, v in med.items() if k != "reference path"}
    log(f"{preset} {' '.join(overrides)} | {threads} thread(s) | {steps} steps each, interleaved")
    for k, v in med.items():
        log(f"  {k:<15} {v:8.3f} s/step  (all: {', '.join(f'{x:.3f}' for x in times[k])}; "
            f"warm-up, with any compilation: {first[k]:.1f} s)")
    for k, r in ratios.items():
        log(f"  reference / {k}: {r:.2f}x")
    return dict(preset=preset, threads=threads, median_s=med, ratio=ratios["semimoe"], ratios=ratios,
                warmup_s=first)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-demo")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--variant", action="append", default=[], metavar="OVERRIDES",
                    help="one more semimoe side with these space-separated overrides, e.g. "
                         "--variant 'train.channels_last=false' (repeatable)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every side")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    measure(args.preset, args.overrides, args.threads, args.steps, variants=args.variant)
    return 0


def test_train_step_smoke(benchmark):
    """Tiny configuration: both sides run and give finite losses."""
    over = ["model.base_width=8", "model.depth=3", "train.crop=64", "train.batch_labeled=2",
            "train.batch_unlabeled=2", "data.size=128"]
    res = measure("cpu-demo", over, threads=1, steps=2, log=lambda *a: None,
                  variants=["train.channels_last=false"])
    assert res["ratio"] > 0 and set(res["ratios"]) == {"semimoe", "semimoe train.channels_last=false"}
    s = Stepper("cpu-demo", over, 1, 3)
    benchmark.pedantic(s.step, rounds=2, iterations=1)


if __name__ == "__main__":
    sys.exit(main())
