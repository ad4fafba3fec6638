"""The batched tile runner: calls a runtime on tile batches.

A runtime (:mod:`semimoe.deploy.runtimes`, a predictor ``nn.Module`` or any
callable) maps a float32 batch x (b, C_in, th, tw) to per-pixel outputs
(b, C_out, th, tw). The runner adds what every runtime needs around that
call: test-time flips run in the same batch and averaged, padding of the
last batch for runtimes compiled for one batch size (``fixed_batch``), and a
shape check of the output.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["TileRunner", "TTA_MODES", "flip_variants"]

TTA_MODES = (None, "hflip", "flip")


def flip_variants(tta: Optional[str]) -> List[Tuple[int, ...]]:
    """Flip dims of each test-time variant: identity, then horizontal, vertical, both."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    if tta is None:
        return [()]
    if tta == "hflip":
        return [(), (3,)]
    return [(), (3,), (2,), (2, 3)]


class TileRunner:
    """Run ``runtime`` on tile batches of up to ``per_step`` tiles.

    Args:
        runtime: callable x (b, C, th, tw) -> (b, C_out, th, tw).
        batch_size: tiles per runtime call, counting the flipped variants.
        tta: None | ``"hflip"`` | ``"flip"``: average the predictions of the
            tile and its flips (each flipped back).
        fixed_batch: pad every call to exactly ``batch_size`` tiles (default:
            ``runtime.fixed_batch``).

    ``runner(x)`` returns float (b, C_out, th, tw) predictions: the runtime's
    own output tensor (do not write into it) without TTA, a buffer of the
    runner's (valid until the next call) with TTA.
    """

    def __init__(self, runtime: Callable[[Tensor], Tensor], batch_size: int, tta: Optional[str] = None,
                 fixed_batch: Optional[bool] = None):
        self.runtime = runtime
        self.batch_size = int(batch_size)
        self.flips = flip_variants(tta)
        self.per_step = max(1, self.batch_size // len(self.flips))
        self.fixed_batch = bool(getattr(runtime, "fixed_batch", False)) if fixed_batch is None else fixed_batch
        self._acc: Optional[Tensor] = None

    def __call__(self, x: Tensor) -> Tensor:
        nb = x.shape[0]
        nv = len(self.flips)
        if nv > 1:
            x = torch.cat([x if not f else x.flip(f) for f in self.flips], dim=0)
        m = x.shape[0]
        if self.fixed_batch and m < self.batch_size:
            x = torch.cat([x, x[-1:].expand(self.batch_size - m, *x.shape[1:])], dim=0)
        y = self.runtime(x)
        if y.dim() != 4 or y.shape[0] < m or tuple(y.shape[2:]) != tuple(x.shape[2:]):
            raise ValueError(f"the runtime returned shape {tuple(y.shape)} for input {tuple(x.shape)}")
        y = y[:m]
        if y.device != x.device:
            y = y.to(x.device)
        if nv == 1:
            return y
        parts = y.split(nb, dim=0)
        if self._acc is None or self._acc.shape[1:] != parts[0].shape[1:] or self._acc.shape[0] < nb:
            self._acc = torch.empty((self.per_step, *parts[0].shape[1:]), dtype=torch.float32, device=y.device)
        acc = self._acc[:nb]
        acc.copy_(parts[0])
        for f, p in zip(self.flips[1:], parts[1:]):
            acc += p.flip(f)
        return acc.mul_(1.0 / nv)
