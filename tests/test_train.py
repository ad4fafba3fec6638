"""Training: config, schedule, data streams, a learning run, kill + resume, DDP (gloo, 2 processes)."""
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semimoe import train as T
from semimoe.config import PRESETS, ConfigError, config_to_dict, dump_yaml, make_config
from semimoe.losses import SemiMoEObjective
from semimoe.models import build_model
from semimoe.training import METHODS, SupervisedMethod, Trainer, register_method
from semimoe.training.streams import Stream

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a tiny, fast run: 64x64 synthetic images, 4-wide 3-level experts
TINY = [
    "data.synthetic_train=16", "data.synthetic_side=64", "data.size=null", "data.synthetic_test=4", "data.label_ratio=0.25",
    "data.val_ratio=0.25", "model.base_width=4", "model.depth=3", "train.crop=0",
    "train.batch_labeled=2", "train.batch_unlabeled=2", "train.iterations=6", "train.val_every=3",
    "train.log_every=1", "train.overlays=0", "train.eval_test=false", "train.progress=false",
    "train.threads=1",
]


def _cfg(tmp_path, *extra, name="run"):
    return make_config("cpu-demo", overrides=TINY + [f"run_dir={tmp_path / name}", *extra])


def _quiet(*a, **k):
    pass


# ----------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------
def test_presets_resolve_and_roundtrip(tmp_path):
    for name in PRESETS:
        cfg = make_config(name)
        assert cfg.preset == name
        d = config_to_dict(cfg)
        f = tmp_path / f"{name}.yaml"
        f.write_text(dump_yaml(cfg))
        assert config_to_dict(make_config(config_file=str(f))) == d
    paper = make_config("paper")
    assert (paper.optim.name, paper.optim.lr, paper.optim.momentum, paper.optim.weight_decay) == \
        ("sgd", 0.5, 0.9, 5e-5)
    assert (paper.optim.warmup, paper.optim.step_size, paper.optim.gamma) == (20, 50, 0.5)
    assert (paper.train.batch_labeled, paper.train.batch_unlabeled, paper.train.epochs) == (2, 2, 200)
    assert paper.train.refine is None and paper.model.gate == "image" and paper.model.base_width == 64


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: paper\ntrain:\n  epochs: 3\nmodel:\n  gate: spatial\n")
    cfg = make_config(config_file=str(f), overrides=["train.epochs=4", "optim.lr=1e-2", "train.refine=null",
                                                     "data.mean=[0.5, 0.5, 0.5]"])
    assert cfg.preset == "paper" and cfg.train.epochs == 4 and cfg.model.gate == "spatial"
    assert cfg.optim.lr == 0.01 and cfg.train.refine is None and cfg.data.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("override,match", [
    ("train.iteratons=3", "train.iteratons.*did you mean 'train.iterations'"),
    ("model.gate=pixel", "model.gate"),
    ("train.batch_labeled=1.5", "train.batch_labeled must be an integer"),
    ("optim.lr=-1", "optim.lr"),
    ("train.refine=bogus", "train.refine"),
    ("train.amp=maybe", "train.amp"),
    ("data.kind=imagenet", "data.kind"),
    ("train.method=magic", "train.method"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("train.iterations", "key=value"),
])
def test_bad_config_names_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        make_config("cpu-demo", overrides=[override])


def test_cli_print_config_and_bad_key(capsys):
    assert T.main(["--preset", "paper", "--print-config", "train.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "gate: image" in out
    assert T.main(["train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err
    # overrides on both sides of an option
    assert T.main(["train.epochs=5", "--preset", "paper", "--run-dir", "/tmp/x", "train.val_every=3",
                   "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 5" in out and "val_every: 3" in out


# ----------------------------------------------------------------------------
# schedule and data streams
# ----------------------------------------------------------------------------
def test_reference_lr_schedule():
    f = [T.lr_factor(e, 20, 50, 0.5, from_zero=True) for e in range(200)]
    assert f[0] == 0.0 and f[10] == 0.5 and f[19] == 0.95 and f[20] == 1.0
    assert f[69] == 1.0 and f[70] == 0.5 and f[120] == 0.25 and f[170] == 0.125 and f[199] == 0.125
    assert T.lr_factor(0, 10, 50, 0.5, from_zero=False) == 0.1
    assert T.lr_factor(0, 0, 50, 0.5, from_zero=False) == 1.0


def test_streams_are_deterministic_permutations_and_sharded():
    s = Stream(10, 2, seed=3, tag=1, rank=0, world=1)
    items = [i for it in range(5) for i, _ in s.batch_at(it)]
    assert sorted(items) == list(range(10))                    # one pass = a permutation
    again = Stream(10, 2, seed=3, tag=1, rank=0, world=1)
    assert [again.batch_at(it) for it in (4, 0, 2)] == [s.batch_at(it) for it in (4, 0, 2)]
    other = Stream(10, 2, seed=4, tag=1, rank=0, world=1)
    assert [other.batch_at(it) for it in range(5)] != [s.batch_at(it) for it in range(5)]
    r0 = Stream(10, 1, seed=3, tag=1, rank=0, world=2)
    r1 = Stream(10, 1, seed=3, tag=1, rank=1, world=2)
    both = [i for it in range(5) for i, _ in r0.batch_at(it) + r1.batch_at(it)]
    assert sorted(both) == list(range(10))                    # ranks share a pass, disjointly


# ----------------------------------------------------------------------------
# losses inside the loop
# ----------------------------------------------------------------------------
def test_pseudo_labels_are_detached():
    torch.manual_seed(0)
    m = build_model(base_width=4, depth=3, gate="spatial").train()
    out = m(torch.randn(2, 3, 32, 32))
    loss, parts, pl = SemiMoEObjective(refine="sdf_agree+confidence").unsupervised(out, 1.0)
    for t in (pl.mask, pl.sdf, pl.boundary, pl.weight):
        assert not t.requires_grad and t.grad_fn is None
    loss.backward()
    # the unsupervised loss trains the experts only, never the gate or its heads
    assert all(p.grad is None for p in m.gate.parameters())
    assert all(p.grad is None for p in m.heads.parameters())
    for name in ("seg", "sdf", "bnd"):
        assert m.experts[name].head.weight.grad is not None
        assert m.experts[name].head.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------
def test_smoke_run_writes_everything(tmp_path):
    cfg = _cfg(tmp_path, "train.overlays=2", "train.eval_test=true")
    res = T.train(cfg, log=_quiet)
    run = Path(res["run_dir"])
    for f in ("config.yaml", "split.json", "metrics.csv", "last.pt", "best.pt", "results.json"):
        assert (run / f).is_file(), f
    assert len(list((run / "overlays").glob("*.png"))) == 4  # 2 overlays + 2 gate maps
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["val_dice"] != "" and float(rows[-1]["loss_unsup"]) > 0
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["step"] == 6 and ck["model_config"]["base_width"] == 4 and len(ck["norm"]["mean"]) == 3
    assert ck["scale"] == {"mpp": 0.5, "source_mpp": 0.5, "source_mpp_assumed": False}
    assert ck["method"] == "semimoe"
    from semimoe.models import load_checkpoint
    model, meta = load_checkpoint(run / "best.pt")
    assert meta["data_config"]["synthetic_side"] == 64 and meta["config"]["preset"] == "cpu-demo"
    r = json.loads((run / "results.json").read_text())
    assert 0 <= r["val"]["dice_pooled"] <= 1 and "test" in r
    # a second run does not silently overwrite this one
    with pytest.raises(ConfigError, match="--resume"):
        T.train(cfg, log=_quiet)


def _first_step_grads(cfg):
    """Loss parts and parameter gradients of iteration 0 of a set-up trainer."""
    t = Trainer(cfg, log=_quiet)
    labeled, unlabeled = next(t.prepare_steps(1))
    stats = t.method.step(t, 0, labeled, unlabeled)
    grads = {n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None}
    bufs = {n: b.detach().clone() for n, b in t.model.named_buffers()}
    return {k: float(v.detach()) for k, v in stats.items()}, grads, bufs


def test_compiled_training_step_matches_eager(tmp_path):
    """``train.compile=true`` (inductor: BatchNorm + ReLU fused, other kernel
    orders) computes the eager step: same losses, gradients and BatchNorm
    running statistics from the same seed and batch, up to float rounding.

    Gradients are compared as one vector (relative L2 norm): a ReLU input
    within rounding of 0 (one at 3e-7 in this model) switches a whole
    channel's gradient contribution at that pixel, so single tensors can
    differ by ~1 % between two correct float32 computations (measured: the
    compiled step against a float64 eager model, 2.7 % on one channel of one
    weight; eager float32 4e-6 there; global 1.9e-4)."""
    over = ["model.base_width=8", "model.depth=3"]
    s_e, g_e, b_e = _first_step_grads(_cfg(tmp_path, *over, name="eager"))
    s_c, g_c, b_c = _first_step_grads(_cfg(tmp_path, *over, "train.compile=true", name="compiled"))
    assert s_e.keys() == s_c.keys() and g_e.keys() == g_c.keys() and len(g_e) > 50
    for k in s_e:
        assert s_c[k] == pytest.approx(s_e[k], rel=1e-4, abs=1e-6), k
    ge = torch.cat([g_e[k].flatten() for k in g_e])
    gc = torch.cat([g_c[k].flatten() for k in g_e])
    assert float((gc - ge).norm() / ge.norm()) < 2e-3
    for k in b_e:
        torch.testing.assert_close(b_c[k], b_e[k], rtol=1e-4, atol=1e-6, msg=k)


def test_supervised_method_and_epoch_schedule(tmp_path):
    # train.mode=supervised is the legacy spelling of train.method=supervised
    assert make_config("cpu-demo", overrides=["train.mode=semi"]).train.method == "semimoe"
    cfg = _cfg(tmp_path, "train.mode=supervised", "train.schedule=epoch", "train.epochs=2",
               "train.val_every=1", "optim.name=sgd", "optim.lr=0.5", "optim.warmup=1", "optim.step_size=1")
    res = T.train(cfg, log=_quiet)
    rows = list(csv.DictReader(open(Path(res["run_dir"]) / "metrics.csv")))
    # 8 unlabeled images / batch 2 = 4 iterations per epoch; lr 0 in epoch 0 (reference warm-up)
    assert res["iterations"] == 8
    assert float(rows[0]["lr"]) == 0.0 and float(rows[-1]["lr"]) == 0.5
    assert res["method"] == "supervised" and "loss_unsup" not in rows[0] and rows[0]["loss_sup"] != ""


def test_init_starts_from_a_checkpoint_and_costs_are_reported(tmp_path):
    a = T.train(_cfg(tmp_path, "train.method=supervised", name="a"), log=_quiet)
    assert a["parameters"] == a["trained_parameters"] > 0
    assert a["seconds_per_iteration"] > 0 and a["peak_memory_mb"] > 10
    src = torch.load(Path(a["run_dir"]) / "best.pt", weights_only=True)["model"]
    # a step of lr 1e-12: the parameters stay the checkpoint's (BatchNorm statistics move with the forward pass)
    b = T.train(_cfg(tmp_path, "train.method=supervised", f"train.init={a['run_dir']}/best.pt", "optim.lr=1e-12",
                     "train.iterations=1", name="b"), log=_quiet)
    got = torch.load(Path(b["run_dir"]) / "best.pt", weights_only=True)["model"]
    from semimoe.models import build_model

    params = {n for n, _ in build_model(_cfg(tmp_path).model).named_parameters()}
    assert params and all(torch.allclose(got[n], src[n], rtol=0, atol=1e-9) for n in params)
    fresh = T.train(_cfg(tmp_path, "train.method=supervised", "optim.lr=1e-12", "train.iterations=1", "train.seed=5",
                         name="e"), log=_quiet)
    other = torch.load(Path(fresh["run_dir"]) / "best.pt", weights_only=True)["model"]
    assert not all(torch.allclose(other[n], src[n], rtol=0, atol=1e-9) for n in params)
    with pytest.raises(ConfigError, match="train.init"):
        T.train(_cfg(tmp_path, f"train.init={a['run_dir']}/best.pt", "model.base_width=8", name="c"), log=_quiet)
    with pytest.raises(ConfigError, match="model.arch=semimoe"):
        T.train(_cfg(tmp_path, f"train.init={a['run_dir']}/best.pt", "model.arch=mil", name="d"), log=_quiet)


def test_training_beats_untrained_model(tmp_path):
    from semimoe.data.datasets import build_datasets
    from semimoe.evaluate import evaluate
    from semimoe.inference import Predictor, TilingConfig

    extra = ["train.iterations=60", "train.val_every=30", "model.base_width=8", "train.batch_labeled=4",
             "train.batch_unlabeled=2", "optim.lr=0.01", "optim.warmup=5", "data.synthetic_train=24"]
    cfg = _cfg(tmp_path, *extra)
    torch.manual_seed(cfg.train.seed)
    untrained = build_model(cfg.model)
    lab, _, val = build_datasets(cfg.data, None)
    before = evaluate(Predictor(untrained.predictor(), lab.spec, TilingConfig(tile=None)), val)["dice_pooled"]
    res = T.train(cfg, log=_quiet)
    after = res["val"]["dice_pooled"]
    assert after > before + 0.1 and after > 0.6, (before, after)


def test_a_method_plugs_into_the_trainer(tmp_path):
    """A new training method is a small class: the trainer runs its step,
    logs its keys and stores its state, and a Trainer subclass can override
    one hook (validation here)."""
    calls = []

    class Counting(SupervisedMethod):
        name = "counting-test"
        log_keys = SupervisedMethod.log_keys + ("labeled_fg",)

        def step(self, trainer, it, labeled, unlabeled):
            calls.append((it, unlabeled is None))
            info = super().step(trainer, it, labeled, unlabeled)
            info["labeled_fg"] = (labeled[1] > 0).float().mean()
            return info

    class NoValidation(Trainer):
        def validate(self, step):
            calls.append(("validate", step))
            return None

    register_method(Counting)
    try:
        cfg = _cfg(tmp_path, "train.method=counting-test")
        res = NoValidation(cfg, log=_quiet).fit()
    finally:
        METHODS.pop("counting-test")
    assert [c for c in calls if c[0] != "validate"] == [(it, True) for it in range(6)]
    assert ("validate", 3) in calls and ("validate", 6) in calls
    rows = list(csv.DictReader(open(Path(res["run_dir"]) / "metrics.csv")))
    assert all(0 < float(r["labeled_fg"]) < 1 for r in rows)
    assert res["method"] == "counting-test" and res["best"]["step"] == 6  # no validation: the last model
    with pytest.raises(ValueError, match="taken"):
        register_method(SupervisedMethod)


class _Kill(Exception):
    pass


def test_resume_after_kill_is_identical(tmp_path):
    common = ["train.iterations=8", "train.ckpt_every=2", "train.val_every=4"]
    full = T.train(_cfg(tmp_path, *common, name="full"), log=_quiet)
    ref = torch.load(Path(full["run_dir"]) / "last.pt", weights_only=True)

    def kill_at_5(step, info):
        if step == 5:
            raise _Kill()

    cfg = _cfg(tmp_path, *common, name="killed")
    with pytest.raises(_Kill):
        T.train(cfg, log=_quiet, on_step=kill_at_5)
    ck = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert ck["step"] == 4  # the last checkpoint before the kill
    T.train(cfg, resume=True, log=_quiet)
    got = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert got["step"] == 8
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    for a, b in zip(ref["amo"].values(), got["amo"].values()):
        assert torch.equal(a, b)
    sa, sb = ref["optimizer"]["state"], got["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name]))
    assert torch.equal(ref["rng"][0]["torch"], got["rng"][0]["torch"])
    # the CSV log continues from the checkpoint without duplicate rows
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "killed" / "metrics.csv"))]
    assert steps == list(range(1, 9))


@pytest.mark.parametrize("threads", [1, 2])
def test_same_command_same_seed_same_numbers_across_processes(tmp_path, threads):
    """Two processes (different hash seeds) running one command: identical
    weights, AMO state and logged losses -- the same seed and thread count
    reproduce a run bit for bit (the spatial gate, refined pseudo-labels and
    the per-image Dice included)."""
    runs = []
    for k, hashseed in enumerate(("1", "2")):
        run = tmp_path / f"r{k}"
        cmd = [sys.executable, "-m", "semimoe.train", "--preset", "cpu-demo", "--run-dir", str(run), *TINY,
               f"train.threads={threads}", "train.dice=image", "train.iterations=5", "train.val_every=3"]
        env = dict(os.environ, PYTHONHASHSEED=hashseed,
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(run)
    a, b = (torch.load(r / "last.pt", weights_only=True) for r in runs)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for x, y in zip(a["amo"].values(), b["amo"].values()):
        assert torch.equal(x, y)
    rows = [[{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(open(r / "metrics.csv"))]
            for r in runs]
    assert rows[0] == rows[1] and len(rows[0]) == 5
    assert json.loads((runs[0] / "results.json").read_text())["torch_threads"] == threads


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "semimoe.train", "--preset", "cpu-demo",
           "--run-dir", str(run), *TINY, "train.device=cpu", "train.iterations=4", "train.val_every=2"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((run / "results.json").read_text())
    assert res["world_size"] == 2 and res["iterations"] == 4
    assert res["replicas_identical"], res["replica_checksums"]
    split = json.loads((run / "split.json").read_text())
    assert len(split["labeled"]) == 4
