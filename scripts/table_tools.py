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


def parser(doc: str, out: str, names, n_train: int = 85, n_test: int = 40):
    """The command line every table script shares (its own options are added by the caller)."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / out), help="runs folder")
    p.add_argument("--md", default=str(ROOT / "docs" / "RESULTS.md"))
    p.add_argument("--variants", default=",".join(names), help="comma-separated, of " + ", ".join(names))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n-train", type=int, default=n_train, help="GlaS-like training images")
    p.add_argument("--n-test", type=int, default=n_test, help="GlaS-like test images")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side")
    p.add_argument("--threads", type=int, default=1, help="threads per run (0: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every run (repeatable), e.g. --set train.iterations=800")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--reuse", action="store_true", help="only rebuild the section from finished runs")
    return p


def parse(p, names, argv=None):
    """Parsed arguments with ``variants`` and ``seeds`` as lists (unknown variants: a usage error)."""
    a = p.parse_args(argv)
    a.variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in a.variants if v not in names]
    if bad:
        p.error(f"--variants: unknown {', '.join(bad)}; known: {', '.join(names)}")
    a.seeds = R._ints(a.seeds)
    return a


def drive(script: str, argv, args, runs, state, execute, load, report, write) -> int:
    """The table scripts' main: list the runs (``--dry-run``: stop there),
    ``execute`` the unfinished ones (returns the failed), then ``report`` the
    finished ones and ``write`` the section. Exit status 0, 1 (some runs
    failed) or 2 (invalid configurations, or nothing to report)."""
    import json
    import shlex
    import time

    out = Path(args.out)
    cmd_file = out / "command.json"
    failed: List = []
    if not args.reuse:
        for r in runs:
            print(f"{r.variant} seed {r.seed}  [{state(r)}]\n  $ " + shlex.join(r.command("python")))
        stop = R.preflight(runs, args.dry_run)
        if stop is not None:
            return stop
        out.mkdir(parents=True, exist_ok=True)
        cmd_file.write_text(json.dumps({"command": shlex.join(["python", f"scripts/{script}", *argv])}))
        t0 = time.perf_counter()
        failed = execute([r for r in runs if state(r) != "done"])
        print(f"runs took {(time.perf_counter() - t0) / 60:.1f} min")
    if not any(load(r) for r in runs):
        print(f"error: no finished runs of these settings in {out}; {args.md} left as it is", file=sys.stderr)
        return 2
    command = (R._read_json(cmd_file) or {}).get("command") or shlex.join(["python", f"scripts/{script}", *argv])
    text = report(runs, args, command)
    write(Path(args.md), text)
    print(text)
    if failed:
        print(f"error: {len(failed)} run(s) failed: " + ", ".join(str(r.folder) for r in failed), file=sys.stderr)
        return 1
    return 0
