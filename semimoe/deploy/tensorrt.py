"""TensorRT engine build and runner (TensorRT 10+ Python API).

UNTESTED WITH A REAL TensorRT: TensorRT cannot be installed on any machine
this project is developed or tested on. This module is written against the
documented TensorRT 10 Python API; CI runs it against a fake ``tensorrt``
module that records the calls (tests/test_export.py), which checks the call
sequence, the profile shapes, the metadata and the error paths -- not that a
real engine builds or runs. ``tensorrt`` is imported lazily, only here.

Build (:func:`build_engine`):
  Builder -> network created with the ``STRONGLY_TYPED`` flag (precision comes
  from the ONNX model's tensor types: export the ONNX file in fp16/bf16 to get
  an fp16/bf16 engine; TensorRT 11 removed the FP16/BF16 builder flags and
  made strong typing the default) -> ``OnnxParser.parse_from_file`` -> one
  optimisation profile for the input (batch min/opt/max, spatial size fixed to
  the tile) -> ``build_serialized_network``. The plan is written to
  ``<engine>`` and the metadata (TensorRT version, GPU, compute capability,
  tile, batch profile, normalisation, precision) to ``<engine>.json``.

Run (:class:`TensorRTRuntime`): checks the metadata against the installed
TensorRT version and the GPU (engines are specific to both) and raises
:class:`EngineMismatch` with the rebuild command if they differ, then
``Runtime.deserialize_cuda_engine``, ``create_execution_context``, and per
call ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` on
PyTorch's current CUDA stream with torch-allocated buffers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import SemimoeError, UsageError
from . import meta as _meta

__all__ = ["build_engine", "TensorRTRuntime", "TensorRTUnavailable", "EngineMismatch",
           "import_tensorrt", "INSTALL_HINT"]

INSTALL_HINT = (
    "TensorRT is not installed. It needs an NVIDIA GPU with a recent driver. Install it with\n"
    "    pip install 'tensorrt>=10'        (or: pip install 'semimoe[tensorrt]')\n"
    "or from NVIDIA's TensorRT packages for your CUDA version; check with\n"
    "    python -c \"import tensorrt; print(tensorrt.__version__)\"\n"
    "Without TensorRT, export ONNX (--format onnx) and run it with onnxruntime, or use --format aoti.")


class TensorRTUnavailable(SemimoeError, ImportError):
    """``tensorrt`` cannot be imported; the message says how to install it."""


class EngineMismatch(SemimoeError, RuntimeError):
    """An engine was built by another TensorRT version or for another GPU."""


def import_tensorrt():
    """Import ``tensorrt`` or raise :class:`TensorRTUnavailable` with install instructions."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as exc:
        raise TensorRTUnavailable(INSTALL_HINT) from exc
    return trt


def _logger(trt, verbose: bool):
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def _network_flags(trt) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    # TensorRT 11 deprecates the flag (strong typing is always on); keep setting
    # it while it exists so 10.x builds honour the ONNX types.
    return 0 if flag is None else 1 << int(flag)


def _gpu_info() -> Dict[str, Any]:
    if not torch.cuda.is_available():
        return {}
    i = torch.cuda.current_device()
    cc = torch.cuda.get_device_capability(i)
    return {"gpu": torch.cuda.get_device_name(i), "compute_capability": f"{cc[0]}.{cc[1]}"}


def build_engine(onnx_path: Union[str, os.PathLike], engine_path: Union[str, os.PathLike], *,
                 tile: Sequence[int], batch: Sequence[int] = (1, 8, 16), workspace_gib: float = 4.0,
                 meta: Optional[Dict[str, Any]] = None, verbose: bool = False) -> Dict[str, Any]:
    """Build a TensorRT engine from an ONNX file exported by ``semimoe.export``.

    Args:
        onnx_path: ONNX model (input ``image`` (B, 3, H, W), output ``prob``).
        engine_path: where the serialized plan is written (``.engine``).
        tile: (th, tw): the engine's fixed spatial size.
        batch: (min, opt, max) tile batch of the optimisation profile.
        workspace_gib: builder workspace memory pool limit.
        meta: the ONNX file's metadata (normalisation, model config...);
            TensorRT fields are added.

    Returns the metadata written to ``<engine_path>.json``.
    """
    trt = import_tensorrt()
    bmin, bopt, bmax = (int(b) for b in batch)
    if not 1 <= bmin <= bopt <= bmax:
        raise UsageError(f"--batch: the profile must satisfy 1 <= min <= opt <= max, got {tuple(batch)}")
    th, tw = (int(t) for t in tile)
    logger = _logger(trt, verbose)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{errors}")
    if network.num_inputs != 1:
        raise RuntimeError(f"expected one network input, the ONNX file has {network.num_inputs}")
    inp = network.get_input(0)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    c = 3
    profile.set_shape(inp.name, (bmin, c, th, tw), (bopt, c, th, tw), (bmax, c, th, tw))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(plan)  # IHostMemory supports the buffer protocol
    m = dict(meta or {})
    m.setdefault("schema", _meta.SCHEMA)
    m.setdefault("schema_version", _meta.SCHEMA_VERSION)
    m["artifact"] = "tensorrt"
    m["tensorrt"] = trt.__version__
    m["strongly_typed"] = _network_flags(trt) != 0 or int(trt.__version__.split(".")[0]) >= 11
    m.update(_gpu_info())
    m["input"] = {**(m.get("input") or {}), "name": inp.name, "tile": [th, tw], "batch": [bmin, bopt, bmax]}
    m["onnx"] = Path(onnx_path).name
    _meta.write_sidecar(engine_path, m)
    return m


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                 "INT32": torch.int32, "INT64": torch.int64, "INT8": torch.int8,
                 "UINT8": torch.uint8, "BOOL": torch.bool}


def _torch_dtype(trt_dtype) -> torch.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _TORCH_DTYPES:
        raise TypeError(f"unsupported TensorRT tensor type {trt_dtype}")
    return _TORCH_DTYPES[name]


def check_engine_meta(meta: Dict[str, Any], trt_version: str, gpu: Optional[Dict[str, Any]] = None,
                      path: str = "engine") -> None:
    """Raise :class:`EngineMismatch` if ``meta`` was built by another TensorRT
    version or for a GPU of another compute capability."""
    built = meta.get("tensorrt")
    hint = ("rebuild it on this machine: python -m semimoe.export --checkpoint CKPT --format tensorrt "
            f"--output {path}")
    if not built:
        raise EngineMismatch(f"{path}: its metadata does not say which TensorRT built it; {hint}")
    if str(built) != str(trt_version):
        raise EngineMismatch(f"{path} was built with TensorRT {built}, this runtime is TensorRT {trt_version}; "
                             f"TensorRT engines only run on the version that built them; {hint}")
    cc = meta.get("compute_capability")
    if gpu and cc and gpu.get("compute_capability") and gpu["compute_capability"] != cc:
        raise EngineMismatch(f"{path} was built for a GPU of compute capability {cc} ({meta.get('gpu')}), "
                             f"this GPU is {gpu['compute_capability']} ({gpu.get('gpu')}); {hint}")


class TensorRTRuntime:
    """Run a TensorRT engine written by :func:`build_engine` on CUDA tensors.

    ``runtime(x)``: x (B, 3, th, tw) float32 on the GPU (any B; batches above
    the profile's maximum are split) -> (B, 3, th, tw) float32.
    """

    name = "tensorrt"

    def __init__(self, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cuda",
                 verbose: bool = False):
        trt = import_tensorrt()
        self.path = Path(path)
        self.meta = _meta.read_sidecar(self.path, required=True)
        check_engine_meta(self.meta, trt.__version__, _gpu_info(), str(self.path))
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError("TensorRT engines run on CUDA devices only")
        self._trt = trt
        self._logger = _logger(trt, verbose)
        self.runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise EngineMismatch(f"TensorRT could not deserialize {self.path} (corrupt file, or built by "
                                     "another TensorRT version / for another GPU); rebuild it")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise RuntimeError(f"expected 1 input and 1 output tensor, the engine has {ins} and {outs}")
        self.input_name, self.output_name = ins[0], outs[0]
        self.input_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.output_name))
        inp = self.meta.get("input") or {}
        self.tile: Optional[Tuple[int, int]] = tuple(inp["tile"]) if inp.get("tile") else None
        self.size_multiple = int(inp.get("size_multiple") or 1)
        self.max_batch = int((inp.get("batch") or [1, 1, 1])[2])
        self.fixed_batch = False

    def __call__(self, x: Tensor) -> Tensor:
        outs = [self._run(x[i:i + self.max_batch]) for i in range(0, x.shape[0], self.max_batch)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def _run(self, x: Tensor) -> Tensor:
        x = x.to(self.device, self.input_dtype).contiguous()
        ctx = self.context
        if not ctx.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(f"input shape {tuple(x.shape)} is outside the engine's profile "
                             f"(batch {self.meta['input'].get('batch')}, tile {self.tile})")
        out = torch.empty(tuple(ctx.get_tensor_shape(self.output_name)), dtype=self.output_dtype,
                          device=self.device)
        ctx.set_tensor_address(self.input_name, x.data_ptr())
        ctx.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        # Work is ordered on torch's current stream: callers see a finished `out`.
        return out.float()
