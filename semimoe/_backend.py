"""Loading of the compiled modules and backend selection shared by all ops.

Each op lists its backends in order of preference. A backend says why it
cannot run a given call (device, dtype, missing module); the first that can
run is used. When only the slow reference can run although a compiled backend
exists for that device, a warning is issued once per (op, reason).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

_lock = threading.Lock()
_modules: dict[str, Any] = {}
_load_errors: dict[str, str] = {}
_warned: set[tuple[str, str]] = set()


def _load_from_installed_distribution(name: str):
    """Find ``semimoe/<name>*.so`` of the installed distribution.

    Used when ``semimoe`` is imported from a source checkout (e.g. ``python -m``
    run in the repository root shadows the installed package) so that the
    compiled kernels of ``pip install .`` are still used.
    """
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    # Several can match: a build leaves semimoe.egg-info in the source tree,
    # which is found first when running from there; only an install lists the .so.
    for dist in importlib.metadata.distributions(name="semimoe"):
        for f in dist.files or ():
            fname = str(f).replace("\\", "/")
            base = fname.rsplit("/", 1)[-1]
            if not (fname.startswith("semimoe/") and base.startswith(name + ".")
                    and base.endswith(suffixes)):
                continue
            path = str(dist.locate_file(f))
            if not os.path.exists(path):
                continue
            spec = importlib.util.spec_from_file_location(f"semimoe.{name}", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    return None


def load_extension(name: str):
    """Return the compiled module ``semimoe.<name>`` or ``None`` (reason kept)."""
    with _lock:
        if name in _modules:
            return _modules[name]
        mod = None
        try:
            mod = importlib.import_module(f"semimoe.{name}")
        except ImportError as exc:
            err = f"{type(exc).__name__}: {exc}"
            try:
                mod = _load_from_installed_distribution(name)
            except ImportError as exc2:  # present but not loadable (ABI, missing libs)
                err = f"{type(exc2).__name__}: {exc2}"
            if mod is None:
                _load_errors[name] = err
        _modules[name] = mod
        return mod


def extension_error(name: str) -> Optional[str]:
    load_extension(name)
    return _load_errors.get(name)


def cpu_ext():
    return load_extension("_C")


def cuda_ext():
    return load_extension("_C_cuda")


def warn_once(op: str, message: str) -> None:
    key = (op, message)
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(f"semimoe.ops.{op}: {message}", RuntimeWarning, stacklevel=3)


@dataclass(frozen=True)
class Backend:
    """One way of running an op.

    ``why_not(*args)`` returns ``None`` when the backend can run the call, or a
    short reason. ``fast`` marks compiled/Triton backends; falling through all
    of them to the reference triggers a one-time warning.
    """

    name: str
    why_not: Callable[..., Optional[str]]
    run: Callable[..., Any]
    fast: bool = True
    # Whether the backend exists at all in this process (module built, device
    # present): None or the reason it does not. Shown by ``semimoe.info``.
    available: Callable[[], Optional[str]] = lambda: None


@contextlib.contextmanager
def forced(name: Optional[str]):
    """Within the block every op runs on its backend ``name``
    (``SEMIMOE_BACKEND``); None leaves the choice as it is. The previous
    setting is restored afterwards."""
    old = os.environ.get("SEMIMOE_BACKEND")
    if name:
        os.environ["SEMIMOE_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SEMIMOE_BACKEND", None)
        else:
            os.environ["SEMIMOE_BACKEND"] = old


def select(op: str, backends: Sequence[Backend], *args) -> Backend:
    forced = os.environ.get("SEMIMOE_BACKEND")
    reasons = []
    for b in backends:
        if forced and b.name != forced:
            reasons.append(f"{b.name}: not {forced!r} (SEMIMOE_BACKEND)")
            continue
        why = b.why_not(*args)
        if why is None:
            if not b.fast and not forced and reasons:
                warn_once(op, "no compiled backend can run this call, using the slow "
                              "reference implementation (" + "; ".join(reasons) + ")")
            return b
        reasons.append(f"{b.name}: {why}")
    raise RuntimeError(f"semimoe.ops.{op}: no backend can run this call: " + "; ".join(reasons))


# Below this many pixels per thread, starting and joining a parallel region
# costs more than it saves (and a busy machine makes spinning threads costly).
MIN_PIXELS_PER_THREAD = 1 << 16


def num_threads(numel: int = 0) -> int:
    """Threads for a CPU kernel over ``numel`` pixels: torch's setting, capped by work."""
    import torch

    n = max(1, int(torch.get_num_threads()))
    if numel:
        n = min(n, max(1, numel // MIN_PIXELS_PER_THREAD))
    return n
