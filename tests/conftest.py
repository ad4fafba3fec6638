import os
import tempfile
from pathlib import Path

import pytest
import torch

# Native-code model files exported by the tests are trusted in a store of the
# test session's own, never in the user's ~/.config (semimoe.deploy.trust).
os.environ.setdefault("SEMIMOE_TRUST_STORE", str(Path(tempfile.mkdtemp(prefix="semimoe-trust-")) / "trusted.json"))

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Triton kernels run on the CPU through the interpreter; must be set before
    # triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["avx2", "baseline"])
def isa(request):
    """Run the test with one compiled copy of the CPU kernels forced, then restore 'auto'."""
    from semimoe._backend import cpu_ext  # after TRITON_INTERPRET is set above

    ext = cpu_ext()
    if ext is None:
        pytest.skip("semimoe._C is not built: no kernel to test")
    if os.environ.get("SEMIMOE_BACKEND", "cpu") != "cpu":
        pytest.skip("SEMIMOE_BACKEND forces another backend than the CPU kernels")
    if not ext.set_isa(request.param):
        ext.set_isa("auto")
        pytest.skip(f"the {request.param} kernel copy is not available on this CPU/build")
    assert ext.active_isa() == request.param
    try:
        yield request.param
    finally:
        ext.set_isa("auto")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: a second thread only adds synchronisation (and stalls on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
