"""MKL's vector math library started on one thread, so that runs repeat.

PyTorch's x86 CPU build computes ``tanh``, ``exp``, ``log``, ``erf``,
``sin`` and other elementwise functions of contiguous float tensors with
MKL's vector math library (VML), splitting a call between threads in chunks
of 2048 elements. When the first VML call of a process runs on several
threads, the chunks of a thread other than the one that starts the library
can be computed by a different code path: the same input then gives values
that differ in the last bits, in some processes and not in others.

Measured here (torch 2.13.0, 2 threads; ``python -m semimoe.vml`` runs it):
``tanh`` of the same 16384 values in fresh processes differed from the
single-thread result in 4 of 40 processes (3 of 20 in another run; in
earlier runs a differing chunk had 4095 of its 4096 values changed). After
:func:`start_vml`, 0 of 40 (0 of 20). It is a matter of timing: while
another job loaded the machine, 0 of 40 processes showed it even without.

In a Semi-MoE training step the first VML call is the ``tanh`` of the
pseudo-label SDF, on the unlabeled batch of the first iteration, so two
processes running the same command and seed could train apart from there
(seen once in CI; reproduced here by a quiet and a loaded process with
``MKL_ENABLE_INSTRUCTIONS=SSE4_2``: 75 pseudo-label values 1 ulp apart in 2
of 5 tries, 0 of 4 with :func:`start_vml`).
:func:`start_vml` makes one small call of every function PyTorch sends to
VML, for both float types, on the calling thread (a tensor far below the
2048-element chunk runs on one thread), before any threaded call.
"""
from __future__ import annotations

import torch

__all__ = ["start_vml", "VML_FUNCTIONS"]

# The elementwise functions PyTorch's CPU kernels hand to MKL's VML
# (aten/src/ATen/cpu/vml.h, IMPLEMENT_VML_MKL): each has its own float and
# double entry point in MKL.
VML_FUNCTIONS = ("acos", "asin", "atan", "cos", "sin", "tan", "tanh", "erf", "erfc", "erfinv",
                 "exp", "log", "log10")

_started = False


def start_vml() -> bool:
    """Call each VML function once on this thread (idempotent; 4 ms measured).

    Returns True when PyTorch was built with MKL (the calls were made, now
    or earlier), False otherwise (nothing to start)."""
    global _started
    if _started:
        return True
    if not torch.backends.mkl.is_available():
        return False
    for dtype in (torch.float32, torch.float64):
        x = torch.full((8,), 0.5, dtype=dtype)
        for name in VML_FUNCTIONS:
            getattr(torch, name)(x)
    _started = True
    return True


def _one_process(threads: int, start: bool) -> str:
    """Digest of ``tanh`` over fixed values on ``threads`` threads in this
    (fresh) process, optionally after :func:`start_vml`."""
    import hashlib

    if start:
        start_vml()
    torch.set_num_threads(threads)
    x = torch.linspace(-4.0, 4.0, 2048 * 8, dtype=torch.float32)
    return hashlib.sha256(torch.tanh(x).numpy().tobytes()).hexdigest()[:16]


def fresh_process_digest(threads: int, start: bool) -> str:
    """:func:`_one_process` in a new Python process (the demo and the tests)."""
    import subprocess
    import sys

    code = "import sys; from semimoe.vml import _one_process as f; print(f(int(sys.argv[1]), sys.argv[2] == '1'))"
    return subprocess.run([sys.executable, "-c", code, str(threads), str(int(start))], capture_output=True,
                          text=True, check=True).stdout.strip()


def _demo(processes: int = 30, threads: int = 2) -> None:
    """Fresh processes compute the same ``tanh`` without and with
    :func:`start_vml`; prints how many disagree with a single-thread result."""
    ref = fresh_process_digest(1, True)
    for start in (False, True):
        got = [fresh_process_digest(threads, start) for _ in range(processes)]
        print(f"{'with' if start else 'without'} start_vml: {sum(g != ref for g in got)} of {processes} processes "
              f"differ from the single-thread result ({threads} threads)", flush=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=_demo.__doc__)
    ap.add_argument("--processes", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    _demo(a.processes, a.threads)
