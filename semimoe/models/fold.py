"""Inference copies of a model: each BatchNorm folded into the convolution
before it, each upsample + convolution run as one transposed convolution.

:func:`inference_copy` does both; it is what the eager runtime
(:class:`semimoe.deploy.TorchRuntime`) and the exports run, so validation,
evaluation, tiled and whole-slide inference and the exported files compute
the same graph.

In eval mode ``BN(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` and
``b' = (b - m) * g / sqrt(v + eps) + beta`` per output channel: one pass over
every feature map less, same values up to float rounding (PyTorch's
``fuse_conv_bn_eval`` does the arithmetic).

Nearest x2 upsample + 3x3 convolution (:class:`~semimoe.models.unet.UpConv`)
becomes :class:`~semimoe.models.unet.TransposedUpConv`: one stride-2, 4x4
transposed convolution of the low-resolution input with the kernel combined
once, 16 instead of 36 multiply-adds per input pixel and channel pair, same
values up to float rounding.
"""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .unet import TransposedUpConv, UpConv

__all__ = ["fold_batchnorm", "transpose_upconvs", "inference_copy"]


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and bn.num_features == conv.out_channels)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``module`` in which every ``Conv2d`` directly
    followed by a ``BatchNorm2d`` inside an ``nn.Sequential`` becomes one
    ``Conv2d`` (the BatchNorm is replaced by ``nn.Identity``). ``module`` is
    left unchanged. Only for inference: the copy has no BatchNorm to train."""
    return _fold_in_place(copy.deepcopy(module).eval())


def _fold_in_place(out: nn.Module) -> nn.Module:
    for seq in out.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if _foldable(conv, bn):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return out


def transpose_upconvs(module: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``module`` in which every convertible
    :class:`UpConv` is replaced by the equivalent :class:`TransposedUpConv`.
    ``module`` is left unchanged. Only for inference (the combined weights
    are fixed)."""
    return _transpose_in_place(copy.deepcopy(module).eval())


def _transpose_in_place(out: nn.Module) -> nn.Module:
    for parent in list(out.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, UpConv) and TransposedUpConv.convertible(child):
                parent._modules[name] = TransposedUpConv.from_upconv(child).eval()
    return out


def inference_copy(module: nn.Module, transposed: bool = True) -> nn.Module:
    """The inference copy of ``module`` (one eval-mode deep copy; ``module``
    unchanged): BatchNorm folded (as :func:`fold_batchnorm`), then, with
    ``transposed``, each upsample + 3x3 convolution as one transposed
    convolution (as :func:`transpose_upconvs`); without, every :class:`UpConv`
    materialises its upsample (``UpConv.transposed = False``). The callers
    pass ``transposed`` for CPU targets only: that is where it was measured
    faster; GPU graphs keep the upsample."""
    out = _fold_in_place(copy.deepcopy(module).eval())
    if transposed:
        return _transpose_in_place(out)
    for m in out.modules():
        if isinstance(m, UpConv):
            m.transposed = False
    return out
