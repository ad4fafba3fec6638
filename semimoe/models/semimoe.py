"""The Semi-MoE model: three U-Net experts, a multi-gating network, gated
fusion of the experts' features per task and one head per task.

Contract: docs/CONTRACTS.md ("Model").
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..ops.gated_fusion import gated_fusion, gated_fusion_ref
from ..errors import CheckpointError, describe
from ..presets import PRESETS
from ..utils import safe_torch_load
from .gates import ImageGate, SpatialGate
from .unet import UNet, init_weights

__all__ = ["ModelConfig", "SemiMoE", "SemiMoEOutput", "SemiMoEPredictor", "build_model",
           "load_checkpoint", "TASKS", "EXPERTS", "ARCHS"]

TASKS = ("seg", "sdf", "bnd")      # order of the T axis of the gates
EXPERTS = ("seg", "sdf", "bnd")    # order of the K axis of the gates
_OUT_CHANNELS = {"seg": 2, "sdf": 1, "bnd": 2}
_GATES = ("image", "spatial")
_FUSIONS = ("fused", "reference")
ARCHS = ("semimoe", "mil", "icmoe")

@dataclass
class ModelConfig:
    """Configuration of :class:`SemiMoE` and of the MIL segmenter
    (:class:`semimoe.models.mil.MILSegmenter`).

    arch: ``"semimoe"`` (:class:`SemiMoE`) or ``"mil"`` (the IKD-MIL side-output
        segmenter: ``base_width``, ``depth``, ``in_channels`` and
        ``side_weights`` apply; the gate fields and ``fusion`` are ignored).
        :func:`build_model` and :func:`load_checkpoint` build the model it
        names; checkpoints without it are Semi-MoE.
    base_width: channels of the experts' first level (paper 64); the gates
        and heads work on ``base_width``-channel features.
    depth: U-Net levels (paper 5: 64-128-256-512-1024); H and W of the input
        must be multiples of ``2**(depth-1)``.
    gate: ``"image"`` (reference per-image gate) or ``"spatial"`` (per pixel).
    in_channels: image channels.
    fusion: ``"fused"`` (``semimoe.ops.gated_fusion`` custom op: Triton on
        CUDA, PyTorch on CPU) or ``"reference"`` (plain PyTorch math, for
        ONNX / AOTInductor export).
    gate_hidden_ratio, gate_dropout: reference image gate (0.5, 0.1).
    spatial_hidden: hidden channels of the spatial gate (0: ``base_width``).
    side_weights: ``arch="mil"`` only: fixed fusion weights of the side
        outputs, one per level (level 0 = full resolution first), positive;
        the model normalises them to sum 1. None: equal weights. Stored as
        given (a tuple of floats).
    adapter_rank, embed_dim: ``arch="icmoe"`` only
        (:class:`semimoe.models.icmoe.ICMoE`, a frozen Semi-MoE of the other
        fields): rank of the low-rank adapters, dimension of the pixel
        embeddings of the contrastive loss.
    """

    base_width: int = 64
    depth: int = 5
    gate: str = "image"
    in_channels: int = 3
    fusion: str = "fused"
    gate_hidden_ratio: float = 0.5
    gate_dropout: float = 0.1
    spatial_hidden: int = 0
    arch: str = "semimoe"
    side_weights: Optional[Tuple[float, ...]] = None
    adapter_rank: int = 4
    embed_dim: int = 32

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.base_width, int) or self.base_width < 1:
            raise ValueError(f"model.base_width must be a positive integer, got {self.base_width!r}")
        if not isinstance(self.depth, int) or not 1 <= self.depth <= 8:
            raise ValueError(f"model.depth must be an integer in [1, 8], got {self.depth!r}")
        if self.gate not in _GATES:
            raise ValueError(f"model.gate must be one of {_GATES}, got {self.gate!r}")
        if self.fusion not in _FUSIONS:
            raise ValueError(f"model.fusion must be one of {_FUSIONS}, got {self.fusion!r}")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"model.in_channels must be a positive integer, got {self.in_channels!r}")
        if not 0.0 < float(self.gate_hidden_ratio) <= 4.0:
            raise ValueError(f"model.gate_hidden_ratio must be in (0, 4], got {self.gate_hidden_ratio!r}")
        if not 0.0 <= float(self.gate_dropout) < 1.0:
            raise ValueError(f"model.gate_dropout must be in [0, 1), got {self.gate_dropout!r}")
        if not isinstance(self.spatial_hidden, int) or self.spatial_hidden < 0:
            raise ValueError(f"model.spatial_hidden must be an integer >= 0, got {self.spatial_hidden!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("adapter_rank", "embed_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {v!r}")
        if self.side_weights is not None:
            sw = self.side_weights
            if isinstance(sw, (str, bytes)) or not isinstance(sw, (list, tuple)):
                raise ValueError(f"model.side_weights must be None or a list of {self.depth} positive numbers, "
                                 f"got {sw!r}")
            if len(sw) != self.depth:
                raise ValueError(f"model.side_weights must have one weight per level (model.depth={self.depth}), "
                                 f"got {len(sw)}: {list(sw)!r}")
            if any(isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0
                   for v in sw):
                raise ValueError(f"model.side_weights must be finite positive numbers, got {list(sw)!r}")
            self.side_weights = tuple(float(v) for v in sw)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        """The ``model`` section of a preset of :data:`semimoe.presets.PRESETS`."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; valid: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name]["model"], **overrides})


class SemiMoEOutput(NamedTuple):
    """Output of :meth:`SemiMoE.forward` (shapes for input (B, 3, H, W)).

    seg: (B, 2, H, W) logits of the gate's segmentation head (THE prediction).
    sdf: (B, 1, H, W) logits of the gate's SDF head (tanh gives the SDF).
    bnd: (B, 2, H, W) logits of the gate's boundary head.
    experts: ``{"seg": (B,2,H,W), "sdf": (B,1,H,W), "bnd": (B,2,H,W)}`` logits
        of each expert's own head.
    gates: softmax gate weights, float32, (B, T, K) (image gate) or
        (B, T, K, H, W) (spatial gate); T = tasks (seg, sdf, bnd),
        K = experts (seg, sdf, bnd).
    """

    seg: Tensor
    sdf: Tensor
    bnd: Tensor
    experts: Dict[str, Tensor]
    gates: Tensor


class SemiMoE(nn.Module):
    """Three U-Net experts, multi-gating and task heads (docs/METHOD.md §1).

    ``forward(x)``: x float (B, in_channels, H, W), normalised with the
    dataset mean/std, H and W multiples of ``2**(depth-1)``; returns
    :class:`SemiMoEOutput`. ``cfg.arch`` is recorded as ``"semimoe"``
    (:func:`build_model` picks the class from it).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = dataclasses.replace(cfg, arch="semimoe")
        C = cfg.base_width
        self.experts = nn.ModuleDict({
            name: UNet(cfg.in_channels, _OUT_CHANNELS[name], cfg.base_width, cfg.depth) for name in EXPERTS
        })
        K, T = len(EXPERTS), len(TASKS)
        if cfg.gate == "image":
            self.gate = ImageGate(K, C, T, hidden_ratio=cfg.gate_hidden_ratio, dropout=cfg.gate_dropout)
        else:
            self.gate = SpatialGate(K, C, T, hidden=cfg.spatial_hidden)
        self.heads = nn.ModuleDict({name: nn.Conv2d(C, _OUT_CHANNELS[name], 1) for name in TASKS})
        init_weights(self)
        if isinstance(self.gate, SpatialGate):
            self.gate.reset_output()
        self._fuse = gated_fusion if cfg.fusion == "fused" else gated_fusion_ref

    # ------------------------------------------------------------------ API
    @property
    def size_multiple(self) -> int:
        """H and W of an input must be multiples of this: ``2**(depth-1)``, the
        experts' total pooling. The one place that knows it."""
        return 2 ** (self.cfg.depth - 1)

    def set_fusion(self, fusion: str) -> "SemiMoE":
        """Switch the fusion path in place: ``"fused"`` or ``"reference"``."""
        if fusion not in _FUSIONS:
            raise ValueError(f"fusion must be one of {_FUSIONS}, got {fusion!r}")
        self.cfg.fusion = fusion
        self._fuse = gated_fusion if fusion == "fused" else gated_fusion_ref
        return self

    def predictor(self) -> "SemiMoEPredictor":
        """Module x (B,3,H,W) -> (B,3,H,W): softmax(seg) (ch. 0-1) and the
        boundary probability (ch. 2). Shares this model's parameters."""
        return SemiMoEPredictor(self)

    def expert_forward(self, x: Tensor, adapters: Optional[Dict[str, Sequence[nn.Module]]] = None,
                       taps: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Run the experts: stacked features (B, K, C, H, W) and their logits.
        ``adapters`` / ``taps``: per expert name, see :meth:`UNet.forward`
        (``taps`` gets the seg expert's bottleneck)."""
        feats, logits = [], {}
        for name, expert in self.experts.items():
            f, lg = expert(x, None if adapters is None else adapters[name], taps if name == "seg" else None)
            feats.append(f)
            logits[name] = lg
        return torch.stack(feats, dim=1), logits

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless x is (B, C, H, W) with H and W multiples of
        :attr:`size_multiple`."""
        if x.dim() != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"H and W must be multiples of 2**(depth-1) = {m}, got {tuple(x.shape[-2:])}")

    def forward(self, x: Tensor, adapters: Optional[Dict[str, Sequence[nn.Module]]] = None,
                taps: Optional[Dict[str, Tensor]] = None) -> SemiMoEOutput:
        self.check_input(x)
        features, expert_logits = self.expert_forward(x, adapters, taps)
        gate_logits = self.gate(features)
        fused = self._fuse(features, gate_logits)  # (B, T, C, H, W)
        outs = [self.heads[name](fused[:, t]) for t, name in enumerate(TASKS)]
        gates = torch.softmax(gate_logits.float(), dim=2)
        return SemiMoEOutput(outs[0], outs[1], outs[2], expert_logits, gates)


class ModelPredictor(nn.Module):
    """Base of the deployment views: holds ``model`` (its parameters shared)
    and reports its ``size_multiple``; ``forward`` x (B, 3, H, W) float ->
    (B, 3, H, W) float probabilities (seg background, seg gland, boundary)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def size_multiple(self) -> int:
        return self.model.size_multiple


class SemiMoEPredictor(ModelPredictor):
    """Deployment view of a :class:`SemiMoE`: x (B, 3, H, W) float ->
    (B, 3, H, W) float: channels 0-1 = softmax of the gate's seg logits,
    channel 2 = softmax foreground (boundary) probability of the bnd head.

    Heads first: a task head is a 1x1 convolution (linear) and a task's gate
    weights sum to one over the experts, so
    ``head_t(sum_k w_tk f_k) = sum_k w_tk W_t f_k + b_t``. Each expert's
    features are projected once onto the seg and bnd logits (4 channels) and
    the projections are mixed, instead of stacking the K experts' C-channel
    features, mixing them per task and applying the heads; the SDF head and
    the experts' own heads, which the prediction does not use, are not run.
    The values are the model's forward up to float rounding (tested against
    the float64 model); the mixing accumulates in float32.
    """

    _TASKS = ("seg", "bnd")

    def forward(self, x: Tensor) -> Tensor:
        m = self.model
        m.check_input(x)
        feats = [expert.features(x) for expert in m.experts.values()]
        w = torch.softmax(m.gate(feats).float(), dim=2)  # (B, T, K) or (B, T, K, H, W)
        rows = [TASKS.index(t) for t in self._TASKS for _ in range(_OUT_CHANNELS[t])]
        w = w[:, rows]  # each output channel's gate row: (B, 4, K[, H, W])
        if w.dim() == 3:
            w = w[..., None, None]
        heads = [m.heads[t] for t in self._TASKS]
        weight = torch.cat([h.weight for h in heads])
        logits = None
        for k, f in enumerate(feats):
            term = w[:, :, k] * nn.functional.conv2d(f, weight).float()
            logits = term if logits is None else logits.add_(term)
        logits = logits + torch.cat([h.bias for h in heads]).float()[:, None, None]
        n_seg = _OUT_CHANNELS["seg"]
        seg = torch.softmax(logits[:, :n_seg], dim=1)
        bnd = torch.softmax(logits[:, n_seg:], dim=1)[:, 1:2]
        return torch.cat([seg, bnd], dim=1)


def _model_class(arch: str) -> type:
    if arch == "mil":
        from .mil import MILSegmenter  # mil imports this module

        return MILSegmenter
    if arch == "icmoe":
        from .icmoe import ICMoE  # icmoe imports this module

        return ICMoE
    return SemiMoE


def build_model(cfg: Union[ModelConfig, str, None] = None, **overrides) -> nn.Module:
    """Build the model ``cfg.arch`` names from a :class:`ModelConfig`, a
    preset name (``"paper"``, ``"fast"``, ``"cpu-demo"``) or keyword fields:
    a :class:`SemiMoE` (``arch="semimoe"``, the default) or a
    :class:`semimoe.models.mil.MILSegmenter` (``arch="mil"``)."""
    if cfg is None:
        cfg = ModelConfig(**overrides)
    elif isinstance(cfg, str):
        cfg = ModelConfig.preset(cfg, **overrides)
    elif overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return _model_class(cfg.arch)(cfg)


def _strip_prefixes(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    # checkpoints written from a DDP- or torch.compile-wrapped model
    out = {}
    for k, v in state.items():
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def load_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a checkpoint written by ``semimoe.train`` (``best.pt``/``last.pt``).

    Uses ``torch.load(weights_only=True)``. Returns ``(model in eval mode,
    meta)``: the model is the class ``model_config["arch"]`` names
    (:class:`SemiMoE` when the entry is missing, as in checkpoints written
    before it existed, or a :class:`semimoe.models.mil.MILSegmenter`); meta
    is the checkpoint dict without ``"model"`` (it holds ``model_config``,
    ``norm`` = {"mean", "std"}, ``scale``, ``step`` and whatever the
    trainer stored). Raises
    :class:`~semimoe.errors.CheckpointError` naming the file when it is
    missing, truncated, unsafe or not a semimoe checkpoint.
    """
    ckpt = safe_torch_load(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path}: not a semimoe checkpoint (needs 'model' and 'model_config' entries)")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    arch = "a SemiMoE"
    try:
        mc = {k: v for k, v in ckpt["model_config"].items() if k in fields}
        cfg = ModelConfig(**mc)
        cls = _model_class(cfg.arch)
        arch = f"a {cls.__name__}"
        model = cls(cfg)
        model.load_state_dict(_strip_prefixes(ckpt["model"]))
    except (ValueError, TypeError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{path}: its model_config and weights do not make {arch} ({describe(e)})") \
            from None
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k != "model"}
    return model, meta
