"""``python -m semimoe.infer`` end to end on a temporary folder: real files,
a corrupt image, a non-image file; torch and onnxruntime backends agree."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semimoe.data import make_sample
from semimoe.infer import main, read_image
from semimoe.models import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
NORM = {"mean": [0.78, 0.51, 0.78], "std": [0.43, 0.51, 0.43]}
SCALE = {"mpp": 0.5, "source_mpp": 0.5, "source_mpp_assumed": False}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    m = build_model(ModelConfig.preset("cpu-demo", base_width=4)).eval()
    path = tmp_path_factory.mktemp("ck") / "model.pt"
    torch.save({"model": m.state_dict(), "model_config": dataclasses.asdict(m.cfg), "norm": NORM, "scale": SCALE, "step": 0}, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    a, _ = make_sample(1, (150, 210))
    b, _ = make_sample(2, (75, 52))  # smaller than a tile
    Image.fromarray(a).save(d / "gland_a.png")
    Image.fromarray(b).save(d / "gland_b.jpg", quality=95)
    Image.fromarray(a).convert("L").save(d / "grey.tif")
    good = (d / "gland_a.png").read_bytes()
    (d / "corrupt.png").write_bytes(good[: len(good) // 3])  # truncated PNG
    (d / "notes.txt").write_text("not an image")
    return d


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "semimoe.infer", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_end_to_end_with_a_corrupt_image(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    r = run_cli("--model", checkpoint, "--input", images, "--output", out, "--tile", "64", "--batch-size", "4",
                "--save-npy")
    assert r.returncode == 1, r.stderr  # the corrupt file is skipped -> non-zero at the end
    assert "corrupt.png" in r.stderr and "warning" in r.stderr
    assert "notes.txt" not in r.stderr
    for name, (h, w) in {"gland_a": (150, 210), "gland_b": (75, 52), "grey": (150, 210)}.items():
        mask = np.asarray(Image.open(out / f"{name}_mask.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        prob = np.asarray(Image.open(out / f"{name}_prob.png"))
        assert prob.shape == (h, w) and prob.dtype == np.uint8
        assert np.array_equal(mask == 255, prob > 127) or np.mean((mask == 255) != (prob > 127)) < 1e-3
        inst = Image.open(out / f"{name}_instances.png")
        assert inst.size == (w, h) and inst.mode.startswith("I")
        ov = np.asarray(Image.open(out / f"{name}_overlay.png"))
        assert ov.shape == (h, w, 3)
        p = np.load(out / f"{name}_prob.npy")
        assert p.shape == (3, h, w) and p.dtype == np.float16
        np.testing.assert_allclose(p[0].astype(np.float32) + p[1], 1.0, atol=2e-3)
    assert not list(out.glob("corrupt*"))


def test_cli_single_file_ok_and_usage_errors(checkpoint, images, tmp_path):
    out = tmp_path / "o"
    assert main(["--model", str(checkpoint), "--input", str(images / "gland_b.jpg"), "--output", str(out),
                 "--tile", "64", "--tta", "flip", "--quiet"]) == 0
    assert (out / "gland_b_mask.png").exists()
    assert main(["--model", str(checkpoint), "--input", str(tmp_path / "nope"), "--output", str(out)]) == 2
    assert main(["--model", str(tmp_path / "nope.pt"), "--input", str(images), "--output", str(out)]) == 2
    assert main(["--model", str(checkpoint), "--input", str(images), "--output", str(out), "--tile", "60",
                 "--quiet"]) == 2  # not a multiple of the model's 8


def test_cli_resamples_to_the_training_scale(images, tmp_path):
    """A model trained at 1 µm/px on 0.5 µm/px images: inputs are halved by
    default and by --mpp 0.5, left alone with --mpp 1; outputs keep the
    input's size either way."""
    torch.manual_seed(0)
    m = build_model(ModelConfig.preset("cpu-demo", base_width=4)).eval()
    path = tmp_path / "coarse.pt"
    torch.save({"model": m.state_dict(), "model_config": dataclasses.asdict(m.cfg), "norm": NORM,
                "scale": {"mpp": 1.0, "source_mpp": 0.5, "source_mpp_assumed": False}}, path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes((images / "gland_a.png").read_bytes())
    probs = {}
    for mpp in (None, "0.5", "1.0"):
        out = tmp_path / f"o{mpp}"
        r = run_cli("--model", path, "--input", src, "--output", out, "--tile", "64", "--save-npy",
                    *(["--mpp", mpp] if mpp else []))
        assert r.returncode == 0, r.stderr
        factor = "0.5" if mpp in (None, "0.5") else "1"
        assert f"resampled by {factor}" in r.stdout
        if mpp is None:
            assert "assuming the training images' 0.5" in r.stdout
        probs[mpp] = np.load(out / "a_prob.npy").astype(np.float32)
        assert probs[mpp].shape == (3, 150, 210)
    assert np.array_equal(probs[None], probs["0.5"])
    assert np.abs(probs["0.5"] - probs["1.0"]).max() > 0.05  # the scale changes what the model sees
    assert main(["--model", str(path), "--input", str(src), "--output", str(tmp_path / "x"), "--mpp", "-1"]) == 2


def test_torch_and_onnxruntime_backends_agree(checkpoint, images, tmp_path):
    pytest.importorskip("onnx", reason="needs onnx (pip install 'semimoe[deploy]')")
    pytest.importorskip("onnxscript", reason="needs onnxscript (pip install 'semimoe[deploy]')")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'semimoe[deploy]')")
    from semimoe.export import main as export_main

    onnx_path = tmp_path / "model.onnx"
    assert export_main(["--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(onnx_path),
                        "--tile", "64"]) == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes((images / "gland_a.png").read_bytes())
    outs = {}
    for be, model in (("torch", checkpoint), ("onnxruntime", onnx_path)):
        outs[be] = tmp_path / be
        assert main(["--model", str(model), "--input", str(src), "--output", str(outs[be]), "--backend", be,
                     "--tile", "64", "--save-npy", "--quiet"]) == 0
    a = np.load(outs["torch"] / "a_prob.npy").astype(np.float32)
    b = np.load(outs["onnxruntime"] / "a_prob.npy").astype(np.float32)
    assert np.abs(a - b).max() <= 2e-3  # float16 files of outputs equal to 1e-4


def test_read_image_rejects_corrupt_files(images):
    assert read_image(images / "gland_a.png").shape == (150, 210, 3)
    assert read_image(images / "grey.tif").shape == (150, 210, 3)
    with pytest.raises(Exception):
        read_image(images / "corrupt.png")
