"""The schedule of a run: iterations per epoch, learning rate, unsupervised
ramp and validation points, as pure functions of the iteration number."""
from __future__ import annotations

import math

from ..losses import unsup_weight

__all__ = ["lr_factor", "Schedule"]


def lr_factor(unit: int, warmup: int, step_size: int, gamma: float, from_zero: bool) -> float:
    """Learning-rate multiplier at schedule unit ``unit`` (epoch or iteration).

    Reference (``from_zero=True``, epochs): ``unit / warmup`` during the
    warm-up (lr 0 in epoch 0, as the released code's GradualWarmupScheduler),
    then ``gamma ** ((unit - warmup) // step_size)``. Iteration schedules use
    ``(unit + 1) / warmup`` so that no iteration is wasted at lr 0.
    """
    if unit < warmup:
        return (unit if from_zero else unit + 1) / warmup
    return gamma ** ((unit - warmup) // step_size)


class Schedule:
    """``train.schedule`` = ``epoch`` (epochs of ceil(n / (batch * world))
    iterations: n unlabeled images and ``batch_unlabeled``, or without
    unlabeled images n labeled images and ``batch_labeled``) or ``iteration``.

    Attributes: ``ipe`` (iterations per epoch), ``total`` (iterations),
    ``val_every`` (iterations between validations, 0: only at the end).
    """

    def __init__(self, tc, oc, n_unlabeled: int, n_labeled: int, world: int):
        self.tc, self.oc = tc, oc
        self.by_epoch = tc.schedule == "epoch"
        n, batch = (n_unlabeled, tc.batch_unlabeled) if n_unlabeled else (n_labeled, tc.batch_labeled)
        self.ipe = max(1, math.ceil(n / (batch * world)))
        self.total = tc.epochs * self.ipe if self.by_epoch else tc.iterations
        self.val_every = (tc.val_every * (self.ipe if self.by_epoch else 1)) if tc.val_every else 0

    def epoch(self, it: int) -> int:
        return it // self.ipe

    def lr(self, it: int) -> float:
        unit = it // self.ipe if self.by_epoch else it
        oc = self.oc
        return oc.lr * lr_factor(unit, oc.warmup, oc.step_size, oc.gamma, from_zero=self.by_epoch)

    def unsup_weight(self, it: int) -> float:
        """The ramp ``w(e)`` of the unsupervised term (docs/METHOD.md §3)."""
        if self.by_epoch:
            return unsup_weight(it // self.ipe, self.tc.epochs, self.tc.unsup_weight)
        return unsup_weight(it, self.total, self.tc.unsup_weight)

    def validates_at(self, step: int) -> bool:
        """Validate after ``step`` completed iterations?"""
        return (bool(self.val_every) and step % self.val_every == 0) or step == self.total
