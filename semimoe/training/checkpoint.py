"""Training checkpoints: what ``last.pt`` and ``best.pt`` hold, RNG states
(``weights_only``-safe: tensors, ints, floats, lists, tuples), atomic writes
and safe loading."""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["CKPT_FORMAT", "rng_state", "set_rng_state", "read_model_weights"]

CKPT_FORMAT = "semimoe-ckpt-v1"


def rng_state(device: torch.device) -> Dict[str, Any]:
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


def set_rng_state(st: Dict[str, Any], device: torch.device) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def read_model_weights(path, key: str, arch: str):
    """``(weights, model_config)`` of the semimoe checkpoint ``path`` that the
    configuration key ``key`` names (``train.init``, ``icmoe.backbone``),
    read with ``weights_only``; :class:`~semimoe.config.ConfigError` naming
    ``key`` when it is not a semimoe checkpoint or is one of another
    ``model.arch`` than ``arch``."""
    from ..config import ConfigError
    from ..utils import safe_torch_load

    ck = safe_torch_load(path, key)
    mc = ck.get("model_config") if isinstance(ck, dict) else None
    if not isinstance(mc, dict) or "model" not in ck:
        raise ConfigError(f"{key}={path}: not a semimoe checkpoint (needs 'model' and 'model_config')")
    have = mc.get("arch", "semimoe")
    if have != arch:
        raise ConfigError(f"{key}={path} is a model.arch={have} checkpoint; {key} needs a model.arch={arch} one")
    return ck["model"], mc
