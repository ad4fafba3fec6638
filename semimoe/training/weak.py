"""``train.method=weak-ikd``: segmentation from image-level labels by MIL
pseudo-masks and iterative knowledge distillation (IKD-MIL; He, Li and
Zemp, arXiv 2407.10274), built from the paper's description.

The run, in schedule units (``weak.*``, :class:`semimoe.config.WeakConfig`):

1. **MIL teacher** (until ``weak.distill_start``): the MIL segmenter
   (``model.arch=mil``: side outputs at every level, fused with fixed
   weights) learns from image labels alone (:func:`semimoe.losses.mil_loss`):
   positive images towards "tumour somewhere" (``weak.pooling``), negative
   images towards background everywhere.
2. **Distillation rounds**: at ``distill_start`` the best model so far
   (selected on the validation masks when there are any, else the current
   one) is frozen as the teacher. The student -- the trainer's model, which
   goes on from its weights -- learns the teacher's fused map on positive
   images (Dice to the soft map + OEEM-weighted cross-entropy to the map
   thresholded at ``weak.threshold``) and background on negative images
   (:func:`semimoe.losses.distill_loss`).
3. **Role reversal**: every ``weak.reverse_every`` units the best student so
   far becomes the teacher (0: never, the ablation).

Every teacher is a *round* (0 = the MIL teacher). With ``weak.pseudo_masks``
each round writes its pseudo-masks of the training images,
``<run>/pseudo/round<k>/<name>.png`` (0/255, at the images' native
resolution, through the deployed predictor), and ``scores.json``: their
Dice against the hidden masks where the dataset has them (synthetic-weak
always; a ``weak`` folder for the images with a mask file), pooled over the
positive images, and their background F1 on the negative images. The rounds
and their scores go into ``results.json`` (``weak_rounds``) and the final
report.

Everything the method holds (teacher, round, best weights so far) is in
``last.pt``: a killed run resumes where it stopped.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..metrics import score_masks
from .methods import Method, register_method

__all__ = ["WeakIKDMethod", "score_predictor", "predictor_mask"]


def score_predictor(predictor, images, labels: Dict[str, int], threshold: float) -> Dict[str, Any]:
    """:func:`semimoe.metrics.score_masks` of ``predictor``'s masks (gland
    probability ``> threshold``, as :func:`semimoe.inference.postprocess`)
    on an :class:`~semimoe.data.ImageSet` with masks, ``labels`` by image name."""
    pred, truth, ys = [], [], []
    for s in images:
        pred.append(predictor_mask(predictor, s.image, images.mpp, threshold))
        truth.append(s.mask)
        ys.append(int(labels[s.name]))
    return score_masks(pred, truth, ys)


def predictor_mask(predictor, image: np.ndarray, mpp: float, threshold: float) -> np.ndarray:
    """bool (H, W): the predictor's gland probability ``> threshold`` (the rule of postprocess)."""
    return (predictor.probabilities(image, mpp=mpp)[1] > threshold).cpu().numpy()


class WeakIKDMethod(Method):
    """``train.method=weak-ikd`` (see the module doc)."""

    name = "weak-ikd"
    needs_unlabeled = False
    needs_image_labels = True
    log_keys = ("loss", "loss_mil", "loss_distill", "round", "positives")

    def build(self, trainer) -> None:
        if getattr(trainer.model.cfg, "arch", "semimoe") != "mil":
            raise ConfigError("train.method=weak-ikd trains the MIL segmenter: set model.arch=mil")
        if not getattr(trainer.labeled, "has_image_labels", False):
            raise ConfigError(f"train.method=weak-ikd needs image-level labels: data.kind=weak (a folder with "
                              f"labels.csv) or synthetic-weak, got data.kind={self.cfg.data.kind}")
        wc, ipe = self.cfg.weak, trainer.schedule.ipe
        unit = ipe if trainer.schedule.by_epoch else 1
        self.start_it = wc.distill_start * unit
        self.every_it = wc.reverse_every * unit
        self._model = trainer.model  # the student; teachers are frozen copies of it
        self.teacher = None          # frozen model of the current round
        self.round = -1              # -1: MIL phase, no teacher yet
        self.best_state: Optional[Dict[str, Tensor]] = None
        self.best_seen = -1          # trainer.best["step"] of best_state
        self.rounds: List[Dict[str, Any]] = []

    # ------------------------------------------------------------ teacher
    def _track_best(self, trainer) -> None:
        """Keep the weights of the best validated model so far (the weights
        now are the ones validated after the last step)."""
        step = int(trainer.best["step"])
        if step >= 0 and step != self.best_seen:
            self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            self.best_seen = step

    def _set_teacher(self, state: Dict[str, Tensor]) -> None:
        if self.teacher is None:
            self.teacher = copy.deepcopy(self._model)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.teacher.load_state_dict(state)
        self.teacher.eval()

    def _new_teacher(self, trainer, it: int) -> None:
        self._set_teacher(self.best_state if self.best_state is not None else trainer.model.state_dict())
        self.round += 1
        source = self.best_seen if self.best_state is not None else it
        info = {"round": self.round, "iteration": it, "teacher_from": source,
                "source": f"best model so far (iteration {source})" if self.best_state is not None
                else f"the model at iteration {it} (no validation masks)"}
        prev = self.rounds[-1] if self.rounds else None
        if prev is not None and prev.get("teacher_from") == source and self.best_state is not None:
            # the best student is still the last teacher: the same model, the same masks and scores
            info.update({k: v for k, v in prev.items() if k not in ("round", "iteration")},
                        same_as_round=prev.get("same_as_round", prev["round"]))
            self.rounds.append(info)
            trainer.write(f"weak-ikd: round {self.round} teacher = round {info['same_as_round']}'s "
                          f"(no student has done better on validation since)")
            return
        if trainer.dist.main:
            self.save_teacher(trainer, it)
            if self.cfg.weak.pseudo_masks:
                info.update(self.write_pseudo_masks(trainer, self.teacher, self.round))
        self.rounds.append(info)
        msg = f"weak-ikd: round {self.round} teacher = {info['source']}"
        if "dice_positive" in info:
            msg += (f"; its pseudo-masks: Dice {info['dice_positive']:.4f} on {info['n_positive']} positive, "
                    f"background F1 {info['background_f1_negative']:.4f} on {info['n_negative']} negative "
                    "training images")
        trainer.write(msg)

    def _mask(self, predictor, image: np.ndarray, mpp: float) -> np.ndarray:
        return predictor_mask(predictor, image, mpp, self.cfg.weak.threshold)

    def _round_dir(self, trainer, k: int) -> Path:
        folder = Path(trainer.run_dir) / "pseudo" / f"round{k}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def save_teacher(self, trainer, it: int) -> None:
        """``pseudo/round<k>/teacher.pt``: the round's teacher as a model file
        (the best.pt format: ``semimoe.infer`` and ``semimoe.evaluate`` open it)."""
        from ..utils import atomic_torch_save

        p = trainer.checkpoint_payload(it, False)
        p["model"] = {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}
        p["weak_round"] = self.round
        atomic_torch_save(p, self._round_dir(trainer, self.round) / "teacher.pt")

    def write_pseudo_masks(self, trainer, model, k: int) -> Dict[str, Any]:
        """The pseudo-masks of ``model`` on the training images (PNGs) and
        their scores against the hidden masks that exist."""
        from ..data.datasets import build_split_set, image_labels
        from ..data.weak import save_png
        from ..utils import atomic_write_json

        folder = self._round_dir(trainer, k)
        images = build_split_set(self.cfg.data, str(trainer.run_dir), "labeled")
        labels = image_labels(self.cfg.data, "train")
        predictor = trainer.predictor(model=model)
        pred, truth, ys = [], [], []
        for i, name in enumerate(images.names):
            img, mask = images.pool.get(i)  # mask None: no hidden mask for this image
            m = self._mask(predictor, img, images.mpp)
            save_png(folder / f"{name}.png", m.astype(np.uint8) * 255)
            if mask is not None:
                pred.append(m)
                truth.append(mask)
                ys.append(int(labels[name]))
        scores = score_masks(pred, truth, ys) if pred else {}
        atomic_write_json(folder / "scores.json", {"round": k, "images": len(images), "scored": len(pred),
                                                   "threshold": self.cfg.weak.threshold, **scores})
        return scores

    # ------------------------------------------------------------ the step
    def step(self, trainer, it: int, labeled, unlabeled) -> Dict[str, Tensor]:
        from ..losses import distill_loss, mil_loss

        wc = self.cfg.weak
        self._track_best(trainer)
        if it >= self.start_it and (self.round < 0 or (
                self.every_it and (it - self.start_it) % self.every_it == 0 and it > self.start_it)):
            self._new_teacher(trainer, it)
            trainer.fwd.train()
        x, y = labeled
        x, y = trainer.to_device(x), y.to(trainer.device)
        with trainer.autocast():
            out = trainer.forward(x)
        zero = torch.zeros((), device=trainer.device)
        if self.teacher is None:
            loss, _ = mil_loss(out, y, wc.pooling, lse_r=wc.lse_r, topk=wc.topk)
            info = {"loss_mil": loss.detach(), "loss_distill": zero}
        else:
            with torch.no_grad():
                t = self.teacher(x).fused.float()
            loss, _ = distill_loss(out, t, y, threshold=wc.threshold)
            info = {"loss_mil": zero, "loss_distill": loss.detach()}
        loss.backward()
        info.update(loss=loss.detach(), round=torch.tensor(float(max(self.round, 0)), device=trainer.device),
                    positives=y.float().mean())
        return info

    # ------------------------------------------------------------ resume and results
    def state_dict(self) -> Dict[str, object]:
        return {"weak_ikd": {
            "round": self.round, "best_seen": self.best_seen, "rounds": self.rounds,
            "teacher": None if self.teacher is None else
            {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()},
            "best_state": None if self.best_state is None else
            {k: v.detach().cpu() for k, v in self.best_state.items()}}}

    def load_state_dict(self, state) -> None:
        st = state.get("weak_ikd") or {}
        self.round = int(st.get("round", -1))
        self.best_seen = int(st.get("best_seen", -1))
        self.rounds = list(st.get("rounds") or [])
        self.best_state = st.get("best_state")
        if st.get("teacher") is not None:
            self._set_teacher(st["teacher"])

    def final_results(self, trainer) -> Dict[str, Any]:
        """results.json entries: ``weak_rounds`` (each teacher: where it came
        from, its pseudo-mask scores on the training images and, with a test
        split, its scores on the test images) and ``weak_test`` (best.pt, the
        final student, on the test images), at ``weak.threshold``."""
        out: Dict[str, Any] = {"weak_rounds": [dict(r) for r in self.rounds]}
        test = self._test_set(trainer)
        if self.cfg.weak.export_dataset:
            out["weak_dataset"] = str(self.export_dataset(trainer, test))
        if test is None:
            return out
        images, labels = test
        for r in out["weak_rounds"]:
            f = Path(trainer.run_dir) / "pseudo" / f"round{r.get('same_as_round', r['round'])}" / "teacher.pt"
            if "same_as_round" in r:
                r["test"] = out["weak_rounds"][r["same_as_round"]].get("test")
            elif f.exists():
                r["test"] = self.score_model(f, images, labels, trainer.device)
        same = [r for r in out["weak_rounds"] if r.get("test") and self.best_state is not None
                and r.get("teacher_from") == int(trainer.best["step"])]
        # best.pt is a round's teacher (the same validated weights): its scores are already there
        out["weak_test"] = dict(same[0]["test"]) if same else \
            self.score_model(Path(trainer.run_dir) / "best.pt", images, labels, trainer.device)
        return out

    def export_dataset(self, trainer, test=None) -> Path:
        """``<run>/pseudo_dataset/``: the training images (native resolution)
        with best.pt's masks at ``weak.threshold`` as 4-connected instance
        labels -- all background on negative images -- in
        ``train/image`` + ``train/mask``; the test images with their true
        masks in ``test/``; ``dataset.json`` (pixel size, source run).
        Read it with ``data.kind=folder data.root=<it> data.source_mpp=<mpp>``."""
        from scipy import ndimage

        from ..data.datasets import build_split_set, image_labels
        from ..data.weak import mask_png, save_png
        from ..inference import Predictor
        from ..utils import atomic_write_json

        root = Path(trainer.run_dir) / "pseudo_dataset"
        predictor = Predictor.from_file(Path(trainer.run_dir) / "best.pt", device=trainer.device)
        labels = image_labels(self.cfg.data, "train")

        def save(path: Path, a: np.ndarray) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_png(path, a)

        def instances(m: np.ndarray) -> np.ndarray:
            return mask_png(ndimage.label(m)[0])  # 4-connected

        mpp = None
        for part in ("labeled", "val"):
            images = build_split_set(self.cfg.data, str(trainer.run_dir), part)
            mpp = images.mpp
            for i, name in enumerate(images.names):
                img = images.pool.get(i)[0]
                m = np.zeros(img.shape[:2], bool)
                if labels[name]:
                    m = self._mask(predictor, img, images.mpp)
                save(root / "train" / "image" / f"{name}.png", img)
                save(root / "train" / "mask" / f"{name}.png", instances(m))
        if test is not None:  # (images, labels) of _test_set
            for s in test[0]:
                save(root / "test" / "image" / f"{s.name}.png", s.image)
                save(root / "test" / "mask" / f"{s.name}.png", instances(s.mask > 0))
        atomic_write_json(root / "dataset.json", {"source_mpp": mpp, "from_run": str(trainer.run_dir),
                                                  "masks": "best.pt pseudo-masks (negatives: background)",
                                                  "threshold": self.cfg.weak.threshold})
        trainer.say(f"weak-ikd: pseudo-mask dataset in {root}; train Semi-MoE on it with\n"
                    f"  python -m semimoe.train data.kind=folder data.root={root} data.source_mpp={mpp:g} "
                    "data.label_ratio=0.85 train.method=supervised")
        return root

    def _test_set(self, trainer):
        """The test images the trainer scored best.pt on and their labels (None without a test set)."""
        from ..data.datasets import image_labels

        if trainer.test_set is None:
            return None
        return trainer.test_set, image_labels(self.cfg.data, "test")

    def score_model(self, path: Path, images, labels: Dict[str, int], device) -> Dict[str, Any]:
        """:func:`score_predictor` of the model file ``path`` on ``images``."""
        from ..inference import Predictor

        return score_predictor(Predictor.from_file(path, device=device), images, labels, self.cfg.weak.threshold)

    def report(self, results: Dict[str, Any], say) -> None:
        def scores(r):
            return (f"Dice {r['dice_positive']:.4f} on {r['n_positive']} positive, background F1 "
                    f"{r['background_f1_negative']:.4f} on {r['n_negative']} negative")

        for r in results.get("weak_rounds") or []:
            line = f"  round {r['round']} teacher (iteration {r['iteration']}" + (
                f", = round {r['same_as_round']}" if "same_as_round" in r else "") + "):"
            if "dice_positive" in r:
                line += f" pseudo-masks {scores(r)} training images;"
            if r.get("test"):
                line += f" test {scores(r['test'])} images"
            say(line.rstrip(";"))
        if results.get("weak_test"):
            say(f"  student (best.pt, iteration {results['best']['step']}): test {scores(results['weak_test'])} "
                "images (hidden masks)")


register_method(WeakIKDMethod)
