"""Small helpers shared by training, evaluation and deployment: atomic file
writes, JSON-safe values, safe checkpoint loading, one-time notes and
progress lines.

Every file semimoe writes for a user (checkpoints, configs, split files,
metrics, results) goes through :func:`atomic_write`: the content is written
to a temporary file in the same folder, flushed to disk, then renamed over
the target, so a crash leaves either the old file or the new one, never a
torn one.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, IO, Optional, Set, Union

import numpy as np

from .errors import CheckpointError, UsageError, describe

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_torch_save", "jsonable",
           "remove_stale_temp_files", "safe_torch_load", "warn_once", "Progress", "resolve_device"]

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[IO], Any], binary: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync, rename onto ``path``.

    The temporary file (``.<name>.tmp<pid>``) is removed if ``write`` raises.
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def remove_stale_temp_files(folder: PathLike) -> list:
    """Delete the temporary files :func:`atomic_write` leaves behind when a
    process is killed mid-write (``.<name>.tmp<pid>``) in ``folder``; only call
    this while no other process writes there. Returns the removed paths."""
    removed = []
    for p in Path(folder).glob(".*.tmp*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: PathLike, obj: Any, indent: int = 1) -> Path:
    """``obj`` (made :func:`jsonable`) as indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=indent) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def jsonable(x: Any) -> Any:
    """``x`` with NumPy scalars as Python numbers, tuples as lists and
    non-finite floats as strings (``"inf"``, ``"nan"``: strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return jsonable(x.item())
    return x


def safe_torch_load(path: PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors in our words.

    Raises :class:`~semimoe.errors.CheckpointError` naming the file when it is
    missing, a folder, truncated or not a PyTorch file, or when it holds
    Python objects that loading without code execution refuses (semimoe never
    loads checkpoints with ``weights_only=False``).
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a folder; expected a .pt file written by semimoe.train")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{what} {path} holds Python objects besides tensors, numbers and containers; semimoe loads "
            "checkpoints without running code stored in them and refuses this file (a checkpoint written by "
            "semimoe.train never needs it)") from None
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(f"{what} {path} is truncated or not a PyTorch file ({describe(e)})") from None


_SAID: Set[str] = set()


def warn_once(key: str, message: str, category=UserWarning) -> bool:
    """Issue ``message`` as a warning the first time ``key`` is seen in this
    process; returns whether it was issued."""
    if key in _SAID:
        return False
    _SAID.add(key)
    warnings.warn(message, category, stacklevel=3)
    return True


class Progress:
    """Progress of a long loop: a tqdm bar on a terminal; elsewhere (logs,
    pipes, batch jobs) one plain line every ``interval`` seconds, so a long
    run is never silent.

    ``with Progress(total, "tiles") as p: ... p.update(n)``; ``write(msg)``
    prints a line without breaking the bar.
    """

    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0, interval: float = 30.0,
                 stream=None, tty: Optional[bool] = None):
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.interval = float(interval)
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if tty is None:
            tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if tty:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, dynamic_ncols=True,
                                file=self.stream)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.interval or (self.n >= self.total and now - self.t0 >= self.interval):
            self.last = now
            self.write(self._line(now))

    def _line(self, now: float) -> str:
        el = now - self.t0
        pct = 100.0 * self.n / max(1, self.total)
        rate = self.n / el if el > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        return (f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%), {el / 60:.1f} min elapsed, "
                f"{left / 60:.1f} min left")

    def set_postfix(self, **kw) -> None:
        if self.bar is not None:
            self.bar.set_postfix(refresh=False, **kw)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resolve_device(spec: Optional[str], option: str = "--device", default: str = "cpu"):
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> a usable ``torch.device``;
    a :class:`~semimoe.errors.UsageError` naming ``option`` otherwise."""
    import torch

    spec = default if spec is None else str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(f"{option} must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UsageError(f"{option} {spec}: no CUDA device is available here (torch {torch.__version__}); "
                             "use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise UsageError(f"{option} {spec}: there are only {n} CUDA device(s)")
    elif dev.type != "cpu":
        raise UsageError(f"{option} must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return dev
