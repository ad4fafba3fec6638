"""semimoe.memory: freed large blocks stay in the process (checked with the OS's page-fault counter)."""
import json
import resource
import subprocess
import sys

import pytest

_CODE = """
import json
from semimoe.memory import alloc_rounds, keep_freed_memory
before = alloc_rounds(64, 5)[0]
ok = keep_freed_memory()
alloc_rounds(64, 10)  # the heap settles within a few rounds (4 here)
after = alloc_rounds(64, 5)[0]
print(json.dumps([before, ok, after, keep_freed_memory()]))
"""


def test_keep_freed_memory_stops_refaulting_large_blocks():
    # a fresh process: the setting is process-wide and lasts
    out = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, check=True)
    before, ok, after, again = json.loads(out.stdout.strip().splitlines()[-1])
    if not ok:
        pytest.skip("needs Linux with glibc")
    pages = (64 << 20) // resource.getpagesize()
    assert before > 0.9 * pages  # system malloc: every 64 MiB block mapped and faulted in again
    assert after < 0.01 * pages  # kept: the same memory reused
    assert again is True


def test_trainer_applies_it_on_cpu_only_when_asked(tmp_path):
    code = f"""
import json
from semimoe.config import make_config
from semimoe.training import Trainer
from semimoe.training.distributed import init_distributed
out = []
for keep in ("false", "true"):
    cfg = make_config("cpu-demo", overrides=["run_dir={tmp_path}/" + keep, "train.device=cpu", "train.threads=1",
                                             "train.keep_memory=" + keep])
    t = Trainer(cfg, log=lambda *a: None)
    t.dist = init_distributed("cpu")
    t.setup_runtime()
    out.append(t.kept_memory)
from semimoe.memory import keep_freed_memory
out.append(keep_freed_memory())  # whether this platform supports it at all
print(json.dumps(out))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    off, on, available = json.loads(out.stdout.strip().splitlines()[-1])
    assert off is False
    assert on is available
