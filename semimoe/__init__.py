"""semimoe: Semi-MoE for semi-supervised gland segmentation, with fast kernels.

Public entry points:
  semimoe.ops       -- exact distance transforms, signed distance fields, boundaries,
                       fused expert gating (custom ops under ``torch.ops.semimoe``)
  semimoe.data      -- training targets (``semimoe.data.targets.make_targets``)
  semimoe.info()    -- versions and available backends
"""
__version__ = "0.1.0"

from . import ops  # noqa: E402,F401  (registers torch.ops.semimoe.*)
from .info import info  # noqa: E402,F401

__all__ = ["ops", "info", "__version__"]
