"""Regenerate docs/RESULTS.md: the accuracy benchmark, every variant x label
ratio x seed, with paired statistics against supervised-only.

    python scripts/results.py                        # the CPU table (about 1.6 h on 2 cores)
    python scripts/results.py --dry-run              # the runs, their commands and the estimate
    python scripts/results.py --ablations all        # with semimoe's options one at a time (+35 min)
    python scripts/results.py --reuse                # rebuild the report from finished runs
    python scripts/results.py --scale paper          # the paper's setting, on a GPU

Protocol
    * Runs: each variant of :data:`VARIANTS` at each label ratio (default
      5 % and 10 %) and each seed (default 0, 1, 2), plus supervised-only
      with every non-validation image labeled (label_ratio = 1 - val_ratio =
      0.85: the supervised ceiling). Each run is one ``python -m
      semimoe.train`` process with its own folder
      ``<out>/labels<ratio>/<variant>/seed<seed>``.
    * The seed sets both the split (``data.seed``) and the initialisation,
      sampling and augmentation (``train.seed``); everything else is the same
      for every run (preset, data, iterations, schedule, crops), except the
      variant's overrides.
    * best.pt is selected on the validation split (carved from the training
      images) by pooled Dice at the fixed threshold 0.5; the held-out test
      set never selects anything and is evaluated once per run, at the end,
      with the same fixed threshold. best.pt is also scored on the run's
      unlabeled training images (their masks are known to the generator but
      never used in training).
    * Metrics (``semimoe.evaluate``, deployed-predictor protocol): pooled
      pixel Dice and IoU, object F1, object Dice, object Hausdorff; per grade
      (image names ending in ``_benign`` / ``_malignant``, synthetic-glas)
      from the per-image counts, aggregated exactly like the whole set
      (:func:`semimoe.metrics.summarize`: the grade's pixels pooled).
    * Statistics (:func:`paired_difference`): mean +- sd over seeds; the
      difference to supervised-only at the same ratio and seed, its mean and
      95 % t-interval over seeds; "not significant" when it contains 0.

Budget (``--scale cpu``, the default): the cpu-demo recipe with 8-wide
experts (8-16-32-64, 0.41 M parameters: the 16-wide demo model costs 2.8x
as much per iteration), 300 iterations of batch 4+4 96x96 crops at the
model's 1.26 µm/px, validation every 60 iterations, on GlaS's counts of
synthetic-glas images: 85 training (13 validate; 4 labeled at 5 %, 8 at
10 %), 40 test. 27 runs -- supervised, released, ours at 5 % and 10 %, the
two parity ablations (``released-adamw``, ``released-batch-dice``) at 10 %,
supervised at the ceiling, x 3 seeds -- two at a time (``--jobs 2``, one
thread each: runs are bit-identical whatever the jobs), estimated at 1.6 h
on the 2-core CPU from the costs in :data:`COST` (4-9 min a run; about
100 s of it evaluates best.pt on the 40 test and ~68 unlabeled images). The
images are drawn once into ``<out>/images`` (``data.synthetic_cache``).
``--ablations all`` adds semimoe's three options one at a time at 10 %
(9 runs, about 35 min more). ``--scale paper`` runs the ``paper`` preset (200
epochs, 64-1024 experts) on GlaS-sized data (85 training, 80 test images) for
a GPU.

Outputs: the report (``--md``, default docs/RESULTS.md; the hand-written
discussion below :data:`NOTE_MARKER` is kept), docs/results_curves.png
(validation Dice over iterations, mean +- sd band per variant) and
docs/results_test_dice.png (test Dice, mean +- sd per variant and ratio).
Runs are resumable: a finished run folder (results.json and eval.json of
the same settings) is not rerun, an interrupted one resumes from last.pt;
``--reuse`` only rebuilds the report.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOTE_MARKER = "<!-- discussion: written by hand, kept when scripts/results.py regenerates this file -->"


# ----------------------------------------------------------------------------
# Variants: name -> (label, overrides). Later overrides of a key win.
# ----------------------------------------------------------------------------
def _with(base: Sequence[str], *changes: str) -> List[str]:
    """``base`` with the keys of ``changes`` replaced (or appended)."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [o for o in base if o.split("=", 1)[0] not in keys] + list(changes)


SUPERVISED = ["train.method=supervised", "model.gate=image", "train.refine=null"]
# the released code: per-image gate, raw pseudo-labels, per-image Dice, and its
# optimiser and schedule (SGD lr 0.5, momentum 0.9, wd 5e-5, no clipping; x0.5
# every quarter of the run, as every 50 of 200 epochs). "{quarter}" is a
# quarter of the cpu scale's iterations; at paper scale the preset already
# holds this schedule and such overrides are dropped.
RELEASED_OPTIM = ["optim.name=sgd", "optim.lr=0.5", "optim.momentum=0.9", "optim.weight_decay=5e-5",
                  "optim.grad_clip=0", "optim.step_size={quarter}"]
RELEASED = ["train.method=semimoe", "model.gate=image", "train.refine=null", "train.dice=image", *RELEASED_OPTIM]
OURS = ["train.method=semimoe", "model.gate=spatial", "train.refine=sdf_agree+confidence"]

VARIANTS: Dict[str, Tuple[str, List[str]]] = {
    "supervised": ("Supervised only", SUPERVISED),
    "released": ("Semi-MoE, released code's behaviour", RELEASED),
    "ours": ("Semi-MoE, semimoe's options", OURS),
    # ablations: one of semimoe's options at a time on top of the released behaviour
    "released+spatial": ("released + spatial gate", _with(RELEASED, "model.gate=spatial")),
    "released+sdf_agree": ("released + sdf_agree refine", _with(RELEASED, "train.refine=sdf_agree")),
    "released+confidence": ("released + confidence refine", _with(RELEASED, "train.refine=confidence")),
    # which of the released code's differences matters: its optimiser, or its Dice form
    "released-adamw": ("released, semimoe's AdamW schedule", [o for o in RELEASED if o not in RELEASED_OPTIM]),
    "released-batch-dice": ("released, Dice pooled over the batch", _with(RELEASED, "train.dice=batch")),
}
DEFAULT_VARIANTS = ("supervised", "released", "ours")
# run at the ablation ratios only (--ablations): which of the released code's
# differences matters (part of the default table), and semimoe's options one at a time
PARITY_ABLATIONS = ("released-adamw", "released-batch-dice")
OPTION_ABLATIONS = ("released+spatial", "released+sdf_agree", "released+confidence")
DEFAULT_ABLATIONS = PARITY_ABLATIONS
ABLATIONS = PARITY_ABLATIONS + OPTION_ABLATIONS
ABLATION_BASELINE = "released"  # the ablations change one thing of it each
BASELINE = "supervised"
from semimoe.data.glas_synthetic import GRADES  # noqa: E402 - ("benign", "malignant"), the generator's names
COLLAPSE_DICE = 0.7  # an image whose per-image Dice is below this has collapsed

# (key in the evaluation dict, column title, format, scale of a difference)
METRICS = [("dice_pooled", "Dice", "{:.4f}"), ("iou_pooled", "IoU", "{:.4f}"),
           ("object_f1", "obj F1", "{:.4f}"), ("object_dice", "obj Dice", "{:.4f}"),
           ("object_hausdorff_defined_mean", "obj Hausdorff", "{:.1f}")]
GRADE_METRICS = [("dice_pooled", "Dice", "{:.4f}"), ("object_f1", "obj F1", "{:.4f}"),
                 ("object_hausdorff_defined_mean", "obj Hausdorff", "{:.1f}")]
# paired differences reported: (evaluation set, metric key, title)
DIFFS = [("test", "dice_pooled", "test Dice"), ("test", "object_f1", "test obj F1"),
         ("unlabeled", "dice_pooled", "unlabeled Dice")]

# ----------------------------------------------------------------------------
# Scales. "cpu": the cpu-demo model and recipe, shortened to fit the table in
# about 2 h on a shared 2-core CPU; "paper": the paper preset on the whole data.
# ----------------------------------------------------------------------------
SCALES = {
    "cpu": dict(preset="cpu-demo", iterations=300, val_every=60, crop=96, width=8, threads=1, device="cpu",
                n_train={"synthetic-glas": 85, "synthetic": 100}, n_test={"synthetic-glas": 40, "synthetic": 40}),
    # GlaS: 85 training and 80 test images; synthetic: the DataConfig defaults
    "paper": dict(preset="paper", iterations=None, val_every=None, crop=None, width=None, threads=0, device="auto",
                  n_train={"synthetic-glas": 85, "synthetic": 200}, n_test={"synthetic-glas": 80, "synthetic": 40}),
}

# Measured cost of the cpu scale, in seconds, with one torch thread per run
# and two runs side by side on the 2-core AMD EPYC machine (30-iteration runs
# of this script, synthetic-glas, 85 + 40 images): per training iteration of
# the cpu-demo recipe at width 8 (batch 4+4, crop 96; other crops and widths
# scaled by the crop's area and the square of the width, roughly), per
# process started, per training image read from the cache, per validation
# image and validation, and per test or unlabeled image evaluated.
COST = {
    "iteration": {"supervised": 0.4, "semimoe/image": 1.0, "semimoe/spatial": 1.0},
    "refine": 0.05,
    "start": 8.0,
    "generate": {"synthetic-glas": 0.02, "synthetic": 0.05},
    "validate": {"synthetic-glas": 0.9, "synthetic": 0.3},
    "evaluate": {"synthetic-glas": 1.0, "synthetic": 0.3},
}


@dataclass(frozen=True)
class Run:
    variant: str
    ratio: float
    seed: int
    folder: Path
    preset: str
    overrides: Tuple[str, ...]
    n_common: int = 0          # the first n_common overrides are shared by every variant

    def command(self, python: str = sys.executable) -> List[str]:
        return [python, "-m", "semimoe.train", "--preset", self.preset, "--run-dir", str(self.folder),
                *self.overrides]


def _ratio_name(r: float) -> str:
    return f"{r:g}"


def ceiling_ratio(val_ratio: float = 0.15) -> float:
    """label_ratio with every non-validation image labeled."""
    return round(1.0 - val_ratio, 6)


def common_overrides(args, ratio: float, seed: int) -> List[str]:
    """The overrides every run of a (ratio, seed) shares."""
    o = [f"data.kind={args.data}", f"data.label_ratio={ratio:g}", f"data.seed={seed}", f"train.seed={seed}",
         f"data.synthetic_train={args.n_train}", f"data.synthetic_test={args.n_test}",
         "train.select=ours", "train.threshold=0.5", "train.eval_test=false", "train.overlays=0",
         "train.time_limit=0", "train.progress=false"]
    if args.data == "synthetic-glas":  # drawn once, read by every run (no pixel changes)
        o.append(f"data.synthetic_cache={Path(args.out) / 'images'}")
    if args.scale == "cpu":
        it = args.iterations
        o.append(f"model.base_width={args.width}")
        # the cpu-demo schedule (warm-up 30, x0.5 after 230 of 300 iterations), scaled to the run
        o += [f"train.iterations={it}", f"train.val_every={args.val_every}", f"train.crop={args.crop}",
              f"optim.warmup={max(1, round(0.1 * it))}", f"optim.step_size={max(1, round(2 * it / 3))}"]
    if args.threads:
        o.append(f"train.threads={args.threads}")
    return o


def resolve(overrides: Sequence[str], args) -> List[str]:
    """A variant's overrides with ``{quarter}`` (a quarter of the cpu scale's
    iterations) filled in; at paper scale those overrides are dropped."""
    if args.scale != "cpu":
        return [o for o in overrides if "{" not in o]
    return [o.format(quarter=max(1, round(args.iterations / 4))) for o in overrides]


def plan(args) -> List[Run]:
    """Every run of the table, in the order they are run (seed-major, so that
    a partial table already holds complete seeds)."""
    sc = SCALES[args.scale]
    out = Path(args.out)
    runs = []
    cells = [(r, v) for r in args.ratios for v in args.variants]
    cells += [(r, v) for r in args.ratios if r in args.ablation_ratios for v in args.ablations]
    if args.ceiling and BASELINE in args.variants:
        cells.append((ceiling_ratio(), BASELINE))
    for seed in args.seeds:
        for ratio, v in cells:
            folder = out / f"labels{_ratio_name(ratio)}" / v / f"seed{seed}"
            common = common_overrides(args, ratio, seed)
            runs.append(Run(v, ratio, seed, folder, sc["preset"], tuple(common + resolve(VARIANTS[v][1], args)),
                            len(common)))
    return runs


def check_runs(runs: Sequence[Run]) -> List[str]:
    """Problems of the runs' configurations (unknown keys or values), without running anything."""
    from semimoe.config import make_config

    problems, seen = [], set()
    for r in runs:
        try:
            make_config(r.preset, None, list(r.overrides))
        except Exception as e:  # ConfigError, or a data kind this semimoe does not know
            msg = f"{r.variant}: {type(e).__name__}: {e}"
            if msg not in seen:
                seen.add(msg)
                problems.append(msg)
    return problems


def preflight(runs: Sequence[Run], dry_run: bool) -> Optional[int]:
    """Warn about the runs' configuration problems; the exit code to stop with
    (0 for a dry run, 2 when a configuration is invalid) or None to run them."""
    problems = check_runs(runs)
    for msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    if dry_run:
        return 0
    if problems:
        print("error: some runs' configurations are invalid (above); nothing was run", file=sys.stderr)
        return 2
    return None


# ----------------------------------------------------------------------------
# Cost estimate
# ----------------------------------------------------------------------------
def _split_sizes(n: int, ratio: float, val_ratio: float = 0.15) -> Tuple[int, int, int]:
    """(labeled, unlabeled, val) image counts of a split of ``n`` images (:func:`semimoe.data.make_split`)."""
    from semimoe.data.datasets import make_split

    split = make_split([str(i) for i in range(n)], ratio, val_ratio, 0)
    return len(split["labeled"]), len(split["unlabeled"]), len(split["val"])


def estimate_run(run: Run, args) -> float:
    """Seconds one cpu-scale run takes (training process and evaluation), from :data:`COST`."""
    ov = dict(o.split("=", 1) for o in run.overrides)
    method = ov.get("train.method", "semimoe")
    key = "supervised" if method == "supervised" else f"semimoe/{ov.get('model.gate', 'spatial')}"
    per_it = COST["iteration"][key]
    if method != "supervised" and ov.get("train.refine", "null") not in ("null", "none", ""):
        per_it += COST["refine"]
    per_it *= (args.crop / 96) ** 2 * (args.width / 8) ** 2
    _, n_unl, n_val = _split_sizes(args.n_train, run.ratio)
    # validations during training, best.pt tiled at the end, and the cheap 256x256 reference pass
    n_val_evals = args.iterations // max(1, args.val_every) + 1.25
    return (2 * COST["start"] + COST["generate"][args.data] * args.n_train + args.iterations * per_it
            + COST["validate"][args.data] * n_val * n_val_evals
            + COST["evaluate"][args.data] * (args.n_test + n_unl))


def estimate(runs: Sequence[Run], args) -> Optional[float]:
    """Wall seconds of ``runs``, ``args.jobs`` side by side (None: not calibrated)."""
    if args.scale != "cpu":
        return None
    return sum(estimate_run(r, args) for r in runs) / max(1, args.jobs)


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min"


# ----------------------------------------------------------------------------
# Running and evaluating one run
# ----------------------------------------------------------------------------
def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


# settings that change how fast a run goes, not what it computes
_RUNTIME_KEYS = ("train.threads", "train.progress", "train.device", "data.synthetic_cache")


def _essential(overrides: Sequence[str]) -> List[str]:
    return [o for o in overrides if o.split("=", 1)[0] not in _RUNTIME_KEYS]


def same_run(run: Run) -> bool:
    """Does ``run.folder`` hold (or start) this run: its protocol.json names
    the same preset and overrides (runtime-only settings aside)?"""
    spec = _read_json(run.folder / "protocol.json")
    return bool(spec) and spec.get("preset") == run.preset and \
        _essential(spec.get("overrides", [])) == _essential(run.overrides)


def run_state(run: Run) -> str:
    """``done`` (trained and evaluated, same command), ``trained`` (needs the
    evaluation), ``partial`` (interrupted: resume), ``new``."""
    if not same_run(run):
        return "new"
    if (run.folder / "results.json").exists():
        return "done" if (run.folder / "eval.json").exists() else "trained"
    return "partial" if (run.folder / "last.pt").exists() else "new"


def train_run(run: Run, args) -> None:
    from semimoe.utils import atomic_write_json

    state = run_state(run)
    run.folder.mkdir(parents=True, exist_ok=True)
    if state == "new":
        for f in ("results.json", "eval.json", "results_wall.json"):
            (run.folder / f).unlink(missing_ok=True)
        atomic_write_json(run.folder / "protocol.json", {"preset": run.preset, "overrides": list(run.overrides)})
    cmd = run.command() + (["--resume"] if state == "partial" else ["--overwrite"])
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print("$", shlex.join(["python", *cmd[1:]]), flush=True)
    load = os.getloadavg()
    t0 = time.perf_counter()
    if args.jobs > 1:  # runs side by side: each one's output goes to its own log
        with open(run.folder / "train.log", "ab") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    else:
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    atomic_write_json(run.folder / "results_wall.json", {"wall_seconds": time.perf_counter() - t0,
                                                         "load_before": load, "load_after": os.getloadavg(),
                                                         "resumed": state == "partial"})


def grade_of(name: str) -> Optional[str]:
    """``benign`` / ``malignant`` from an image name's suffix, else None."""
    g = str(name).rsplit("_", 1)[-1].lower()
    return g if g in GRADES else None


def grade_metrics(rows: Sequence[Mapping]) -> Dict[str, Dict]:
    """Scores of each grade's images from per-image rows of
    ``semimoe.evaluate(per_image=True)``, aggregated as the whole set is
    (:func:`semimoe.metrics.summarize`: pixel and object counts pooled over
    the grade's images, object Dice and Hausdorff averaged over them).
    Empty when no image name carries a grade."""
    from semimoe.metrics import summarize

    out = {}
    for g in GRADES:
        sub = [r for r in rows if grade_of(r["name"]) == g]
        if sub:
            out[g] = dict(summarize(sub, hausdorff="object_hausdorff" in sub[0]), n_images=len(sub))
    return out


def evaluate_run(folder: Path, device: str = "cpu", threads: Optional[int] = None) -> Dict:
    """best.pt on the held-out test set and on the run's unlabeled training
    images, at the run's fixed threshold; writes and returns eval.json."""
    from semimoe.config import config_from_dict
    from semimoe.data.datasets import build_split_set, build_test_dataset
    from semimoe.evaluate import evaluate
    from semimoe.inference import Predictor
    from semimoe.utils import atomic_write_json, resolve_device

    t0 = time.perf_counter()
    predictor = Predictor.from_file(folder / "best.pt", device=resolve_device(device, default="auto"))
    cfg = config_from_dict({"data": dict(predictor.meta["data_config"], augment=False)}).data
    threshold = float(((predictor.meta.get("config") or {}).get("train") or {}).get("threshold", 0.5))
    split = json.loads((folder / "split.json").read_text())
    sets = {"test": lambda: build_test_dataset(cfg)}
    if split.get("unlabeled"):
        sets["unlabeled"] = lambda: build_split_set(cfg, str(folder), "unlabeled")
    out = {"threshold": threshold}
    for name, make in sets.items():
        r = evaluate(predictor, make(), threshold=threshold, per_image=True, threads=threads)
        rows = r.pop("per_image")
        r["grades"] = grade_metrics(rows)
        r["collapsed"] = sum(x["dice"] < COLLAPSE_DICE for x in rows)
        r["per_image"] = rows
        out[name] = r
    out["seconds"] = time.perf_counter() - t0
    atomic_write_json(folder / "eval.json", out)
    return out


# ----------------------------------------------------------------------------
# Reading finished runs
# ----------------------------------------------------------------------------
def load_run(folder: Path) -> Optional[Dict]:
    """A finished run's numbers (None if it is not finished): ``results``
    (results.json: val metrics, best step, iterations), ``eval`` (eval.json:
    test and unlabeled), ``curve`` ({step: validation Dice} from
    metrics.csv), ``split`` sizes and ``wall_seconds``."""
    folder = Path(folder)
    res, ev = _read_json(folder / "results.json"), _read_json(folder / "eval.json")
    if res is None or ev is None:
        return None
    curve = {}
    if (folder / "metrics.csv").exists():
        with open(folder / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row.get("val_dice"):
                    curve[int(row["step"])] = float(row["val_dice"])
    split = _read_json(folder / "split.json") or {}
    wall = _read_json(folder / "results_wall.json") or {}
    return {"results": res, "eval": ev, "curve": curve,
            "split": {k: len(split.get(k) or []) for k in ("labeled", "unlabeled", "val")},
            "wall_seconds": float(wall.get("wall_seconds", res.get("total_seconds", float("nan"))))
            + float(ev.get("seconds", 0.0))}


def collect(runs: Sequence[Run]) -> Dict[Tuple[float, str], Dict[int, Dict]]:
    """{(ratio, variant): {seed: load_run(...)}} of the finished runs made
    with the same settings (:func:`same_run`)."""
    table: Dict[Tuple[float, str], Dict[int, Dict]] = {}
    for r in runs:
        d = load_run(r.folder) if same_run(r) else None
        if d is not None:
            table.setdefault((r.ratio, r.variant), {})[r.seed] = d
    return table


# ----------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------
def mean_sd(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, sample sd with n - 1, n); sd is nan for fewer than 2 values;
    non-finite values make both non-finite."""
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = sum(v) / n
    if n < 2 or not all(math.isfinite(x) for x in v):
        return m, float("nan"), n
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1)), n


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = 0.95) -> Dict:
    """Paired difference ``values - baseline`` over the seeds both have.

    Returns n, seeds, mean, sd (n - 1), the two-sided ``confidence``
    t-interval ``lo``, ``hi`` (mean -+ t_{(1+c)/2, n-1} sd / sqrt(n)), and
    ``verdict``: ``"not significant"`` when the interval contains 0,
    ``"significant"`` when it does not, ``"interval undefined (n < 2)"``
    with fewer than 2 seeds (lo, hi are nan then)."""
    from scipy import stats

    seeds = sorted(set(values) & set(baseline))
    d = [float(values[s]) - float(baseline[s]) for s in seeds]
    m, sd, n = mean_sd(d)
    out = {"n": n, "seeds": seeds, "mean": m, "sd": sd, "lo": float("nan"), "hi": float("nan"),
           "confidence": confidence, "defined": False}
    if n < 2 or not math.isfinite(sd):
        out["verdict"] = f"interval undefined (n = {n} < 2)" if n < 2 else "interval undefined (non-finite)"
        return out
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    out.update(lo=m - half, hi=m + half, defined=True)
    out["verdict"] = "not significant" if out["lo"] <= 0.0 <= out["hi"] else "significant"
    return out


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
def _metric(run: Dict, part: str, key: str, grade: Optional[str] = None) -> float:
    if part == "val":
        d = run["results"].get("val") or {}
    else:
        d = run["eval"].get(part) or {}
        if grade is not None:
            d = (d.get("grades") or {}).get(grade) or {}
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _fmt_ms(values: Sequence[float], fmt: str) -> str:
    m, sd, n = mean_sd([v for v in values if not math.isnan(v)])
    if n == 0:
        return "-"
    if n < 2:
        return fmt.format(m)
    return fmt.format(m) + " ± " + (fmt.format(sd) if math.isfinite(sd) else "-")


def _fmt_diff(p: Dict, scale: float = 100.0) -> str:
    if p["n"] == 0:
        return "-"
    if not p["defined"]:
        return f"{scale * p['mean']:+.2f}, {p['verdict']}"
    return f"{scale * p['mean']:+.2f} [{scale * p['lo']:+.2f}, {scale * p['hi']:+.2f}], {p['verdict']}"


def _label(v: str) -> str:
    return f"{VARIANTS[v][0]} (`{v}`)" if v in VARIANTS else f"`{v}`"


def _ratio_title(r: float) -> str:
    return "100 % labels (supervised ceiling)" if r == ceiling_ratio() else f"{100 * r:g} % labels"


def _set_tables(part: str, title: str, variants, cells, has_grades: bool) -> List[str]:
    any_run = next(iter(next(iter(cells.values())).values()))
    n_img = (any_run["eval"].get(part) or {}).get("n_images", "?")
    nseeds = max(len(s) for s in cells.values())
    lines = ["", f"### {title} ({n_img} images): mean ± sd over {nseeds} seed{'s' * (nseeds != 1)}", "",
             "| variant | seeds | " + " | ".join(t for _, t, _ in METRICS) + f" | collapsed (Dice < {COLLAPSE_DICE}) |",
             "|---|---|" + "---|" * (len(METRICS) + 1)]
    for v in variants:
        runs = cells.get(v)
        if not runs:
            continue
        vals = [_fmt_ms([_metric(r, part, k) for r in runs.values()], f) for k, _, f in METRICS]
        col = _fmt_ms([float((r["eval"].get(part) or {}).get("collapsed", float("nan"))) for r in runs.values()],
                      "{:.1f}")
        lines.append(f"| {_label(v)} | {len(runs)} | " + " | ".join(vals) + f" | {col} / {n_img} |")
    if has_grades:
        g0 = (any_run["eval"].get(part) or {}).get("grades") or {}
        head = [f"{t} {g} ({(g0.get(g) or {}).get('n_images', '?')})" for _, t, _ in GRADE_METRICS for g in GRADES]
        lines += ["", f"{title}, by grade (images in brackets):", "",
                  "| variant | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for v in variants:
            runs = cells.get(v)
            if not runs:
                continue
            vals = [_fmt_ms([_metric(r, part, k, g) for r in runs.values()], f)
                    for k, _, f in GRADE_METRICS for g in GRADES]
            lines.append(f"| {_label(v)} | " + " | ".join(vals) + " |")
    return lines


def diff_table(cells: Dict[str, Dict[int, Dict]], baseline: str, variants: Sequence[str], title: str) -> List[str]:
    """Markdown table of the paired differences (:data:`DIFFS`) of
    ``variants`` to ``baseline`` (empty without both)."""
    variants = [v for v in variants if cells.get(v)]
    if not cells.get(baseline) or not variants:
        return []
    base = cells[baseline]
    lines = ["", f"### Difference to {title}, paired by seed (points; mean [95 % t-interval], verdict)", "",
             "| variant | " + " | ".join(t for _, _, t in DIFFS) + " |", "|---|" + "---|" * len(DIFFS)]
    for v in variants:
        row = []
        for part, key, _ in DIFFS:
            a = {s: _metric(r, part, key) for s, r in cells[v].items()}
            b = {s: _metric(r, part, key) for s, r in base.items()}
            ok = {s for s in set(a) & set(b) if not (math.isnan(a[s]) or math.isnan(b[s]))}
            row.append(_fmt_diff(paired_difference({s: a[s] for s in ok}, {s: b[s] for s in ok})))
        lines.append(f"| {_label(v)} | " + " | ".join(row) + " |")
    return lines


def ratio_section(ratio: float, variants: Sequence[str], cells: Dict[str, Dict[int, Dict]]) -> List[str]:
    """The markdown of one label ratio; ``cells``: {variant: {seed: run}}."""
    variants = [v for v in variants if cells.get(v)]
    lines = ["", f"## {_ratio_title(ratio)}", ""]
    if not variants:
        return lines + ["No finished runs.", ""]
    sp = next(iter(cells[variants[0]].values()))["split"]
    lines.append(f"Split of the training images (the same for every variant at a seed; which images, changes "
                 f"with the seed): {sp['labeled']} labeled / {sp['unlabeled']} unlabeled / {sp['val']} validation.")
    runs0 = [r for v in variants for r in cells[v].values()]
    has_grades = any((r["eval"].get("test") or {}).get("grades") for r in runs0)
    lines += _set_tables("test", "Held-out test set", variants, cells, has_grades)
    if any(r["eval"].get("unlabeled") for r in runs0):
        unl = {v: {s: r for s, r in cells[v].items() if r["eval"].get("unlabeled")} for v in variants}
        unl = {v: c for v, c in unl.items() if c}
        lines += _set_tables("unlabeled", "Unlabeled training images (masks never used in training)",
                             [v for v in variants if v in unl], unl, has_grades)
    lines += ["", "### Validation split (selects best.pt)", "",
              "| variant | val Dice | val obj F1 | best iteration | wall time per run |", "|---|---|---|---|---|"]
    for v in variants:
        runs = cells[v].values()
        best = mean_sd([float(r["results"]["best"]["step"]) for r in runs])[0]
        lines.append(f"| {_label(v)} | {_fmt_ms([_metric(r, 'val', 'dice_pooled') for r in runs], '{:.4f}')} | "
                     f"{_fmt_ms([_metric(r, 'val', 'object_f1') for r in runs], '{:.4f}')} | {best:.0f} | "
                     f"{_fmt_ms([r['wall_seconds'] / 60 for r in runs], '{:.1f}')} min |")
    lines += diff_table(cells, BASELINE, [v for v in variants if v != BASELINE], "supervised-only")
    lines += diff_table(cells, ABLATION_BASELINE, [v for v in variants if v in ABLATIONS],
                        "the released code's behaviour (`released`): one change at a time")
    seeds = sorted({s for v in variants for s in cells[v]})
    lines += ["", "### Test Dice per seed", "", "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for v in variants:
        lines.append(f"| {_label(v)} | " + " | ".join(
            f"{_metric(cells[v][s], 'test', 'dice_pooled'):.4f}" if s in cells[v] else "-" for s in seeds) + " |")
    lines.append("")
    return lines


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _data_text(args) -> str:
    if args.data == "synthetic-glas":
        return (f"synthetic GlaS-like H&E images (`data.kind=synthetic-glas`: 775x522 at 0.62 µm/px, benign "
                f"and malignant, the grade in the image name), {args.n_train} training images and "
                f"{args.n_test} held-out test images from other seeds")
    return (f"synthetic H&E-like glands (`data.kind={args.data}`), {args.n_train} training images and "
            f"{args.n_test} held-out test images from other seeds")


def write_report(md: Path, runs: Sequence[Run], args, figures: Sequence[Path] = (),
                 command: Optional[str] = None, estimate_s: Optional[float] = None, rebuilt: bool = False) -> str:
    """Regenerate ``md`` from the finished runs among ``runs``; the
    hand-written discussion below :data:`NOTE_MARKER` is kept."""
    table = collect(runs)
    ratios = sorted({r.ratio for r in runs})
    variants = list(dict.fromkeys(r.variant for r in runs))
    done = sum(len(s) for s in table.values())
    missing = [r for r in runs if r.seed not in table.get((r.ratio, r.variant), {})]
    walls = [d["wall_seconds"] for s in table.values() for d in s.values()]
    sc = SCALES[args.scale]
    ex = runs[0] if runs else None
    finished = [d["results"] for s in table.values() for d in s.values()]
    devices = ", ".join(sorted({str(r.get("device", "?")) for r in finished})) or "-"
    threads = ", ".join(sorted({str(r["torch_threads"]) for r in finished if "torch_threads" in r})) or \
        (str(args.threads) if args.threads else "auto")
    lines = [
        "# Results: supervised-only vs Semi-MoE, every variant x label ratio x seed",
        "",
        "Every number below was measured by `scripts/results.py` (this file is its output; generated "
        f"{datetime.date.today().isoformat()}).",
        "",
        "## Protocol",
        "",
        f"* Data: {_data_text(args)}. The training images are split into validation ({100 * 0.15:g} %), "
        "labeled and unlabeled images; the validation images are in neither loss.",
        f"* Runs: variants {', '.join(f'`{v}`' for v in variants)} x label ratios "
        f"{', '.join(f'{100 * r:g} %' for r in args.ratios)} x seeds {', '.join(map(str, args.seeds))}"
        + (f", plus `{BASELINE}` at 100 % of the labels (label_ratio {ceiling_ratio():g}: every non-validation "
           "image labeled, the supervised ceiling)" if any(r.ratio == ceiling_ratio() for r in runs) else "")
        + f": {len(runs)} runs, {done} finished"
        + (f" (missing: {', '.join(f'{r.variant}@{_ratio_name(r.ratio)}/seed{r.seed}' for r in missing)})"
           if missing else "") + ".",
        "* Seeds: seed s sets `data.seed=s` (which images are validation / labeled / unlabeled) and "
        "`train.seed=s` (initialisation, sampling, augmentation). Runs at the same ratio and seed share the split.",
        f"* Training: the `{sc['preset']}` preset"
        + (f" with {args.width}-wide experts (`model.base_width={args.width}`), {args.iterations} iterations "
           f"(validation every {args.val_every}), {args.crop}x{args.crop} crops, "
           f"warm-up and lr step scaled to the run" if args.scale == "cpu" else
           ", its epochs and schedule (an epoch is ceil(unlabeled images / batch) iterations, the released "
           "code's definition, so the iteration count differs slightly between label ratios, not between "
           "the variants of a ratio)")
        + "; the same for every run except the variant's overrides (table below).",
        "* Selection: best.pt is chosen on the validation split by pooled pixel Dice at the fixed threshold 0.5. "
        "The test set never selects anything; it is scored once per run, with best.pt and the same threshold. "
        "best.pt is also scored on the run's unlabeled training images, whose masks training never sees.",
        "* Metrics: `semimoe.evaluate` (the deployed predictor, native resolution): pixel Dice and IoU pooled over "
        "the set, object F1 (GlaS, counts pooled), object Dice and object Hausdorff (per-image means; Hausdorff "
        "over the images where it is defined, pixels). Per grade (benign / malignant, from the image name) the "
        "same aggregation over the grade's images: pixels and object counts pooled over them.",
        "* Statistics: mean ± sd (n - 1) over seeds. Differences to supervised-only are paired by seed (same "
        "ratio, split and seed); mean and 95 % t-interval mean ± t(0.975, n-1) sd / sqrt(n), in Dice / F1 "
        "points (x100); \"not significant\" when the interval contains 0; undefined with fewer than 2 seeds. "
        "No correction for the several comparisons.",
        f"* Machine: {os.cpu_count()}-core CPU ({_cpu_name()}), torch {_torch_version()}, runs on {devices}, "
        f"{threads} torch thread(s) per run, "
        + ("one run at a time" if args.jobs <= 1 else f"{args.jobs} runs side by side")
        + ", shared with other jobs. Wall time "
        + (f"estimated {_hours(estimate_s)}, " if estimate_s else "")
        + (f"measured: the runs' times add up to {_hours(sum(walls))} ({_hours(sum(walls) / len(walls))} per run "
           f"on average" + (f", about {_hours(sum(walls) / args.jobs)} of wall time {args.jobs} at a time"
                            if args.jobs > 1 else "") + ")" if walls else "not measured") + ".",
        "* Command: `" + (command or "python scripts/results.py") + "`"
        + (" (this report rebuilt from its finished runs with `--reuse`)" if rebuilt else "")
        + (f"; each run is `python -m semimoe.train --preset {ex.preset} --run-dir <out>/labels<ratio>/<variant>/"
           f"seed<seed> " + " ".join(_generic(o) for o in ex.overrides[:ex.n_common])
           + " <variant overrides>`" if ex else "") + ".",
        "",
    ]
    keys = list(dict.fromkeys(o.split("=", 1)[0] for v in variants for o in VARIANTS[v][1]))
    lines += ["Variants (the resolved value of every key a variant sets; keys a variant does not set come from "
              "the preset):", "",
              "| variant | what | overrides | " + " | ".join(f"`{k}`" for k in keys) + " |",
              "|---|---|---|" + "---|" * len(keys)]
    for v in variants:
        run = next(r for r in runs if r.variant == v)
        lines.append(f"| `{v}` | {VARIANTS[v][0]} | `{' '.join(VARIANTS[v][1])}` | "
                     + " | ".join(_resolved(run, keys)) + " |")
    for ratio in ratios:
        cells = {v: table[(ratio, v)] for v in variants if (ratio, v) in table}
        lines += ratio_section(ratio, variants, cells)
    if figures:
        lines += ["## Figures", ""]
        for f in figures:
            rel = os.path.relpath(f, md.parent)
            lines += [f"![{Path(f).stem}]({rel})", ""]
    old = md.read_text() if md.exists() else ""
    note = old.split(NOTE_MARKER, 1)[1].strip() if NOTE_MARKER in old else ""
    lines += [NOTE_MARKER, "", note, ""]
    text = "\n".join(lines).rstrip() + "\n"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    return text


def _resolved(run: Run, keys: Sequence[str]) -> List[str]:
    """The values ``run`` trains with for ``keys`` (dotted), through semimoe.config."""
    try:
        from semimoe.config import make_config

        cfg = make_config(run.preset, None, list(run.overrides))
    except Exception:  # a key or kind this semimoe does not know: the report still builds
        return ["?"] * len(keys)
    out = []
    for k in keys:
        sec, name = k.split(".", 1)
        out.append(str(getattr(getattr(cfg, sec), name, "?")))
    return out


def _generic(o: str) -> str:
    k, _, v = o.partition("=")
    if k == "data.label_ratio":
        return f"{k}=<ratio>"
    if k in ("data.seed", "train.seed"):
        return f"{k}=<seed>"
    return o


def _torch_version() -> str:
    try:
        import torch
        return torch.__version__
    except ImportError:  # pragma: no cover
        return "?"


# ----------------------------------------------------------------------------
# Figures (Pillow: matplotlib is not a dependency)
# ----------------------------------------------------------------------------
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


class _Axes:
    """A plot rectangle with linear data -> pixel maps, axes and ticks."""

    def __init__(self, draw, box, xlim, ylim, title="", xlabel="", ylabel=""):
        self.d, self.box, self.xlim, self.ylim = draw, box, xlim, ylim
        x0, y0, x1, y1 = box
        f = _font(13)
        draw.rectangle(box, outline=(0, 0, 0))
        draw.text(((x0 + x1) / 2, y0 - 8), title, fill=(0, 0, 0), font=_font(14), anchor="md")
        draw.text(((x0 + x1) / 2, y1 + 30), xlabel, fill=(0, 0, 0), font=f, anchor="ma")
        draw.text((x0 - 70, y0 - 8), ylabel, fill=(0, 0, 0), font=f, anchor="ld")
        for t in _ticks(*ylim):
            y = self.y(t)
            draw.line([(x0, y), (x1, y)], fill=(225, 225, 225))
            draw.line([(x0 - 4, y), (x0, y)], fill=(0, 0, 0))
            draw.text((x0 - 6, y), f"{t:.2f}", fill=(0, 0, 0), font=f, anchor="rm")

    def x(self, v):
        x0, _, x1, _ = self.box
        lo, hi = self.xlim
        return x0 + (v - lo) / ((hi - lo) or 1) * (x1 - x0)

    def y(self, v):
        _, y0, _, y1 = self.box
        lo, hi = self.ylim
        return y1 - (min(max(v, lo), hi) - lo) / ((hi - lo) or 1) * (y1 - y0)

    def xticks(self, values, labels=None):
        _, _, _, y1 = self.box
        for v, s in zip(values, labels or [f"{v:g}" for v in values]):
            self.d.line([(self.x(v), y1), (self.x(v), y1 + 4)], fill=(0, 0, 0))
            self.d.text((self.x(v), y1 + 6), s, fill=(0, 0, 0), font=_font(13), anchor="ma")


def _ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    raw = (hi - lo) / n or 1.0
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-12:
        out.append(round(t, 10))
        t += step
    return out


def _ylim(values: Sequence[float]) -> Tuple[float, float]:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return 0.0, 1.0
    lo, hi = min(v), max(v)
    pad = max(0.02, 0.08 * (hi - lo))
    return max(0.0, lo - pad), min(1.0, hi + pad)


def _legend(draw, xy, names, colors):
    x, y = xy
    for name, c in zip(names, colors):
        draw.rectangle([x, y + 3, x + 14, y + 13], fill=c)
        draw.text((x + 20, y), name, fill=(0, 0, 0), font=_font(13))
        y += 18


def plot_curves(path: Path, runs: Sequence[Run]) -> Path:
    """Validation Dice over iterations, mean ± sd band over seeds, one panel per ratio."""
    from PIL import Image, ImageDraw

    table = collect(runs)
    ratios = sorted({r.ratio for r in runs})
    variants = list(dict.fromkeys(r.variant for r in runs))
    colors = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}
    pw, ph, left, top = 420, 300, 80, 70
    W, H = left + len(ratios) * (pw + 40) + 230, top + ph + 70
    img = Image.new("RGB", (W, H), "white")
    band = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d, db = ImageDraw.Draw(img), ImageDraw.Draw(band)
    stats = {}
    for ratio in ratios:
        for v in variants:
            seeds = table.get((ratio, v), {})
            steps = sorted({s for r in seeds.values() for s in r["curve"]})
            pts = []
            for s in steps:
                m, sd, n = mean_sd([r["curve"][s] for r in seeds.values() if s in r["curve"]])
                pts.append((s, m, sd if math.isfinite(sd) else 0.0))
            stats[(ratio, v)] = pts
    axes = []
    for i, ratio in enumerate(ratios):
        x0 = left + i * (pw + 40)
        pts_all = [p for v in variants for p in stats[(ratio, v)]]
        ylim = _ylim([m - sd for _, m, sd in pts_all] + [m + sd for _, m, sd in pts_all])
        xmax = max([s for s, _, _ in pts_all], default=1)
        ax = _Axes(d, (x0, top, x0 + pw, top + ph), (0, xmax), ylim, _ratio_title(ratio), "iteration",
                   "val Dice")
        ax.xticks(_ticks(0, xmax, 4))
        axes.append(ax)
        for v in variants:  # the bands first, on a translucent layer under the lines
            pts = stats[(ratio, v)]
            if len(pts) > 1:
                poly = [(ax.x(s), ax.y(m + sd)) for s, m, sd in pts] + \
                       [(ax.x(s), ax.y(m - sd)) for s, m, sd in reversed(pts)]
                db.polygon(poly, fill=colors[v] + (50,))
    img = Image.alpha_composite(img.convert("RGBA"), band)
    d = ImageDraw.Draw(img)
    for ax, ratio in zip(axes, ratios):
        ax.d = d
        for v in variants:
            pts, c = stats[(ratio, v)], colors[v]
            if len(pts) > 1:
                d.line([(ax.x(s), ax.y(m)) for s, m, _ in pts], fill=c, width=2)
            for s, m, _ in pts:
                d.ellipse([ax.x(s) - 3, ax.y(m) - 3, ax.x(s) + 3, ax.y(m) + 3], fill=c)
    d.text((10, 8), "Validation Dice during training (mean ± sd over seeds)", fill=(0, 0, 0), font=_font(16))
    _legend(d, (W - 215, top + 5), variants, [colors[v] for v in variants])
    d.text((W - 215, top + 18 * len(variants) + 15), "line: mean over seeds\nband: ± sd", fill=(0, 0, 0),
           font=_font(12))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(path)
    return path


def plot_bars(path: Path, runs: Sequence[Run]) -> Path:
    """Test Dice mean ± sd over seeds, per label ratio (groups) and variant (bars)."""
    from PIL import Image, ImageDraw

    table = collect(runs)
    ratios = sorted({r.ratio for r in runs})
    variants = list(dict.fromkeys(r.variant for r in runs))
    colors = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}
    vals = {(ra, v): mean_sd([_metric(r, "test", "dice_pooled") for r in table.get((ra, v), {}).values()])
            for ra in ratios for v in variants}
    ylim = _ylim([m - (sd if math.isfinite(sd) else 0) for m, sd, n in vals.values() if n] +
                 [m + (sd if math.isfinite(sd) else 0) for m, sd, n in vals.values() if n])
    ylim = (max(0.0, ylim[0] - 0.05), ylim[1])
    group = max(1, len(variants)) * 34 + 40
    left, top, ph = 80, 70, 300
    W, H = max(left + len(ratios) * group + 250, 560), top + ph + 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), "Held-out test Dice (mean ± sd over seeds)", fill=(0, 0, 0), font=_font(16))
    ax = _Axes(d, (left, top, left + len(ratios) * group, top + ph), (0, len(ratios)), ylim,
               "", "label ratio", "test Dice")
    ax.xticks([i + 0.5 for i in range(len(ratios))],
              ["100 %" if r == ceiling_ratio() else f"{100 * r:g} %" for r in ratios])
    for i, ra in enumerate(ratios):
        present = [v for v in variants if vals[(ra, v)][2]]
        x = left + i * group + (group - 34 * len(present)) / 2
        for v in present:
            m, sd, n = vals[(ra, v)]
            d.rectangle([x + 3, ax.y(m), x + 31, ax.y(ylim[0])], fill=colors[v])
            if math.isfinite(sd):
                cx = x + 17
                d.line([(cx, ax.y(m - sd)), (cx, ax.y(m + sd))], fill=(0, 0, 0), width=2)
                for yy in (m - sd, m + sd):
                    d.line([(cx - 6, ax.y(yy)), (cx + 6, ax.y(yy))], fill=(0, 0, 0), width=2)
            x += 34
    _legend(d, (W - 235, top + 5), variants, [colors[v] for v in variants])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------
def _floats(s: str) -> List[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> List[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic-glas", choices=("synthetic-glas", "synthetic"),
                   help="data.kind of every run (default synthetic-glas)")
    p.add_argument("--scale", default="cpu", choices=tuple(SCALES),
                   help="cpu: the cpu-demo model, shortened to fit about 2 h on 2 cores; paper: the paper "
                        "preset (its epochs and schedule) on the whole data, for a GPU")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated names of {', '.join(VARIANTS)}, or 'all' "
                        f"(default {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--label-ratios", default="0.05,0.1", help="comma-separated (default 0.05,0.1)")
    p.add_argument("--ablations", default=",".join(DEFAULT_ABLATIONS),
                   help=f"variants run at the --ablation-ratios only: names, 'all' ({', '.join(PARITY_ABLATIONS)}, "
                        f"{', '.join(OPTION_ABLATIONS)}) or 'none' (default {','.join(DEFAULT_ABLATIONS)})")
    p.add_argument("--ablation-ratios", default="0.1",
                   help="those of the --label-ratios at which the --ablations run (default 0.1)")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help=f"leave out {BASELINE} at 100 %% of the labels (label_ratio {ceiling_ratio():g})")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated; each sets data.seed and train.seed")
    cpu = SCALES["cpu"]
    p.add_argument("--iterations", type=int, default=None,
                   help=f"cpu scale only: training iterations (default {cpu['iterations']})")
    p.add_argument("--val-every", type=int, default=None,
                   help=f"cpu scale only: validate every this many iterations (default {cpu['val_every']})")
    p.add_argument("--crop", type=int, default=None,
                   help=f"cpu scale only: training crop side (default {cpu['crop']})")
    p.add_argument("--width", type=int, default=None,
                   help=f"cpu scale only: model.base_width of the experts (default {cpu['width']})")
    p.add_argument("--n-train", type=int, default=None,
                   help="synthetic training images (default: cpu " + ", ".join(
                       f"{k} {v}" for k, v in cpu["n_train"].items()) + "; paper 85 (GlaS) or 200)")
    p.add_argument("--n-test", type=int, default=None,
                   help="synthetic test images (default: cpu " + ", ".join(
                       f"{k} {v}" for k, v in cpu["n_test"].items()) + "; paper 80 (GlaS) or 40)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (cpu default 1)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs side by side, each with --threads threads (cpu default: the CPU count // "
                        "threads; paper 1). Runs are bit-identical whatever --jobs (same seed, same threads)")
    p.add_argument("--out", default=None, help="runs folder (default runs/results/<data>-<scale>)")
    p.add_argument("--md", default=str(ROOT / "docs" / "RESULTS.md"), help="the report (default docs/RESULTS.md)")
    p.add_argument("--figures", default=str(ROOT / "docs"), help="folder of the two PNG figures")
    p.add_argument("--reuse", action="store_true", help="rebuild the report from finished runs; train nothing")
    p.add_argument("--dry-run", action="store_true", help="print the runs, their commands and the estimate")
    p.add_argument("--evaluate", metavar="FOLDER", default=None,
                   help="only evaluate one finished run folder (writes its eval.json); used by --jobs > 1")
    args = p.parse_args(argv)
    sc = SCALES[args.scale]
    args.variants = list(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
    args.ablations = (list(ABLATIONS) if args.ablations == "all" else
                      [] if args.ablations == "none" else [v for v in args.ablations.split(",") if v])
    args.ablations = [v for v in args.ablations if v not in args.variants]
    args.ablation_ratios = _floats(args.ablation_ratios)
    bad = [v for v in args.variants + args.ablations if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {', '.join(bad)}; known: {', '.join(VARIANTS)}")
    args.ratios = _floats(args.label_ratios)
    args.seeds = _ints(args.seeds)
    if not args.ratios or not args.seeds or not args.variants:
        p.error("need at least one variant, label ratio and seed")
    if args.scale != "cpu":
        given = [f"--{k.replace('_', '-')}" for k in ("iterations", "val_every", "crop", "width")
                 if getattr(args, k)]
        if given:
            p.error(f"{', '.join(given)}: cpu scale only (--scale {args.scale} runs its preset's schedule)")
    for k in ("iterations", "val_every", "crop", "width", "threads"):
        if getattr(args, k) is None:
            setattr(args, k, sc[k])
    args.n_train = args.n_train or sc["n_train"][args.data]
    args.n_test = args.n_test or sc["n_test"][args.data]
    args.out = args.out or str(ROOT / "runs" / "results" / f"{args.data}-{args.scale}")
    if args.jobs is None:
        args.jobs = max(1, (os.cpu_count() or 1) // max(1, args.threads)) if args.scale == "cpu" else 1
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def do_run(run: Run, args) -> Optional[str]:
    """Train (unless trained) and evaluate one run; the error, or None. With
    ``args.jobs > 1`` (runs side by side, from threads) the evaluation is a
    process of its own too (``--evaluate FOLDER``), with its output in
    ``eval.log``."""
    import torch

    threads = torch.get_num_threads()
    if args.threads and args.jobs <= 1:
        torch.set_num_threads(args.threads)
    try:
        if run_state(run) != "trained":
            train_run(run, args)
        if args.jobs <= 1:
            evaluate_run(run.folder, SCALES[args.scale]["device"], threads=args.threads or None)
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--scale", args.scale, "--evaluate",
                   str(run.folder)] + (["--threads", str(args.threads)] if args.threads else [])
            with open(run.folder / "eval.log", "ab") as log:
                subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
        return None
    except subprocess.CalledProcessError as e:  # one failed run does not stop the table
        return str(e)
    finally:
        torch.set_num_threads(threads)


def warm_cache(args) -> None:
    """Draw the synthetic-glas images every run reads into the shared cache
    (``<out>/images``), ``args.jobs`` at a time, before the runs start."""
    if args.data != "synthetic-glas":
        return
    from semimoe.data.datasets import GLAS_TEST_TAG, GLAS_TRAIN_TAG, _glas_draw

    cache = str(Path(args.out) / "images")
    tags = [GLAS_TRAIN_TAG] * args.n_train + [GLAS_TEST_TAG] * args.n_test
    index = list(range(args.n_train)) + list(range(args.n_test))
    t0 = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            list(ex.map(_glas_draw, tags, index, [cache] * len(tags), chunksize=8))
    else:
        for t, i in zip(tags, index):
            _glas_draw(t, i, cache)
    print(f"{len(tags)} synthetic-glas images ready in {cache} ({time.perf_counter() - t0:.0f} s)", flush=True)


def run_all(todo: Sequence[Run], args) -> List[Run]:
    """Every run of ``todo``, ``args.jobs`` at a time (each its own
    processes: training, then evaluation); returns the failed runs."""
    failed: List[Run] = []
    if todo:
        warm_cache(args)

    def report(i: int, r: Run, err: Optional[str]) -> None:
        if err is None:
            print(f"[{i + 1}/{len(todo)}] done: {r.variant} @ {_ratio_name(r.ratio)} seed {r.seed}", flush=True)
        else:
            print(f"error: {r.folder} failed ({err}); going on with the other runs", file=sys.stderr, flush=True)
            failed.append(r)

    if args.jobs <= 1:
        for i, r in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {r.variant} @ {_ratio_name(r.ratio)} seed {r.seed}", flush=True)
            report(i, r, do_run(r, args))
        return failed
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(args.jobs) as ex:  # each run's work is in its own processes
        futures = [ex.submit(do_run, r, args) for r in todo]
        for i, (r, f) in enumerate(zip(todo, futures)):
            report(i, r, f.result())
    return failed


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.evaluate:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        ev = evaluate_run(Path(args.evaluate), SCALES[args.scale]["device"], threads=args.threads or None)
        print(f"{args.evaluate}: test Dice {ev['test']['dice_pooled']:.4f} ({ev['seconds']:.0f} s)")
        return 0
    runs = plan(args)
    est = estimate(runs, args)
    out = Path(args.out)
    state = {r: run_state(r) for r in runs}
    todo = [r for r in runs if state[r] != "done"]
    cmd_file = out / "command.json"
    failed: List[Run] = []
    if args.dry_run or not args.reuse:
        print(f"{len(runs)} runs ({len(runs) - len(todo)} finished): variants {','.join(args.variants)} x "
              f"label ratios {','.join(map(_ratio_name, args.ratios))} x seeds {','.join(map(str, args.seeds))}"
              + (f" + {BASELINE} at {ceiling_ratio():g}" if any(r.ratio == ceiling_ratio() for r in runs) else ""))
        for r in runs:
            extra = f"  [{state[r]}]" if state[r] != "new" else ""
            secs = f"  (~{estimate_run(r, args) / 60:.1f} min)" if est is not None else ""
            print(f"{r.variant} @ {_ratio_name(r.ratio)} seed {r.seed}{secs}{extra}\n  $ "
                  + shlex.join(r.command("python")))
        if est is not None:
            left = estimate(todo, args)
            print(f"estimated total: {_hours(est)} ({_hours(left)} for the {len(todo)} runs left), from "
                  f"costs measured on the shared 2-core CPU: per iteration (crop 96) {COST['iteration']} s, "
                  f"per validation image {COST['validate'][args.data]} s, per evaluated image "
                  f"{COST['evaluate'][args.data]} s, per generated image {COST['generate'][args.data]} s")
        else:
            print("estimated total: not calibrated for --scale paper (the per-run wall times go into the report)")
        stop = preflight(runs, args.dry_run)
        if stop is not None:
            return stop
        out.mkdir(parents=True, exist_ok=True)
        cmd_file.write_text(json.dumps({"command": shlex.join(["python", "scripts/results.py", *argv]),
                                        "estimate_seconds": est}))
        failed = run_all(todo, args)
    if args.reuse and not collect(runs):  # nothing to report: keep the report there is
        print(f"error: --reuse: no finished runs of these settings in {out}; {args.md} left as it is "
              "(run the table first, or point --out at its runs folder)", file=sys.stderr)
        return 2
    recorded = _read_json(cmd_file) or {}
    command = recorded.get("command") or shlex.join(["python", "scripts/results.py", *argv])
    figs = []
    if collect(runs):
        fdir = Path(args.figures)
        figs = [plot_curves(fdir / "results_curves.png", runs), plot_bars(fdir / "results_test_dice.png", runs)]
    text = write_report(Path(args.md), runs, args, figs, command, recorded.get("estimate_seconds", est),
                        rebuilt=args.reuse)
    print(text)
    other = [r for r in runs if (r.folder / "results.json").exists() and not same_run(r)]
    if other:
        print(f"warning: {len(other)} run folder(s) hold runs made with other settings and were left out "
              f"(e.g. {other[0].folder}); the runs in {out} were made by: {recorded.get('command', '?')}",
              file=sys.stderr)
    if not args.reuse and failed:
        print(f"error: {len(failed)} run(s) failed: " + ", ".join(str(r.folder) for r in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
