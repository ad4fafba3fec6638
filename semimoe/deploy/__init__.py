"""Deployment runtimes and exported-artifact metadata.

* :mod:`.runtimes` -- :class:`TorchRuntime`, :class:`OrtRuntime`,
  :class:`AOTIRuntime` and :func:`load_runtime` (checkpoint or exported file
  -> callable runtime + metadata);
* :mod:`.tensorrt` -- TensorRT engine build and runtime (``tensorrt``
  imported lazily; untested here, see the module docstring);
* :mod:`.trt_supported_ops` -- ONNX operators supported by TensorRT's parser;
* :mod:`.meta` -- the JSON metadata written next to every artifact.

"Runtime" here is what runs a whole model; the per-op "backends" (C++, CUDA,
Triton, reference) are :mod:`semimoe._backend`. Exporting is
``python -m semimoe.export``; the prediction path is
:class:`semimoe.inference.Predictor` and ``python -m semimoe.infer``.
"""
from .runtimes import (  # noqa: F401
    RUNTIMES,
    AOTIRuntime,
    OrtRuntime,
    RuntimeUnavailable,
    TorchRuntime,
    load_runtime,
    runtime_for_path,
)

__all__ = ["RUNTIMES", "AOTIRuntime", "OrtRuntime", "RuntimeUnavailable", "TorchRuntime", "load_runtime",
           "runtime_for_path"]
