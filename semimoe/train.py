"""``python -m semimoe.train``: train Semi-MoE (or the supervised baseline).

Usage::

    python -m semimoe.train                                  # cpu-demo preset, synthetic data
    python -m semimoe.train --preset paper data.kind=glas data.root=/data/GlaS
    python -m semimoe.train --config my.yaml train.iterations=2000 model.gate=spatial
    python -m semimoe.train --preset cpu-demo --resume       # continue runs/cpu-demo/last.pt
    torchrun --nproc_per_node=2 -m semimoe.train --preset fast

Configuration: :mod:`semimoe.config` (``--print-config`` shows the resolved
YAML). One iteration (method.md §3-4, the released code's order):

1. unlabeled batch -> model; pseudo-labels from the gate's heads (detached,
   optionally refined); each expert's own head against them; ``w(e) *
   M(L_seg, L_sdf, L_bnd)``; backward (under DDP without gradient sync);
2. labeled batch -> targets on the device (``make_targets``, batched) ->
   model; each loss on the expert's head plus on the gate's head;
   ``M(...)``; backward (DDP all-reduces the accumulated gradients);
3. SGD/AdamW step of experts, gate and heads; Adam step of the adaptive
   multi-objective weights (all-reduced by hand under DDP).

The run folder holds ``config.yaml``, ``split.json`` (from the data module),
``metrics.csv`` (always), TensorBoard events (if ``tensorboard`` is
installed), ``last.pt`` (everything needed to resume: model, optimisers, AMO
weights, RNG states; the data streams are a function of the iteration
count), ``best.pt`` (selected on the validation split), ``results.json`` and
``overlays/``. Checkpoints are written to a temporary file and renamed, and
read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import Config, ConfigError, PRESETS, config_to_dict, dump_yaml, make_config
from .data.targets import make_targets
from .losses import (AdaptiveMultiObjectiveLoss, boundary_dice_loss, dice_loss_sq, make_pseudo_labels,
                     sdf_loss, unsup_weight)
from .models import SemiMoE, build_model

__all__ = ["train", "main", "lr_factor", "CKPT_FORMAT"]

CKPT_FORMAT = "semimoe-ckpt-v1"
# settings that may change between a run and its resumption without a warning
_RUNTIME_KEYS = ("device", "threads", "num_workers", "progress", "overlays", "eval_test", "time_limit",
                 "log_every")
_CSV_FIELDS = ["step", "epoch", "time_s", "lr", "unsup_w", "loss", "loss_sup", "loss_unsup",
               "sup_seg", "sup_sdf", "sup_bnd", "unsup_seg", "unsup_sdf", "unsup_bnd",
               "amo_seg", "amo_sdf", "amo_bnd", "pseudo_fg", "pseudo_weight",
               "val_score", "val_dice", "val_iou", "best_score"]


# ----------------------------------------------------------------------------
# Small utilities
# ----------------------------------------------------------------------------
def _mix(*words: int) -> int:
    """A 63-bit seed from integers (SplitMix64-style mixing; stable across runs)."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h ^= (int(w) + 0x9E3779B97F4A7C15 + ((h << 6) & 0xFFFFFFFFFFFFFFFF) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h = z ^ (z >> 31)
    return h >> 1


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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


# ----------------------------------------------------------------------------
# Distributed
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _init_distributed(device_pref: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    owns = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return _Dist(rank, world, local_rank, local_world, owns)


def _pick_device(pref: str, d: _Dist) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", d.local_rank if d.active else torch.cuda.current_device())
    if pref.startswith("cuda:") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={pref} but no CUDA device is available")
    return torch.device(pref)


# ----------------------------------------------------------------------------
# Data streams: deterministic in (seed, stream, iteration), hence resumable
# ----------------------------------------------------------------------------
class _Stream:
    """Endless sequence of shuffled passes over ``n`` items, cut into batches.

    Iteration ``it`` of rank ``r`` takes the items at positions
    ``(it * world + r) * batch + j`` of the sequence; pass ``e`` is a
    permutation seeded by (seed, tag, e). Each item also gets its own
    augmentation seed. Nothing but the iteration number is needed to resume.
    (A labeled set smaller than the unlabeled one is thereby cycled through
    more often, as the reference's oversampled labeled list.)
    """

    def __init__(self, n: int, batch: int, seed: int, tag: int, rank: int, world: int):
        self.n, self.batch, self.seed, self.tag, self.rank, self.world = n, batch, seed, tag, rank, world
        self._perm_epoch = -1
        self._perm = None

    def _perm_for(self, e: int) -> torch.Tensor:
        if e != self._perm_epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, self.tag, e, 1))
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = e
        return self._perm

    def batch_at(self, it: int) -> List[Tuple[int, int]]:
        out = []
        base = (it * self.world + self.rank) * self.batch
        for j in range(self.batch):
            pos = base + j
            e, k = divmod(pos, self.n)
            out.append((int(self._perm_for(e)[k]), _mix(self.seed, self.tag, pos, 2)))
        return out


class _BatchSource(torch.utils.data.Dataset):
    """Index ``it`` -> the (labeled, unlabeled) batches of iteration ``it``.

    Each item is read under its own torch seed (``fork_rng``), so the
    dataset's random augmentation and the random crop are a function of the
    item's position in the stream, whether loaded here or in workers.
    """

    def __init__(self, labeled, unlabeled, lab_stream: Optional[_Stream], unl_stream: Optional[_Stream],
                 crop: int):
        self.labeled, self.unlabeled = labeled, unlabeled
        self.lab_stream, self.unl_stream = lab_stream, unl_stream
        self.crop = crop

    def __len__(self) -> int:
        return 1 << 62

    def _item(self, ds, idx: int, seed: int) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            item = ds[idx]
            if self.crop:
                H, W = item["image"].shape[-2:]
                ch, cw = min(self.crop, H), min(self.crop, W)
                y0 = int(torch.randint(H - ch + 1, (1,)))
                x0 = int(torch.randint(W - cw + 1, (1,)))
                item = dict(item)
                item["image"] = item["image"][:, y0:y0 + ch, x0:x0 + cw]
                if "mask" in item:
                    item["mask"] = item["mask"][y0:y0 + ch, x0:x0 + cw]
        return item

    def _batch(self, ds, stream: Optional[_Stream], it: int, with_mask: bool):
        if stream is None:
            return None
        items = [self._item(ds, i, s) for i, s in stream.batch_at(it)]
        x = torch.stack([b["image"] for b in items]).contiguous()
        m = torch.stack([b["mask"] for b in items]).contiguous() if with_mask else None
        return x, m

    def __getitem__(self, it: int):
        return self._batch(self.labeled, self.lab_stream, it, True), \
            self._batch(self.unlabeled, self.unl_stream, it, False)


def _batch_iterator(source: _BatchSource, start: int, stop: int, num_workers: int, pin: bool):
    if num_workers <= 0:
        for it in range(start, stop):
            yield source[it]
        return
    loader = torch.utils.data.DataLoader(source, batch_size=None, sampler=range(start, stop),
                                         num_workers=num_workers, pin_memory=pin,
                                         prefetch_factor=4, persistent_workers=False)
    yield from loader


# ----------------------------------------------------------------------------
# RNG state (weights_only-safe: tensors, ints, floats, lists, tuples)
# ----------------------------------------------------------------------------
def _rng_state(device: torch.device) -> Dict[str, Any]:
    np_state = np.random.get_state()
    st = {
        "python": random.getstate(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: Dict[str, Any], device: torch.device) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


# ----------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------
class _Logger:
    """metrics.csv (always) and TensorBoard (when installed); rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: Optional[int]):
        self.enabled = enabled
        self.csv_path = run_dir / "metrics.csv"
        self.tb = None
        self.tb_note = ""
        if not enabled:
            return
        if resume_step is not None and self.csv_path.exists():
            # drop rows logged after the checkpoint we resume from (a killed
            # run may have logged further before dying)
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
            with open(self.csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
                w.writeheader()
                for r in rows:
                    w.writerow({k: r.get(k, "") for k in _CSV_FIELDS})
        else:
            with open(self.csv_path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=_CSV_FIELDS).writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
        except Exception as e:  # tensorboard is optional
            self.tb_note = f"TensorBoard logging off ({type(e).__name__}: {e}); metrics.csv has everything"

    def log(self, step: int, row: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in row.items()}
        row["step"] = step
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=_CSV_FIELDS, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k in ("step", "epoch") or v == "":
                    continue
                try:
                    self.tb.add_scalar(k, float(v), step)
                except (TypeError, ValueError):
                    pass

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------
# Losses of one iteration
# ----------------------------------------------------------------------------
def supervised_losses(out, targets) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each task loss on the expert's own head plus on the gate's head."""
    ex = out.experts
    l_seg = dice_loss_sq(ex["seg"].float(), targets.mask) + dice_loss_sq(out.seg.float(), targets.mask)
    l_sdf = sdf_loss(ex["sdf"].float(), targets.sdf) + sdf_loss(out.sdf.float(), targets.sdf)
    l_bnd = (boundary_dice_loss(ex["bnd"].float(), targets.boundary)
             + boundary_dice_loss(out.bnd.float(), targets.boundary))
    return l_seg, l_sdf, l_bnd


def unsupervised_losses(out, refine) -> Tuple[Tuple[torch.Tensor, torch.Tensor, torch.Tensor], Any]:
    """Each expert's own head against the gate's (detached) pseudo-labels."""
    pl = make_pseudo_labels(out.seg.float(), out.sdf.float(), out.bnd.float(), refine=refine)
    ex = out.experts
    w = pl.weight
    l_seg = dice_loss_sq(ex["seg"].float(), pl.mask, weight=w)
    l_sdf = sdf_loss(ex["sdf"].float(), pl.sdf, weight=w)
    l_bnd = boundary_dice_loss(ex["bnd"].float(), pl.boundary, weight=w)
    return (l_seg, l_sdf, l_bnd), pl


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------
def _resolve_run_dir(cfg: Config, resume: bool, overwrite: bool) -> Path:
    explicit = cfg.run_dir is not None
    base = Path(cfg.run_dir) if explicit else Path("runs") / (cfg.preset or "default")
    if resume or overwrite or not (base / "last.pt").exists():
        return base
    if explicit:
        raise ConfigError(f"run_dir {base} already holds a run (last.pt); pass --resume to continue it "
                          "or --overwrite to start over there")
    k = 1
    while (base.parent / f"{base.name}_{k}" / "last.pt").exists():
        k += 1
    return base.parent / f"{base.name}_{k}"


def _auto_threads(procs: int) -> int:
    """CPU threads per process: the cores shared out between the processes,
    and no more than the cores that are idle (1-minute load average). Intra-op
    threads that share a core with another busy process wait for each other at
    every parallel region: on a 2-core machine with one other busy process,
    2 threads run ~2x slower than 1."""
    cores = os.cpu_count() or 1
    n = max(1, min(torch.get_num_threads(), cores // max(1, procs)))
    try:
        idle = cores - os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this platform
        return n
    return max(1, min(n, int(idle / max(1, procs) + 0.25)))


def _replica_check(model: nn.Module, device: torch.device, d: _Dist) -> Dict[str, Any]:
    """Are the parameters identical on every process? Exact comparison with
    rank 0's copy (models up to 50 M parameters) plus float64 checksums."""
    flat = torch.cat([p.detach().flatten().to(torch.float64) for p in model.parameters()]).to(device)
    sums = torch.stack([flat.sum(), flat.abs().sum(),
                        (flat * torch.linspace(-1, 1, flat.numel(), dtype=flat.dtype, device=device)).sum()])
    gathered = [torch.zeros_like(sums) for _ in range(d.world)]
    dist.all_gather(gathered, sums)
    same = all(torch.equal(g, gathered[0]) for g in gathered)
    exact = flat.numel() <= 50_000_000
    if exact:
        ref = flat.clone()
        dist.broadcast(ref, 0)
        diff = (ref != flat).any().to(torch.int32).reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        same = same and int(diff.item()) == 0
    return {"replica_checksums": [g.tolist() for g in gathered], "replicas_identical": bool(same),
            "replicas_compared": "exactly" if exact else "by checksums"}


def train(cfg: Config, resume: bool = False, overwrite: bool = False,
          on_step: Optional[Callable[[int, Dict[str, Any]], None]] = None,
          log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train a Semi-MoE model as configured; returns the final results dict
    (also written to ``<run_dir>/results.json``).

    Args:
        cfg: :class:`semimoe.config.Config`.
        resume: continue from ``<run_dir>/last.pt`` if it exists (else start).
        overwrite: start over in a run folder that already holds a run.
        on_step: called as ``on_step(step, losses)`` after every iteration
            (``step`` = completed iterations, ``losses`` = dict of the
            iteration's loss values as floats); an exception raised there
            ends the run at once, without a final checkpoint (the tests
            emulate a kill this way).
        log: where progress lines go (rank 0 only).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised
    here (NCCL on CUDA, gloo on CPU) and torn down at the end.
    """
    from .data.datasets import build_datasets, build_test_dataset
    from .evaluate import evaluate, write_overlays

    d = _init_distributed(cfg.train.device)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, d, resume, overwrite, on_step, log, build_datasets, build_test_dataset,
                      evaluate, write_overlays)
    finally:
        torch.set_num_threads(threads)
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg, d: _Dist, resume, overwrite, on_step, log, build_datasets, build_test_dataset,
           evaluate, write_overlays) -> Dict[str, Any]:
    tc, oc, mc = cfg.train, cfg.optim, cfg.model
    t_start = time.perf_counter()
    device = _pick_device(tc.device, d)
    say = log if d.main else (lambda *a, **k: None)

    # ---- threads
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    elif device.type == "cpu":
        torch.set_num_threads(_auto_threads(d.local_world))

    # ---- run folder (rank 0 decides, everyone uses it)
    run_dir = _resolve_run_dir(cfg, resume, overwrite) if d.main else None
    if d.active:
        obj = [str(run_dir) if run_dir is not None else None]
        dist.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "last.pt"
    resume_ckpt = None
    if resume and ckpt_path.exists():
        resume_ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if resume_ckpt.get("format") != CKPT_FORMAT:
            raise ValueError(f"{ckpt_path}: not a semimoe training checkpoint ({CKPT_FORMAT})")
        saved = resume_ckpt["config"]
        now = config_to_dict(cfg)
        diff = [f"{s}.{k}" for s in ("model", "data", "train", "optim") for k in now[s]
                if saved.get(s, {}).get(k) != now[s][k] and k not in _RUNTIME_KEYS]
        if diff:
            say(f"warning: resuming {ckpt_path} with settings that differ from the saved run: {', '.join(diff)}")
    if d.main:
        cfg_to_save = dataclasses.replace(cfg, run_dir=str(run_dir))
        _atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg_to_save))

    # ---- seeds
    random.seed(tc.seed)
    np.random.seed(tc.seed % 2**32)
    torch.manual_seed(tc.seed)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not tc.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- data (rank 0 writes split.json, the others read it)
    if d.main:
        labeled, unlabeled, val = build_datasets(cfg.data, str(run_dir))
    d.barrier()
    if not d.main:
        labeled, unlabeled, val = build_datasets(cfg.data, str(run_dir))
    semi = tc.mode == "semi"
    if semi and len(unlabeled) == 0:
        raise ConfigError("train.mode=semi needs unlabeled images; lower data.label_ratio or use "
                          "train.mode=supervised")
    if len(val) == 0 and d.main:
        say("warning: no validation images (data.val_ratio=0): best.pt is the last model")
    norm = {"mean": [float(v) for v in labeled.mean], "std": [float(v) for v in labeled.std]}
    mult = mc.size_multiple if hasattr(mc, "size_multiple") else 2 ** (mc.depth - 1)
    if tc.crop and tc.crop % mult:
        raise ConfigError(f"train.crop={tc.crop} must be a multiple of 2**(model.depth-1) = {mult}")
    if not tc.crop and cfg.data.size % mult:
        raise ConfigError(f"data.size={cfg.data.size} must be a multiple of 2**(model.depth-1) = {mult} "
                          "(or set train.crop)")

    # ---- model
    torch.manual_seed(tc.seed)
    model: nn.Module = build_model(mc)
    if tc.sync_bn and d.active:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            say("warning: train.sync_bn needs CUDA; using per-process BatchNorm")
    model.to(device)
    cl = tc.channels_last and device.type == "cuda"
    if cl:
        model.to(memory_format=torch.channels_last)
    raw: SemiMoE = model
    amo = AdaptiveMultiObjectiveLoss(variant=tc.amo).to(device)
    params = [p for p in raw.parameters() if p.requires_grad]
    if oc.name == "sgd":
        opt = torch.optim.SGD(params, lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay)
    elif oc.name == "adamw":
        opt = torch.optim.AdamW(params, lr=oc.lr, weight_decay=oc.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=oc.lr, weight_decay=oc.weight_decay)
    amo_opt = torch.optim.Adam(amo.parameters(), lr=oc.amo_lr, weight_decay=oc.amo_weight_decay)

    # ---- schedule
    ipe = max(1, math.ceil((len(unlabeled) or len(labeled)) / (tc.batch_unlabeled * d.world)))
    total = tc.epochs * ipe if tc.schedule == "epoch" else tc.iterations
    val_every_it = (tc.val_every * (ipe if tc.schedule == "epoch" else 1)) if tc.val_every else 0

    def unit_of(it: int) -> int:
        return it // ipe if tc.schedule == "epoch" else it

    def lr_at(it: int) -> float:
        return oc.lr * lr_factor(unit_of(it), oc.warmup, oc.step_size, oc.gamma,
                                 from_zero=tc.schedule == "epoch")

    def unsup_w_at(it: int) -> float:
        if tc.schedule == "epoch":
            return unsup_weight(it // ipe, tc.epochs, tc.unsup_weight)
        return unsup_weight(it, total, tc.unsup_weight)

    # ---- state from the checkpoint
    start = 0
    best = {"score": -math.inf, "step": -1, "metric": None}
    if resume_ckpt is not None:
        raw.load_state_dict(resume_ckpt["model"])
        opt.load_state_dict(resume_ckpt["optimizer"])
        amo.load_state_dict(resume_ckpt["amo"])
        amo_opt.load_state_dict(resume_ckpt["amo_optimizer"])
        start = int(resume_ckpt["step"])
        b = resume_ckpt.get("best") or {}
        best = {"score": float(b.get("score", -math.inf)), "step": int(b.get("step", -1)),
                "metric": b.get("metric")}
        rng = resume_ckpt.get("rng")
        if isinstance(rng, list) and len(rng) == d.world:
            _set_rng_state(rng[d.rank], device)
        else:
            say("warning: the checkpoint's RNG states are for another number of processes; reseeding")
            torch.manual_seed(_mix(tc.seed, start, d.rank))
        say(f"resuming {ckpt_path} at iteration {start}/{total}")
    else:
        torch.manual_seed(_mix(tc.seed, d.rank, 3))  # dropout streams differ between ranks

    # ---- wrappers
    fwd: nn.Module = raw
    if d.active:
        fwd = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        fwd = torch.compile(fwd)
    use_amp = tc.amp and device.type == "cuda"
    ddp = fwd if isinstance(fwd, nn.parallel.DistributedDataParallel) else getattr(fwd, "_orig_mod", None)
    # the unlabeled pass accumulates gradients locally; the labeled pass syncs
    no_sync = ddp.no_sync if isinstance(ddp, nn.parallel.DistributedDataParallel) else contextlib.nullcontext

    # ---- data streams
    lab_stream = _Stream(len(labeled), tc.batch_labeled, tc.seed, 1, d.rank, d.world)
    unl_stream = _Stream(len(unlabeled), tc.batch_unlabeled, tc.seed, 2, d.rank, d.world) if semi else None
    source = _BatchSource(labeled, unlabeled, lab_stream, unl_stream, tc.crop)

    logger = _Logger(run_dir, d.main, start if resume_ckpt is not None else None)
    n_params = sum(p.numel() for p in raw.parameters())
    say(f"semimoe.train: preset {cfg.preset or '-'}, run folder {run_dir}")
    say(f"  device {device}{' x%d processes (DDP)' % d.world if d.active else ''}, "
        f"torch threads {torch.get_num_threads()}, amp {'bf16' if use_amp else 'off'}, "
        f"channels_last {cl}, compile {tc.compile}")
    say(f"  model: {mc.base_width}-wide, {mc.depth}-level U-Net experts x3, {mc.gate} gate, "
        f"{mc.fusion} fusion, {n_params / 1e6:.2f} M parameters")
    say(f"  data: {cfg.data.kind}, {len(labeled)} labeled / {len(unlabeled)} unlabeled / {len(val)} val "
        f"images of {cfg.data.size}px" + (f", {tc.crop}px crops" if tc.crop else ""))
    say(f"  {tc.mode}: {total} iterations ({ipe} per epoch), batch {tc.batch_labeled}"
        + (f"+{tc.batch_unlabeled}" if semi else "") + f" per process, {oc.name} lr {oc.lr}, "
        f"refine {tc.refine}, amo {tc.amo}")
    if logger.tb_note:
        say("  " + logger.tb_note)

    def checkpoint_payload(step: int, full: bool) -> Dict[str, Any]:
        p = {
            "format": CKPT_FORMAT,
            "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
            "model_config": dataclasses.asdict(raw.cfg),
            "norm": norm,
            "step": step,
            "epoch": step // ipe,
            "config": config_to_dict(dataclasses.replace(cfg, run_dir=str(run_dir))),
            "data_config": config_to_dict(cfg)["data"],
            "best": dict(best),
        }
        if full:
            p["optimizer"] = opt.state_dict()
            p["amo"] = amo.state_dict()
            p["amo_optimizer"] = amo_opt.state_dict()
        return p

    def save_last(step: int) -> None:
        rng = _rng_state(device)
        if d.active:
            gathered = [None] * d.world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        if d.main:
            p = checkpoint_payload(step, True)
            p["rng"] = rng
            _atomic_save(p, ckpt_path)

    def validate(step: int) -> Optional[Dict[str, Any]]:
        if not d.main or len(val) == 0:
            return None
        r = evaluate(raw, val, device, protocol=tc.select, threshold=tc.threshold,
                     batch_size=max(tc.batch_labeled, 4), amp=use_amp)
        score = r["dice_pooled"] if tc.select == "ours" else r["iou_pooled"]
        metric = "val dice (pooled, fixed threshold)" if tc.select == "ours" else \
            "val IoU (pooled, reference threshold sweep)"
        improved = score > best["score"]
        if improved:
            best.update(score=float(score), step=step, metric=metric)
            _atomic_save(checkpoint_payload(step, False), run_dir / "best.pt")
        return {"score": float(score), "dice": float(r["dice_pooled"]), "iou": float(r["iou_pooled"]),
                "improved": improved}

    # ---- loop
    bar = None
    if d.main and tc.progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True,
                       mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
        except ImportError:
            bar = None
    pin = device.type == "cuda"
    batches = _batch_iterator(source, start, total, tc.num_workers if start < total else 0, pin)
    fwd.train()
    t_loop = time.perf_counter()
    acc: Dict[str, torch.Tensor] = {}
    n_acc = 0
    last_losses: Dict[str, float] = {}
    step = start
    last_val = None
    stopped_early = False
    last_saved = None

    def to_dev(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    try:
        for it in range(start, total):
            (xl, ml), unl = next(batches)
            lr = lr_at(it)
            for g in opt.param_groups:
                g["lr"] = lr
            w_u = unsup_w_at(it) if semi else 0.0
            opt.zero_grad(set_to_none=True)
            amo_opt.zero_grad(set_to_none=True)
            info: Dict[str, torch.Tensor] = {}  # detached; read back only when logging (no syncs)
            # 1. unlabeled: pseudo-labels from the gate, experts against them
            if semi:
                xu = to_dev(unl[0])
                with no_sync():
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                        out_u = fwd(xu)
                    (lu_seg, lu_sdf, lu_bnd), pl = unsupervised_losses(out_u, tc.refine)
                    m_u = amo(lu_seg, lu_sdf, lu_bnd) * w_u
                    m_u.backward()
                info.update(unsup_seg=lu_seg, unsup_sdf=lu_sdf, unsup_bnd=lu_bnd, loss_unsup=m_u,
                            pseudo_fg=pl.mask.float().mean(),
                            pseudo_weight=pl.weight.mean() if pl.weight is not None else torch.ones((), device=device))
                del out_u, pl
            # 2. labeled: targets on the device, experts and gate heads
            xl = to_dev(xl)
            targets = make_targets(ml.to(device, non_blocking=True))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                out_l = fwd(xl)
            ls_seg, ls_sdf, ls_bnd = supervised_losses(out_l, targets)
            m_s = amo(ls_seg, ls_sdf, ls_bnd)
            m_s.backward()
            del out_l
            # 3. steps
            if d.active:
                for p in amo.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad.div_(d.world)
            if oc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, oc.grad_clip)
            opt.step()
            amo_opt.step()
            step = it + 1

            info.update(loss_sup=m_s, sup_seg=ls_seg, sup_sdf=ls_sdf, sup_bnd=ls_bnd)
            info["loss"] = m_s + info["loss_unsup"] if semi else m_s
            for k, v in info.items():
                v = v.detach().float()
                acc[k] = acc[k] + v if k in acc else v
            n_acc += 1

            validated = None
            val_step = (bool(val_every_it) and step % val_every_it == 0) or step == total
            if val_step:  # rank 0 validates; the others wait in the next collective
                validated = validate(step)
                fwd.train()
                last_val = step
            log_now = step % tc.log_every == 0 or validated is not None or step == total
            if log_now or on_step is not None:
                keys = list(acc)
                means = [v / n_acc for v in torch.stack([acc[k] for k in keys]).tolist()]
                bad = [k for k, v in zip(keys, means) if not math.isfinite(v)]
                if bad:
                    raise FloatingPointError(f"non-finite {', '.join(bad)} before iteration {step}")
                last_losses = dict(zip(keys, means))
            if d.main and log_now:
                row = dict(last_losses)
                aw = amo.weights()
                row.update(epoch=step // ipe, time_s=time.perf_counter() - t_loop, lr=lr, unsup_w=w_u,
                           amo_seg=aw["seg"], amo_sdf=aw["sdf"], amo_bnd=aw["bnd"])
                if validated is not None:
                    row.update(val_score=validated["score"], val_dice=validated["dice"],
                               val_iou=validated["iou"], best_score=best["score"])
                logger.log(step, row)
                if validated is not None:
                    msg = (f"iter {step}/{total}: val {'dice' if tc.select == 'ours' else 'IoU'} "
                           f"{validated['score']:.4f} (best {best['score']:.4f} at {best['step']})")
                    if bar is not None:
                        bar.write(msg)
                    else:
                        say(msg)
            if log_now or on_step is not None:
                acc, n_acc = {}, 0
            if bar is not None:
                bar.update(1)
                if log_now:
                    bar.set_postfix(loss=f"{last_losses['loss']:.3f}", lr=f"{lr:.3g}", refresh=False)
            if (tc.ckpt_every and step % tc.ckpt_every == 0) or val_step:
                save_last(step)
                last_saved = step
            if on_step is not None:
                on_step(step, last_losses)
            if tc.time_limit > 0 and step < total:
                over = torch.tensor([float(time.perf_counter() - t_loop > 60.0 * tc.time_limit)])
                if d.active:
                    dist.broadcast(over, 0)
                if over.item():
                    msg = (f"train.time_limit={tc.time_limit} min reached at iteration {step}/{total}; "
                           "finishing with the model so far (--resume continues the schedule)")
                    if bar is not None:
                        bar.write(msg)
                    else:
                        say(msg)
                    stopped_early = True
                    break
    finally:
        if bar is not None:
            bar.close()
        if hasattr(batches, "close"):
            batches.close()
    train_s = time.perf_counter() - t_loop

    # ---- end of training: final validation, last.pt, best.pt
    if last_val != step:
        v = validate(step)
        if v is not None:
            logger.log(step, {"epoch": step // ipe, "time_s": train_s, "val_score": v["score"],
                              "val_dice": v["dice"], "val_iou": v["iou"], "best_score": best["score"]})
    logger.close()
    if len(val) == 0 and d.main:
        _atomic_save(checkpoint_payload(step, False), run_dir / "best.pt")
    if last_saved != step:
        save_last(step)

    results: Dict[str, Any] = {"run_dir": str(run_dir), "preset": cfg.preset, "mode": tc.mode,
                               "iterations": step, "planned_iterations": total,
                               "stopped_early": stopped_early, "train_seconds": train_s, "world_size": d.world,
                               "device": str(device), "best": dict(best)}
    if d.active:
        results.update(_replica_check(raw, device, d))

    if d.main:
        # ---- final evaluation of best.pt
        best_path = run_dir / "best.pt"
        if best_path.exists():
            bst = torch.load(best_path, map_location="cpu", weights_only=True)
            raw.load_state_dict(bst["model"])
        if len(val):
            r = evaluate(raw, val, device, protocol="ours", threshold=tc.threshold,
                         batch_size=max(tc.batch_labeled, 4), amp=use_amp)
            rr = evaluate(raw, val, device, protocol="reference", threshold=tc.threshold,
                          batch_size=max(tc.batch_labeled, 4), amp=use_amp)
            rr.pop("sweep", None)
            results["val"] = r
            results["val_reference_protocol"] = rr
        if tc.eval_test and (cfg.data.kind == "synthetic" or cfg.data.root):
            try:
                test = build_test_dataset(cfg.data)
            except Exception as e:  # a dataset without a test split
                say(f"no test evaluation ({type(e).__name__}: {e})")
            else:
                results["test"] = evaluate(raw, test, device, protocol="ours", threshold=tc.threshold,
                                           batch_size=max(tc.batch_labeled, 4), amp=use_amp)
        if tc.overlays and len(val):
            paths = write_overlays(raw, val, run_dir / "overlays", device, n=tc.overlays,
                                   threshold=tc.threshold, amp=use_amp)
            results["overlays"] = len(paths)
        results["total_seconds"] = time.perf_counter() - t_start
        from .evaluate import jsonable

        _atomic_write_text(run_dir / "results.json", json.dumps(jsonable(results), indent=1) + "\n")
        _report(results, say)
    d.barrier()
    return results


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
        say(f"  val (reference protocol: 256px, threshold {rr['threshold']} swept on the set) "
            f"Dice {rr['dice_pooled']:.4f}  IoU {rr['iou_pooled']:.4f}")
    say(f"  run folder: {results['run_dir']} (best.pt, last.pt, metrics.csv, results.json"
        + (", overlays/" if results.get("overlays") else "") + ")")


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m semimoe.train",
        description="Train Semi-MoE. Without arguments: the cpu-demo preset on synthetic glands "
                    "(trains, evaluates, writes overlays).",
        epilog="Overrides are dotted key=value pairs, e.g. train.iterations=1000 model.gate=image "
               "data.label_ratio=0.2 optim.lr=0.01; --print-config lists every key.")
    p.add_argument("--config", help="YAML config file (may name a preset)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a preset (default cpu-demo when no --config is given)")
    p.add_argument("--run-dir", help="output folder (default runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt if it exists")
    p.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds a run")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    preset = args.preset
    if preset is None and args.config is None:
        preset = "cpu-demo"
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    try:
        cfg = make_config(preset, args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    try:
        train(cfg, resume=args.resume, overwrite=args.overwrite)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
