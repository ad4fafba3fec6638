"""semimoe custom ops (``torch.ops.semimoe.*``).

Every op but ``upsample_conv2d`` (a composition of PyTorch ops, differentiable
by autograd) is a ``torch.library.custom_op`` with a fake (shape) implementation,
so it works under ``torch.compile`` and export, a pure reference
implementation ``<op>_ref`` used by the tests, and one or more fast backends
(C++ on CPU, CUDA or Triton on GPU) chosen per call.
"""
from .distance_transform import (  # noqa: F401
    distance_transform,
    distance_transform_ref,
    ring_ref,
    sdf_targets,
    signed_distance,
    signed_distance_ref,
)
from .find_boundaries import find_boundaries, find_boundaries_ref  # noqa: F401
from .gated_fusion import gated_fusion, gated_fusion_ref  # noqa: F401
from .upsample_conv import upsample_conv2d, upsample_conv2d_ref  # noqa: F401

_OP_MODULES = ("distance_transform", "find_boundaries", "gated_fusion", "upsample_conv")


def backend_table() -> dict:
    """``{op: ["backend (available | reason)", ...]}`` for every public op."""
    import importlib

    table = {}
    for mod_name in _OP_MODULES:
        mod = importlib.import_module(f"{__name__}.{mod_name}")
        for op, backends in mod.BACKENDS.items():
            table[op] = [f"{b.name} ({b.available() or 'available'})" for b in backends]
    return table


__all__ = [
    "distance_transform", "distance_transform_ref",
    "signed_distance", "signed_distance_ref", "sdf_targets", "ring_ref",
    "find_boundaries", "find_boundaries_ref",
    "gated_fusion", "gated_fusion_ref",
    "upsample_conv2d", "upsample_conv2d_ref",
    "backend_table",
]
