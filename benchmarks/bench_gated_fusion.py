"""Benchmarks of ``semimoe::gated_fusion``: ours vs the eager reference vs
``torch.compile`` of the reference, forward and forward+backward, both gate
granularities, on the same inputs in one run.

    python -m pytest benchmarks/bench_gated_fusion.py --benchmark-only

GPU (skipped without CUDA): Semi-MoE training shapes, B=8, K=3 experts, T=3
tasks, C=64, 512x512, bfloat16. Times are medians of ``triton.testing.do_bench``
(CUDA events, L2 flushed). Achieved bandwidth is the *minimum* traffic --
read features, gates (and grad_out) once, write out (and both grads) once --
over the measured time, next to the device-to-device ``copy_`` bandwidth
measured in the same run (the roof).

CPU: B=2, 256x256, float32, the PyTorch path that CPU tensors use vs the
eager reference (host timer, median).

Every implementation is checked against a float64 reference (first image)
before it is timed.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import pytest
import torch

from semimoe.ops.gated_fusion import gated_fusion, gated_fusion_ref

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # keep the module importable; its tests then skip
    @pytest.fixture
    def benchmark():
        pytest.skip("pytest-benchmark is not installed")

HAS_CUDA = torch.cuda.is_available()
GATES = ["image", "pixel"]


@dataclasses.dataclass(frozen=True)
class Config:
    B: int
    K: int
    T: int
    C: int
    H: int
    W: int
    dtype: torch.dtype
    device: str

    def __str__(self) -> str:
        return (f"B={self.B} K={self.K} T={self.T} C={self.C} {self.H}x{self.W} "
                f"{str(self.dtype).replace('torch.', '')} {self.device}")


GPU_CONFIG = Config(B=8, K=3, T=3, C=64, H=512, W=512, dtype=torch.bfloat16, device="cuda")
CPU_CONFIG = Config(B=2, K=3, T=3, C=64, H=256, W=256, dtype=torch.float32, device="cpu")


def make_inputs(cfg: Config, gates: str, seed: int = 0):
    """Random, never-zero features (B,K,C,H,W), logits (B,T,K[,H,W]) and grad_out (B,T,C,H,W)."""
    gen = torch.Generator(device=cfg.device).manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device=cfg.device, dtype=torch.float32).to(cfg.dtype)

    gshape = (cfg.B, cfg.T, cfg.K, cfg.H, cfg.W) if gates == "pixel" else (cfg.B, cfg.T, cfg.K)
    f = rnd(cfg.B, cfg.K, cfg.C, cfg.H, cfg.W).requires_grad_()
    g = rnd(*gshape).requires_grad_()
    go = rnd(cfg.B, cfg.T, cfg.C, cfg.H, cfg.W)
    return f, g, go


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def min_bytes(f, g, go) -> tuple[int, int]:
    """(forward, forward+backward) minimum traffic; out is shaped like grad_out."""
    fwd = nbytes(f) + nbytes(g) + nbytes(go)
    # read f, g, grad_out once; write out, grad_f, grad_g once
    fwd_bwd = fwd + nbytes(go) + nbytes(f) + nbytes(g)
    return fwd, fwd_bwd


def forward(fn, f, g) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return fn(f, g)
    return run


def forward_backward(fn, f, g, go) -> Callable[[], object]:
    return lambda: torch.autograd.grad(fn(f, g), (f, g), go)


def time_ms(fn: Callable[[], object], device: str, cpu_rounds: int = 5) -> float:
    """Median time of ``fn`` in milliseconds."""
    if device == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            return _cuda_events_ms(fn)
        return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
    fn()
    times = []
    for _ in range(cpu_rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _cuda_events_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(device: str, mib: int = 1024) -> float:
    """Device-to-device ``copy_`` bandwidth (read + write bytes / time)."""
    src = torch.randn(mib * (1 << 20) // 4, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * nbytes(src) / (ms * 1e-3) / 1e9


def check_agreement(name: str, fn, f, g, go) -> None:
    """Forward and gradients of ``fn`` on the first image vs float64, before timing."""
    f1 = f[:1].detach().clone().requires_grad_()
    g1 = g[:1].detach().clone().requires_grad_()
    go1 = go[:1]
    out = fn(f1, g1)
    res = (out, *torch.autograd.grad(out, (f1, g1), go1))
    fd = f1.detach().double().requires_grad_()
    gd = g1.detach().double().requires_grad_()
    out_d = gated_fusion_ref(fd, gd)
    refs = (out_d, *torch.autograd.grad(out_d, (fd, gd), go1.double()))
    for what, a, r in zip(("out", "grad_features", "grad_gate_logits"), res, refs):
        # a few roundings in the result's dtype; fp32 sums of millions of terms get 2e-5
        rtol = max(4 * torch.finfo(a.dtype).eps, 2e-5)
        scale = r.abs().max().item()
        err = (a.detach().double() - r.detach()).abs().max().item()
        assert err <= rtol * scale + 1e-6, f"{name} {what}: max error {err:.3g} vs float64 (scale {scale:.3g})"


def impls(device: str) -> dict:
    ours = "semimoe (triton)" if device == "cuda" else "semimoe (torch path)"
    out = {ours: gated_fusion, "eager reference": gated_fusion_ref}
    if device == "cuda":
        # static shapes: the agreement check (one image) must not make the timed graph dynamic
        out["torch.compile(reference)"] = torch.compile(gated_fusion_ref, dynamic=False)
    return out


def report(cfg: Config, gates: str, rows: dict, copy_gbs, f, g, go) -> str:
    fwd_b, fwdbwd_b = min_bytes(f, g, go)
    ours_fwd, ours_fb = next(iter(rows.values()))
    title = f"gated_fusion, {cfg}, gates per {gates}"
    if cfg.device == "cuda":
        title += f", {torch.cuda.get_device_name()}"
    lines = [title,
             f"{'impl':<26}{'fwd ms':>9}{'fwd+bwd ms':>12}{'x ours':>8}{'GB/s':>8}{'% copy':>8}"]
    for name, (t_fwd, t_fb) in rows.items():
        gbs = fwdbwd_b / (t_fb * 1e-3) / 1e9
        pct = f"{100 * gbs / copy_gbs:7.1f}%" if copy_gbs else "      -"
        lines.append(f"{name:<26}{t_fwd:9.3f}{t_fb:12.3f}{t_fb / ours_fb:8.2f}{gbs:8.1f}{pct:>8}")
    fwd_gbs = fwd_b / (ours_fwd * 1e-3) / 1e9
    lines.append(f"min bytes: fwd {fwd_b / 1e6:.1f} MB, fwd+bwd {fwdbwd_b / 1e6:.1f} MB; "
                 f"ours fwd {fwd_gbs:.1f} GB/s"
                 + (f" ({100 * fwd_gbs / copy_gbs:.1f}% of copy); copy_ {copy_gbs:.0f} GB/s" if copy_gbs else ""))
    return "\n".join(lines)


def run_comparison(cfg: Config, gates: str, benchmark, capsys, cpu_rounds: int = 5) -> None:
    f, g, go = make_inputs(cfg, gates)
    candidates = impls(cfg.device)
    for name, fn in candidates.items():
        check_agreement(name, fn, f, g, go)
    rows = {}
    for name, fn in candidates.items():
        rows[name] = (time_ms(forward(fn, f, g), cfg.device, cpu_rounds),
                      time_ms(forward_backward(fn, f, g, go), cfg.device, cpu_rounds))
    copy_gbs = copy_bandwidth_gbs(cfg.device) if cfg.device == "cuda" else None
    table = report(cfg, gates, rows, copy_gbs, f, g, go)
    with capsys.disabled():
        print("\n" + table)

    # the pytest-benchmark record: ours, forward+backward
    step = forward_backward(gated_fusion, f, g, go)
    if cfg.device == "cuda":
        def sync_step():
            step()
            torch.cuda.synchronize()
        benchmark.pedantic(sync_step, rounds=20, iterations=1, warmup_rounds=3)
    else:
        benchmark.pedantic(step, rounds=cpu_rounds, iterations=1, warmup_rounds=1)
    fwd_b, fwdbwd_b = min_bytes(f, g, go)
    benchmark.group = f"gated_fusion {cfg.device}"
    benchmark.extra_info.update({
        "config": str(cfg), "gates": gates,
        "min_bytes_fwd_bwd": fwdbwd_b,
        **{f"{name} fwd+bwd ms": t_fb for name, (_, t_fb) in rows.items()},
        **({"copy GB/s": copy_gbs} if copy_gbs else {}),
    })


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("gates", GATES)
def test_gated_fusion_gpu(benchmark, capsys, gates):
    run_comparison(GPU_CONFIG, gates, benchmark, capsys)


@pytest.mark.parametrize("gates", GATES)
def test_gated_fusion_cpu(benchmark, capsys, gates):
    run_comparison(CPU_CONFIG, gates, benchmark, capsys, cpu_rounds=3)
