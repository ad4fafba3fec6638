"""semimoe.vml: MKL's vector math library started on one thread, so that a
threaded elementwise call gives the same bits in every process."""
import json
import subprocess
import sys

import pytest
import torch

from semimoe.vml import VML_FUNCTIONS, fresh_process_digest, start_vml

pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="PyTorch built without MKL")


def test_every_process_computes_the_single_thread_values_after_start_vml():
    """Fresh processes, 2 threads, tanh of 16384 values after start_vml: the
    same digest as one thread. (Without start_vml, 4 of 40 processes had one
    thread's chunk from another code path on the development machine; with
    start_vml doing nothing this test failed 2 times in 3.)"""
    ref = fresh_process_digest(1, True)
    got = [fresh_process_digest(2, True) for _ in range(10)]
    assert got == [ref] * 10


def test_start_vml_leaves_values_alone():
    """It only calls the functions: later results equal float64 PyTorch to
    float32 rounding, and a second call is a no-op."""
    assert start_vml() is True and start_vml() is True
    x = torch.linspace(0.05, 0.9, 101)  # inside every function's domain
    for name in VML_FUNCTIONS:
        f = getattr(torch, name)
        torch.testing.assert_close(f(x), f(x.double()).float(), rtol=2e-6, atol=2e-7, msg=name)


def test_trainer_and_predictor_start_it(tmp_path):
    """Training set-up and the predictor start VML before they compute."""
    code = f"""
import json
import semimoe.vml as V
from semimoe.config import make_config
from semimoe.training import Trainer
from semimoe.training.distributed import init_distributed
out = [V._started]
t = Trainer(make_config("cpu-demo", overrides=["run_dir={tmp_path}/r", "train.device=cpu", "train.threads=2"]),
            log=lambda *a: None)
t.dist = init_distributed("cpu")
t.setup_runtime()
out.append(V._started)
V._started = False
from semimoe.data.scale import InputSpec
from semimoe.inference import Predictor
from semimoe.models import build_model
Predictor(build_model(t.cfg.model), InputSpec((0.0,) * 3, (1.0,) * 3, 0.5, 0.5))
out.append(V._started)
print(json.dumps(out))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, True, True]
