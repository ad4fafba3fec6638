"""Small helpers shared by training, evaluation and deployment: atomic file
writes and JSON-safe values.

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
from pathlib import Path
from typing import Any, Callable, IO, Union

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_torch_save", "jsonable"]

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
