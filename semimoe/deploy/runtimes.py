"""Deployment runtimes: one callable interface over PyTorch, onnxruntime,
AOTInductor and TensorRT. (Op *backends* -- C++, CUDA, Triton, reference --
are a different thing: :mod:`semimoe._backend`.)

A runtime maps a float32 tile batch x (B, 3, th, tw) (normalised) to
(B, 3, th, tw) probabilities (channels: seg background, seg gland, boundary)
and declares what :func:`semimoe.inference.sliding_window` needs to know:

* ``device``: where inputs are expected and outputs come back;
* ``tile``: the spatial size it was compiled for (None: any multiple of
  ``size_multiple``);
* ``size_multiple``: H and W must be multiples of it (the model's pooling);
* ``fixed_batch``: True if every call must have the same batch size (a
  statically compiled graph; the tiler pads the last batch).

:func:`load_runtime` opens a checkpoint or an exported artifact and returns
``(runtime, metadata)``; the metadata holds the model's
:class:`~semimoe.data.scale.InputSpec` (``norm`` and ``scale``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CheckpointError, SemimoeError, UsageError, describe
from . import meta as _meta
from .trust import check_trusted

__all__ = ["TorchRuntime", "OrtRuntime", "AOTIRuntime", "load_runtime", "RUNTIMES", "runtime_for_path",
           "RuntimeUnavailable"]

RUNTIMES = ("torch", "onnxruntime", "aoti", "tensorrt")
_SUFFIXES = {
    ".pt": "torch", ".pth": "torch", ".ckpt": "torch",
    ".onnx": "onnxruntime",
    ".pt2": "aoti",
    ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt",
}


class RuntimeUnavailable(SemimoeError, RuntimeError):
    """A runtime's package is not installed (the message says how to install it)."""


# Largest chunk of tile pixels the CPU runtime runs at once (2 tiles of
# 256x256): measured on the cpu-demo predictor at 1 thread, 8 tiles of 256x256
# took 3.08 s as one batch, 2.66 s in chunks of 4, 2.02 s in chunks of 2 and
# 2.05 s one by one (eager, BatchNorm folded); torch.compile (freezing) 2.39 s
# as one batch, 2.09 s in chunks of 2.
CPU_CHUNK_PIXELS = 2 * 256 * 256


def in_chunks(fn, x: Tensor, chunk_pixels: int) -> Tensor:
    """``fn(x)``, computed over chunks of x's batch of at most ``chunk_pixels``
    pixels (at least one image each) and concatenated; ``chunk_pixels`` 0:
    one call. Small chunks keep every activation small enough for the C
    allocator to reuse freed memory instead of mapping (and page-faulting)
    fresh memory for each large tensor. Each tile's result is independent of
    the chunking up to float rounding (eval mode: tiles are independent)."""
    n = max(1, chunk_pixels // max(1, x.shape[-2] * x.shape[-1])) if chunk_pixels else 0
    if n and x.shape[0] > n:
        return torch.cat([fn(c) for c in x.split(n)])
    return fn(x)


class TorchRuntime:
    """PyTorch eager or ``torch.compile`` runtime.

    Args:
        module: predictor module x (B,3,H,W) -> (B,3,H,W) (``SemiMoE.predictor()``).
        device: where to run (default: the module's device).
        channels_last: convert weights and inputs to channels-last (faster
            convolutions with oneDNN on CPU and cuDNN on GPU).
        compile: False, True (``torch.compile``, static shapes, inductor
            freezing: constant-folded BatchNorm and pre-packed weights) or a
            ``torch.compile`` mode string (``"max-autotune"``...). Static
            shapes mean one compilation per tile shape: the tiler pads the
            last batch (``fixed_batch``).
        autocast: None, ``torch.float16`` or ``torch.bfloat16``: run under
            autocast (GPU); outputs are returned as float32.
        inference_copy: run :func:`semimoe.models.inference_copy` of the
            module (default): every BatchNorm folded into the convolution
            before it and, on CPU, every upsample + 3x3 convolution run as
            one stride-2 transposed convolution with the kernel combined
            once. Same values up to float rounding; the original module is
            left as it is.

    Without the inference copy the module is put in eval mode, moved and
    (``channels_last``) converted in place, like ``module.to(...)``; pass a
    copy to keep the original.
    """

    name = "torch"

    def __init__(self, module: nn.Module, device: Union[str, torch.device, None] = None,
                 channels_last: bool = True, compile: Union[bool, str] = False,
                 autocast: Optional[torch.dtype] = None, inference_copy: bool = True):
        if device is None:
            p = next(module.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        if inference_copy:
            from ..models.fold import inference_copy as make_copy

            module = make_copy(module, transposed=self.device.type == "cpu")
        module = module.eval().to(self.device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.channels_last = channels_last
        self.size_multiple = int(getattr(module, "size_multiple", 1))
        self.tile = None
        self.autocast = autocast
        self.fixed_batch = bool(compile)
        if compile:
            kw: Dict[str, Any] = {"dynamic": False, "fullgraph": True}
            if isinstance(compile, str) and compile not in ("default", "true", "1"):
                kw["mode"] = compile
            else:
                # freezing: parameters become constants, BatchNorm folds into the
                # convolutions and CPU weights are pre-packed (inference only).
                kw["options"] = {"freezing": True}
            self.fn = torch.compile(module, **kw)
        else:
            self.fn = module
        # On CPU: tiles in chunks of at most CPU_CHUNK_PIXELS (see __call__);
        # compiled, the model then sees only the chunk's batch size.
        self.chunk_pixels = CPU_CHUNK_PIXELS if self.device.type == "cpu" else 0

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            x = x.to(self.device, torch.float32)
            x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()
            return in_chunks(self._run, x, self.chunk_pixels)

    def _run(self, x: Tensor) -> Tensor:
        if self.autocast is not None:
            with torch.autocast(self.device.type, dtype=self.autocast):
                return self.fn(x).float()
        return self.fn(x).float()

    def __repr__(self) -> str:
        return f"TorchRuntime(device={self.device}, channels_last={self.channels_last}, fixed_batch={self.fixed_batch})"


def _import_onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeUnavailable(
            "onnxruntime is not installed: pip install onnxruntime (or pip install 'semimoe[deploy]')") from exc
    return ort


class OrtRuntime:
    """onnxruntime session over an ONNX file exported by ``semimoe.export``.

    CPU: numpy in/out. CUDA (``device="cuda"`` and onnxruntime-gpu's
    ``CUDAExecutionProvider``): torch tensors bound in place with IO binding.
    """

    name = "onnxruntime"

    def __init__(self, path: Union[str, os.PathLike], device: Union[str, torch.device, None] = None,
                 providers: Optional[list] = None, threads: Optional[int] = None, memory_arena: bool = True,
                 max_batch: Optional[int] = None):
        ort = _import_onnxruntime()
        self.device = torch.device(device or "cpu")
        if max_batch is not None and int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
        # CPU: a batch is run max_batch images per session.run. Convolutions on
        # the CPU gain nothing from big batches, but the arena's high-water mark
        # grows with the batch: 5.3 GB at 8 x 512^2 with the demo model, 1.4 GB at 2.
        self.max_batch = None if max_batch is None else int(max_batch)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        # memory_arena=False: every run allocates and frees its own buffers (the
        # arena keeps its high-water mark for good; max_batch bounds that mark)
        so.enable_cpu_mem_arena = bool(memory_arena)
        # Between two tile batches the tiler blends on the same cores; idle
        # onnxruntime workers must sleep, not spin, or they steal that time.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if providers is None:
            if self.device.type == "cuda":
                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    raise RuntimeUnavailable("this onnxruntime has no CUDAExecutionProvider: "
                                             "pip install onnxruntime-gpu, or use device='cpu'")
                providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}),
                             "CPUExecutionProvider"]
            else:
                providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        h, w = inp.shape[2], inp.shape[3]
        self.tile = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        meta = self.metadata()
        self.size_multiple = int(((meta or {}).get("input") or {}).get("size_multiple") or 1)
        self.fixed_batch = not isinstance(inp.shape[0], str) and inp.shape[0] is not None
        self._out_channels = out.shape[1] if isinstance(out.shape[1], int) else 3

    def metadata(self) -> Optional[Dict[str, Any]]:
        props = self.session.get_modelmeta().custom_metadata_map
        if _meta.META_KEY in props:
            return _meta.parse(props[_meta.META_KEY], "ONNX metadata_props")
        return None

    def __call__(self, x: Tensor) -> Tensor:
        if self.device.type == "cuda":
            return self._run_cuda(x)
        a = x.detach().to("cpu", torch.float32).contiguous().numpy()
        step = self.max_batch if self.max_batch and not self.fixed_batch else a.shape[0]
        if a.shape[0] <= step:
            return torch.from_numpy(self.session.run([self.output_name], {self.input_name: a})[0])
        out = None
        for i in range(0, a.shape[0], step):
            y = self.session.run([self.output_name], {self.input_name: a[i:i + step]})[0]
            if out is None:
                out = np.empty((a.shape[0],) + y.shape[1:], dtype=y.dtype)
            out[i:i + y.shape[0]] = y
        return torch.from_numpy(out)

    def _run_cuda(self, x: Tensor) -> Tensor:
        x = x.detach().to(self.device, torch.float32).contiguous()
        out = torch.empty((x.shape[0], self._out_channels, x.shape[2], x.shape[3]),
                          dtype=torch.float32, device=self.device)
        torch.cuda.current_stream(self.device).synchronize()  # x is written on torch's stream
        b = self.session.io_binding()
        idx = self.device.index or 0
        b.bind_input(self.input_name, "cuda", idx, np.float32, tuple(x.shape), x.data_ptr())
        b.bind_output(self.output_name, "cuda", idx, np.float32, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(b)
        return out


class AOTIRuntime:
    """AOTInductor package (``.pt2``) written by ``semimoe.export --format aoti``.

    The package is compiled code for one device type and one tile size (the
    batch is dynamic); inputs are passed as contiguous NCHW.
    """

    name = "aoti"

    def __init__(self, path: Union[str, os.PathLike], device: Union[str, torch.device, None] = None):
        self.runner = torch._inductor.aoti_load_package(str(path))
        raw = self.runner.get_metadata()
        self.meta = _meta.parse(raw[_meta.META_KEY], f"{path} package metadata") if _meta.META_KEY in raw \
            else _meta.read_sidecar(path, required=True)
        built_for = raw.get("AOTI_DEVICE_KEY", "cpu")
        self.device = torch.device(device or built_for)
        if self.device.type != torch.device(built_for).type:
            raise UsageError(f"{path} was compiled for {built_for}, cannot run on {self.device}; "
                             f"re-export with --device {self.device.type}")
        inp = self.meta["input"]
        self.tile = tuple(inp["tile"]) if inp.get("tile") else None
        self.size_multiple = int(inp.get("size_multiple") or 1)
        self.fixed_batch = False
        # On CPU: tiles in chunks, as TorchRuntime (the batch is dynamic).
        self.chunk_pixels = CPU_CHUNK_PIXELS if self.device.type == "cpu" else 0

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            return in_chunks(self.runner, x.to(self.device, torch.float32).contiguous(), self.chunk_pixels)


def runtime_for_path(path: Union[str, os.PathLike]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise UsageError(f"cannot tell the runtime of {path} from its suffix {suffix!r} "
                         f"(known: {', '.join(sorted(_SUFFIXES))}); pass --runtime")
    return _SUFFIXES[suffix]


def load_runtime(path: Union[str, os.PathLike], runtime: str = "auto",
                 device: Union[str, torch.device, None] = None, **kwargs: Any) -> Tuple[Any, Dict[str, Any]]:
    """Open a model file and return ``(runtime, metadata)``.

    Args:
        path: a training checkpoint (``.pt``, runtime ``torch``), an ONNX file
            (``onnxruntime``), an AOTInductor package (``.pt2``, ``aoti``) or a
            TensorRT engine (``.engine``/``.plan``, ``tensorrt``).
        runtime: ``"auto"`` (from the suffix) or one of :data:`RUNTIMES`.
        device: ``"cpu"``, ``"cuda"``... (default: CPU, CUDA for TensorRT).
        kwargs: passed to the runtime (``TorchRuntime``: ``compile``,
            ``channels_last``, ``autocast``, and ``fusion`` for the model;
            ``OrtRuntime``: ``providers``, ``threads``, ``memory_arena``,
            ``max_batch``); ``trust=True`` runs an AOTInductor package or
            TensorRT engine that is not in the trust store
            (:mod:`semimoe.deploy.trust`: they hold native code).

    The metadata holds ``norm`` and ``scale`` (read them with
    :meth:`semimoe.data.scale.InputSpec.from_meta`) and ``input.size_multiple``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist" if not path.exists() else
                              f"model file {path} is not a file")
    kind = runtime_for_path(path) if runtime == "auto" else runtime
    if kind not in RUNTIMES:
        raise UsageError(f"runtime must be 'auto' or one of {', '.join(RUNTIMES)}, got {runtime!r}")
    trusted = bool(kwargs.pop("trust", False))
    if kind in ("aoti", "tensorrt"):
        check_trusted(path, trusted)
    if kind == "torch":
        from ..models import load_checkpoint

        fusion = kwargs.pop("fusion", None)
        model, ck = load_checkpoint(path, map_location=device or "cpu")
        if fusion is not None:
            model.set_fusion(fusion)
        rt = TorchRuntime(model.predictor(), device=device, **kwargs)
        meta = {k: ck.get(k) for k in ("norm", "scale", "model_config", "data_config")}
        meta["input"] = {"size_multiple": model.size_multiple, "tile": None}
        return rt, meta
    if kind == "onnxruntime":
        try:
            rt = OrtRuntime(path, device=device, **kwargs)
        except RuntimeUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CheckpointError(f"cannot load ONNX model {path} ({describe(e)})") from None
        return rt, rt.metadata() or _meta.read_sidecar(path, required=True)
    if kind == "aoti":
        try:
            rt = AOTIRuntime(path, device=device)
        except (RuntimeError, OSError, KeyError) as e:
            raise CheckpointError(f"cannot load AOTInductor package {path} ({describe(e)})") from None
        return rt, rt.meta
    from .tensorrt import TensorRTRuntime

    rt = TensorRTRuntime(path, device=device or "cuda", **kwargs)
    return rt, rt.meta
