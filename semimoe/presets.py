"""The presets table: one place for every named configuration.

Each preset is a nested dict of values on top of the dataclass defaults of
:mod:`semimoe.config` (sections ``model``, ``data``, ``train``, ``optim``).
:meth:`semimoe.models.ModelConfig.preset` reads the ``model`` section of the
same entry. Pure data: importing this module imports nothing else.

``paper``
    The released code's protocol (docs/METHOD.md §4): three 64-1024 U-Nets,
    the per-image gate, batch 2 labeled + 2 unlabeled, 200 epochs of
    ceil(unlabeled / 2) iterations, SGD lr 0.5 / momentum 0.9 / wd 5e-5 with
    a 20-epoch linear warm-up from 0 and x0.5 every 50 epochs, reference
    adaptive multi-objective loss, seg and boundary Dice per image, unsupervised weight ramp to 0.5, no
    pseudo-label refinement; checkpoint selection with the reference
    reporting (256x256, threshold sweep), but on the validation split carved
    from the training data (the released code selects on the test set).
    Images are resampled (aspect ratio kept) so that the median image's
    shorter side is 256 px, and trained on 256x256 crops.
``fast``
    semimoe's own setting for a GPU: half-width experts, spatial gating,
    refined pseudo-labels (``sdf_agree+confidence``), batch 8 + 8, iteration
    schedule, AdamW, bf16 autocast and channels-last, 256x256 crops.
``cpu-demo``
    The no-argument run: synthetic data at 10 % labels, small experts
    (16-32-64-128), spatial gating, refined pseudo-labels, 128x128 random
    crops of the 256x256 images, batch 4 + 4, 300 AdamW iterations;
    evaluation and overlays included it fits 10 minutes on 2 CPU cores, and
    ``train.time_limit`` (7.5 min) stops the training early on a slower or
    busy machine.
``weak-demo``
    IKD-MIL from image-level labels (``train.method=weak-ikd``) on
    synthetic-weak tiles: the MIL segmenter 16-32-64-128, 400 iterations,
    distillation from iteration 150 with role reversal every 75.
``icmoe-demo``
    IC-MoE-style experts on a frozen network (``train.method=icmoe``): the
    run first pretrains an 8-wide Semi-MoE on synthetic-glas domain ``a``
    (300 supervised iterations, every non-validation image labeled), then
    adapts it to domain ``b`` (another stain, more malignant images) at 10 %
    labels: 300 iterations, batch 4 + 4, 96x96 crops.
"""
from __future__ import annotations

from typing import Any, Dict

__all__ = ["PRESETS"]

PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "paper": {
        "model": dict(base_width=64, depth=5, gate="image", fusion="fused"),
        "data": dict(size=256, label_ratio=0.1, augment=True),
        "train": dict(method="semimoe", schedule="epoch", epochs=200, batch_labeled=2, batch_unlabeled=2,
                      crop=256, unsup_weight=0.5, refine=None, amo="reference", dice="image", val_every=5,
                      select="reference"),
        "optim": dict(name="sgd", lr=0.5, momentum=0.9, weight_decay=5e-5, warmup=20, step_size=50,
                      gamma=0.5, amo_lr=0.05, amo_weight_decay=5e-5),
    },
    "fast": {
        "model": dict(base_width=32, depth=5, gate="spatial", fusion="fused"),
        "data": dict(size=256, label_ratio=0.1, augment=True),
        "train": dict(method="semimoe", schedule="iteration", iterations=20000, batch_labeled=8,
                      batch_unlabeled=8, crop=256, unsup_weight=0.5, refine="sdf_agree+confidence",
                      amo="reference", val_every=1000, select="ours", amp=True, channels_last=True,
                      num_workers=4),
        "optim": dict(name="adamw", lr=2e-3, weight_decay=1e-4, warmup=500, step_size=5000, gamma=0.5,
                      amo_lr=0.05, amo_weight_decay=5e-5, grad_clip=5.0),
    },
    "weak-demo": {
        "model": dict(arch="mil", base_width=16, depth=4),
        "data": dict(kind="synthetic-weak", synthetic_train=30, synthetic_test=10, val_ratio=0.15, mpp=1.24,
                     augment=True),
        "train": dict(method="weak-ikd", schedule="iteration", iterations=400, batch_labeled=8, crop=0,
                      val_every=25, select="ours", num_workers=0, overlays=4, time_limit=8.0),
        "optim": dict(name="adamw", lr=1e-3, weight_decay=1e-4, warmup=20, step_size=300, gamma=0.5,
                      grad_clip=5.0),
        "weak": dict(pooling="dice", distill_start=150, reverse_every=75, threshold=0.5),
    },
    "cpu-demo": {
        "model": dict(base_width=16, depth=4, gate="spatial", fusion="fused"),
        "data": dict(size=256, label_ratio=0.1, augment=True),
        "train": dict(method="semimoe", schedule="iteration", iterations=300, batch_labeled=4,
                      batch_unlabeled=4, crop=128, unsup_weight=0.5, refine="sdf_agree+confidence",
                      amo="reference", val_every=100, select="ours", num_workers=0, overlays=8,
                      time_limit=7.5),
        "optim": dict(name="adamw", lr=3e-3, weight_decay=1e-4, warmup=30, step_size=200, gamma=0.5,
                      amo_lr=0.05, amo_weight_decay=5e-5, grad_clip=5.0),
    },
    "icmoe-demo": {
        "model": dict(arch="icmoe", base_width=8, depth=4, gate="spatial", fusion="fused", adapter_rank=4,
                      embed_dim=32),
        "data": dict(kind="synthetic-glas", synthetic_domain="b", synthetic_train=40, synthetic_test=20, size=256,
                     label_ratio=0.1, augment=True),
        "train": dict(method="icmoe", schedule="iteration", iterations=300, batch_labeled=4, batch_unlabeled=4,
                      crop=96, unsup_weight=0.5, val_every=60, select="ours", num_workers=0, overlays=4,
                      time_limit=9.0),
        "optim": dict(name="adamw", lr=3e-3, weight_decay=1e-4, warmup=30, step_size=200, gamma=0.5,
                      grad_clip=5.0),
        "icmoe": dict(pretrain_domain="a", pretrain_iterations=300),
    },
}
