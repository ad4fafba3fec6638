"""``python -m semimoe.info``: versions, compiled modules and available backends."""
from __future__ import annotations

import os
import platform
import sys
import types


def _version(mod_name: str) -> str:
    try:
        mod = __import__(mod_name)
        return getattr(mod, "__version__", "installed")
    except Exception as exc:  # noqa: BLE001 - report anything that stops the import
        return f"not available ({type(exc).__name__})"


def info_dict() -> dict:
    import torch

    from . import __version__
    from ._backend import cpu_ext, cuda_ext, extension_error

    cpu, cuda = cpu_ext(), cuda_ext()
    d = {
        "semimoe": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
        "scikit-image": _version("skimage"),
        "triton": _version("triton"),
        "torch threads": torch.get_num_threads(),
        "CUDA available (torch)": torch.cuda.is_available(),
        "_C (CPU kernels)": (f"yes, {cpu.build_info()}" if cpu else
                             f"NO ({extension_error('_C')})"),
        "_C_cuda (CUDA kernels)": (f"yes, {cuda.build_info()}" if cuda else
                                   f"no ({extension_error('_C_cuda')})"),
    }
    if torch.cuda.is_available():
        d["GPU"] = torch.cuda.get_device_name(0)
    if cuda is not None:
        try:
            d["CUDA runtime devices (_C_cuda)"] = cuda.device_count()
        except RuntimeError as exc:
            d["CUDA runtime devices (_C_cuda)"] = f"error: {exc}"
    from .ops import backend_table

    for op, names in backend_table().items():
        d[f"op {op}"] = ", ".join(names)
    if os.environ.get("SEMIMOE_BACKEND"):
        d["SEMIMOE_BACKEND"] = os.environ["SEMIMOE_BACKEND"]
    return d


def info() -> str:
    d = info_dict()
    width = max(len(k) for k in d)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in d.items())


def main() -> None:
    print(info())


class _CallableModule(types.ModuleType):
    """Lets ``semimoe.info()`` print the report while ``semimoe.info`` stays a module."""

    def __call__(self) -> None:
        main()


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    main()
