"""semimoe: Semi-MoE for semi-supervised gland segmentation, with fast kernels.

Public entry points:
  semimoe.ops       -- exact distance transforms, signed distance fields, boundaries,
                       fused expert gating (custom ops under ``torch.ops.semimoe``)
  semimoe.data      -- training targets (``semimoe.data.make_targets``)
  semimoe.info()    -- versions and available backends (also ``python -m semimoe.info``)
"""
__version__ = "0.1.0"

from . import data, ops  # noqa: E402,F401  (ops registers torch.ops.semimoe.*)


def __getattr__(name):
    # Imported lazily so that ``python -m semimoe.info`` runs the module once.
    if name == "info":
        import importlib

        return importlib.import_module(".info", __name__)
    raise AttributeError(f"module 'semimoe' has no attribute {name!r}")


__all__ = ["ops", "data", "info", "__version__"]
