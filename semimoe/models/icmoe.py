"""IC-MoE-style experts on a frozen pretrained Semi-MoE network
(``model.arch=icmoe``; the idea of Zhang et al., arXiv 2510.17684, built on
our own networks with standard forms -- docs/METHOD.md §8).

The model holds a **backbone**, a :class:`~semimoe.models.SemiMoE` whose
weights come from a semimoe checkpoint and never change (no gradients,
BatchNorm always in eval mode), and three experts that each give per-pixel
class probabilities (B, 2, H, W):

* **basic**: the frozen network's own prediction (softmax of its gated seg
  head), computed without gradients;
* **semantic**: a head on the high-level features -- the bottleneck
  (deepest encoder level) of the seg expert U-Net in the adapted pass: a
  trunk (3x3 conv + BN + ReLU), then a 1x1 conv to 2 logits, bilinearly
  upsampled to full resolution. A 1x1 projection of the trunk's features
  gives the pixel embeddings (``embed_dim``) of the contrastive loss, which
  so shapes the features the semantic expert (and, through the encoder's
  adapters, the adaptive one) decides from;
* **adaptive**: the backbone run again with small trainable **adapters**
  after every double-conv block of every U-Net expert (passed to
  :meth:`SemiMoE.forward`: no hooks, so export traces it): a low-rank residual
  ``y + U(D(y))``, D a 1x1 conv ``C -> rank``, U a 1x1 conv ``rank -> C``
  initialised to zero (so the adaptive expert starts as the basic one).

A **router** (3x3 conv + ReLU + 1x1 conv on the three experts' detached
probabilities) gives one logit per expert and pixel; the vote
(:func:`semimoe.losses.icmoe.vote_logits`, :func:`~semimoe.losses.icmoe.pixel_vote`:
router logit + log confidence, and during training + log consistency with the
label or consensus) fuses the experts' probabilities through the fused gating
op ``semimoe::gated_fusion`` with per-pixel gates.

``forward(x)`` returns :class:`ICMoEOutput`; the predictor (the
:class:`~semimoe.models.SemiMoEPredictor` contract) gives the voted
probabilities (channels 0-1) and the adaptive pass's boundary probability
(channel 2), so validation, evaluation, inference, export and whole slides
run it unchanged.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Dict, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .semimoe import ModelConfig, ModelPredictor, SemiMoE

__all__ = ["ICMoE", "ICMoEOutput", "ICMoEPredictor", "ICMOE_EXPERTS", "state_hash"]

ICMOE_EXPERTS = ("basic", "semantic", "adaptive")  # order of the E axis


class ICMoEOutput(NamedTuple):
    """Output of :meth:`ICMoE.forward` for input (B, 3, H, W).

    probs: (B, E, 2, H, W) float32, each expert's class probabilities
        (:data:`ICMOE_EXPERTS` order).
    logits: ``{"semantic", "adaptive"}`` (B, 2, H, W) logits of the trainable experts.
    router: (B, E, H, W) router logits.
    gate_logits: (B, 1, E, H, W) the inference vote's logits (no consistency term).
    fused: (B, 2, H, W) float32 voted probabilities.
    bnd: (B, 1, H, W) boundary probability of the adaptive pass.
    embed: (B, embed_dim, h, w) pixel embeddings at the bottleneck resolution.
    """

    probs: Tensor
    logits: Dict[str, Tensor]
    router: Tensor
    gate_logits: Tensor
    fused: Tensor
    bnd: Tensor
    embed: Tensor


class LowRankAdapter(nn.Module):
    """``y + U(D(y))`` with D: 1x1 conv C -> rank, U: 1x1 conv rank -> C (zero-initialised)."""

    def __init__(self, channels: int, rank: int):
        super().__init__()
        self.down = nn.Conv2d(channels, rank, 1, bias=False)
        self.up = nn.Conv2d(rank, channels, 1, bias=False)
        nn.init.kaiming_normal_(self.down.weight, a=1.0)
        nn.init.zeros_(self.up.weight)

    def forward(self, y: Tensor) -> Tensor:
        return y + self.up(self.down(y))


def state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes) --
    the check that frozen weights did not change."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ICMoE(nn.Module):
    """Frozen Semi-MoE backbone + semantic head + adapters + router (see the module doc).

    Uses ``cfg.base_width``, ``cfg.depth``, ``cfg.gate``, ``cfg.in_channels``
    (they must match the backbone checkpoint), ``cfg.adapter_rank`` and
    ``cfg.embed_dim``; ``cfg.arch`` is recorded as ``"icmoe"``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = dataclasses.replace(cfg, arch="icmoe")
        self.backbone = SemiMoE(dataclasses.replace(cfg, arch="semimoe"))
        self.backbone.requires_grad_(False)
        # one adapter per double-conv block of every expert U-Net, in UNet.forward's order
        self.adapters = nn.ModuleDict({
            name: nn.ModuleList([LowRankAdapter(w, cfg.adapter_rank)
                                 for w in unet.widths + unet.widths[-2::-1]])
            for name, unet in self.backbone.experts.items()})
        bottleneck = self.backbone.experts["seg"].widths[-1]
        hidden = max(8, bottleneck // 2)
        self.semantic = nn.Sequential(nn.Conv2d(bottleneck, hidden, 3, padding=1), nn.BatchNorm2d(hidden),
                                      nn.ReLU(inplace=True))
        self.semantic_head = nn.Conv2d(hidden, 2, 1)
        self.project = nn.Conv2d(hidden, cfg.embed_dim, 1)
        E = len(ICMOE_EXPERTS)
        self.router = nn.Sequential(nn.Conv2d(2 * E, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, E, 1))
        nn.init.zeros_(self.router[-1].weight)
        nn.init.zeros_(self.router[-1].bias)

    # ------------------------------------------------------------------ API
    @property
    def size_multiple(self) -> int:
        return self.backbone.size_multiple

    def train(self, mode: bool = True) -> "ICMoE":
        """Train mode for the trainable parts; the frozen backbone stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def set_fusion(self, fusion: str) -> "ICMoE":
        self.backbone.set_fusion(fusion)
        self.cfg.fusion = fusion
        return self

    def load_backbone(self, state: Dict[str, Tensor]) -> None:
        """Load the pretrained Semi-MoE weights (a ``best.pt``'s ``model``) into the frozen backbone."""
        self.backbone.load_state_dict(state)
        self.backbone.requires_grad_(False)

    def predictor(self) -> "ICMoEPredictor":
        return ICMoEPredictor(self)

    def forward(self, x: Tensor) -> ICMoEOutput:
        from ..losses.icmoe import pixel_vote, vote_logits

        with torch.no_grad():
            base = self.backbone(x)
        taps: Dict[str, Tensor] = {}
        adapted = self.backbone(x, adapters=self.adapters, taps=taps)
        bottleneck = taps["bottleneck"]
        size = x.shape[-2:]
        trunk = self.semantic(bottleneck)
        sem = F.interpolate(self.semantic_head(trunk), size=size, mode="bilinear", align_corners=False)
        logits = {"semantic": sem.float(), "adaptive": adapted.seg.float()}
        probs = torch.stack([torch.softmax(base.seg.float(), 1), torch.softmax(logits["semantic"], 1),
                             torch.softmax(logits["adaptive"], 1)], dim=1)
        router = self.router(probs.detach().flatten(1, 2))
        gate = vote_logits(probs, router)
        fused = pixel_vote(probs, gate, fuse=self.backbone._fuse)  # the fused op, or the reference for export
        bnd = torch.softmax(adapted.bnd.float(), 1)[:, 1:2]
        return ICMoEOutput(probs, logits, router, gate, fused, bnd, self.project(trunk))


class ICMoEPredictor(ModelPredictor):
    """Deployment view: x (B, 3, H, W) -> (B, 3, H, W): the voted class
    probabilities (channels 0-1) and the adaptive pass's boundary probability."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return torch.cat([out.fused, out.bnd], dim=1)
