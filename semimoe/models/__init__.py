"""Semi-MoE model: U-Net experts, gates, task heads (contract: docs/CONTRACTS.md);
the IKD-MIL side-output segmenter (:mod:`.mil`)."""
from .gates import ImageGate, SpatialGate
from .semimoe import (
    ARCHS,
    EXPERTS,
    TASKS,
    ModelConfig,
    SemiMoE,
    SemiMoEOutput,
    SemiMoEPredictor,
    build_model,
    load_checkpoint,
)
from .mil import MILOutput, MILPredictor, MILSegmenter
from .unet import UNet, init_weights

__all__ = [
    "ModelConfig", "SemiMoE", "SemiMoEOutput", "SemiMoEPredictor", "build_model", "load_checkpoint",
    "UNet", "ImageGate", "SpatialGate", "init_weights", "TASKS", "EXPERTS", "ARCHS",
    "MILSegmenter", "MILOutput", "MILPredictor",
]
