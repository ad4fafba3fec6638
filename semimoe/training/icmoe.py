"""``train.method=icmoe``: IC-MoE-style experts on a frozen pretrained
network (``model.arch=icmoe``, :mod:`semimoe.models.icmoe`; the idea of
Zhang et al., arXiv 2510.17684, built with standard forms -- docs/METHOD.md §8).

Set-up (:meth:`ICMoEMethod.build`): the backbone checkpoint ``icmoe.backbone``
(a Semi-MoE ``best.pt``) is loaded into the model's frozen network; without
one the run first pretrains it in ``<run>/backbone/`` (``train.method=
supervised`` on the ``icmoe.pretrain_domain`` of synthetic-glas, every
non-validation image labeled). The SHA-256 of the frozen weights is taken
then and checked at the end (``results.json``: ``icmoe.backbone_unchanged``).

One iteration, labeled batch (x, mask) then unlabeled batch x (all
weights in ``icmoe.*``):

* **labeled**: cross-entropy + Dice of each trainable expert (semantic,
  adaptive) and of the voted probabilities, the vote's gates taking the
  log-consistency of each expert with the label
  (:func:`semimoe.losses.icmoe.vote_logits`);
* **unlabeled**: the vote with consistency towards the experts' consensus;
  its confident pixels (voted probability >= ``pseudo_threshold``) are
  pseudo-labels for the trainable experts (cross-entropy, weight
  ``train.unsup_weight`` ramped like Semi-MoE's);
* on both: ``balance`` x the Switch-style load-balancing loss of the gates
  and ``contrast`` x the semantic-guided pixel contrastive loss on the
  bottleneck embeddings (labels, or confident pseudo-labels; ``samples``
  pixels per class, ``hard_fraction`` of them near class boundaries).

The report prints the test Dice of the frozen network alone and with the
experts (best.pt, selected on validation like every method).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .methods import Method, register_method

__all__ = ["ICMoEMethod"]

_EPS = 1e-6


def _log(p: Tensor) -> Tensor:
    """Probabilities as logits whose softmax gives them back."""
    return torch.log(p.clamp_min(_EPS))


def _majority(y: Tensor, size) -> Tensor:
    """(B, H, W) int64 labels at ``size`` by the majority of each cell (one-hot average pooling)."""
    onehot = F.one_hot(y, 2).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, size).argmax(1)


class ICMoEMethod(Method):
    name = "icmoe"
    needs_unlabeled = True
    log_keys = ("loss", "loss_sup", "loss_vote", "loss_unsup", "loss_balance", "loss_contrast", "unsup_w",
                "pseudo_fraction", "gate_basic", "gate_semantic", "gate_adaptive")

    # ------------------------------------------------------------ set-up
    def build(self, trainer) -> None:
        from ..models.icmoe import state_hash

        model = trainer.model
        if getattr(model.cfg, "arch", "semimoe") != "icmoe":
            raise ConfigError("train.method=icmoe trains experts on a frozen network: set model.arch=icmoe")
        if getattr(trainer.labeled, "has_image_labels", False):
            raise ConfigError(f"train.method=icmoe needs masks, but data.kind={self.cfg.data.kind} has image-level "
                              "labels only")
        path = self.cfg.icmoe.backbone or self.pretrain(trainer)
        self.backbone_path = str(path)
        model.load_backbone(self._backbone_state(path, model.cfg))
        self.backbone_hash = state_hash(model.backbone)
        self.gen = torch.Generator().manual_seed(int(self.cfg.train.seed) + 7919)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_frozen = sum(p.numel() for p in model.backbone.parameters())
        trainer.say(f"icmoe: frozen network {self.backbone_path} ({n_frozen / 1e6:.2f} M parameters, sha256 "
                    f"{self.backbone_hash[:12]}); trained: {n_train / 1e6:.3f} M parameters")
        self.n_trained, self.n_frozen = n_train, n_frozen

    @staticmethod
    def _backbone_state(path, cfg) -> Dict[str, Tensor]:
        from .checkpoint import read_model_weights

        state, mc = read_model_weights(path, "icmoe.backbone", "semimoe")
        want = {k: getattr(cfg, k) for k in ("base_width", "depth", "gate", "in_channels")}
        have = {k: mc.get(k) for k in want}
        if want != have:
            raise ConfigError(f"icmoe.backbone={path} was trained with model {have}; set the same in model.* "
                              f"(now {want})")
        return state

    def pretrain(self, trainer) -> Path:
        """Train the frozen network first (``<run>/backbone/``), or reuse a finished one there."""
        from ..config import config_from_dict, config_to_dict
        from .trainer import train

        ic, folder = self.cfg.icmoe, Path(trainer.run_dir) / "backbone"
        if (folder / "results.json").exists() and (folder / "best.pt").exists():
            trainer.say(f"icmoe: reusing the pretrained network in {folder}")
            return folder / "best.pt"
        if self.cfg.data.kind != "synthetic-glas":
            raise ConfigError("icmoe.backbone is not set: give a pretrained semimoe checkpoint (a best.pt), or "
                              "use data.kind=synthetic-glas so the run pretrains one on icmoe.pretrain_domain")
        if trainer.dist.active:
            raise ConfigError("icmoe: pretrain the backbone before a distributed run and pass icmoe.backbone")
        d = config_to_dict(self.cfg)
        d["model"]["arch"] = "semimoe"
        d["data"].update(synthetic_domain=ic.pretrain_domain, label_ratio=round(1 - self.cfg.data.val_ratio, 6))
        d["train"].update(method="supervised", iterations=ic.pretrain_iterations, eval_test=False, overlays=0,
                          time_limit=0.0, refine=None)
        n = ic.pretrain_iterations
        d["optim"].update(warmup=max(1, n // 10), step_size=max(1, 2 * n // 3))
        d["run_dir"] = str(folder)
        d.pop("preset", None)
        bcfg = config_from_dict(d)
        trainer.say(f"icmoe: no icmoe.backbone: pretraining one on synthetic-glas domain {ic.pretrain_domain!r} "
                    f"({ic.pretrain_iterations} iterations) in {folder}")
        train(bcfg, resume=(folder / "last.pt").exists(), overwrite=True, start_if_missing=True,
              log=lambda m: trainer.say(f"  [backbone] {m}"))
        return folder / "best.pt"

    # ------------------------------------------------------------ the step
    def _losses(self, out, y: Optional[Tensor]) -> Dict[str, Tensor]:
        """Vote, load balance and contrast of one pass; ``y`` the labels (None: unlabeled, from the vote)."""
        from ..losses import dice_loss_sq
        from ..losses.icmoe import (
            boundary_band,
            confident_pseudo_labels,
            consensus,
            load_balance_loss,
            pixel_contrastive_loss,
            pixel_vote,
            sample_pixels,
            vote_logits,
        )

        ic = self.cfg.icmoe
        labeled, valid = y is not None, None
        target = y if labeled else consensus(out.probs)[1]
        gate = vote_logits(out.probs, out.router, target=target, consistency_weight=ic.consistency)
        fused = pixel_vote(out.probs, gate)
        res: Dict[str, Tensor] = {"gates": torch.softmax(gate.detach(), dim=2).mean(dim=(0, 1, 3, 4))}
        if labeled:
            res["vote"] = F.cross_entropy(_log(fused), y) + dice_loss_sq(_log(fused), y)
        else:
            y, valid = confident_pseudo_labels(fused.detach(), ic.pseudo_threshold)
            res["pseudo_fraction"] = valid.float().mean()
        res["balance"] = load_balance_loss(gate)
        size = out.embed.shape[-2:]
        ys = _majority(y, size)
        vs = None if valid is None else F.adaptive_avg_pool2d(valid[:, None].float(), size)[:, 0] >= 0.5
        idx = sample_pixels(ys, ic.samples, hard=boundary_band(ys, ic.hard_width), hard_fraction=ic.hard_fraction,
                            valid=vs, generator=self.gen)
        emb = out.embed.float().permute(0, 2, 3, 1).reshape(-1, out.embed.shape[1])
        res["contrast"] = pixel_contrastive_loss(emb[idx.to(emb.device)], ys.flatten()[idx.to(ys.device)],
                                                 temperature=ic.temperature)
        res["y"], res["valid"] = y, valid
        return res

    def step(self, trainer, it: int, labeled, unlabeled) -> Dict[str, Tensor]:
        from ..losses import dice_loss_sq

        ic = self.cfg.icmoe
        xl, ml = labeled
        y = (ml.to(trainer.device) > 0).long()
        with trainer.autocast():
            out = trainer.forward(trainer.to_device(xl))
        lab = self._losses(out, y)
        sup = sum(F.cross_entropy(lg, y) + dice_loss_sq(lg, y) for lg in out.logits.values())
        loss_l = sup + lab["vote"] + ic.balance * lab["balance"] + ic.contrast * lab["contrast"]
        loss_l.backward()
        del out
        w_u = trainer.schedule.unsup_weight(it)
        xu = trainer.to_device(unlabeled[0])
        with trainer.autocast():
            outu = trainer.forward(xu)
        unl = self._losses(outu, None)
        v = unl["valid"].float()
        unsup = sum((F.cross_entropy(lg, unl["y"], reduction="none") * v).sum() / v.sum().clamp_min(1.0)
                    for lg in outu.logits.values())
        loss_u = w_u * unsup + ic.balance * unl["balance"] + ic.contrast * unl["contrast"]
        loss_u.backward()
        g = (lab["gates"] + unl["gates"]) / 2
        return {"loss": (loss_l + loss_u).detach(), "loss_sup": sup.detach(), "loss_vote": lab["vote"].detach(),
                "loss_unsup": unsup.detach(), "loss_balance": (lab["balance"] + unl["balance"]).detach(),
                "loss_contrast": (lab["contrast"] + unl["contrast"]).detach(),
                "pseudo_fraction": unl["pseudo_fraction"], "gate_basic": g[0], "gate_semantic": g[1],
                "gate_adaptive": g[2]}

    def log_values(self, trainer, step: int) -> Dict[str, float]:
        return {"unsup_w": trainer.schedule.unsup_weight(step - 1)}

    # ------------------------------------------------------------ results
    def final_results(self, trainer) -> Dict[str, Any]:
        from ..models.icmoe import state_hash

        now = state_hash(trainer.model.backbone)
        out: Dict[str, Any] = {"icmoe": {"backbone": self.backbone_path, "backbone_sha256": self.backbone_hash,
                                         "backbone_unchanged": now == self.backbone_hash,
                                         "trained_parameters": self.n_trained,
                                         "frozen_parameters": self.n_frozen}}
        if now != self.backbone_hash:
            trainer.say("error: icmoe: the frozen network's weights changed during training")
        out["icmoe"]["frozen_test"] = self._score_backbone(trainer)
        return out

    def _score_backbone(self, trainer) -> Optional[Dict[str, Any]]:
        """The frozen network alone on the test images the trainer scored best.pt on."""
        from ..evaluate import evaluate
        from ..inference import Predictor

        if trainer.test_set is None:
            return None
        pred = Predictor.from_file(self.backbone_path, device=trainer.device)
        r = evaluate(pred, trainer.test_set, threshold=self.cfg.train.threshold, hausdorff=False)
        return {k: r[k] for k in ("dice_pooled", "iou_pooled", "object_f1", "n_images")}

    def report(self, results: Dict[str, Any], say) -> None:
        ic = results.get("icmoe") or {}
        if not ic:
            return
        say(f"  frozen network: {ic['backbone']} ({ic['frozen_parameters'] / 1e6:.2f} M parameters, unchanged: "
            f"{ic['backbone_unchanged']}); trained {ic['trained_parameters'] / 1e6:.3f} M parameters")
        ft, test = ic.get("frozen_test"), (results.get("test") or {})
        if ft and test:
            say(f"  test Dice: frozen network alone {ft['dice_pooled']:.4f}, with the experts (best.pt) "
                f"{test.get('dice_pooled', math.nan):.4f}")


register_method(ICMoEMethod)
