"""Training methods: small classes that plug into the :class:`~semimoe.training.Trainer`.

A method declares which batches it needs (``needs_unlabeled``), builds its
objective (:meth:`Method.build`), runs the forward and backward passes of
one iteration (:meth:`Method.step`), and says what it logs (``log_keys``,
:meth:`Method.log_values`). The trainer owns everything else: data streams,
the model and its optimiser, schedule, validation, checkpoints, DDP.

Methods (``train.method``):

``supervised``
    Labeled images only: each task loss on the expert's head and on the
    gate's head, combined by the adaptive multi-objective weighting.
``semimoe``
    Semi-MoE (docs/METHOD.md §3-4), in the released code's order: the
    unlabeled batch first (pseudo-labels from the gate's heads, experts
    against them, ``w(e) * AMO``; backward without DDP gradient sync), then
    the labeled batch as in ``supervised`` (backward with sync).

A new method subclasses :class:`Method` and registers itself in
:data:`METHODS`.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ..data.targets import make_targets
from ..errors import ConfigError
from ..losses import SemiMoEObjective, SupervisedObjective

__all__ = ["Method", "SupervisedMethod", "SemiMoEMethod", "METHODS", "register_method"]


class Method:
    """Base class of training methods (see the module doc)."""

    name = ""
    needs_unlabeled = False
    log_keys: Tuple[str, ...] = ()

    def __init__(self, cfg):
        self.cfg = cfg

    def build(self, trainer) -> None:
        """Create the objective and any optimiser of the method's own parameters."""

    def step(self, trainer, it: int, labeled, unlabeled) -> Dict[str, Tensor]:
        """Forward and backward passes of iteration ``it``; returns detached
        scalar tensors named by ``log_keys`` (no host sync)."""
        raise NotImplementedError

    def optimizers(self) -> List[torch.optim.Optimizer]:
        """Optimisers of the method's own parameters, stepped after the model's."""
        return []

    def reduce_gradients(self, trainer) -> None:
        """Average the gradients of the method's own parameters across DDP processes."""

    def log_values(self, trainer, step: int) -> Dict[str, float]:
        """Values logged with the row of ``step`` (completed iterations) besides
        the averaged losses: the state after the last iteration."""
        return {}

    def state_dict(self) -> Dict[str, object]:
        """What ``last.pt`` must hold to resume the method."""
        return {}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        pass

    def final_results(self, trainer) -> Dict[str, object]:
        """Entries the method adds to ``results.json`` at the end (rank 0)."""
        return {}

    def report(self, results: Dict[str, object], say) -> None:
        """Lines the method adds to the final report."""


class SupervisedMethod(Method):
    """``train.method=supervised``: the labeled pass only."""

    name = "supervised"
    log_keys = ("loss", "loss_sup", "sup_seg", "sup_sdf", "sup_bnd", "amo_seg", "amo_sdf", "amo_bnd")

    def make_objective(self) -> SupervisedObjective:
        return SupervisedObjective(amo=self.cfg.train.amo, dice=self.cfg.train.dice)

    def build(self, trainer) -> None:
        arch = getattr(trainer.model.cfg, "arch", "semimoe")
        if arch != "semimoe":
            raise ConfigError(f"train.method={self.name} trains the Semi-MoE model (model.arch=semimoe), "
                              f"not model.arch={arch}")
        if getattr(trainer.labeled, "has_image_labels", False):
            raise ConfigError(f"train.method={self.name} needs masks, but data.kind={self.cfg.data.kind} has "
                              "image-level labels only: use train.method=weak-ikd (with model.arch=mil)")
        oc = self.cfg.optim
        self.objective = self.make_objective().to(trainer.device)
        self.amo_opt = self.objective.make_amo_optimizer(oc.amo_lr, oc.amo_weight_decay)

    def labeled_step(self, trainer, labeled) -> Dict[str, Tensor]:
        xl, ml = labeled
        targets = make_targets(ml.to(trainer.device, non_blocking=True))
        with trainer.autocast():
            out = trainer.forward(trainer.to_device(xl))
        loss, parts = self.objective(out, targets)
        loss.backward()
        return {"loss_sup": loss, **parts}

    def step(self, trainer, it, labeled, unlabeled) -> Dict[str, Tensor]:
        info = self.labeled_step(trainer, labeled)
        info["loss"] = info["loss_sup"]
        return info

    def optimizers(self):
        return [self.amo_opt]

    def reduce_gradients(self, trainer) -> None:
        if trainer.dist.active:
            for p in self.objective.amo.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(trainer.dist.world)

    def log_values(self, trainer, step: int) -> Dict[str, float]:
        return {f"amo_{k}": v for k, v in self.objective.amo.weights().items()}

    def state_dict(self):
        return {"amo": self.objective.amo.state_dict(), "amo_optimizer": self.amo_opt.state_dict()}

    def load_state_dict(self, state) -> None:
        self.objective.amo.load_state_dict(state["amo"])
        self.amo_opt.load_state_dict(state["amo_optimizer"])


class SemiMoEMethod(SupervisedMethod):
    """``train.method=semimoe``: the unlabeled pass, then the labeled pass."""

    name = "semimoe"
    needs_unlabeled = True
    log_keys = ("unsup_w", "loss", "loss_sup", "loss_unsup", "sup_seg", "sup_sdf", "sup_bnd", "unsup_seg",
                "unsup_sdf", "unsup_bnd", "amo_seg", "amo_sdf", "amo_bnd", "pseudo_fg", "pseudo_weight")

    def make_objective(self) -> SemiMoEObjective:
        return SemiMoEObjective(amo=self.cfg.train.amo, refine=self.cfg.train.refine, dice=self.cfg.train.dice)

    def step(self, trainer, it, labeled, unlabeled) -> Dict[str, Tensor]:
        w_u = trainer.schedule.unsup_weight(it)
        xu = trainer.to_device(unlabeled[0])
        with trainer.no_sync():  # gradients accumulate locally; the labeled pass syncs
            with trainer.autocast():
                out = trainer.forward(xu)
            loss_u, parts, pl = self.objective.unsupervised(out, w_u)
            loss_u.backward()
        info: Dict[str, Tensor] = dict(parts, loss_unsup=loss_u, pseudo_fg=pl.mask.float().mean(),
                                       pseudo_weight=pl.weight.mean() if pl.weight is not None
                                       else torch.ones((), device=trainer.device))
        del out, pl
        info.update(self.labeled_step(trainer, labeled))
        info["loss"] = info["loss_sup"] + info["loss_unsup"]
        return info

    def log_values(self, trainer, step: int) -> Dict[str, float]:
        return {"unsup_w": trainer.schedule.unsup_weight(step - 1), **super().log_values(trainer, step)}


METHODS: Dict[str, type] = {}


def register_method(cls: type) -> type:
    """Make ``cls`` available as ``train.method=<cls.name>``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    METHODS[cls.name] = cls
    return cls


register_method(SupervisedMethod)
register_method(SemiMoEMethod)
