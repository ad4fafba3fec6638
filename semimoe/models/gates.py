"""Gating networks of Semi-MoE: they produce gate LOGITS; the softmax over
experts happens inside :func:`semimoe.ops.gated_fusion`.

* :class:`ImageGate` -- the reference multi-gating network: one weight per
  expert, task and image.
* :class:`SpatialGate` -- semimoe's per-pixel gate: one weight per expert,
  task and pixel.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn

# Expert features: stacked (B, K, C, H, W), or the K maps (B, C, H, W) as a
# sequence (the predictor's path, which never stacks them).
Features = Union[Tensor, Sequence[Tensor]]

__all__ = ["ImageGate", "SpatialGate"]


class _ImageGateHead(nn.Module):
    """One task's reference gate on pooled features (B, K*C) -> logits (B, K).

    Linear(K*C -> hidden) -> ReLU -> attention re-weighting
    ``h * softmax(Linear(hidden -> hidden)(h))`` -> dropout -> Linear(hidden -> K).
    (The released code has the inner Linear before the softmax; docs/METHOD.md
    §1 describes it.)
    """

    def __init__(self, in_features: int, hidden: int, num_experts: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(in_features, hidden)
        self.attention = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden, num_experts)

    def forward(self, pooled: Tensor) -> Tensor:
        h = torch.relu(self.linear1(pooled))
        h = h * torch.softmax(self.attention(h), dim=-1)
        return self.linear2(self.dropout(h))


class ImageGate(nn.Module):
    """Reference multi-gating network (per image), one head per task.

    Input: features (B, K, C, H, W) of the K experts, or the K maps
    (B, C, H, W) as a sequence. The global average pool
    of the concatenated features is the per-expert pool, so the (B, K*C, H, W)
    concatenation is never materialised.

    Output: gate logits (B, T, K), float.
    """

    def __init__(self, num_experts: int, channels: int, num_tasks: int = 3,
                 hidden_ratio: float = 0.5, dropout: float = 0.1):
        super().__init__()
        in_features = num_experts * channels
        hidden = max(1, int(in_features * hidden_ratio))
        self.heads = nn.ModuleList([_ImageGateHead(in_features, hidden, num_experts, dropout)
                                    for _ in range(num_tasks)])

    def forward(self, features: Features) -> Tensor:
        if isinstance(features, Tensor):
            pooled = features.mean(dim=(-2, -1)).flatten(1)  # (B, K*C)
        else:
            pooled = torch.cat([f.mean(dim=(-2, -1)) for f in features], dim=1)
        return torch.stack([h(pooled) for h in self.heads], dim=1)


class SpatialGate(nn.Module):
    """Per-pixel gate: a light conv net on the concatenated expert features.

    3x3 conv (K*C -> hidden) + BN + ReLU, then a 1x1 conv to T*K logits per
    pixel. The last conv starts at zero, so training starts from the uniform
    mixture (every expert weighted 1/K everywhere) instead of a random
    per-pixel assignment.

    Input: features (B, K, C, H, W), or the K maps (B, C, H, W) as a
    sequence. Output: gate logits (B, T, K, H, W).
    """

    def __init__(self, num_experts: int, channels: int, num_tasks: int = 3, hidden: int = 0):
        super().__init__()
        hidden = hidden or channels
        self.num_experts = num_experts
        self.num_tasks = num_tasks
        self.body = nn.Sequential(
            nn.Conv2d(num_experts * channels, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(hidden, num_tasks * num_experts, 1)

    def reset_output(self) -> None:
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: Features) -> Tensor:
        if isinstance(features, Tensor):
            B, K, C, H, W = features.shape
            flat = features.reshape(B, K * C, H, W)
        else:
            flat = torch.cat(list(features), dim=1)  # the same (B, K*C, H, W) channel order
            B, K, H, W = flat.shape[0], len(features), flat.shape[-2], flat.shape[-1]
        logits = self.out(self.body(flat))
        return logits.reshape(B, self.num_tasks, K, H, W)
