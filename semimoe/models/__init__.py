"""Semi-MoE model: U-Net experts, gates, task heads (contract: docs/CONTRACTS.md);
the IKD-MIL side-output segmenter (:mod:`.mil`); IC-MoE-style experts on a
frozen Semi-MoE (:mod:`.icmoe`)."""
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
from .icmoe import ICMoE, ICMoEOutput, ICMoEPredictor
from .unet import TransposedUpConv, UNet, init_weights
from .fold import fold_batchnorm, inference_copy, transpose_upconvs

__all__ = [
    "ModelConfig", "SemiMoE", "SemiMoEOutput", "SemiMoEPredictor", "build_model", "load_checkpoint",
    "UNet", "ImageGate", "SpatialGate", "init_weights", "TASKS", "EXPERTS", "ARCHS",
    "MILSegmenter", "MILOutput", "MILPredictor", "ICMoE", "ICMoEOutput", "ICMoEPredictor",
    "fold_batchnorm", "transpose_upconvs", "inference_copy", "TransposedUpConv",
]
