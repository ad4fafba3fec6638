"""Whole-slide inference: tiles/s and peak RSS against TIAToolbox's
``SemanticSegmentor`` and MONAI's sliding-window inference over ``WSIReader``,
side by side in one run, on the same slide, model and settings.

    python benchmarks/bench_wsi.py --slide slide.tif                   # exports the cpu-demo model
    python benchmarks/bench_wsi.py --synthetic 20000 20000 --workdir /tmp/wsi
    python benchmarks/bench_wsi.py --slide s.tif --onnx m.onnx --mean .8 .5 .85 --std .16 .16 .09

Every contender runs in its own process, so that its peak RSS is its own:
``run_measured`` starts it and reads the peak from the kernel (below). The
peers run in a separate environment (TIAToolbox pins torch<2.13 and many
other packages), found by :func:`peer_python`: ``$SEMIMOE_PEERS_PYTHON``,
else ``/work/exp/peers-venv/bin/python``; the recipe for that environment
is in ``benchmarks/wsi_peers.py``'s docstring. Without it the peer rows are
skipped with the reason, and no ratio is computed.

Equal settings for every contender: the same ONNX model run through
onnxruntime with the same intra-op threads (``wsi_peers.OrtModel``), the
model's µm/px read from the slide's metadata, tile, overlap, tile batch.
What the peers cannot match (reported in each row's ``notes``): TIAToolbox
averages overlaps (no Gaussian) and masks background tiles away; MONAI's
sliding window runs every tile, Gaussian-blended, on the whole slide held in
memory. Tile counts therefore differ: tiles/s counts the tiles each
contender actually ran through the model.

Peak RSS: :func:`run_measured` runs the command under a small launcher
process (``python -S``) that forks, execs the command and reaps it with
``os.wait4``; ``ru_maxrss`` of that child is the kernel's high-water mark of
the child's resident set -- exact for a single process however many threads
it runs (threads share one address space), never a sample. The launcher is
needed because Linux carries the RSS high-water mark of the address space
that a process had before ``exec`` into ``ru_maxrss``: a child spawned
straight from a large harness (torch, semimoe and a model loaded) reports
the harness's RSS when that is the larger (measured here: a ``python -c
pass`` child of a 2 GB parent reported 1.9 GB). Children of the command
(data-loader workers) are not summed by ``ru_maxrss`` (it reports the
largest single process); a /proc sampler of the whole tree runs alongside
and reports ``processes_seen`` and ``peak_rss_tree_mb_sampled`` so that such
a case is visible. The peers here run as one process (loader workers 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = Path(__file__).resolve().with_name("wsi_peers.py")
PEERS_PYTHON_ENV = "SEMIMOE_PEERS_PYTHON"
DEFAULT_PEERS_PYTHON = "/work/exp/peers-venv/bin/python"
PEERS = ("tiatoolbox", "monai")

# Forks, execs argv[2:], reaps it with wait4 and writes its rusage to argv[1].
_LAUNCHER = r"""
import json, os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
code = os.waitstatus_to_exitcode(status)
with open(out, "w") as f:
    json.dump({"maxrss_kb": ru.ru_maxrss, "wall_s": wall, "returncode": code,
               "user_s": ru.ru_utime, "sys_s": ru.ru_stime}, f)
sys.exit(code if code >= 0 else 128 - code)
"""


class MeasuredError(RuntimeError):
    """The measured command failed or printed no JSON line."""


@dataclasses.dataclass(frozen=True)
class WSISettings:
    """Settings shared by every contender."""
    mpp: float = 0.5            # µm/px the model runs at
    tile: int = 512
    overlap: float = 0.25
    batch: int = 8
    threads: int = 2
    ort_run_batch: int = 1      # onnxruntime: tiles per session run (semimoe.wsi's default)
    mean: tuple = (0.5, 0.5, 0.5)   # normalisation of pixels / 255
    std: tuple = (0.25, 0.25, 0.25)

    def __str__(self):
        return (f"{self.mpp} µm/px, tile {self.tile}, overlap {self.overlap}, batch {self.batch}, "
                f"{self.threads} threads, onnxruntime fp32 CPU, {self.ort_run_batch or 'all'} tile(s) per run")


# ---------------------------------------------------------------- measuring
def peer_python() -> Optional[str]:
    """The peer environment's Python (``$SEMIMOE_PEERS_PYTHON``, else
    ``/work/exp/peers-venv/bin/python``), or None when it is not there."""
    p = os.environ.get(PEERS_PYTHON_ENV) or DEFAULT_PEERS_PYTHON
    return p if Path(p).is_file() and os.access(p, os.X_OK) else None


def _tree_rss_kb(root: int) -> tuple:
    """(sum of VmRSS in kB over ``root`` and its descendants, their pids)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total, pids


class _TreeSampler(threading.Thread):
    """Samples the RSS sum of the command's process tree (excluding the launcher)."""

    def __init__(self, launcher_pid: int, period: float = 0.2):
        super().__init__(daemon=True)
        self.launcher_pid, self.period = launcher_pid, period
        self.peak_kb, self.seen = 0, set()
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            kb, pids = _tree_rss_kb(self.launcher_pid)
            try:
                with open(f"/proc/{self.launcher_pid}/status") as f:
                    own = next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")), 0)
            except OSError:
                own = 0
            self.peak_kb = max(self.peak_kb, kb - own)
            self.seen.update(p for p in pids if p != self.launcher_pid)
            self.done.wait(self.period)


def _last_json_line(text: str) -> Optional[dict]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_measured(cmd: Sequence[str], env: Optional[dict] = None, timeout: Optional[float] = None) -> dict:
    """Run ``cmd`` as a child process; return its last stdout JSON line (a dict)
    plus ``peak_rss_mb`` (kernel high-water mark of the child, see the module
    doc), ``wall_s`` (process start to exit, interpreter start-up and imports
    included), ``user_s``/``sys_s`` (CPU time), ``peak_rss_tree_mb_sampled``
    and ``processes_seen`` (the /proc sampler's view of the tree).

    Raises :class:`MeasuredError` when the command fails or prints no JSON line."""
    with tempfile.TemporaryDirectory(prefix="bench_wsi_") as tmp:
        ru_file = Path(tmp) / "rusage.json"
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(ru_file), *map(str, cmd)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        sampler = _TreeSampler(proc.pid)
        sampler.start()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)  # the command's tree first (killing the launcher first would orphan it)
            out, err = proc.communicate()
            raise MeasuredError(f"timed out after {timeout}s: {' '.join(map(str, cmd))}\n{err[-2000:]}")
        finally:
            sampler.done.set()
            sampler.join()
        ru = json.loads(ru_file.read_text()) if ru_file.exists() else None
    if proc.returncode != 0 or ru is None:
        raise MeasuredError(f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n{err.strip()[-3000:]}")
    row = _last_json_line(out)
    if row is None:
        raise MeasuredError(f"no JSON line in the output of {' '.join(map(str, cmd))}\n{out[-1000:]}\n"
                            f"{err.strip()[-2000:]}")
    row.update(peak_rss_mb=ru["maxrss_kb"] / 1024, wall_s=ru["wall_s"], user_s=ru["user_s"],
               sys_s=ru["sys_s"], peak_rss_tree_mb_sampled=sampler.peak_kb / 1024,
               processes_seen=len(sampler.seen))
    return row


def _kill_tree(root: int) -> None:
    _, pids = _tree_rss_kb(root)
    for pid in pids:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


# ---------------------------------------------------------------- peers
def peer_command(python: str, peer: str, slide: Path, onnx: Path, s: WSISettings, out_dir: Path) -> List[str]:
    """The command line that runs ``peer`` through benchmarks/wsi_peers.py."""
    return [python, str(PEER_SCRIPT), "--peer", peer, "--slide", str(slide), "--onnx", str(onnx),
            "--mpp", repr(s.mpp), "--tile", str(s.tile), "--overlap", repr(s.overlap),
            "--batch", str(s.batch), "--threads", str(s.threads), "--ort-run-batch", str(s.ort_run_batch),
            "--out", str(out_dir),
            "--mean", *map(repr, s.mean), "--std", *map(repr, s.std)]


_OURS = r"""
import json, sys
from pathlib import Path
from semimoe.wsi.cli import main
out = Path(sys.argv[1])
rc = main(sys.argv[2:])
s = json.loads(next(out.glob("*.summary.json")).read_text())
t = s["seconds"]
print(json.dumps({"peer": "semimoe", "version": "", "tiles": s["tiles_run"], "seconds": t["total"],
                  "tiles_per_s": s["tiles_run"] / t["total"], "output": str(out),
                  "notes": f"tissue auto: {s['tiles_skipped']} of {s['tiles_total']} tiles skipped; Gaussian; "
                           f"inference {t['inference']:.1f}s, glands {t['glands']:.1f}s, tiff {t['tiff']:.1f}s; "
                           f"{s['glands']} glands"}))
sys.exit(rc)
"""


def run_ours(slide: Path, onnx: Path, s: WSISettings, out_dir: Path, timeout: Optional[float] = None,
             log=print) -> dict:
    """``python -m semimoe.wsi`` on ``slide`` with the same ONNX model through
    onnxruntime, as a separate process measured like the peers. Its seconds
    are the whole slide: tissue, inference, glands (GeoJSON) and the TIFF."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.summary.json"):
        old.unlink()
    cmd = [sys.executable, "-c", _OURS, str(out_dir), str(slide), "--model", str(onnx), "--backend", "onnxruntime",
           "--tile", str(s.tile), "--overlap", repr(s.overlap), "--batch", str(s.batch), "--threads",
           str(s.threads), "--ort-run-batch", str(s.ort_run_batch), "--workers", "2", "--output", str(out_dir), "--overwrite", "--quiet"]
    log("  semimoe: running...")
    row = run_measured(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)
    log(f"  semimoe: {row['tiles']} tiles in {row['seconds']:.1f}s ({row['tiles_per_s']:.3g} tiles/s), "
        f"peak RSS {row['peak_rss_mb']:.0f} MB, process wall {row['wall_s']:.1f}s")
    return row


def ratios(rows: Dict[str, dict]) -> str:
    """semimoe's tiles/s and slide time against each peer that ran."""
    ours = rows.get("semimoe")
    if not ours or "skipped" in ours:
        return ""
    out = []
    for name, r in rows.items():
        if name == "semimoe" or "skipped" in r:
            continue
        out.append(f"vs {name}: tiles/s {ours['tiles_per_s'] / r['tiles_per_s']:.2f}x, slide time "
                   f"{r['wall_s'] / ours['wall_s']:.2f}x faster, peak RSS {ours['peak_rss_mb'] / r['peak_rss_mb']:.2f}x")
    return "\n".join(out)


def run_peers(slide: Path, onnx: Path, s: WSISettings, out_dir: Path, peers: Sequence[str] = PEERS,
              python: Optional[str] = None, timeout: Optional[float] = None, log=print) -> Dict[str, dict]:
    """Run each peer once on ``slide``; peer name -> its row (wsi_peers.py's
    JSON + run_measured's fields), or ``{"peer", "skipped": reason}``."""
    python = python or peer_python()
    rows: Dict[str, dict] = {}
    for peer in peers:
        if python is None:
            rows[peer] = {"peer": peer, "skipped": f"no peer environment (set ${PEERS_PYTHON_ENV} or create "
                                                   f"{DEFAULT_PEERS_PYTHON}: see benchmarks/wsi_peers.py)"}
            log(f"  {peer}: skipped ({rows[peer]['skipped']})")
            continue
        log(f"  {peer}: running...")
        try:
            row = run_measured(peer_command(python, peer, slide, onnx, s, Path(out_dir) / peer),
                               timeout=timeout)
        except MeasuredError as exc:
            rows[peer] = {"peer": peer, "skipped": f"failed: {str(exc)[-400:]}"}
            log(f"  {peer}: FAILED\n{exc}")
            continue
        rows[peer] = row
        log(f"  {peer}: {row['tiles']} tiles in {row['seconds']:.1f}s ({row['tiles_per_s']:.3g} tiles/s), "
            f"peak RSS {row['peak_rss_mb']:.0f} MB, process wall {row['wall_s']:.1f}s")
    return rows


# ---------------------------------------------------------------- inputs
def export_model(path: Path, tile: int, preset: str = "cpu-demo", width: Optional[int] = None, log=print,
                 mpp: float = 0.5, checkpoint: Optional[Path] = None):
    """Export an untrained ``preset`` model to ONNX (fixed tile, dynamic batch),
    as bench_inference does; returns (path, mean, std) of its normalisation."""
    import torch

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from semimoe.data import mean_std
    from semimoe.data.scale import InputSpec
    from semimoe.export import export_onnx
    from semimoe.models import ModelConfig, build_model

    if checkpoint is not None:  # trained weights: realistic gland counts
        from semimoe.models.semimoe import load_checkpoint

        model, meta = load_checkpoint(checkpoint)
        spec = InputSpec.from_meta(meta, str(checkpoint))
        model, m, s, mpp = model.eval(), spec.mean, spec.std, spec.mpp
    else:
        torch.manual_seed(0)
        model = build_model(ModelConfig.preset(preset, **({} if width is None else {"base_width": width}))).eval()
        with torch.no_grad():  # untrained weights; make the zero-initialised spatial gate output non-trivial
            for mod in model.modules():
                if isinstance(mod, torch.nn.Conv2d) and not mod.weight.abs().sum():
                    mod.weight.normal_(0, 0.1)
        m, s = mean_std()
    from semimoe.export import deployable_predictor

    ts = Path(path).with_suffix(".ts")  # the same weights as TorchScript, for the peers' own (PyTorch) backend
    with torch.no_grad():
        torch.jit.trace(deployable_predictor(model), torch.zeros(1, 3, tile, tile)).save(str(ts))
    export_onnx(model, path, spec=InputSpec(m, s, mpp, mpp), tile=tile, dynamic_spatial=False,
                log=lambda *a: None)
    log(f"exported {preset} to {path}")
    return Path(path), tuple(m), tuple(s)


def format_table(s: WSISettings, slide: Path, rows: Dict[str, dict]) -> str:
    lines = [f"Whole-slide inference, {slide.name}: {s}", "",
             "| contender | tiles | s | tiles/s | s/tile | peak RSS (MB) | process wall (s) | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | |")
            continue
        lines.append(f"| {name} {r.get('version', '')} | {r['tiles']} | {r['seconds']:.1f} | "
                     f"{r['tiles_per_s']:.3g} | {r['seconds'] / max(r['tiles'], 1):.3g} | {r['peak_rss_mb']:.0f} | "
                     f"{r['wall_s']:.1f} | {r.get('notes', '')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--slide", type=Path)
    src.add_argument("--synthetic", type=int, nargs=2, metavar=("H", "W"),
                     help="write a synthetic slide of this size (semimoe.wsi.synthetic) into --workdir")
    ap.add_argument("--onnx", type=Path, help="default: export an untrained --preset model")
    ap.add_argument("--preset", default="cpu-demo")
    ap.add_argument("--checkpoint", type=Path, help="export this trained checkpoint instead of an untrained --preset")
    ap.add_argument("--width", type=int, default=None, help="base width of the exported model (default: the preset's)")
    ap.add_argument("--mean", type=float, nargs=3)
    ap.add_argument("--std", type=float, nargs=3)
    d = WSISettings()
    ap.add_argument("--mpp", type=float, default=d.mpp)
    ap.add_argument("--tile", type=int, default=d.tile)
    ap.add_argument("--overlap", type=float, default=d.overlap)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--ort-run-batch", type=int, default=d.ort_run_batch,
                    help="onnxruntime: tiles per session run, for every contender on onnxruntime (0: the batch)")
    ap.add_argument("--peers", nargs="*", default=list(PEERS), choices=("tiatoolbox", "monai", "monai-patch"))
    ap.add_argument("--workdir", type=Path, default=None, help="inputs and outputs (default: a temp folder)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per contender")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_wsi_") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        slide = a.slide
        if slide is None:
            if str(ROOT) not in sys.path:
                sys.path.insert(0, str(ROOT))
            from semimoe.wsi.synthetic import write_synthetic_slide

            slide = work / f"synthetic-{a.synthetic[0]}x{a.synthetic[1]}.tif"
            if not slide.exists():
                print(f"writing {slide}...")
                write_synthetic_slide(slide, tuple(a.synthetic), mpp=0.5)
            # TIAToolbox reads a generic pyramidal TIFF only as BigTIFF (wsi_peers.tia_reader):
            # write_synthetic_slide writes BigTIFF.
        onnx, mean, std = a.onnx, a.mean, a.std
        if onnx is None:
            onnx, mean, std = export_model(work / f"{a.preset}-w{a.width}-{a.tile}.onnx", a.tile, a.preset,
                                           a.width, mpp=a.mpp, checkpoint=a.checkpoint)
        if mean is None or std is None:
            ap.error("--mean and --std are needed with --onnx")
        s = WSISettings(mpp=a.mpp, tile=a.tile, overlap=a.overlap, batch=a.batch, threads=a.threads,
                        ort_run_batch=a.ort_run_batch, mean=tuple(mean), std=tuple(std))
        print(f"peers: {peer_python() or 'not found'}")
        rows = {"semimoe": run_ours(slide, onnx, s, work / "out" / "semimoe", timeout=a.timeout)}
        ts = onnx.with_suffix(".ts")
        if ts.exists():  # the peers as their users run them: the model on PyTorch
            rows.update({f"{k} (PyTorch)": v for k, v in
                         run_peers(slide, ts, s, work / "out" / "torch", peers=a.peers, timeout=a.timeout).items()})
        rows.update({f"{k} (given semimoe's onnxruntime)": v for k, v in
                     run_peers(slide, onnx, s, work / "out", peers=a.peers, timeout=a.timeout).items()})
        print()
        print(format_table(s, slide, rows))
        print(ratios(rows))
        if a.json:
            a.json.write_text(json.dumps({"settings": dataclasses.asdict(s), "slide": str(slide),
                                          "rows": rows}, indent=2))
    return 0


# ---------------------------------------------------------------- pytest entry
def test_run_measured_reports_the_child_not_the_harness():
    """A child that touches ~150 MB is reported at about that, although this
    process holds ~400 MB more (a child spawned straight from here, and reaped
    with wait4, would report this process's RSS)."""
    ballast = bytearray(400 << 20)  # noqa: F841 - held on purpose: makes this process the larger one
    row = run_measured([sys.executable, "-S", "-c",
                        "b = bytearray(150 << 20); import json; print(json.dumps({'ok': len(b)}))"])
    assert row["ok"] == 150 << 20
    assert 140 <= row["peak_rss_mb"] < 300, row
    assert row["processes_seen"] <= 1 and row["wall_s"] > 0


if __name__ == "__main__":
    sys.exit(main())
