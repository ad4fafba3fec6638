"""Training configuration: typed dataclasses, presets, YAML files and
``key=value`` overrides, in one place.

Resolution order (later wins)::

    dataclass defaults -> preset -> YAML file (--config) -> key=value overrides

A YAML file is the nested form of :func:`config_to_dict` (``model:``,
``data:``, ``train:``, ``optim:``, ``weak:``, ``icmoe:`` sections and top-level ``run_dir``,
``preset``); it may name a ``preset`` to start from. Overrides use dotted keys
(``train.iterations=600``, ``model.gate=spatial``, ``data.label_ratio=0.2``);
values are parsed as YAML scalars (``null``, ``true``, ``1e-3``, ``[1, 2]``)
and checked against the field's type. Unknown keys and bad values raise
:class:`ConfigError` naming the key.

Presets: :data:`semimoe.presets.PRESETS` (``paper``, ``fast``, ``cpu-demo``).

Legacy key: ``train.mode`` (``semi`` | ``supervised``) is read as
``train.method`` (``semimoe`` | ``supervised``).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from .data.datasets import DataConfig
from .errors import ConfigError, check_range
from .models import ModelConfig
from .presets import PRESETS

__all__ = ["Config", "TrainConfig", "OptimConfig", "WeakConfig", "ModelConfig", "DataConfig", "ConfigError",
           "PRESETS", "make_config", "load_config", "config_to_dict", "config_from_dict",
           "apply_overrides", "dump_yaml"]


_SCHEDULES = ("epoch", "iteration")
_OPTIMS = ("sgd", "adamw", "adam")
_AMO = ("reference", "kendall")
_SELECT = ("ours", "reference")


@dataclass
class OptimConfig:
    """Optimisers and learning-rate schedule.

    name: ``sgd`` (reference) | ``adamw`` | ``adam`` for experts, gate and heads.
    lr, momentum (SGD), weight_decay.
    warmup: linear warm-up length in schedule units (epochs or iterations,
        see ``train.schedule``); the reference starts from lr 0 at epoch 0.
    step_size, gamma: lr x gamma every ``step_size`` units after the warm-up.
    amo_lr, amo_weight_decay: Adam of the adaptive multi-objective weights.
    grad_clip: clip the global gradient norm (0: off).
    """

    name: str = "sgd"
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 5e-5
    warmup: int = 20
    step_size: int = 50
    gamma: float = 0.5
    amo_lr: float = 0.05
    amo_weight_decay: float = 5e-5
    grad_clip: float = 0.0

    def __post_init__(self):
        _check_choice("optim.name", self.name, _OPTIMS)
        _check_range("optim.lr", self.lr, lo=0.0, lo_open=True)
        _check_range("optim.momentum", self.momentum, lo=0.0, hi=1.0, hi_open=True)
        _check_range("optim.weight_decay", self.weight_decay, lo=0.0)
        _check_range("optim.warmup", self.warmup, lo=0)
        _check_range("optim.step_size", self.step_size, lo=1)
        _check_range("optim.gamma", self.gamma, lo=0.0, hi=1.0, lo_open=True)
        _check_range("optim.amo_lr", self.amo_lr, lo=0.0)
        _check_range("optim.amo_weight_decay", self.amo_weight_decay, lo=0.0)
        _check_range("optim.grad_clip", self.grad_clip, lo=0.0)


@dataclass
class TrainConfig:
    """The training loop.

    method: the training method, a name of :data:`semimoe.training.METHODS`:
        ``semimoe`` (Semi-MoE) | ``supervised`` (baseline: labeled data only,
        no unsupervised term; same model and supervised losses).
    schedule: ``epoch`` (reference: ``epochs`` epochs of ceil(unlabeled /
        (batch_unlabeled * world)) iterations) | ``iteration`` (``iterations``
        iterations; lr schedule and unsupervised ramp in iterations).
    batch_labeled, batch_unlabeled: images per iteration and process.
    crop: train on random ``crop x crop`` windows, one per image, drawn after
        augmentation; images smaller than the crop are reflected to fill it
        (0: whole images, which must then all have one size, a multiple of
        the model's size multiple).
    unsup_weight: maximum of the linear unsupervised ramp (reference 0.5).
    refine: pseudo-label refinement (None = reference; see
        ``semimoe.losses.make_pseudo_labels``), e.g. ``sdf_agree+confidence``.
    amo: ``reference`` | ``kendall`` adaptive multi-objective loss.
    dice: ``batch`` (one seg and one boundary Dice per batch) | ``image``
        (the released code: one per image, averaged; boundary smoothing 1e-8).
    val_every: validate every this many schedule units (0: only at the end).
    select: reporting used to pick best.pt on the validation split: ``ours``
        (fixed threshold, pooled Dice) | ``reference`` (threshold sweep at
        256x256, pooled IoU, as the released code -- on validation data).
    threshold: foreground threshold of ``ours``.
    ckpt_every: write last.pt every this many iterations (0: at each
        validation and at the end).
    log_every: iterations between CSV/TensorBoard log rows.
    amp: bf16 autocast on CUDA (ignored on CPU).
    channels_last: channels-last memory format for training and validation
        (CUDA and CPU: on CPU measured 1.12x per cpu-demo step and equal
        (0.97-1.03x) per paper step at 1 thread; README "Benchmarks").
    keep_memory: on a CPU device (Linux, glibc), keep freed memory in the
        process for reuse instead of returning each large block to the
        system and page-faulting it in again at the next step
        (:func:`semimoe.memory.keep_freed_memory`; measured 46.8 -> 38.5 s
        per paper step). The process keeps its peak memory until it exits.
    compile: ``torch.compile`` the model (opt-in; inductor fuses BatchNorm +
        ReLU: about 1.1x per CPU step measured, after 1.5-2.5 minutes of
        compilation at the first step -- worth it for runs of more than a few
        hundred steps; README "Benchmarks").
    sync_bn: SyncBatchNorm under DDP.
    seed: seeds python, numpy and torch; sampling and augmentation streams.
        The same command with the same seed and the same ``threads`` (not 0)
        on the same machine and versions gives bit-identical weights and
        numbers (tested across processes); the thread count changes the
        order of floating-point sums, so a run at 1 thread and one at 2 differ.
        (The trainer starts MKL's vector math on one thread first:
        :mod:`semimoe.vml`.)
    deterministic: ``torch.use_deterministic_algorithms(True)``.
    device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
    threads: torch CPU threads (0: torch's default, shared out between the
        processes of a DDP run and capped at the cores that are idle when the
        run starts -- threads that share a core with another busy process
        slow each other down several-fold). Set it for repeatable numbers: the
        count 0 picks depends on the machine's load at start.
    num_workers: DataLoader workers (0: load in the main process).
    overlays: overlay PNGs written at the end (0: none).
    eval_test: also evaluate best.pt on the test split at the end.
    progress: tqdm progress bar.
    init: a semimoe checkpoint (``best.pt``) whose model weights start the
        run (full fine-tuning of a pretrained network); its ``model.arch``
        and layer shapes must be this run's. None: random initialisation.
    time_limit: stop training after this many minutes (0: no limit) and go on
        with the final validation, evaluation and overlays; a safety net for
        the CPU demo on slow machines (a stopped run can be ``--resume``d).
    """

    method: str = "semimoe"
    schedule: str = "epoch"
    epochs: int = 200
    iterations: int = 0
    batch_labeled: int = 2
    batch_unlabeled: int = 2
    crop: int = 0
    unsup_weight: float = 0.5
    refine: Optional[str] = None
    amo: str = "reference"
    dice: str = "batch"
    val_every: int = 5
    select: str = "ours"
    threshold: float = 0.5
    ckpt_every: int = 0
    log_every: int = 10
    amp: bool = True
    channels_last: bool = True
    keep_memory: bool = True
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    threads: int = 0
    num_workers: int = 0
    overlays: int = 8
    eval_test: bool = True
    progress: bool = True
    time_limit: float = 0.0
    init: Optional[str] = None

    def __post_init__(self):
        from .losses.objectives import DICE_FORMS
        from .training.methods import METHODS

        _check_choice("train.method", self.method, tuple(METHODS))
        _check_choice("train.schedule", self.schedule, _SCHEDULES)
        _check_choice("train.amo", self.amo, _AMO)
        _check_choice("train.dice", self.dice, DICE_FORMS)
        _check_choice("train.select", self.select, _SELECT)
        for k in ("epochs", "iterations", "crop", "val_every", "ckpt_every", "threads", "num_workers",
                  "overlays"):
            _check_range(f"train.{k}", getattr(self, k), lo=0)
        for k in ("batch_labeled", "batch_unlabeled", "log_every"):
            _check_range(f"train.{k}", getattr(self, k), lo=1)
        _check_range("train.unsup_weight", self.unsup_weight, lo=0.0)
        _check_range("train.threshold", self.threshold, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _check_range("train.time_limit", self.time_limit, lo=0.0)
        if self.schedule == "epoch" and self.epochs < 1:
            raise ConfigError("train.epochs must be >= 1 with train.schedule=epoch")
        if self.schedule == "iteration" and self.iterations < 1:
            raise ConfigError("train.iterations must be >= 1 with train.schedule=iteration")
        if self.refine is not None:
            from .losses.pseudo import _parse_refine
            if isinstance(self.refine, str) and self.refine.strip().lower() in ("", "none", "null"):
                self.refine = None
            else:
                try:
                    _parse_refine(self.refine)
                except ValueError as e:
                    raise ConfigError(f"train.refine: {e}") from None
        dev = str(self.device)
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {dev!r}")


_MIL_POOLING = ("dice", "max", "lse", "topk")


@dataclass
class WeakConfig:
    """Training from image-level labels (``train.method=weak-ikd``: IKD-MIL,
    :mod:`semimoe.training.weak`). Times are in schedule units (epochs or
    iterations, as ``train.schedule``).

    pooling: how a positive image's maps are pushed towards "tumour
        somewhere": ``dice`` (the released code: Dice of the whole map
        against 1) | ``max`` | ``lse`` | ``topk`` (MIL pooling of the pixels,
        then cross-entropy against 1). Negative images: every pixel towards 0.
    lse_r: sharpness of log-sum-exp pooling.
    topk: fraction of the pixels averaged by top-k pooling.
    distill_start: the MIL teacher trains alone until then; from then on a
        frozen teacher (the best model so far) is distilled into the student
        (released: epoch 60).
    reverse_every: every this many units after ``distill_start`` the best
        student so far becomes the teacher (released: 30; 0: never -- one
        teacher, the role-reversal ablation).
    threshold: the teacher's map is thresholded here for the weighted
        cross-entropy (and the pseudo-masks written each round).
    pseudo_masks: write each round's pseudo-masks of the training images
        (PNGs in ``<run>/pseudo/round<k>/``) with their Dice against hidden
        masks where those exist.
    export_dataset: at the end, write ``<run>/pseudo_dataset/``, a mask
        dataset in the folder layout (``data.kind=folder``): every training
        image with the final student's (best.pt) pseudo-mask as instance
        labels (negative images: all background), and the test images with
        their true masks; the Semi-MoE model then trains on it from image
        labels alone (README: weak supervision).
    """

    pooling: str = "dice"
    lse_r: float = 5.0
    topk: float = 0.1
    distill_start: int = 60
    reverse_every: int = 30
    threshold: float = 0.5
    pseudo_masks: bool = True
    export_dataset: bool = False

    def __post_init__(self):
        _check_choice("weak.pooling", self.pooling, _MIL_POOLING)
        _check_range("weak.lse_r", self.lse_r, lo=0.0, lo_open=True)
        _check_range("weak.topk", self.topk, lo=0.0, hi=1.0, lo_open=True)
        _check_range("weak.distill_start", self.distill_start, lo=0)
        _check_range("weak.reverse_every", self.reverse_every, lo=0)
        _check_range("weak.threshold", self.threshold, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


@dataclass
class ICMoEConfig:
    """IC-MoE-style experts on a frozen pretrained network
    (``train.method=icmoe``, ``model.arch=icmoe``:
    :mod:`semimoe.training.icmoe`).

    backbone: a semimoe checkpoint (``best.pt`` of a Semi-MoE or supervised
        run: ``model.arch=semimoe``) whose network is frozen; its
        base_width / depth / gate must equal ``model``'s. None: the run first
        pretrains one itself (``<run>/backbone/best.pt``) with
        ``train.method=supervised`` on ``pretrain_domain`` of the
        ``synthetic-glas`` data, every non-validation image labeled, for
        ``pretrain_iterations`` iterations.
    pretrain_domain, pretrain_iterations: see ``backbone``.
    consistency: weight of the log-consistency term of the training vote
        (agreement with the label, or with the experts' consensus on
        unlabeled pixels).
    balance: weight of the Switch-style load-balancing loss of the router.
    contrast: weight of the semantic-guided pixel contrastive loss.
    temperature: its temperature.
    samples: pixels sampled per class and image for it (at the bottleneck
        resolution); ``hard_fraction`` of them near class boundaries
        (within ``hard_width`` bottleneck pixels).
    pseudo_threshold: voted probability above which an unlabeled pixel's
        class is a pseudo-label for the trainable experts (weighted by the
        ramped ``train.unsup_weight``).
    """

    backbone: Optional[str] = None
    pretrain_domain: str = "a"
    pretrain_iterations: int = 300
    consistency: float = 1.0
    balance: float = 0.01
    contrast: float = 0.1
    temperature: float = 0.1
    samples: int = 32
    hard_fraction: float = 0.5
    hard_width: int = 1
    pseudo_threshold: float = 0.9

    def __post_init__(self):
        _check_range("icmoe.pretrain_iterations", self.pretrain_iterations, lo=1)
        for k in ("consistency", "balance", "contrast"):
            _check_range(f"icmoe.{k}", getattr(self, k), lo=0.0)
        _check_range("icmoe.temperature", self.temperature, lo=0.0, lo_open=True)
        _check_range("icmoe.samples", self.samples, lo=2)
        _check_range("icmoe.hard_fraction", self.hard_fraction, lo=0.0, hi=1.0)
        _check_range("icmoe.hard_width", self.hard_width, lo=1)
        _check_range("icmoe.pseudo_threshold", self.pseudo_threshold, lo=0.5, hi=1.0, hi_open=True)


@dataclass
class Config:
    """Everything a run needs. ``run_dir``: output folder (None: ``runs/<preset>``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    weak: WeakConfig = field(default_factory=WeakConfig)
    icmoe: ICMoEConfig = field(default_factory=ICMoEConfig)
    run_dir: Optional[str] = None
    preset: Optional[str] = None


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "optim": OptimConfig,
             "weak": WeakConfig, "icmoe": ICMoEConfig}
_TOP = ("run_dir", "preset")
# old key -> (new key, value map)
_LEGACY = {"train.mode": ("train.method", {"semi": "semimoe"})}


# ----------------------------------------------------------------------------
# Checking helpers
# ----------------------------------------------------------------------------
def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _check_range(key: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    check_range(key, value, lo, hi, lo_open, hi_open, ConfigError)


def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; ConfigError names ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.strip().lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} must have {len(args)} entries, got {list(value)!r}")
            return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        seq = [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def _unknown(key: str, known: Sequence[str]) -> ConfigError:
    near = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    sec = key.split(".", 1)[0] + "." if "." in key else None
    same = sorted(k for k in known if sec and k.startswith(sec)) or sorted(known)
    return ConfigError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(same)}")


def _all_keys() -> List[str]:
    keys = list(_TOP)
    for sec, cls in _SECTIONS.items():
        keys += [f"{sec}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


# ----------------------------------------------------------------------------
# dict <-> Config
# ----------------------------------------------------------------------------
def _deep_merge(base: Dict[str, Any], upd: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (upd or {}).items():
        if not isinstance(k, str):
            raise ConfigError(f"config keys must be strings, got {k!r}")
        path = f"{prefix}{k}"
        if k in _SECTIONS and not prefix:
            if v is None:
                continue
            if not isinstance(v, dict):
                raise ConfigError(f"config section {k!r} must be a mapping, got {v!r}")
            out[k] = _deep_merge(out.get(k, {}), v, prefix=f"{k}.")
        elif not prefix and k not in _TOP:
            raise _unknown(path, _all_keys())
        else:
            out[k] = copy.deepcopy(v)
    return out


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    """Nested plain dict (YAML/JSON/``torch.save(weights_only)`` safe)."""
    def plain(x):
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, list):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    d = {sec: plain(dataclasses.asdict(getattr(cfg, sec))) for sec in _SECTIONS}
    d["run_dir"] = cfg.run_dir
    d["preset"] = cfg.preset
    return d


def _upgrade(d: Dict[str, Any]) -> Dict[str, Any]:
    """Rename legacy keys of a nested config dict (see :data:`_LEGACY`)."""
    for old, (new, values) in _LEGACY.items():
        sec, name = old.split(".")
        if isinstance(d.get(sec), dict) and name in d[sec]:
            v = d[sec].pop(name)
            d[sec].setdefault(new.split(".")[1], values.get(v, v))
    return d


def config_from_dict(d: Dict[str, Any]) -> Config:
    """Build a :class:`Config` from a (possibly partial) nested dict, checking
    every key and value. The one way a dict becomes a configuration (YAML
    files, checkpoints, ``semimoe.evaluate``)."""
    d = _upgrade(_deep_merge({}, d or {}))
    kwargs = {}
    for sec, cls in _SECTIONS.items():
        sd = d.get(sec, {}) or {}
        hints = _hints(cls)
        vals = {}
        for k, v in sd.items():
            if k not in hints:
                raise _unknown(f"{sec}.{k}", _all_keys())
            vals[k] = _coerce(f"{sec}.{k}", v, hints[k])
        try:
            kwargs[sec] = cls(**vals)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(f"{sec}.") else f"{sec}: {msg}") from None
    run_dir = d.get("run_dir")
    if run_dir is not None and not isinstance(run_dir, str):
        raise ConfigError(f"run_dir must be a string path, got {run_dir!r}")
    preset = d.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return Config(run_dir=run_dir, preset=preset, **kwargs)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(d: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``key=value`` strings (dotted keys) to a nested config dict."""
    out = copy.deepcopy(d)
    known = set(_all_keys()) | set(_LEGACY)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key=value (e.g. train.iterations=100)")
        key, _, text = ov.partition("=")
        key = key.strip()
        if key.startswith("--"):
            key = key[2:]
        if key not in known:
            raise _unknown(key, known)
        value = _parse_value(text)
        if key in _LEGACY:
            key, values = _LEGACY[key]
            value = values.get(value, value)
        if "." in key:
            sec, name = key.split(".", 1)
            out.setdefault(sec, {})
            if out[sec] is None:
                out[sec] = {}
            out[sec][name] = value
        else:
            out[key] = value
    return out


def load_yaml(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    try:
        with open(path) as f:
            d = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(d).__name__}")
    return d


def make_config(preset: Optional[str] = None, config_file: Optional[str] = None,
                overrides: Sequence[str] = ()) -> Config:
    """defaults -> preset -> YAML file -> overrides, checked.

    ``preset`` None: the file's ``preset:`` entry if any, else plain defaults.
    """
    file_d = load_yaml(config_file) if config_file else {}
    if preset is None:
        preset = file_d.get("preset")
        # an override may pick the preset too
        for ov in overrides:
            k, _, v = ov.partition("=")
            if k.strip().lstrip("-") == "preset":
                preset = _parse_value(v)
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    d: Dict[str, Any] = {}
    if preset is not None:
        d = _deep_merge(d, PRESETS[preset])
    d = _deep_merge(d, _upgrade(copy.deepcopy(file_d)))
    d = apply_overrides(d, overrides)
    d["preset"] = preset
    return config_from_dict(d)


load_config = make_config


def dump_yaml(cfg: Config) -> str:
    """The configuration as block-style YAML, readable back with ``--config``."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
