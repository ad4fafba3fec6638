"""Deployment backends and exported-artifact metadata.

* :mod:`.backends` -- :class:`TorchBackend`, :class:`OnnxRuntimeBackend`,
  :class:`AOTIBackend` and :func:`load_backend` (checkpoint or exported file
  -> callable backend + metadata);
* :mod:`.tensorrt` -- TensorRT engine build and runner (``tensorrt`` imported
  lazily; untested here, see the module docstring);
* :mod:`.trt_supported_ops` -- ONNX operators supported by TensorRT's parser;
* :mod:`.meta` -- the JSON metadata written next to every artifact.

Exporting is ``python -m semimoe.export``; tiled inference is
:mod:`semimoe.inference` and ``python -m semimoe.infer``.
"""
from .backends import (  # noqa: F401
    BACKENDS,
    AOTIBackend,
    BackendUnavailable,
    OnnxRuntimeBackend,
    TorchBackend,
    backend_for_path,
    load_backend,
)

__all__ = ["BACKENDS", "AOTIBackend", "BackendUnavailable", "OnnxRuntimeBackend", "TorchBackend",
           "backend_for_path", "load_backend"]
