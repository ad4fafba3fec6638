"""train.method=weak-ikd (IKD-MIL): the scores, a tiny run through every
round, resume after a kill, configuration errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semimoe import train as T
from semimoe.config import ConfigError, make_config
from semimoe.metrics import score_masks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 2 GlaS-like training images (12 tiles) and 1 test image (6 tiles), a 4-wide 3-level MIL segmenter
TINY = [
    "model.arch=mil", "model.base_width=4", "model.depth=3", "data.kind=synthetic-weak",
    "data.synthetic_train=3", "data.synthetic_test=1", "data.val_ratio=0.25", "data.mpp=2.48",
    "train.method=weak-ikd", "train.schedule=iteration", "train.iterations=8", "train.val_every=2",
    "train.crop=0", "train.batch_labeled=4", "train.log_every=1", "train.overlays=0", "train.progress=false",
    "train.threads=1", "weak.distill_start=2", "weak.reverse_every=3",
]


def _cfg(tmp_path, *extra, name="run"):
    return make_config("cpu-demo", overrides=TINY + [f"data.synthetic_cache={tmp_path / 'cache'}",
                                                      f"run_dir={tmp_path / name}", *extra])


def _quiet(*a, **k):
    pass


def test_score_masks_against_set_formulas():
    rng = np.random.default_rng(0)
    pred = [rng.random((9, 7)) < 0.4 for _ in range(5)]
    truth = [rng.random((9, 7)) < 0.3 for _ in range(5)]
    truth[3][:] = False
    labels = [1, 0, 1, 0, 0]
    got = score_masks(pred, truth, labels)
    pos = [i for i, y in enumerate(labels) if y]
    neg = [i for i, y in enumerate(labels) if not y]
    inter = sum(np.logical_and(pred[i], truth[i]).sum() for i in pos)
    size = sum(pred[i].sum() + truth[i].sum() for i in pos)
    union = sum(np.logical_or(pred[i], truth[i]).sum() for i in pos)
    assert got["dice_positive"] == pytest.approx(2 * inter / size)
    assert got["iou_positive"] == pytest.approx(inter / union)
    b_inter = sum(np.logical_and(~pred[i], ~truth[i]).sum() for i in neg)
    b_size = sum((~pred[i]).sum() + (~truth[i]).sum() for i in neg)
    assert got["background_f1_negative"] == pytest.approx(2 * b_inter / b_size)
    assert (got["n_positive"], got["n_negative"]) == (2, 3)
    # a negative image called background everywhere scores 1; no positives: nan
    z = [np.zeros((3, 3), bool)]
    only_neg = score_masks(z, z, [0])
    assert only_neg["background_f1_negative"] == 1.0 and np.isnan(only_neg["dice_positive"])


def test_config_errors_name_what_is_needed(tmp_path):
    with pytest.raises(ConfigError, match="model.arch=mil"):
        T.train(_cfg(tmp_path, "model.arch=semimoe"), log=_quiet)
    with pytest.raises(ConfigError, match="image-level labels"):
        T.train(_cfg(tmp_path, "data.kind=synthetic", "data.synthetic_side=64", "data.mpp=null",
                     name="r2"), log=_quiet)
    with pytest.raises(ConfigError, match="weak.pooling"):
        _cfg(tmp_path, "weak.pooling=mean")


def test_rounds_pseudo_masks_and_scores(tmp_path):
    res = T.train(_cfg(tmp_path), log=_quiet)
    run = Path(res["run_dir"])
    rounds = res["weak_rounds"]
    # MIL until iteration 2, then a teacher at 2 and a reversal at 5 (every 3 after the start)
    assert [(r["round"], r["iteration"]) for r in rounds] == [(0, 2), (1, 5)]
    split = json.loads((run / "split.json").read_text())
    assert split["unlabeled"] == [] and len(split["labeled"]) >= 1
    for r in rounds:
        if "same_as_round" in r:  # no better student since: the same teacher, nothing new written
            assert r["teacher_from"] == rounds[r["same_as_round"]]["teacher_from"]
            assert not (run / "pseudo" / f"round{r['round']}").exists()
            continue
        folder = run / "pseudo" / f"round{r['round']}"
        pngs = sorted(p.stem for p in folder.glob("*.png"))
        assert pngs == sorted(split["labeled"])
        with Image.open(folder / f"{pngs[0]}.png") as im:
            a = np.asarray(im)
        assert a.dtype == np.uint8 and set(np.unique(a)) <= {0, 255}
        scores = json.loads((folder / "scores.json").read_text())
        assert scores["scored"] == len(pngs) and 0.0 <= scores["background_f1_negative"] <= 1.0
        assert r["test"]["n_positive"] + r["test"]["n_negative"] == 6
        # the round's teacher is a model file that the predictor opens
        ck = torch.load(folder / "teacher.pt", weights_only=True)
        assert ck["weak_round"] == r["round"] and ck["model_config"]["arch"] == "mil"
    assert res["weak_test"]["n_positive"] + res["weak_test"]["n_negative"] == 6
    # the student's scores are best.pt's, whether scored anew or taken from the round it equals
    from semimoe.data.datasets import build_test_dataset, image_labels
    from semimoe.inference import Predictor

    cfg = _cfg(tmp_path).data
    test, labels = build_test_dataset(cfg), image_labels(cfg, "test")
    predictor = Predictor.from_file(run / "best.pt")
    direct = score_masks([predictor.probabilities(t.image, mpp=0.62)[1].numpy() > 0.5 for t in test],
                         [t.mask for t in test], [labels[t.name] for t in test])
    assert res["weak_test"] == pytest.approx(direct, nan_ok=True)
    # semimoe.evaluate reports the same scores (from its per-image counts) beside the gland metrics
    from semimoe import evaluate as E

    assert E.main(["--model", str(run / "best.pt"), "--out", str(tmp_path / "ev"), "--overlays", "0",
                   "--synthetic-test", "1"]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {k: float(ev[k]) for k in direct} == pytest.approx(direct, nan_ok=True)  # JSON: nan as "nan"
    # the frozen teacher in last.pt is the last round's teacher
    last = torch.load(run / "last.pt", weights_only=True)
    k = rounds[1].get("same_as_round", 1)
    t1 = torch.load(run / "pseudo" / f"round{k}" / "teacher.pt", weights_only=True)["model"]
    for k, v in t1.items():
        assert torch.equal(v, last["weak_ikd"]["teacher"][k]), k
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and "loss_distill" in rows[0]


class _Kill(Exception):
    pass


def test_resume_after_kill_is_identical(tmp_path):
    common = ["train.ckpt_every=1", "train.eval_test=false", "weak.pseudo_masks=false"]
    full = T.train(_cfg(tmp_path, *common, name="full"), log=_quiet)
    ref = torch.load(Path(full["run_dir"]) / "last.pt", weights_only=True)

    def kill_at_4(step, info):
        if step == 4:
            raise _Kill()

    cfg = _cfg(tmp_path, *common, name="killed")
    with pytest.raises(_Kill):
        T.train(cfg, log=_quiet, on_step=kill_at_4)
    T.train(cfg, resume=True, log=_quiet)
    got = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert got["step"] == ref["step"] == 8
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    for k, v in ref["weak_ikd"]["teacher"].items():
        assert torch.equal(v, got["weak_ikd"]["teacher"][k]), k
    assert [r["iteration"] for r in got["weak_ikd"]["rounds"]] == [2, 5]


def test_pseudo_mask_dataset_trains_semimoe(tmp_path):
    """weak.export_dataset: best.pt's masks of every training tile (negatives
    all background) and the true test masks, read back by the folder reader,
    on which the three-expert model trains."""
    from semimoe.data.datasets import build_test_dataset, image_labels, list_items
    from semimoe.data.io import read_mask
    from semimoe.inference import Predictor

    res = T.train(_cfg(tmp_path, "weak.export_dataset=true", "weak.pseudo_masks=false"), log=_quiet)
    root = Path(res["weak_dataset"])
    cfg = _cfg(tmp_path).data
    labels = image_labels(cfg, "train")
    items = list_items("folder", root, "train")
    assert sorted(it.name for it in items) == sorted(labels)
    predictor = Predictor.from_file(Path(res["run_dir"]) / "best.pt")
    for it in items:
        m = read_mask(it.mask)
        if labels[it.name] == 0:
            assert not m.any(), it.name
        else:  # the student's mask at the threshold, as instances
            with Image.open(it.image) as im:
                img = np.array(im.convert("RGB"))
            want = predictor.probabilities(img, mpp=0.62)[1].numpy() > 0.5
            assert np.array_equal(m > 0, want), it.name
    test = build_test_dataset(cfg)
    t_items = {it.name: it for it in list_items("folder", root, "test")}
    assert sorted(t_items) == sorted(test.names)
    assert np.array_equal(read_mask(t_items[test[0].name].mask) > 0, test[0].mask > 0)
    assert json.loads((root / "dataset.json").read_text())["source_mpp"] == pytest.approx(0.62)
    sup = make_config("cpu-demo", overrides=[
        "data.kind=folder", f"data.root={root}", "data.source_mpp=0.62", "data.mpp=2.48", "data.label_ratio=0.75",
        "data.val_ratio=0.25", "model.base_width=4", "model.depth=3", "train.method=supervised", "train.crop=0",
        "train.iterations=2", "train.val_every=2", "train.batch_labeled=2", "train.overlays=0",
        "train.progress=false", "train.threads=1", f"run_dir={tmp_path / 'semimoe'}"])
    out = T.train(sup, log=_quiet)
    assert out["method"] == "supervised" and out["test"]["n_images"] == len(test)
