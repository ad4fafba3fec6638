"""scripts/weak_results.py and scripts/shift_results.py: the sections they
write from finished runs (fake results.json files with known numbers),
checked against scipy's paired t-interval."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _finish(run, results):
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "protocol.json").write_text(json.dumps({"preset": run.preset, "overrides": list(run.overrides)}))
    (run.folder / "results.json").write_text(json.dumps(results))


def _interval(a, b):
    d = np.array(a) - np.array(b)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return 100 * d.mean(), 100 * (d.mean() - half), 100 * (d.mean() + half)


def test_weak_section_rounds_and_differences(tmp_path):
    W = _script("weak_results")
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nhand-written text\n")
    argv = ["--out", str(tmp_path / "runs"), "--md", str(md), "--variants", "ikd,no-reversal", "--seeds", "0,1,2"]
    teacher, student, other = [0.60, 0.64, 0.61], [0.70, 0.69, 0.75], [0.66, 0.70, 0.69]
    for r in W.plan(W.parse_args(argv)):
        final = (student if r.variant == "ikd" else other)[r.seed]
        rounds = [{"round": 0, "iteration": 150, "dice_positive": 0.5, "test": {
            "dice_positive": teacher[r.seed], "background_f1_negative": 0.9}}]
        _finish(r, {"weak_rounds": rounds, "weak_test": {"dice_positive": final, "background_f1_negative": 0.95},
                    "best": {"step": 300}})
    assert W.main(argv + ["--reuse"]) == 0
    text = md.read_text()
    assert text.startswith("# Results\n\nhand-written text\n") and text.count(W.BEGIN) == 1
    m, lo, hi = _interval(student, teacher)
    assert f"test Dice (positive tiles): {m:+.2f} [{lo:+.2f}, {hi:+.2f}]" in text
    assert f"| final student (best.pt) | {np.mean(student):.3f} ± {np.std(student, ddof=1):.3f} |" in text
    m, lo, hi = _interval(other, student)
    assert f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" in text
    # rebuilding replaces the section instead of adding one
    assert W.main(argv + ["--reuse"]) == 0 and md.read_text().count(W.BEGIN) == 1


def test_shift_section_frozen_row_and_costs(tmp_path):
    S = _script("shift_results")
    md = tmp_path / "RESULTS.md"
    argv = ["--out", str(tmp_path / "runs"), "--md", str(md), "--variants", "finetune,icmoe", "--seeds", "0,1"]
    frozen, ft, ic = [0.50, 0.55], [0.80, 0.78], [0.75, 0.77]
    args = S.parse_args(argv)
    for r in S.plan_costs(args):  # the cost runs: one per variant
        _finish(r, {"parameters": 1000, "trained_parameters": 100 if r.variant == "icmoe" else 1000,
                    "seconds_per_iteration": 0.5, "peak_memory_mb": 300})
    for r in S.plan(args):
        res = {"parameters": 1000, "trained_parameters": 1000}
        if r.variant == "finetune":
            res["test"] = {"dice_pooled": ft[r.seed], "object_f1": 0.5}
        elif r.variant == "icmoe":
            res.update(test={"dice_pooled": ic[r.seed], "object_f1": 0.4}, trained_parameters=100,
                       icmoe={"frozen_test": {"dice_pooled": frozen[r.seed], "object_f1": 0.1},
                              "backbone_unchanged": True})
        _finish(r, res)
    assert S.main(argv + ["--reuse"]) == 0
    text = md.read_text()
    m, lo, hi = _interval(ic, frozen)
    assert f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" in text
    m, lo, hi = _interval(ic, ft)
    assert f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" in text
    assert "| `icmoe` | 100 | 1,000 | 0.50 | 300 |" in text
    assert "unchanged after training in 2 of 2 icmoe runs" in text


def test_no_finished_runs_leaves_the_report(tmp_path):
    W = _script("weak_results")
    md = tmp_path / "RESULTS.md"
    md.write_text("kept\n")
    assert W.main(["--out", str(tmp_path / "none"), "--md", str(md), "--reuse"]) == 2
    assert md.read_text() == "kept\n"


@pytest.mark.parametrize("name", ["weak_results", "shift_results"])
def test_unknown_variant_is_a_usage_error(name):
    with pytest.raises(SystemExit):
        _script(name).parse_args(["--variants", "nope"])
