"""Joint image/mask augmentation of the reference training protocol (docs/METHOD.md §4).

The reference (albumentations) applies, per training sample::

    Resize(256) -> RandomCrop(224, p=0.5) -> Resize(256)
    -> Flip(p=0.75) -> Transpose(p=0.5) -> RandomRotate90(p=1)

Resizing to the training size happens once, when a dataset is cached
(:mod:`semimoe.data.datasets`); :class:`Augment` does the rest on tensors:

* random crop of ``crop_scale`` x the side (224/256 = 0.875) with probability
  ``crop_p``, resized back: image bilinear, mask nearest. Both use the same
  pixel-centre convention (``align_corners=False`` / "nearest-exact"), so a
  mask pixel is the source pixel nearest to where the image pixel samples.
* a random element of the dihedral group D4 (the 8 flips/rotations/
  transposes of a square). ``Flip(p=0.75)`` picks identity, vertical,
  horizontal or both flips with probability 1/4 each, then a fair
  ``Transpose`` and a uniform ``RotateRandom90`` follow; the composition is
  uniform over D4, which is what is drawn here directly (one uniform draw of
  ``(transpose, k)``). Non-square inputs keep their shape: only the four
  shape-preserving elements (identity, both flips, rot180) are drawn.

Randomness comes from ``torch``'s generator (``generator`` if given, else the
global one), which DataLoader workers seed per worker, so runs are
reproducible given ``torch.manual_seed``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["Augment", "nearest_indices", "resize_mask", "resize_image"]


def nearest_indices(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """Source index of each of ``n_out`` output pixels for a nearest resize of
    ``n_in`` pixels: ``floor((i + 0.5) * n_in / n_out)`` (pixel centres, as
    PIL's NEAREST and torch's "nearest-exact"). int64 (n_out,)."""
    i = torch.arange(n_out, device=device, dtype=torch.float64)
    idx = torch.floor((i + 0.5) * (n_in / n_out)).long()
    return idx.clamp_(0, n_in - 1)


def resize_mask(mask: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest resize of an integer (..., H, W) label map to ``size`` (exact labels, any dtype)."""
    H, W = mask.shape[-2:]
    if (H, W) == tuple(size):
        return mask
    ys = nearest_indices(H, size[0], mask.device)
    xs = nearest_indices(W, size[1], mask.device)
    return mask.index_select(-2, ys).index_select(-1, xs)


def resize_image(image: torch.Tensor, size: Tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of a float (C, H, W) or (B, C, H, W) image."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    x = image if image.dim() == 4 else image.unsqueeze(0)
    y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
    return y if image.dim() == 4 else y[0]


class Augment:
    """Random crop+resize and D4 transform applied jointly to an image and its mask.

    Args:
        crop_scale: crop side relative to the image side (reference 224/256).
        crop_p: probability of the crop (reference 0.5).
        dihedral: draw a random flip/rotation/transpose (reference: yes).
        generator: optional ``torch.Generator`` (CPU) for reproducible draws.

    Call ``aug(image, mask=None)`` with image float (C, H, W) and mask integer
    (H, W) (or None); returns ``(image, mask)`` with the same shapes and
    dtypes (contiguous).
    """

    def __init__(self, crop_scale: float = 224 / 256, crop_p: float = 0.5, dihedral: bool = True,
                 generator: Optional[torch.Generator] = None):
        if not 0.0 < crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale}")
        if not 0.0 <= crop_p <= 1.0:
            raise ValueError(f"crop_p must be in [0, 1], got {crop_p}")
        self.crop_scale = float(crop_scale)
        self.crop_p = float(crop_p)
        self.dihedral = bool(dihedral)
        self.generator = generator

    def __repr__(self) -> str:
        return (f"Augment(crop_scale={self.crop_scale:.4g}, crop_p={self.crop_p}, "
                f"dihedral={self.dihedral})")

    def _randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def __call__(self, image: torch.Tensor, mask: Optional[torch.Tensor] = None):
        H, W = image.shape[-2:]
        if mask is not None and tuple(mask.shape[-2:]) != (H, W):
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
        # crop first, then the D4 element, as in the reference
        do_crop = self._rand() < self.crop_p
        ch = max(1, int(round(H * self.crop_scale)))
        cw = max(1, int(round(W * self.crop_scale)))
        if do_crop and (ch < H or cw < W):
            y0 = self._randint(H - ch + 1)
            x0 = self._randint(W - cw + 1)
            image = resize_image(image[..., y0:y0 + ch, x0:x0 + cw], (H, W))
            if mask is not None:
                mask = resize_mask(mask[..., y0:y0 + ch, x0:x0 + cw], (H, W))
        if self.dihedral:
            if H == W:
                t = self._randint(2)
                k = self._randint(4)
            else:
                t = 0
                k = 2 * self._randint(2)
            flip_h = (H != W) and self._randint(2) == 1
            image = self._d4(image, t, k, flip_h)
            if mask is not None:
                mask = self._d4(mask, t, k, flip_h)
        image = image.contiguous()
        return image, (mask.contiguous() if mask is not None else None)

    @staticmethod
    def _d4(x: torch.Tensor, t: int, k: int, flip_h: bool) -> torch.Tensor:
        if t:
            x = x.transpose(-2, -1)
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
        if flip_h:
            x = torch.flip(x, dims=(-1,))
        return x
