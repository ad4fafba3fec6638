"""Nothing silently wrong: user errors end in one line, masks are read as
what they are, runs refuse to clobber each other, outputs are all or nothing,
native-code models need trust, and a run killed while writing a checkpoint
leaves every checkpoint loadable and nothing stale behind."""
from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import semimoe.utils as U
from semimoe import evaluate as E
from semimoe import infer as I
from semimoe import train as T
from semimoe.data import make_sample
from semimoe.data.io import read_mask
from semimoe.errors import CheckpointError, ConfigError
from semimoe.models import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
NORM = {"mean": [0.78, 0.51, 0.78], "std": [0.43, 0.51, 0.43]}
SCALE = {"mpp": 0.5, "source_mpp": 0.5, "source_mpp_assumed": False}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def fresh_notes():
    U._SAID.clear()  # "said once" notes: each test sees its own
    yield


def _folder(root: Path, n=4, size=64, split_names=("train", "test"), mask_fn=None):
    for split in split_names:
        (root / split / "image").mkdir(parents=True)
        (root / split / "mask").mkdir(parents=True)
        for i in range(n):
            img, lab = make_sample([7, i], (size, size))
            Image.fromarray(img).save(root / split / "image" / f"t{i}.png")
            m = lab if mask_fn is None else mask_fn(lab)
            Image.fromarray(m.astype(np.uint8)).save(root / split / "mask" / f"t{i}.png")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    m = build_model(ModelConfig.preset("cpu-demo", base_width=4, depth=3)).eval()
    p = tmp_path_factory.mktemp("ck") / "model.pt"
    torch.save({"model": m.state_dict(), "model_config": dataclasses.asdict(m.cfg), "norm": NORM, "scale": SCALE,
                "data_config": {"kind": "synthetic", "synthetic_side": 32, "synthetic_test": 2,
                                "synthetic_train": 6}}, p)
    return p


# ----------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------
def test_binary_masks_are_numbered_by_connected_components(tmp_path):
    lab = np.zeros((40, 40), np.uint8)
    lab[2:10, 2:10] = lab[20:30, 5:12] = lab[25:35, 25:38] = 255
    Image.fromarray(lab).save(tmp_path / "b.png")
    with pytest.warns(UserWarning, match="binary.*connected components"):
        got = read_mask(tmp_path / "b.png")
    assert got.max() == 3 and np.array_equal(got > 0, lab > 0)
    for k in (1, 2, 3):  # each blob one label
        assert len(np.unique(lab[got == k])) == 1
    with warnings.catch_warnings():  # said once
        warnings.simplefilter("error")
        read_mask(tmp_path / "b.png")
    # a one-gland instance mask (0/1, one component) is unchanged and not warned about
    one = np.zeros((10, 10), np.uint8)
    one[2:5, 2:5] = 1
    Image.fromarray(one).save(tmp_path / "one.png")
    assert np.array_equal(read_mask(tmp_path / "one.png"), one)
    # instance masks keep their labels, touching glands included
    inst = np.zeros((10, 10), np.uint8)
    inst[1:5, 1:5], inst[5:9, 1:5] = 4, 9
    Image.fromarray(inst).save(tmp_path / "inst.png")
    assert np.array_equal(read_mask(tmp_path / "inst.png"), inst)


def test_lossy_and_implausible_masks_are_warned_about(tmp_path):
    lab = np.zeros((64, 64), np.uint8)
    lab[10:40, 10:40] = 255
    Image.fromarray(lab).save(tmp_path / "m.jpg", quality=60)
    with pytest.warns(UserWarning, match="JPEG"):
        read_mask(tmp_path / "m.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)  # ~16 px a label
    Image.fromarray(noise).save(tmp_path / "noise.png")
    with pytest.warns(UserWarning, match="median area"):
        read_mask(tmp_path / "noise.png")


def test_binary_folder_masks_give_real_object_scores(tmp_path, ckpt, capsys):
    root = _folder(tmp_path / "f", size=160, mask_fn=lambda lab: (lab > 0) * 255)
    with pytest.warns(UserWarning, match="binary"):
        assert E.main(["--model", str(ckpt), "--data", "folder", "--root", str(root), "--overlays", "0",
                       "--out", str(tmp_path / "ev")]) == 0
    per = (tmp_path / "ev" / "per_image.csv").read_text().splitlines()
    n_gt = [int(r.split(",")[-1]) for r in per[1:]]
    assert max(n_gt) > 1  # glands counted one by one, not one "gland" per image


# ----------------------------------------------------------------------------
# one-line errors
# ----------------------------------------------------------------------------
def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


@pytest.mark.parametrize("case", ["size_mismatch", "missing_mask", "empty_folder", "corrupt_png",
                                  "truncated_jpeg", "missing_root"])
def test_train_data_errors_are_one_line(tmp_path, capsys, case):
    root = _folder(tmp_path / "f", n=3, split_names=("train",))
    img = root / "train" / "image" / "t1.png"
    culprit = img
    if case == "size_mismatch":
        Image.fromarray(np.zeros((5, 7), np.uint8)).save(root / "train" / "mask" / "t1.png")
        culprit = root / "train" / "mask" / "t1.png"
    elif case == "missing_mask":
        (root / "train" / "mask" / "t1.png").unlink()
    elif case == "empty_folder":
        for p in (root / "train" / "image").iterdir():
            p.unlink()
        culprit = root / "train" / "image"
    elif case == "corrupt_png":
        img.write_bytes(img.read_bytes()[:60])
    elif case == "truncated_jpeg":
        a = np.asarray(Image.open(img))
        img.unlink()
        culprit = img.with_suffix(".jpg")
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG")
        culprit.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    else:
        root = tmp_path / "nope"
        culprit = root
    rc = T.main(["data.kind=folder", f"data.root={root}", "data.source_mpp=0.5", "train.iterations=1",
                 f"--run-dir={tmp_path / 'run'}"])
    assert rc == 2
    _one_line_error(capsys, str(culprit))


@pytest.mark.parametrize("args,needle", [
    (["--model", "{tmp}/missing.pt"], "missing.pt does not exist"),
    (["--model", "{tmp}/trunc.pt"], "is truncated or not a PyTorch file"),
    (["--model", "{tmp}/unsafe.pt"], "refuses this file"),
    (["--model", "{ckpt}", "--split", "nosuch", "--data", "folder", "--root", "{tmp}/f"], "nosuch"),
    (["--model", "{ckpt}", "--data", "glas"], "data.root (--root)"),
    (["--model", "{ckpt}", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--model", "{ckpt}", "--device", "cuda"], "--device cuda"),
    (["--model", "{ckpt}", "--threshold", "2"], "--threshold must be > 0.0 and < 1.0"),
])
def test_evaluate_user_errors_are_one_line(tmp_path, capsys, ckpt, args, needle):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _folder(tmp_path / "f", n=1)
    full = ckpt.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(full[: len(full) // 2])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "unsafe.pt")
    argv = [a.format(tmp=tmp_path, ckpt=ckpt) for a in args]
    assert E.main(argv + ["--overlays", "0", "--out", str(tmp_path / "ev")]) == 2
    line = _one_line_error(capsys, needle)
    assert "weights_only=False" not in line


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(CheckpointError):
        E.main(["--model", str(tmp_path / "missing.pt"), "--debug"])


def test_cli_subprocess_prints_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "semimoe.train", "optim.lr=nan"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.strip() == "error: optim.lr must be a finite number, got nan"


@pytest.mark.parametrize("override,match", [("optim.lr=nan", "optim.lr must be a finite"),
                                            ("train.threshold=nan", "train.threshold"),
                                            ("train.threshold=1", "train.threshold must be > 0.0 and < 1.0"),
                                            ("data.mean=[0.5, .nan, 0.5]", "data.mean")])
def test_config_values_are_finite_and_in_range(override, match):
    with pytest.raises(ConfigError, match=match):
        T.make_config("cpu-demo", overrides=[override])


def test_infer_rejects_bad_values(tmp_path, ckpt, capsys):
    Image.fromarray(make_sample(0, (40, 40))[0]).save(tmp_path / "a.png")
    base = ["--model", str(ckpt), "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o")]
    for extra, needle in ((["--threshold", "2"], "--threshold"), (["--mpp", "0"], "--mpp"),
                          (["--batch-size", "0"], "--batch-size"), (["--tile", "62"], "multiple")):
        assert I.main(base + extra + ["--quiet"]) == 2
        _one_line_error(capsys, needle)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


# ----------------------------------------------------------------------------
# resume, locks, stale files
# ----------------------------------------------------------------------------
TINY = ["data.synthetic_train=8", "data.synthetic_side=32", "data.size=null", "data.synthetic_test=2",
        "data.label_ratio=0.25", "data.val_ratio=0.25", "model.base_width=4", "model.depth=3", "train.crop=0",
        "train.batch_labeled=2", "train.batch_unlabeled=2", "train.iterations=2", "train.val_every=2",
        "train.overlays=0", "train.eval_test=false", "train.progress=false", "train.threads=1"]


def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    assert T.main(["--resume", f"--run-dir={tmp_path / 'typo'}", *TINY]) == 2
    _one_line_error(capsys, "typo does not exist", "--resume-or-start")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    assert T.main(["--resume", f"--run-dir={tmp_path / 'empty'}", *TINY]) == 2
    _one_line_error(capsys, "holds no last.pt")
    assert T.main(["--resume-or-start", f"--run-dir={tmp_path / 'empty'}", *TINY]) == 0
    assert (tmp_path / "empty" / "last.pt").exists()
    assert T.main(["--resume", f"--run-dir={tmp_path / 'empty'}", *TINY, "train.iterations=3"]) == 0


def test_a_locked_run_folder_is_refused_and_stale_temp_files_go(tmp_path, capsys):
    from semimoe.training.rundir import RunLock

    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.tmp12345").write_bytes(b"half a checkpoint")
    lock = RunLock(run)  # another run holds the folder
    try:
        assert T.main([f"--run-dir={run}", *TINY]) == 2
        _one_line_error(capsys, "in use by another training run", str(os.getpid()))
    finally:
        lock.release()
    assert T.main([f"--run-dir={run}", *TINY]) == 0
    assert "removed .last.pt.tmp12345" in capsys.readouterr().out
    assert not list(run.glob(".*.tmp*")) and not (run / ".lock").exists()


def _kill_during_checkpoint_writes(run: Path, extra) -> bool:
    """Start a run, SIGKILL it while a checkpoint's temporary file exists."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "semimoe.train", f"--run-dir={run}", "--resume-or-start", *extra],
                         cwd=run.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while time.time() - t0 < 120 and p.poll() is None:
            if list(run.glob(".last.pt.tmp*")):
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_killed_during_checkpoint_writes_every_checkpoint_loads(tmp_path):
    # a model large enough that writing last.pt takes a while, written every iteration
    extra = [*TINY, "model.base_width=24", "model.depth=4", "train.iterations=40", "train.ckpt_every=1",
             "train.val_every=0"]
    run = tmp_path / "run"
    run.mkdir()
    kills = 0
    for _ in range(3):
        kills += _kill_during_checkpoint_writes(run, extra)
        assert list(run.glob(".last.pt.tmp*")) or (run / "last.pt").exists()
        if (run / "last.pt").exists():
            ck = U.safe_torch_load(run / "last.pt")  # never torn
            assert ck["step"] >= 1
    assert kills >= 2  # the kills did land in checkpoint writes
    r = subprocess.run([sys.executable, "-m", "semimoe.train", f"--run-dir={run}", "--resume-or-start", *extra,
                        "train.iterations=3" if not (run / "last.pt").exists() else f"train.iterations="
                        f"{U.safe_torch_load(run / 'last.pt')['step'] + 1}"],
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list(run.glob(".*.tmp*")) and not (run / ".lock").exists()
    for f in ("last.pt", "best.pt"):
        U.safe_torch_load(run / f)


# ----------------------------------------------------------------------------
# outputs and progress
# ----------------------------------------------------------------------------
def test_a_failed_image_leaves_no_partial_outputs(tmp_path, monkeypatch):
    from semimoe.inference import Segmentation

    img = make_sample(0, (30, 40))[0]
    prob = np.random.default_rng(0).random((3, 30, 40)).astype(np.float32)
    inst = np.zeros((30, 40), np.int32)
    inst[0, 0] = 70000
    with pytest.raises(ValueError, match="16-bit"):
        I.write_outputs(tmp_path, "big", img, Segmentation(prob, prob[1] > 0.5, inst))
    calls = {"n": 0}
    save = Image.Image.save

    def flaky(self, fp, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", flaky)
    with pytest.raises(OSError, match="disk full"):
        I.write_outputs(tmp_path, "x", img, Segmentation(prob, prob[1] > 0.5, inst * 0), save_npy=True)
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(Image.Image, "save", save)
    files = I.write_outputs(tmp_path, "ok", img, Segmentation(prob, prob[1] > 0.5, inst * 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)


def test_progress_lines_when_not_on_a_terminal():
    buf = io.StringIO()
    p = U.Progress(10, "tiles", unit="tiles", interval=0.0, stream=buf, tty=False)
    for _ in range(10):
        p.update()
    p.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("tiles: 10/10 tiles (100%)") and "\r" not in buf.getvalue()


def test_warnings_are_one_line_in_the_clis():
    code = ("import warnings; from semimoe.errors import run_cli; "
            "raise SystemExit(run_cli(lambda argv: warnings.warn('something to know') or 0, []))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stderr == "warning: something to know\n"


def test_print_config_is_a_reusable_config_file(tmp_path, capsys):
    assert T.main(["--preset", "paper", "--print-config", "train.epochs=7", "data.mean=[0.5, 0.5, 0.5]"]) == 0
    text = capsys.readouterr().out
    assert "{" not in text and "\n  epochs: 7\n" in text  # block style, one key a line
    (tmp_path / "c.yaml").write_text(text)
    from semimoe.config import config_to_dict

    a = T.make_config("paper", overrides=["train.epochs=7", "data.mean=[0.5, 0.5, 0.5]"])
    b = T.make_config(config_file=str(tmp_path / "c.yaml"))
    assert config_to_dict(a) == config_to_dict(b)
