"""Inference copies of a model with each BatchNorm folded into the convolution before it.

In eval mode ``BN(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` and
``b' = (b - m) * g / sqrt(v + eps) + beta`` per output channel: one pass over
every feature map less, same values up to float rounding (PyTorch's
``fuse_conv_bn_eval`` does the arithmetic). Used by the eager runtime
(:class:`semimoe.deploy.TorchRuntime`), so validation, evaluation, tiled and
whole-slide inference all run the folded model.
"""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and bn.num_features == conv.out_channels)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``module`` in which every ``Conv2d`` directly
    followed by a ``BatchNorm2d`` inside an ``nn.Sequential`` becomes one
    ``Conv2d`` (the BatchNorm is replaced by ``nn.Identity``). ``module`` is
    left unchanged. Only for inference: the copy has no BatchNorm to train."""
    out = copy.deepcopy(module).eval()
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
