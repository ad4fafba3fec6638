"""Data streams of a training run: deterministic in (seed, stream, iteration),
hence resumable from the iteration count alone."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..inference.grid import pad_index

__all__ = ["mix", "Stream", "BatchSource", "batch_iterator"]


def mix(*words: int) -> int:
    """A 63-bit seed from integers (SplitMix64-style mixing; stable across runs)."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h ^= (int(w) + 0x9E3779B97F4A7C15 + ((h << 6) & 0xFFFFFFFFFFFFFFFF) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h = z ^ (z >> 31)
    return h >> 1


class Stream:
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
            g = torch.Generator().manual_seed(mix(self.seed, self.tag, e, 1))
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = e
        return self._perm

    def batch_at(self, it: int) -> List[Tuple[int, int]]:
        out = []
        base = (it * self.world + self.rank) * self.batch
        for j in range(self.batch):
            pos = base + j
            e, k = divmod(pos, self.n)
            out.append((int(self._perm_for(e)[k]), mix(self.seed, self.tag, pos, 2)))
        return out


class BatchSource(torch.utils.data.Dataset):
    """Index ``it`` -> the (labeled, unlabeled) batches of iteration ``it``.

    Each item is read under its own torch seed (``fork_rng``), so the
    dataset's random augmentation and the random crop are a function of the
    item's position in the stream, whether loaded here or in workers.

    ``crop``: one random ``crop x crop`` window per item, drawn after the
    augmentation; an image smaller than the crop is first extended by
    reflection (image and mask alike), so every batch stacks.

    Batches: labeled ``(images, masks)``, images float32 (B, 3, h, w), masks
    int64 (B, h, w) instance labels; for image-label datasets (items with a
    ``"label"``, :mod:`semimoe.data.weak`) ``(images, labels)``, labels int64
    (B,) of 0/1 -- the label of the whole image, which a crop may have cut
    the tumour out of. Unlabeled ``(images, None)``; None without a stream.
    """

    def __init__(self, labeled, unlabeled, lab_stream: Optional[Stream], unl_stream: Optional[Stream],
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
                item = self._crop(dict(item), self.crop)
        return item

    @staticmethod
    def _crop(item: dict, c: int) -> dict:
        H, W = item["image"].shape[-2:]
        if H < c or W < c:
            ry = torch.from_numpy(pad_index(max(H, c), H, "reflect")[0])
            rx = torch.from_numpy(pad_index(max(W, c), W, "reflect")[0])
            for k in ("image", "mask"):
                if k in item:
                    item[k] = item[k].index_select(-2, ry).index_select(-1, rx)
            H, W = max(H, c), max(W, c)
        y0 = int(torch.randint(H - c + 1, (1,)))
        x0 = int(torch.randint(W - c + 1, (1,)))
        item["image"] = item["image"][:, y0:y0 + c, x0:x0 + c]
        if "mask" in item:
            item["mask"] = item["mask"][y0:y0 + c, x0:x0 + c]
        return item

    def _batch(self, ds, stream: Optional[Stream], it: int, with_mask: bool):
        if stream is None:
            return None
        items = [self._item(ds, i, s) for i, s in stream.batch_at(it)]
        x = torch.stack([b["image"] for b in items]).contiguous()
        if not with_mask:
            return x, None
        if "label" in items[0]:  # image-level labels (weakly supervised data)
            return x, torch.stack([b["label"] for b in items]).to(torch.int64)
        return x, torch.stack([b["mask"] for b in items]).contiguous()

    def __getitem__(self, it: int):
        return self._batch(self.labeled, self.lab_stream, it, True), \
            self._batch(self.unlabeled, self.unl_stream, it, False)


def batch_iterator(source: BatchSource, start: int, stop: int, num_workers: int, pin: bool):
    if num_workers <= 0:
        for it in range(start, stop):
            yield source[it]
        return
    loader = torch.utils.data.DataLoader(source, batch_size=None, sampler=range(start, stop),
                                         num_workers=num_workers, pin_memory=pin,
                                         prefetch_factor=4, persistent_workers=False)
    yield from loader
