"""Semi-MoE model: U-Net experts, gates, task heads (contract: docs/CONTRACTS.md)."""
from .gates import ImageGate, SpatialGate
from .semimoe import (
    EXPERTS,
    TASKS,
    ModelConfig,
    SemiMoE,
    SemiMoEOutput,
    SemiMoEPredictor,
    build_model,
    load_checkpoint,
)
from .unet import UNet, init_weights

__all__ = [
    "ModelConfig", "SemiMoE", "SemiMoEOutput", "SemiMoEPredictor", "build_model", "load_checkpoint",
    "UNet", "ImageGate", "SpatialGate", "init_weights", "TASKS", "EXPERTS",
]
