"""Export: ONNX (onnxruntime parity, TensorRT operator coverage), AOTInductor
(parity, tiled inference), TensorRT (real: skipped without TensorRT and a GPU;
build/runner logic against a fake ``tensorrt`` module that records calls)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from semimoe.data.scale import InputSpec
from semimoe.errors import CheckpointError
from semimoe.deploy import meta as dmeta
from semimoe.deploy.trt_supported_ops import SUPPORTED, UNSUPPORTED, check_onnx_model, unsupported_ops
from semimoe.inference import sliding_window
from semimoe.models import ModelConfig, build_model

from semimoe.export import DEFAULT_OPSET, export_aoti, export_onnx  # noqa: E402

try:  # ONNX tests skip without the deploy extra; the AOTInductor test does not need it
    import onnx
    import onnxruntime as ort
    import onnxscript  # noqa: F401
except ImportError as _exc:
    onnx = ort = None
    _ONNX_MISSING = f"needs onnx, onnxscript and onnxruntime (pip install 'semimoe[deploy]'): {_exc}"
else:
    _ONNX_MISSING = ""
needs_onnx = pytest.mark.skipif(bool(_ONNX_MISSING), reason=_ONNX_MISSING)

ROOT = Path(__file__).resolve().parents[1]
NORM = {"mean": [0.78, 0.51, 0.78], "std": [0.43, 0.51, 0.43]}
SCALE = {"mpp": 1.0, "source_mpp": 0.5, "source_mpp_assumed": False}
SPEC = InputSpec(NORM["mean"], NORM["std"], SCALE["mpp"], SCALE["source_mpp"])
TILE = 64


def make_model(seed=0, gate="spatial"):
    torch.manual_seed(seed)
    m = build_model(ModelConfig.preset("cpu-demo", base_width=4, gate=gate)).eval()
    with torch.no_grad():  # make the spatial gate's (zero-initialised) output layer matter
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d) and not mod.weight.abs().sum():
                mod.weight.normal_(0, 0.1)
    return m


def save_checkpoint(model, path):
    torch.save({"model": model.state_dict(), "model_config": dataclasses.asdict(model.cfg), "norm": NORM, "scale": SCALE,
                "step": 0}, path)
    return path


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def onnx_dynamic(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    meta = export_onnx(model, path, spec=SPEC, tile=TILE, log=quiet)
    return path, meta


# ----------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------
@needs_onnx
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (5, 3, 64, 64), (2, 3, 96, 40)])
def test_onnx_matches_pytorch_dynamic_batch_and_size(model, onnx_dynamic, shape):
    path, meta = onnx_dynamic
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]))
    with torch.inference_mode():
        ref = model.predictor()(x)
    got = sess.run(None, {"image": x.numpy()})[0]
    assert got.shape == shape and got.dtype == np.float32
    assert np.abs(got - ref.numpy()).max() <= 1e-4
    assert meta["verified"]["max_abs_diff"] <= 1e-4


@needs_onnx
def test_onnx_for_gpu_runtimes_keeps_the_upsample(model, tmp_path):
    """transposed=False (what the TensorRT export uses): Resize + Conv in the
    graph instead of ConvTranspose, same predictions."""
    path = tmp_path / "resize.onnx"
    meta = export_onnx(model, path, spec=SPEC, tile=TILE, dynamic_spatial=False, transposed=False, log=quiet)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Resize") == 3 * (model.cfg.depth - 1) and "ConvTranspose" not in ops
    assert meta["verified"]["max_abs_diff"] <= 1e-4
    assert meta["tensorrt_unsupported_ops"] == []


@needs_onnx
@pytest.mark.parametrize("arena", [True, False])
def test_ort_runtime_runs_a_batch_in_smaller_runs(model, onnx_dynamic, arena):
    """OrtRuntime(max_batch=2) on 5 images: runs of 2, 2, 1, the same output
    as the PyTorch model on the whole batch."""
    from semimoe.deploy import OrtRuntime

    path, _ = onnx_dynamic
    rt = OrtRuntime(path, max_batch=2, memory_arena=arena)
    runs = []
    real = rt.session.run
    rt.session.run = lambda names, feed: runs.append(next(iter(feed.values())).shape[0]) or real(names, feed)
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ref = model.predictor()(x)
    got = rt(x)
    assert runs == [2, 2, 1]
    assert got.shape == ref.shape and float((got - ref).abs().max()) <= 1e-4
    with pytest.raises(ValueError, match="max_batch"):
        OrtRuntime(path, max_batch=0)


@needs_onnx
def test_onnx_file_metadata_and_opset(onnx_dynamic):
    path, meta = onnx_dynamic
    m = onnx.load(str(path))
    assert {o.domain: o.version for o in m.opset_import}[""] == DEFAULT_OPSET
    inp = m.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "image" and all(d.dim_param for d in (dims[0], dims[2], dims[3])) and dims[1].dim_value == 3
    props = {p.key: p.value for p in m.metadata_props}
    embedded = json.loads(props["semimoe"])
    assert embedded["norm"] == NORM and embedded["scale"] == SCALE and embedded["input"]["size_multiple"] == 8
    assert embedded["input"]["tile"] is None  # dynamic H/W
    assert json.loads(dmeta.sidecar_path(path).read_text())["norm"] == NORM


@needs_onnx
def test_every_exported_onnx_op_is_supported_by_tensorrt(onnx_dynamic):
    # Operator coverage from onnx-tensorrt's docs/operators.md (TensorRT 10.15,
    # opset 9-24; TensorRT 10.0: opset 9-20 -- the export uses opset 18).
    path, meta = onnx_dynamic
    m = onnx.load(str(path))
    ops = {n.op_type for n in m.graph.node}
    assert {"Conv", "ConvTranspose", "MaxPool", "Softmax"} <= ops and "Resize" not in ops
    assert ops <= SUPPORTED, ops - SUPPORTED
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node)
    assert check_onnx_model(m) == [] and meta["tensorrt_unsupported_ops"] == []
    check_trt_restrictions(m)


def check_trt_restrictions(m):
    """The restrictions of the matrix that apply to semimoe's graphs."""
    consts = {i.name for i in m.graph.initializer} | {o for n in m.graph.node if n.op_type == "Constant"
                                                      for o in n.output}
    for n in m.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Resize":  # nearest x2 upsampling: a mode the matrix lists, no antialiasing
            assert attrs.get("mode", b"nearest") == b"nearest" and not attrs.get("antialias", 0)
        if n.op_type.startswith("Reduce") and len(n.input) > 1:  # `axes` must be an initializer
            assert n.input[1] in consts, n
        if n.op_type in ("MaxPool", "AveragePool"):  # 2D, no Indices output, no dilations
            assert len(n.output) == 1 and set(attrs.get("dilations", [1])) == {1}


@needs_onnx
def test_image_gate_model_exports_with_supported_ops(tmp_path):
    # The reference (per-image) gate adds global pooling and Linear layers.
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("paper", base_width=4, depth=3)).eval()
    meta = export_onnx(model, tmp_path / "img.onnx", spec=SPEC, tile=TILE, log=quiet)
    m = onnx.load(str(tmp_path / "img.onnx"))
    assert {"Gemm", "ReduceMean"} & {n.op_type for n in m.graph.node}
    assert check_onnx_model(m) == [] and meta["verified"]["max_abs_diff"] <= 1e-4
    check_trt_restrictions(m)


def test_trt_supported_ops_list():
    assert not SUPPORTED & UNSUPPORTED
    assert {"Conv", "Relu", "BatchNormalization", "Concat", "Resize", "MaxPool", "Gemm"} <= SUPPORTED
    assert unsupported_ops(["Conv", "Unique", "MyOp"], {"MyOp": "custom"}) == ["Unique", "custom::MyOp"]


@needs_onnx
def test_onnx_fp16_export_runs_in_onnxruntime(model, tmp_path):
    path = tmp_path / "m16.onnx"
    meta = export_onnx(model, path, spec=SPEC, tile=TILE, precision="fp16", dynamic_spatial=False, log=quiet)
    m = onnx.load(str(path))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)  # fp16 weights
    v = meta["verified"]
    if "max_abs_diff" not in v:
        pytest.skip(f"onnxruntime here cannot run fp16 graphs: {v['onnxruntime']}")
    assert v["max_abs_diff"] <= 5e-2


@needs_onnx
def test_export_cli_static_onnx(model, tmp_path):
    from semimoe.export import main

    ck = save_checkpoint(model, tmp_path / "ck.pt")
    assert main(["--checkpoint", str(ck), "--format", "onnx", "--tile", "64", "--static-spatial"]) == 0
    m = onnx.load(str(tmp_path / "ck.onnx"))
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 64, 64]
    from semimoe.deploy import OrtRuntime

    be = OrtRuntime(tmp_path / "ck.onnx")
    assert be.tile == (64, 64) and be.size_multiple == 8
    with pytest.raises(ValueError, match="built for"):
        sliding_window(be, torch.randn(3, 100, 100), tile=128)


@needs_onnx
def test_export_cli_errors(tmp_path):
    from semimoe.export import main

    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--format", "onnx"]) == 2
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(tmp_path / "bad.pt"), "--format", "onnx"]) == 2
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x.pt", "--format", "tflite"])


# ----------------------------------------------------------------------------
# AOTInductor
# ----------------------------------------------------------------------------
def test_aoti_package_parity_and_tiled_inference(model, tmp_path):
    """One compile (~1 min on 2 cores): parity, metadata, tiled inference and
    the inference CLI with the aoti backend."""
    path = tmp_path / "model.pt2"
    meta = export_aoti(model, path, spec=SPEC, tile=TILE, max_batch=8, log=quiet)
    assert meta["verified"]["max_abs_diff"] <= 1e-4
    from semimoe.deploy import AOTIRuntime, load_runtime

    be, m2 = load_runtime(path)  # exported here: trusted without a flag
    assert isinstance(be, AOTIRuntime) and be.tile == (TILE, TILE) and m2["norm"] == NORM
    # the same file seen from a machine that did not export it: native code needs trust
    from semimoe.deploy import trust as T
    from semimoe.errors import UntrustedModelError

    store = os.environ["SEMIMOE_TRUST_STORE"]
    os.environ["SEMIMOE_TRUST_STORE"] = str(tmp_path / "other-store.json")
    try:
        with pytest.raises(UntrustedModelError, match="--trust-model"):
            load_runtime(path)
        assert isinstance(load_runtime(path, trust=True)[0], AOTIRuntime)
        from semimoe.infer import main as infer_cli

        assert infer_cli(["--model", str(path), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
        assert T.main([str(path)]) == 0 and T.is_trusted(path)
        assert isinstance(load_runtime(path)[0], AOTIRuntime)
        changed = tmp_path / "changed.pt2"
        changed.write_bytes(path.read_bytes() + b"\0")  # any other bytes: not the trusted file
        with pytest.raises(UntrustedModelError):
            load_runtime(changed)
    finally:
        os.environ["SEMIMOE_TRUST_STORE"] = store
    with torch.inference_mode():
        for b in (1, 3, 8):
            x = torch.randn(b, 3, TILE, TILE, generator=torch.Generator().manual_seed(b))
            assert float((be(x) - model.predictor()(x)).abs().max()) <= 1e-4
        img = torch.randn(3, 150, 97)
        a = sliding_window(be, img, tile=TILE, batch_size=8)
        t = sliding_window(model.predictor(), img, tile=TILE, batch_size=8)
    assert float((a - t).abs().max()) <= 1e-4

    from PIL import Image

    from semimoe.infer import main as infer_main

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(src / "a.png")
    out = tmp_path / "out"
    assert infer_main(["--model", str(path), "--input", str(src), "--output", str(out), "--quiet"]) == 0
    assert np.asarray(Image.open(out / "a_mask.png")).shape == (90, 130)
    # the package was compiled for 64x64 tiles
    assert infer_main(["--model", str(path), "--input", str(src), "--output", str(out), "--tile", "128",
                       "--quiet"]) == 2


# ----------------------------------------------------------------------------
# TensorRT
# ----------------------------------------------------------------------------
def _trt_installed() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_trt_installed(), reason="TensorRT is installed: the missing-TensorRT message is not shown")
def test_export_tensorrt_without_tensorrt_says_how_to_install(tmp_path):
    ck = save_checkpoint(make_model(), tmp_path / "ck.pt")
    r = subprocess.run([sys.executable, "-m", "semimoe.export", "--checkpoint", str(ck), "--format", "tensorrt"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode != 0
    assert "TensorRT is not installed" in r.stderr and "pip install" in r.stderr
    assert not (tmp_path / "ck.engine").exists()


@needs_onnx
@pytest.mark.needs_cuda
def test_tensorrt_engine_build_and_run(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be installed here)")
    from semimoe.deploy.tensorrt import TensorRTRuntime
    from semimoe.export import export_tensorrt

    model = make_model()
    path = tmp_path / "m.engine"
    meta = export_tensorrt(model, path, spec=SPEC, tile=TILE, batch=(1, 4, 8), precision="fp16", log=quiet)
    be = TensorRTRuntime(path)
    x = torch.randn(5, 3, TILE, TILE, device="cuda")
    with torch.inference_mode():
        ref = model.cuda().predictor()(x)
    assert meta["tensorrt"] and float((be(x) - ref).abs().max()) <= 5e-2


class FakeTensorRT(types.ModuleType):
    """Records what semimoe asks of the TensorRT 10 Python API. Only the calls
    semimoe makes exist; their signatures follow the TensorRT 10 docs."""

    def __init__(self, version="10.99.1"):
        super().__init__("tensorrt")
        import importlib.machinery

        # a spec, as every imported module has (torch.export asks importlib about loaded modules)
        self.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        self.__version__ = version
        self.calls = []
        rec = self.calls

        class Logger:
            WARNING, VERBOSE = "WARNING", "VERBOSE"

            def __init__(self, severity):
                rec.append(("Logger", severity))

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 0

        class MemoryPoolType:
            WORKSPACE = "WORKSPACE"

        class Tensor:
            name = "image"

        class Network:
            num_inputs = 1

            def get_input(self, i):
                return Tensor()

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                rec.append(("set_shape", name, tuple(mn), tuple(opt), tuple(mx)))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.append(("set_memory_pool_limit", pool, size))

            def add_optimization_profile(self, p):
                rec.append(("add_optimization_profile",))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.append(("build_serialized_network",))
                return b"FAKE-PLAN"

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def parse_from_file(self, path):
                m = onnx.load(path)
                self.errors = check_onnx_model(m)
                self.num_errors = len(self.errors)
                rec.append(("parse_from_file", Path(path).name))
                return not self.errors

            def get_error(self, i):
                return f"unsupported op {self.errors[i]}"

        for k, v in dict(Logger=Logger, NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
                         MemoryPoolType=MemoryPoolType, Builder=Builder, OnnxParser=OnnxParser).items():
            setattr(self, k, v)


@needs_onnx
def test_tensorrt_build_logic_against_a_fake_tensorrt(tmp_path, monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    from semimoe.export import main

    ck = save_checkpoint(make_model(), tmp_path / "ck.pt")
    assert main(["--checkpoint", str(ck), "--format", "tensorrt", "--tile", "64", "--batch", "1,4,8",
                 "--workspace-gib", "1"]) == 0
    assert (tmp_path / "ck.engine").read_bytes() == b"FAKE-PLAN"
    names = [c[0] for c in fake.calls]
    assert names.index("create_network") < names.index("parse_from_file") < names.index("set_shape") \
        < names.index("build_serialized_network")
    assert ("create_network", 1) in fake.calls  # 1 << STRONGLY_TYPED
    assert ("set_shape", "image", (1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)) in fake.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 1 << 30) in fake.calls
    meta = json.loads((tmp_path / "ck.engine.json").read_text())
    assert meta["tensorrt"] == "10.99.1" and meta["precision"] == "fp16" and meta["norm"] == NORM
    assert meta["input"]["tile"] == [64, 64] and meta["input"]["batch"] == [1, 4, 8]
    # the fp16 ONNX file the engine was parsed from carries fp16 types (strongly typed network)
    m = onnx.load(str(tmp_path / "ck.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)

    # The runner refuses an engine from another TensorRT version, before touching the GPU.
    from semimoe.deploy.tensorrt import EngineMismatch, TensorRTRuntime

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(version="10.3.0"))
    with pytest.raises(EngineMismatch, match=r"built with TensorRT 10\.99\.1.*10\.3\.0.*rebuild"):
        TensorRTRuntime(tmp_path / "ck.engine")
    (tmp_path / "ck.engine.json").unlink()
    with pytest.raises(CheckpointError, match="metadata"):
        TensorRTRuntime(tmp_path / "ck.engine")


def test_engine_meta_checks():
    from semimoe.deploy.tensorrt import EngineMismatch, check_engine_meta

    m = {"tensorrt": "10.8.0", "compute_capability": "9.0", "gpu": "H100"}
    check_engine_meta(m, "10.8.0", {"compute_capability": "9.0"})
    with pytest.raises(EngineMismatch, match="compute capability 9.0"):
        check_engine_meta(m, "10.8.0", {"compute_capability": "8.0", "gpu": "A100"})
    with pytest.raises(EngineMismatch, match="does not say"):
        check_engine_meta({}, "10.8.0")
