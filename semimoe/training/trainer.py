"""The training engine: a :class:`Trainer` whose run is a short sequence of
hooks, and a :class:`~semimoe.training.methods.Method` that supplies the
objective and the forward/backward passes of one iteration.

    fit():  setup()  ->  for each iteration: train_step(); after_step()  ->  finish()

Each hook is a method a subclass may override (nnU-Net's trainer-variant
pattern): ``setup_runtime``, ``setup_run_dir``, ``setup_data``,
``setup_model``, ``setup_optimizer``, ``load_state``, ``setup_wrappers``,
``train_step``, ``validate``, ``save_checkpoint``, ``finish``.

The run folder holds ``config.yaml``, ``split.json`` (from the data module),
``metrics.csv``, TensorBoard events (if ``tensorboard`` is installed),
``last.pt`` (everything needed to resume: model, optimisers, the method's
state, RNG states; the data streams are a function of the iteration count),
``best.pt`` (selected on the validation split), ``results.json`` and
``overlays/``. Checkpoints record the model's
:class:`~semimoe.data.scale.InputSpec` (normalisation and training scale);
they are written atomically and read with ``torch.load(weights_only=True)``.

Validation during training scores the model through the deployed
prediction path (:class:`~semimoe.inference.Predictor`: the validation
images at their native resolution, resampled to the training scale, one
whole-image pass each); the final evaluation reloads ``best.pt`` exactly as
``semimoe.infer`` does and scores it with the default tiling.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..config import Config, ConfigError, config_to_dict, dump_yaml
from ..errors import CheckpointError
from ..memory import keep_freed_memory
from ..models import SemiMoE, build_model
from ..utils import (Progress, atomic_torch_save, atomic_write_json, atomic_write_text, remove_stale_temp_files,
                     safe_torch_load)
from ..vml import start_vml
from .checkpoint import CKPT_FORMAT, read_model_weights, rng_state, set_rng_state
from .distributed import auto_threads, init_distributed, pick_device, replica_check
from .logger import RunLogger
from .rundir import RunLock, resolve_run_dir
from .methods import METHODS, Method
from .schedule import Schedule
from .streams import BatchSource, Stream, batch_iterator, mix

__all__ = ["Trainer", "train"]

# settings that may change between a run and its resumption without a warning
_RUNTIME_KEYS = ("device", "threads", "num_workers", "progress", "overlays", "eval_test", "time_limit",
                 "log_every")
_VAL_FIELDS = ("val_score", "val_dice", "val_iou", "best_score")


class Trainer:
    """Train a model as ``cfg`` says, with the method ``cfg.train.method``.

    Args:
        cfg: :class:`semimoe.config.Config`.
        on_step: called as ``on_step(step, losses)`` after every iteration
            (``step`` = completed iterations, ``losses`` = dict of floats); an
            exception raised there ends the run at once, without a final
            checkpoint (the tests emulate a kill this way).
        log: where progress lines go (rank 0 only).
    """

    def __init__(self, cfg: Config, *, on_step: Optional[Callable[[int, Dict[str, Any]], None]] = None,
                 log: Callable[[str], None] = print):
        self.cfg = cfg
        self.on_step = on_step
        self._log = log
        self.method: Method = METHODS[cfg.train.method](cfg)

    # ================================================================ the run
    def fit(self, resume: bool = False, overwrite: bool = False, start_if_missing: bool = False) -> Dict[str, Any]:
        """Run everything; returns the results dict (also ``<run_dir>/results.json``).

        ``resume``: continue from ``<run_dir>/last.pt`` (an error if there is
        none, unless ``start_if_missing``); ``overwrite``: start over in a run
        folder that already holds a run. Under ``torchrun`` the process group
        is set up here and torn down at the end.
        """
        self.dist = init_distributed(self.cfg.train.device)
        self.lock = None
        threads = torch.get_num_threads()
        try:
            self.setup(resume, overwrite, start_if_missing)
            self.train_loop()
            return self.finish()
        finally:
            torch.set_num_threads(threads)
            if self.lock is not None:
                self.lock.release()
            if self.dist.owns_group and dist.is_initialized():
                dist.destroy_process_group()

    def setup(self, resume: bool, overwrite: bool, start_if_missing: bool = False) -> None:
        self.t_start = time.perf_counter()
        self.setup_runtime()
        self.setup_run_dir(resume, overwrite, start_if_missing)
        self.setup_data()
        self.setup_model()
        self.setup_optimizer()
        self.load_state()
        self.setup_wrappers()
        self.setup_logging()

    def prepare_steps(self, stop: Optional[int] = None):
        """Set up this trainer to be stepped by hand (benchmarks, tests): the
        process group of ``train.device``, a started-over run folder, data,
        model and optimiser, the model in training mode. Returns the batch
        iterator from iteration 0 to ``stop`` (default: the schedule's end),
        loaded in this process; step with
        ``train_step(it, *next(batches))``."""
        self.dist, self.lock = init_distributed(self.cfg.train.device), None
        self.setup(resume=False, overwrite=True)
        batches = batch_iterator(self.source, 0, self.schedule.total if stop is None else stop, 0, False)
        self.fwd.train()
        return batches

    def train_loop(self) -> None:
        self.stopped_early = False
        self.batches = batch_iterator(self.source, self.start, self.schedule.total,
                                      self.cfg.train.num_workers if self.start < self.schedule.total else 0,
                                      self.device.type == "cuda")
        self.fwd.train()
        self._reset_peak_memory()
        self.t_loop = time.perf_counter()
        try:
            for it in range(self.start, self.schedule.total):
                labeled, unlabeled = next(self.batches)
                stats = self.train_step(it, labeled, unlabeled)
                self.step = it + 1
                self.after_step(self.step, stats)
                if self.time_is_up(self.step):
                    break
        finally:
            if self.bar is not None:
                self.bar.close()
            if hasattr(self.batches, "close"):
                self.batches.close()
        self.train_s = time.perf_counter() - self.t_loop

    # ================================================================ setup hooks
    def say(self, msg: str) -> None:
        if self.dist.main:
            self._log(msg)

    def setup_runtime(self) -> None:
        """Device, threads, seeds and determinism flags."""
        tc = self.cfg.train
        self.device = pick_device(tc.device, self.dist)
        self._auto_threads = tc.threads <= 0 and self.device.type == "cpu"
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        elif self.device.type == "cpu":
            torch.set_num_threads(auto_threads(self.dist.local_world))
        # Before any threaded elementwise call: otherwise the first one can
        # compute part of its tensor by another code path (semimoe.vml).
        start_vml()
        random.seed(tc.seed)
        np.random.seed(tc.seed % 2**32)
        torch.manual_seed(tc.seed)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not tc.deterministic
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.use_amp = tc.amp and self.device.type == "cuda"
        # Large CPU blocks reused instead of page-faulted in at every step.
        self.kept_memory = self.device.type == "cpu" and tc.keep_memory and keep_freed_memory()
        # channels-last on CPU too: measured at 1 thread (oneDNN convolutions)
        # 1.12x per cpu-demo training step, equal (0.97-1.03x) per paper step.
        self.channels_last = tc.channels_last

    def setup_run_dir(self, resume: bool, overwrite: bool, start_if_missing: bool = False) -> None:
        """Pick the run folder (rank 0 decides) and lock it, remove temporary files
        a killed run left, read ``last.pt`` to resume, write config.yaml."""
        d = self.dist
        run_dir, err = None, None
        if d.main:
            try:
                run_dir = resolve_run_dir(self.cfg.run_dir, self.cfg.preset, resume, start_if_missing, overwrite)
                run_dir.mkdir(parents=True, exist_ok=True)
                self.lock = RunLock(run_dir)
            except ConfigError as e:
                err = str(e)
        if d.active:  # every process learns the folder, or the error
            obj = [str(run_dir) if run_dir is not None else None, err]
            dist.broadcast_object_list(obj, src=0)
            run_dir, err = (Path(obj[0]) if obj[0] else None), obj[1]
        if err:
            raise ConfigError(err)
        if d.main:
            for p in remove_stale_temp_files(run_dir):
                self.say(f"removed {p.name}, a temporary file left by a run that was killed while writing")
        self.run_dir = run_dir
        self.ckpt_path = run_dir / "last.pt"
        self.resume_ckpt = None
        if resume and self.ckpt_path.exists():
            ck = safe_torch_load(self.ckpt_path, "training checkpoint")
            if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
                raise CheckpointError(f"{self.ckpt_path}: not a semimoe training checkpoint ({CKPT_FORMAT})")
            saved, now = ck["config"], config_to_dict(self.cfg)
            diff = [f"{s}.{k}" for s in now if isinstance(now[s], dict) for k in now[s]
                    if saved.get(s, {}).get(k) != now[s][k] and k not in _RUNTIME_KEYS]
            if diff:
                self.say(f"warning: resuming {self.ckpt_path} with settings that differ from the saved run: "
                         f"{', '.join(diff)}")
            self.resume_ckpt = ck
        if d.main:
            atomic_write_text(run_dir / "config.yaml", dump_yaml(dataclasses.replace(self.cfg, run_dir=str(run_dir))))

    def setup_data(self) -> None:
        """Datasets (rank 0 writes split.json, the others read it), the input spec, data streams."""
        from ..data.datasets import build_datasets

        d, tc = self.dist, self.cfg.train
        if d.main:
            self.labeled, self.unlabeled, self.val = build_datasets(self.cfg.data, str(self.run_dir))
        d.barrier()
        if not d.main:
            self.labeled, self.unlabeled, self.val = build_datasets(self.cfg.data, str(self.run_dir))
        if self.method.needs_unlabeled and len(self.unlabeled) == 0:
            raise ConfigError(f"train.method={self.method.name} needs unlabeled images; lower data.label_ratio "
                              "or use train.method=supervised")
        if len(self.val) == 0:
            self.say("warning: no validation images (data.val_ratio=0): best.pt is the last model")
        self.spec = self.labeled.spec
        self.schedule = Schedule(tc, self.cfg.optim, len(self.unlabeled), len(self.labeled), d.world)
        lab = Stream(len(self.labeled), tc.batch_labeled, tc.seed, 1, d.rank, d.world)
        unl = Stream(len(self.unlabeled), tc.batch_unlabeled, tc.seed, 2, d.rank, d.world) \
            if self.method.needs_unlabeled else None
        self.source = BatchSource(self.labeled, self.unlabeled, lab, unl, tc.crop)

    def setup_model(self) -> None:
        tc = self.cfg.train
        torch.manual_seed(tc.seed)
        model: nn.Module = build_model(self.cfg.model)
        self._check_sizes(model.size_multiple)
        if tc.sync_bn and self.dist.active:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                self.say("warning: train.sync_bn needs CUDA; using per-process BatchNorm")
        if tc.init:
            self._init_from(model, tc.init)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model: SemiMoE = model

    def _init_from(self, model: nn.Module, path: str) -> None:
        """``train.init``: the model's weights from a checkpoint of the same architecture."""
        state, mc = read_model_weights(path, "train.init", getattr(model.cfg, "arch", "semimoe"))
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"train.init={path}: its weights do not fit this run's model (model.* must match "
                              f"the checkpoint's {mc}): {str(e).splitlines()[0]}") from None
        self.say(f"initialised from {path}")

    def _check_sizes(self, mult: int) -> None:
        crop = self.cfg.train.crop
        if crop:
            if crop % mult:
                raise ConfigError(f"train.crop={crop} must be a multiple of the model's size multiple {mult} "
                                  "(2**(model.depth-1))")
            return
        shapes = sorted(set(self.labeled.shapes()) | set(self.unlabeled.shapes()))
        if len(shapes) > 1:
            raise ConfigError(f"train.crop=0 trains on whole images, but the training images have "
                              f"{len(shapes)} sizes at the training scale ({shapes[0]}, {shapes[-1]}, ...); "
                              "set train.crop")
        if shapes and (shapes[0][0] % mult or shapes[0][1] % mult):
            raise ConfigError(f"train.crop=0 trains on whole images of {shapes[0][0]}x{shapes[0][1]} px, not "
                              f"multiples of the model's size multiple {mult}; set train.crop")

    def setup_optimizer(self) -> None:
        oc = self.cfg.optim
        self.method.build(self)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if oc.name == "sgd":
            self.opt = torch.optim.SGD(self.params, lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay)
        elif oc.name == "adamw":
            self.opt = torch.optim.AdamW(self.params, lr=oc.lr, weight_decay=oc.weight_decay)
        else:
            self.opt = torch.optim.Adam(self.params, lr=oc.lr, weight_decay=oc.weight_decay)

    def load_state(self) -> None:
        """Model, optimisers, method state and RNG states from ``last.pt`` (if resuming)."""
        self.start = 0
        self.best = {"score": -math.inf, "step": -1, "metric": None}
        ck, d = self.resume_ckpt, self.dist
        if ck is None:
            torch.manual_seed(mix(self.cfg.train.seed, d.rank, 3))  # dropout streams differ between ranks
            return
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.method.load_state_dict(ck)
        self.start = int(ck["step"])
        b = ck.get("best") or {}
        self.best = {"score": float(b.get("score", -math.inf)), "step": int(b.get("step", -1)),
                     "metric": b.get("metric")}
        rng = ck.get("rng")
        if isinstance(rng, list) and len(rng) == d.world:
            set_rng_state(rng[d.rank], self.device)
        else:
            self.say("warning: the checkpoint's RNG states are for another number of processes; reseeding")
            torch.manual_seed(mix(self.cfg.train.seed, self.start, d.rank))
        self.say(f"resuming {self.ckpt_path} at iteration {self.start}/{self.schedule.total}")

    def setup_wrappers(self) -> None:
        """DDP and torch.compile around the model (``self.fwd``)."""
        fwd: nn.Module = self.model
        if self.dist.active:
            fwd = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.train.compile:
            fwd = torch.compile(fwd)
        self.fwd = fwd
        ddp = fwd if isinstance(fwd, nn.parallel.DistributedDataParallel) else getattr(fwd, "_orig_mod", None)
        self._ddp = ddp if isinstance(ddp, nn.parallel.DistributedDataParallel) else None

    def setup_logging(self) -> None:
        cfg, tc, mc, d = self.cfg, self.cfg.train, self.cfg.model, self.dist
        fields = ["epoch", "time_s", "lr", *self.method.log_keys, *_VAL_FIELDS]
        self.logger = RunLogger(self.run_dir, d.main, self.start if self.resume_ckpt is not None else None, fields)
        self.acc: Dict[str, torch.Tensor] = {}
        self.n_acc = 0
        self.last_losses: Dict[str, float] = {}
        self.last_val: Optional[int] = None
        self.last_saved: Optional[int] = None
        self.step = self.start
        n_params = sum(p.numel() for p in self.model.parameters())
        self.say(f"semimoe.train: preset {cfg.preset or '-'}, method {self.method.name}, run folder {self.run_dir}")
        self.say(f"  device {self.device}{' x%d processes (DDP)' % d.world if d.active else ''}, "
                 f"torch threads {torch.get_num_threads()}"
                 f"{' (chosen by load: set train.threads for repeatable numbers)' if self._auto_threads else ''}, "
                 f"amp {'bf16' if self.use_amp else 'off'}, "
                 f"channels_last {self.channels_last}, compile {tc.compile}"
                 f"{', freed memory kept for reuse' if self.kept_memory else ''}")
        if getattr(mc, "arch", "semimoe") == "mil":
            self.say(f"  model: MIL segmenter, {mc.base_width}-wide {mc.depth}-level encoder, {mc.depth} side "
                     f"outputs fused with fixed weights, {n_params / 1e6:.2f} M parameters")
        else:
            self.say(f"  model: {mc.base_width}-wide, {mc.depth}-level U-Net experts x3, {mc.gate} gate, "
                     f"{mc.fusion} fusion, {n_params / 1e6:.2f} M parameters")
        self.say(f"  data: {cfg.data.kind}, {len(self.labeled)} labeled / {len(self.unlabeled)} unlabeled / "
                 f"{len(self.val)} val images; {self.spec.describe()}"
                 + (f"; {tc.crop}px crops" if tc.crop else ""))
        s = self.schedule
        self.say(f"  {s.total} iterations ({s.ipe} per epoch), batch {tc.batch_labeled}"
                 + (f"+{tc.batch_unlabeled}" if self.method.needs_unlabeled else "") + " per process, "
                 f"{cfg.optim.name} lr {cfg.optim.lr}, refine {tc.refine}, amo {tc.amo}")
        if self.logger.tb_note:
            self.say("  " + self.logger.tb_note)
        self.bar = Progress(s.total, "train", initial=self.start) if d.main and tc.progress else None

    # ================================================================ helpers for methods
    def forward(self, x: torch.Tensor):
        """The (wrapped) model's forward pass."""
        return self.fwd(x)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp)

    def no_sync(self):
        """Accumulate gradients without DDP's all-reduce (a no-op without DDP)."""
        return self._ddp.no_sync() if self._ddp is not None else contextlib.nullcontext()

    # ================================================================ iteration hooks
    def train_step(self, it: int, labeled, unlabeled) -> Dict[str, torch.Tensor]:
        """One iteration: learning rate, the method's passes, optimiser steps."""
        lr = self.schedule.lr(it)
        for g in self.opt.param_groups:
            g["lr"] = lr
        opts = [self.opt, *self.method.optimizers()]
        for o in opts:
            o.zero_grad(set_to_none=True)
        stats = self.method.step(self, it, labeled, unlabeled)
        self.method.reduce_gradients(self)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        for o in opts:
            o.step()
        return stats

    def after_step(self, step: int, stats: Dict[str, torch.Tensor]) -> None:
        """Accumulate losses; validate, log and checkpoint when due."""
        tc = self.cfg.train
        for k, v in stats.items():
            v = v.detach().float()
            self.acc[k] = self.acc[k] + v if k in self.acc else v
        self.n_acc += 1
        validated = None
        val_step = self.schedule.validates_at(step)
        if val_step:  # rank 0 validates; the others wait in the next collective
            validated = self.validate(step)
            self.fwd.train()
            self.last_val = step
        log_now = step % tc.log_every == 0 or validated is not None or step == self.schedule.total
        if log_now or self.on_step is not None:
            keys = list(self.acc)
            means = [v / self.n_acc for v in torch.stack([self.acc[k] for k in keys]).tolist()]
            bad = [k for k, v in zip(keys, means) if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"non-finite {', '.join(bad)} before iteration {step}")
            self.last_losses = dict(zip(keys, means))
        if self.dist.main and log_now:
            self.log_row(step, validated)
        if log_now or self.on_step is not None:
            self.acc, self.n_acc = {}, 0
        if self.bar is not None:
            self.bar.update(1)
            if log_now:
                self.bar.set_postfix(loss=f"{self.last_losses['loss']:.3f}", lr=f"{self.schedule.lr(step - 1):.3g}")
        if (tc.ckpt_every and step % tc.ckpt_every == 0) or val_step:
            self.save_checkpoint(step)
        if self.on_step is not None:
            self.on_step(step, self.last_losses)

    def log_row(self, step: int, validated: Optional[Dict[str, Any]]) -> None:
        row: Dict[str, Any] = dict(self.last_losses)
        row.update(epoch=self.schedule.epoch(step), time_s=time.perf_counter() - self.t_loop,
                   lr=self.schedule.lr(step - 1), **self.method.log_values(self, step))
        if validated is not None:
            row.update(val_score=validated["score"], val_dice=validated["dice"], val_iou=validated["iou"],
                       best_score=self.best["score"])
        self.logger.log(step, row)
        if validated is not None:
            self.write(f"iter {step}/{self.schedule.total}: val "
                       f"{'dice' if self.cfg.train.select == 'ours' else 'IoU'} {validated['score']:.4f} "
                       f"(best {self.best['score']:.4f} at {self.best['step']})")

    def write(self, msg: str) -> None:
        """A progress line that does not break the progress bar."""
        if self.bar is not None:
            self.bar.write(msg)
        else:
            self.say(msg)

    def time_is_up(self, step: int) -> bool:
        tc = self.cfg.train
        if not (tc.time_limit > 0 and step < self.schedule.total):
            return False
        over = torch.tensor([float(time.perf_counter() - self.t_loop > 60.0 * tc.time_limit)])
        if self.dist.active:
            dist.broadcast(over, 0)
        if over.item():
            self.write(f"train.time_limit={tc.time_limit} min reached at iteration {step}/{self.schedule.total}; "
                       "finishing with the model so far (--resume continues the schedule)")
            self.stopped_early = True
        return bool(over.item())

    # ================================================================ validation and checkpoints
    def predictor(self, tiling=None, model=None):
        """The deployed prediction path around the model being trained (no
        copy), or around ``model`` (another model of the run, e.g. a teacher)."""
        from ..deploy.runtimes import TorchRuntime
        from ..inference import Predictor, TilingConfig

        bs = max(self.cfg.train.batch_labeled, 4)
        rt = TorchRuntime((model or self.model).predictor(), device=self.device, channels_last=self.channels_last,
                          autocast=torch.bfloat16 if self.use_amp else None)
        return Predictor(rt, self.spec, tiling or TilingConfig(tile=None, batch_size=bs))

    def validate(self, step: int) -> Optional[Dict[str, Any]]:
        """Score the model on the validation images (rank 0); save best.pt when it improves."""
        from ..evaluate import evaluate

        tc = self.cfg.train
        if not self.dist.main or len(self.val) == 0:
            return None
        r = evaluate(self.predictor(), self.val, protocol=tc.select, threshold=tc.threshold,
                     batch_size=max(tc.batch_labeled, 4))
        score = r["dice_pooled"] if tc.select == "ours" else r["iou_pooled"]
        metric = "val dice (pooled, fixed threshold)" if tc.select == "ours" else \
            "val IoU (pooled, reference threshold sweep)"
        improved = score > self.best["score"]
        if improved:
            self.best.update(score=float(score), step=step, metric=metric)
            self.save_checkpoint(step, best=True)
        return {"score": float(score), "dice": float(r["dice_pooled"]), "iou": float(r["iou_pooled"]),
                "improved": improved}

    def checkpoint_payload(self, step: int, full: bool) -> Dict[str, Any]:
        """What a checkpoint holds (docs/CONTRACTS.md); ``full`` adds the optimiser state."""
        cfg = self.cfg
        p = {
            "format": CKPT_FORMAT,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "model_config": dataclasses.asdict(self.model.cfg),
            **self.spec.to_meta(),
            "method": self.method.name,
            "step": step,
            "epoch": self.schedule.epoch(step),
            "config": config_to_dict(dataclasses.replace(cfg, run_dir=str(self.run_dir))),
            "data_config": config_to_dict(cfg)["data"],
            "best": dict(self.best),
        }
        if full:
            p["optimizer"] = self.opt.state_dict()
            p.update(self.method.state_dict())
        return p

    def save_checkpoint(self, step: int, best: bool = False) -> None:
        """``best.pt`` (rank 0, model only) or ``last.pt`` (everything to resume;
        the RNG states of every process are gathered)."""
        if best:
            if self.dist.main:
                atomic_torch_save(self.checkpoint_payload(step, False), self.run_dir / "best.pt")
            return
        rng = rng_state(self.device)
        if self.dist.active:
            gathered = [None] * self.dist.world
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        if self.dist.main:
            p = self.checkpoint_payload(step, True)
            p["rng"] = rngs
            atomic_torch_save(p, self.ckpt_path)
        self.last_saved = step

    # ================================================================ the end
    def finish(self) -> Dict[str, Any]:
        """Final validation and checkpoints, evaluation of best.pt, overlays, results.json."""
        d, step = self.dist, self.step
        if self.last_val != step:
            v = self.validate(step)
            if v is not None:
                self.logger.log(step, {"epoch": self.schedule.epoch(step), "time_s": self.train_s,
                                       "val_score": v["score"], "val_dice": v["dice"], "val_iou": v["iou"],
                                       "best_score": self.best["score"]})
        self.logger.close()
        if self.best["step"] < 0:  # nothing was selected on validation: best.pt is the last model
            self.best.update(step=step, metric="the last model (no validation)")
            self.save_checkpoint(step, best=True)
        if self.last_saved != step:
            self.save_checkpoint(step)
        results: Dict[str, Any] = {"run_dir": str(self.run_dir), "preset": self.cfg.preset,
                                   "method": self.method.name, "iterations": step,
                                   "planned_iterations": self.schedule.total, "stopped_early": self.stopped_early,
                                   "train_seconds": self.train_s, "world_size": d.world, "device": str(self.device),
                                   "torch_threads": torch.get_num_threads(),
                                   "input_spec": self.spec.to_meta(), "best": dict(self.best), **self.costs()}
        if d.active:
            results.update(replica_check(self.model, self.device, d))
        if d.main:
            results.update(self.final_evaluation())
            results.update(self.method.final_results(self))
            results["total_seconds"] = time.perf_counter() - self.t_start
            atomic_write_json(self.run_dir / "results.json", results)
            _report(results, self.say)
            self.method.report(results, self.say)
        d.barrier()
        return results

    def _reset_peak_memory(self) -> None:
        """Start the peak-memory count at the training loop: the CUDA
        allocator's peak, or on Linux the process's peak resident set
        (``/proc/self/clear_refs``; elsewhere the count covers the whole process)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._peak_from = "training loop"
        except OSError:
            self._peak_from = "process"

    def _peak_memory_mb(self) -> Dict[str, Any]:
        if self.device.type == "cuda":
            return {"peak_memory_mb": torch.cuda.max_memory_allocated(self.device) / 2**20,
                    "peak_memory_of": "CUDA allocator, training loop"}
        try:
            with open("/proc/self/status") as f:
                hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))  # KiB
        except (OSError, StopIteration, ValueError):
            import resource

            hwm, self._peak_from = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "process"
        return {"peak_memory_mb": hwm / 1024,
                "peak_memory_of": f"resident set, {getattr(self, '_peak_from', 'process')}"}

    def costs(self) -> Dict[str, Any]:
        """Parameters (all, trained), seconds per training iteration (the
        training loop, validation included) and peak memory during the
        training loop (CUDA allocator; on CPU the process's resident set,
        data and model included)."""
        done = max(1, self.step - self.start)
        return {"parameters": sum(p.numel() for p in self.model.parameters()),
                "trained_parameters": sum(p.numel() for p in self.params),
                "seconds_per_iteration": self.train_s / done, **self._peak_memory_mb()}

    def final_evaluation(self) -> Dict[str, Any]:
        """best.pt, reloaded as ``semimoe.infer`` loads it, on the validation and
        test images (default tiling), plus overlays."""
        from ..data.datasets import SYNTHETIC_KINDS, build_test_dataset
        from ..evaluate import evaluate
        from ..inference import Predictor
        from ..visualize import write_overlays

        tc, out = self.cfg.train, {}
        self.test_set = None  # the test images, for the method's final_results
        predictor = Predictor.from_file(self.run_dir / "best.pt", device=self.device)
        bs = max(tc.batch_labeled, 4)
        if len(self.val):
            out["val"] = evaluate(predictor, self.val, threshold=tc.threshold, batch_size=bs)
            rr = evaluate(predictor, self.val, protocol="reference", threshold=tc.threshold, batch_size=bs)
            rr.pop("sweep", None)
            out["val_reference_protocol"] = rr
        if tc.eval_test and (self.cfg.data.kind in SYNTHETIC_KINDS or self.cfg.data.root):
            try:
                test = build_test_dataset(self.cfg.data)
            except Exception as e:  # a dataset without a test split
                self.say(f"no test evaluation ({type(e).__name__}: {e})")
            else:
                self.test_set = test
                out["test"] = evaluate(predictor, test, threshold=tc.threshold, batch_size=bs)
        if tc.overlays and len(self.val):
            model = getattr(predictor.runtime.module, "model", None)  # gate maps: Semi-MoE models only
            paths = write_overlays(predictor, self.val, self.run_dir / "overlays", n=tc.overlays,
                                   threshold=tc.threshold, model=model if isinstance(model, SemiMoE) else None)
            out["overlays"] = len(paths)
        return out


def _report(results: Dict[str, Any], say) -> None:
    def line(name, r):
        if not r:
            return
        say(f"  {name:<5} Dice {r['dice_pooled']:.4f}  IoU {r['iou_pooled']:.4f}  "
            f"object F1 {r['object_f1']:.4f}  object Dice {r['object_dice']:.4f}  "
            f"object Hausdorff {r['object_hausdorff']:.2f}  ({r['n_images']} images)")

    say(f"done: {results['iterations']} iterations in {results['train_seconds']:.0f} s of training, "
        f"{results['total_seconds']:.0f} s in all; best.pt from iteration {results['best']['step']}")
    line("val", results.get("val"))
    line("test", results.get("test"))
    rr = results.get("val_reference_protocol")
    if rr:
        say(f"  val (reference protocol: 256px squash, threshold {rr['threshold']} swept on the set) "
            f"Dice {rr['dice_pooled']:.4f}  IoU {rr['iou_pooled']:.4f}")
    say(f"  run folder: {results['run_dir']} (best.pt, last.pt, metrics.csv, results.json"
        + (", overlays/" if results.get("overlays") else "") + ")")


def train(cfg: Config, resume: bool = False, overwrite: bool = False,
          on_step: Optional[Callable[[int, Dict[str, Any]], None]] = None,
          log: Callable[[str], None] = print, start_if_missing: bool = False) -> Dict[str, Any]:
    """``Trainer(cfg, on_step=on_step, log=log).fit(resume, overwrite, start_if_missing)``."""
    return Trainer(cfg, on_step=on_step, log=log).fit(resume, overwrite, start_if_missing)
