"""Shared parts of the result-table scripts beside ``scripts/results.py``
(``weak_results.py``, ``shift_results.py``): the benchmark script's run
machinery and statistics (imported as :data:`R`), running a list of runs
side by side, mean +- sd and paired-difference cells, and writing a
generated section of docs/RESULTS.md between two markers."""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("semimoe_results_script", ROOT / "scripts" / "results.py")
R = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(R)


def run_state(run, scored: Callable[[object], bool] = lambda run: True) -> str:
    """``done`` (results.json, and ``scored(run)``) / ``trained`` (results.json,
    not scored yet) / ``partial`` (last.pt: resume) / ``new`` -- for the same
    command only (:func:`R.same_run`)."""
    if not R.same_run(run):
        return "new"
    if (run.folder / "results.json").exists():
        return "done" if scored(run) else "trained"
    return "partial" if (run.folder / "last.pt").exists() else "new"


def run_many(todo, jobs: int, do_run: Callable[[object], Optional[str]]) -> List:
    """``do_run`` of every run, ``jobs`` at a time (each run's work is in its
    own processes); prints progress; returns the failed runs."""
    from concurrent.futures import ThreadPoolExecutor

    failed = []
    with ThreadPoolExecutor(max(1, jobs)) as ex:
        futures = [ex.submit(do_run, r) for r in todo]
        for i, (r, f) in enumerate(zip(todo, futures)):
            err = f.result()
            print(f"[{i + 1}/{len(todo)}] " + (f"done: {r.variant} seed {r.seed}" if err is None
                                               else f"error: {r.folder} failed ({err})"), flush=True)
            if err is not None:
                failed.append(r)
    return failed


def train(run, args) -> Optional[str]:
    """Train ``run`` (resuming a partial one); the error, or None."""
    try:
        R.train_run(run, args)
        return None
    except subprocess.CalledProcessError as e:
        return str(e)


def values(cells: Dict[int, Dict], pick) -> Dict[int, float]:
    """``{seed: pick(cell)}`` for the cells where it exists and is finite."""
    out = {}
    for seed, c in cells.items():
        try:
            v = pick(c)
        except (KeyError, IndexError, TypeError):
            continue
        if v is not None and math.isfinite(float(v)):
            out[seed] = float(v)
    return out


def ms(vals: Dict[int, float], fmt: str = "{:.3f}") -> str:
    """mean +- sd over seeds."""
    return R._fmt_ms(list(vals.values()), fmt)


def diff(a: Dict[int, float], b: Dict[int, float]) -> str:
    """Paired difference a - b over the common seeds, in points, with its 95 % t-interval."""
    return R._fmt_diff(R.paired_difference(a, b))


def write_section(md: Path, text: str, begin: str, end: str) -> None:
    """Put ``text`` (which starts with ``begin`` and ends with ``end``) in
    place of the text between those markers in ``md``, or at its end."""
    from semimoe.utils import atomic_write_text

    old = md.read_text() if md.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + text + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text + "\n"
    atomic_write_text(md, new)
