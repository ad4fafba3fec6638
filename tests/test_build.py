"""The installed package: compiled modules, info report, main entry point."""
import os
import subprocess
import sys

import pytest

from semimoe._backend import cpu_ext, cuda_ext, extension_error


def test_cpu_module_is_built():
    assert cpu_ext() is not None, extension_error("_C")
    assert cpu_ext().active_isa() in ("avx2", "baseline")


@pytest.mark.skipif(os.environ.get("SEMIMOE_CUDA", "").upper() != "ON",
                    reason="only checked where the build was asked to compile CUDA (SEMIMOE_CUDA=ON)")
def test_cuda_module_is_built():
    mod = cuda_ext()
    assert mod is not None, extension_error("_C_cuda")
    assert "CUDA runtime" in mod.build_info()
    assert mod.device_count() >= 0  # must not raise without a GPU


def test_isa_switch_roundtrip():
    c = cpu_ext()
    assert c.set_isa("baseline") and c.active_isa() == "baseline"
    c.set_isa("auto")
    assert c.set_isa("no-such-isa") is False


def _run(*args, timeout=300):
    # Run outside the repository so the installed package is what is imported.
    return subprocess.run([sys.executable, *args], cwd=os.path.expanduser("~") or "/",
                          capture_output=True, text=True, timeout=timeout)


def test_info_entry_point():
    r = _run("-m", "semimoe.info")
    assert r.returncode == 0, r.stderr
    assert "_C (CPU kernels)" in r.stdout and ": yes" in r.stdout
    assert "op distance_transform" in r.stdout
    assert "RuntimeWarning" not in r.stderr


def _info_lines(report):
    out = {}
    for line in report.splitlines():
        key, sep, value = line.partition(" : ")
        if sep:  # a multi-line value (an error message) continues without a key
            out[key.strip()] = value
    return out


def test_info_report_states_facts(capsys):
    import torch

    import semimoe

    lines = _info_lines(semimoe.info.info())
    assert lines["torch"] == torch.__version__
    built = cpu_ext() is not None
    assert lines["_C (CPU kernels)"].lower().startswith("yes") == built
    if built:
        assert cpu_ext().build_info() in lines["_C (CPU kernels)"]
    semimoe.info()  # the module is callable and prints the report
    printed = _info_lines(capsys.readouterr().out)
    assert printed["torch"] == torch.__version__ and printed.keys() == lines.keys()


def test_info_report_without_cpu_module(monkeypatch):
    import semimoe
    import semimoe._backend as backend

    # the report asks the loader at call time: with no compiled module it must say so
    monkeypatch.setattr(backend, "cpu_ext", lambda: None)
    line = _info_lines(semimoe.info.info())["_C (CPU kernels)"]
    assert not line.lower().startswith("yes") and line.startswith("NO (")


def test_train_entry_point_small(tmp_path):
    r = _run("-m", "semimoe.train", "--run-dir", str(tmp_path / "r"), "data.synthetic_train=8",
             "data.size=64", "data.synthetic_test=2", "data.label_ratio=0.25",
             "data.val_ratio=0.25", "model.base_width=4", "model.depth=3", "train.crop=0",
             "train.iterations=2", "train.batch_labeled=2", "train.batch_unlabeled=2",
             "train.overlays=1", "train.eval_test=false", "train.progress=false")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "val   Dice" in r.stdout
    assert (tmp_path / "r" / "best.pt").exists() and (tmp_path / "r" / "metrics.csv").exists()


def test_source_checkout_uses_installed_kernels():
    # `python -m ...` in the repository root imports semimoe/ from the source
    # tree (no compiled modules there); the installed _C must still be found.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c",
                        "import semimoe, semimoe._backend as b; "
                        "print(semimoe.__file__); print(b.cpu_ext() is not None)"],
                       cwd=repo, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "True", r.stdout + r.stderr
