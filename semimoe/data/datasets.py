"""Gland segmentation datasets: GlaS, CRAG, image/mask folders, synthetic glands.

Layouts (``DataConfig.kind``):

* ``"glas"`` -- the native Warwick-QU release: ``train_N.bmp`` with
  ``train_N_anno.bmp`` (instance labels), ``testA_N*``, ``testB_N*`` in
  ``root`` (or in the single sub-folder of ``root`` that holds them, as the
  release zip unpacks). Test splits: ``"testA"``, ``"testB"``, ``"test"`` (A+B).
* ``"crag"`` -- ``root/train/Images/*.png`` + ``root/train/Annotation/*.png``
  (instance masks, same file name), ``root/test/...`` likewise.
* ``"folder"`` -- ``root/<split>/image/*`` + ``root/<split>/mask/*`` with the
  mask named like its image (same file name, or same stem with an image
  extension); the training split may also be ``root/image`` + ``root/mask``.
  (The reference's ``.../train_sup_35/image``, ``.../val/mask`` folders are of
  this form.)
* ``"synthetic"`` (default) -- :func:`semimoe.data.synthetic.make_sample`:
  ``synthetic_side``-square training images from seeds ``[TRAIN_TAG, i]``,
  test images from ``[TEST_TAG, i]``: fixed pools independent of
  ``DataConfig.seed`` (like a real dataset) that never share a sample.
* ``"synthetic-glas"`` --
  :func:`semimoe.data.glas_synthetic.make_glas_sample`: harder GlaS-like
  benign and malignant images of GlaS's size (775x522, 0.62 µm/px;
  ``synthetic_side`` and ``synthetic_test_size`` do not apply),
  ``synthetic_train`` training images from seeds ``[GLAS_TRAIN_TAG, i]``,
  ``synthetic_test`` test images from ``[GLAS_TEST_TAG, i]``. Names carry
  the grade (``glas_synthetic_00012_malignant``,
  ``glas_synthetic_test_00003_benign``), known from the seed without
  rendering the image. ``synthetic_domain`` picks the generator's domain
  (``"a"``, the default, or ``"b"``: another lab, P(malignant) 3/4 and
  another stain; :data:`semimoe.data.glas_synthetic.GLAS_DOMAINS`) for both
  pools: the same seeds, so the same tissue where the grade agrees.
* ``"weak"`` and ``"synthetic-weak"`` -- image-level labels (tumour present
  or absent) for weakly supervised methods, see :mod:`semimoe.data.weak`:
  ``root/labels.csv`` (``image,label``) + ``root/images/`` + optional
  ``root/masks/``, test split in ``root/test/``; or 256x256 tiles cut from
  the GlaS-like images (``weak_00012_r0c1``), labeled 1 when malignant glands
  cover at least 2 % of the tile. Every non-validation image is labeled
  (``label_ratio`` is ignored: it is taken as ``1 - val_ratio`` and written
  so in ``split.json``), the unlabeled set is empty, validation images are
  chosen among images with a mask. Training items carry ``label``, not the
  masks, which the evaluation sets (validation, :func:`build_split_set`,
  :func:`build_test_dataset`) keep.

Scale (docs/METHOD.md §6, :mod:`semimoe.data.scale`): every dataset has a
pixel size in µm/px. The training images (labeled and unlabeled) are
resampled once, by one factor for the whole dataset and keeping their aspect
ratio, to the training scale (``data.mpp``, or the one that brings the median
image's shorter side to ``data.size`` pixels), then cached in memory as
uint8 / int32 arrays. Validation and test images stay at their native
resolution: they are scored through the same predictor as deployment
(:class:`semimoe.inference.Predictor`), which resamples to the training scale
and back. The scale and the normalisation the model is trained with are the
:class:`~semimoe.data.scale.InputSpec` ``spec`` attribute of the training
datasets :func:`build_datasets` returns.

Split (:func:`make_split`): the training pool's names are sorted, permuted by
``numpy.random.default_rng([seed, 0x5EED])``; the first ``round(val_ratio*N)``
form the validation set, the next ``round(label_ratio*N)`` the labeled set
(counted on all N training images, as the reference's 35 labeled of CRAG's
173 = 20 %), the rest the unlabeled set. With a fixed seed, the validation
set does not depend on ``label_ratio`` and labeled sets are nested (10 % is a
subset of 20 %). Validation images are used by neither loss (their masks are
for model selection only); test data never enters a split.

Training items (:class:`GlandDataset`) are dicts (docs/CONTRACTS.md):
``image`` float32 (3, H, W) normalised with the dataset mean/std, ``mask``
int64 (H, W) instance labels (labeled items only), ``name`` str; items of
image-label datasets carry ``label`` (0-dim int64, 0/1) instead of ``mask``. Evaluation
items (:class:`ImageSet`) are :class:`Sample` s: the uint8 RGB image as
stored, its int32 instance mask and its name.

Bad data raises :class:`DataError` naming the file or folder: unreadable
image or mask, mask/image size mismatch, missing mask, missing or empty folder.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..utils import atomic_write, atomic_write_json
from .augment import Augment
from .io import DataError, image_size, read_image, read_mask
from .scale import InputSpec, resample_image, resample_mask, source_mpp, training_mpp
from .synthetic import make_sample
from .synthetic import mean_std as synthetic_mean_std

__all__ = [
    "DataConfig",
    "DataError",
    "GlandDataset",
    "ImageSet",
    "Sample",
    "build_datasets",
    "build_split_set",
    "build_test_dataset",
    "image_labels",
    "make_split",
    "load_split",
    "read_image",
    "read_mask",
    "default_mean_std",
    "list_items",
    "GLAS_MEAN",
    "GLAS_STD",
    "CRAG_MEAN",
    "CRAG_STD",
    "SPLIT_FILE",
    "KINDS",
    "SYNTHETIC_KINDS",
    "WEAK_KINDS",
]

GLAS_MEAN = (0.7878, 0.5120, 0.7849)
GLAS_STD = (0.4282, 0.5078, 0.4264)
CRAG_MEAN = (0.8307, 0.7224, 0.8573)
CRAG_STD = (0.1200, 0.1523, 0.0914)

SPLIT_FILE = "split.json"
_SPLIT_FORMAT = "semimoe-split-v1"
KINDS = ("synthetic", "synthetic-glas", "glas", "crag", "folder", "weak", "synthetic-weak")
#: Kinds drawn by a generator: no folder, a built-in test pool.
SYNTHETIC_KINDS = ("synthetic", "synthetic-glas", "synthetic-weak")
#: Kinds with image-level labels (tumour present / absent, :mod:`semimoe.data.weak`).
WEAK_KINDS = ("weak", "synthetic-weak")
IMAGE_EXTS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
# Seed tags of the synthetic pools (first word of the seed sequence).
TRAIN_TAG = 0x5EED7A1
TEST_TAG = 0x7E57
GLAS_TRAIN_TAG = 0x61A57A1
GLAS_TEST_TAG = 0x61A57E57


@dataclass
class DataConfig:
    """Where the data comes from, how it is split, at which scale it is seen
    and how it is augmented.

    kind: ``"synthetic"`` | ``"synthetic-glas"`` | ``"glas"`` | ``"crag"`` |
        ``"folder"`` | ``"weak"`` | ``"synthetic-weak"`` (the last two with
        image-level labels, :mod:`semimoe.data.weak`).
    root: dataset folder (unused for the synthetic kinds).
    label_ratio: fraction of the training images that are labeled (the weak
        kinds ignore it: every non-validation image has its image label).
    val_ratio: fraction of the training images held out for validation.
    seed: split seed (also the seed of nothing else here).
    size: training scale as a side: the training images are resampled, by
        one factor for the whole dataset and keeping the aspect ratio, so
        that the median image's shorter side becomes ``size`` pixels
        (None: native resolution). Ignored when ``mpp`` is set.
    mpp: training scale in µm per pixel (None: from ``size``).
    source_mpp: µm per pixel of the images as stored (None: GlaS 0.62005,
        CRAG 0.55, synthetic 0.5, synthetic-glas and synthetic-weak 0.62;
        folder and weak datasets assume 0.5, a 20x scan, and say so).
    synthetic_train / synthetic_test: number of synthetic images (all
        synthetic kinds; synthetic-weak cuts 6 tiles from each).
    synthetic_side: side of the synthetic training images as drawn
        (``"synthetic"`` only: synthetic-glas images are always 775x522).
    synthetic_test_size: side of synthetic test images (None: ``synthetic_side``;
        ``"synthetic"`` only).
    synthetic_cache: folder where drawn synthetic-glas (and synthetic-weak)
        images are kept (one ``.npz`` each, named by the generator's version
        and, other than ``"a"``, the domain), so that later runs
        and evaluations read them instead of drawing them again (about
        0.6 s an image). None: draw every time. It changes no pixel.
    synthetic_domain: domain of the GlaS-like generator
        (:data:`semimoe.data.glas_synthetic.GLAS_DOMAINS`): ``"a"`` (default)
        or ``"b"`` (another lab: P(malignant) 3/4, another stain). Used by
        ``"synthetic-glas"`` only; the other kinds ignore it (synthetic-weak
        tiles are always cut from domain a).
    mean, std: normalisation (None: the dataset's constants -- GlaS/CRAG from
        docs/METHOD.md, the synthetic kinds from their generator's
        ``mean_std()``, folder measured on the training images).
    augment: augment labeled/unlabeled training items.
    crop_scale, crop_p: random crop side (reference 224/256) and probability.
    threads: decode threads (0: up to 8, bounded by the CPU count).
    """

    kind: str = "synthetic"
    root: Optional[str] = None
    label_ratio: float = 0.1
    val_ratio: float = 0.15
    seed: int = 0
    size: Optional[int] = None
    mpp: Optional[float] = None
    source_mpp: Optional[float] = None
    synthetic_train: int = 200
    synthetic_test: int = 40
    synthetic_side: int = 256
    synthetic_test_size: Optional[int] = None
    synthetic_cache: Optional[str] = None
    synthetic_domain: str = "a"
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None
    augment: bool = True
    crop_scale: float = 224 / 256
    crop_p: float = 0.5
    threads: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"data.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("label_ratio", "val_ratio"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"data.{name} must be in [0, 1], got {v}")
        if self.label_ratio + self.val_ratio > 1.0 + 1e-9:
            raise ValueError(f"data.label_ratio + data.val_ratio must be <= 1, got "
                             f"{self.label_ratio} + {self.val_ratio}")
        if self.size is not None and int(self.size) < 1:
            raise ValueError(f"data.size must be a positive side in pixels or null, got {self.size}")
        for name in ("mpp", "source_mpp"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(float(v)) and float(v) > 0):
                raise ValueError(f"data.{name} must be a positive number of µm per pixel or null, got {v}")
        for name in ("synthetic_side", "synthetic_train", "synthetic_test"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        from .glas_synthetic import GLAS_DOMAINS  # here, not at the top: see _glas_synthetic_names

        if self.synthetic_domain not in GLAS_DOMAINS:
            raise ValueError(f"data.synthetic_domain must be one of {', '.join(GLAS_DOMAINS)}, "
                             f"got {self.synthetic_domain!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(float(a) for a in v)
                if len(v) != 3 or not all(math.isfinite(a) for a in v):
                    raise ValueError(f"data.{name} needs 3 finite values, got {v}")
                setattr(self, name, v)
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"data.std must be positive, got {self.std}")


@dataclass(frozen=True)
class _Item:
    name: str
    image: Path
    mask: Optional[Path]


def _load_item(item: _Item, with_mask: bool = True):
    img = read_image(item.image)
    mask = None
    if with_mask and item.mask is not None:
        mask = read_mask(item.mask)
        if mask.shape != img.shape[:2]:
            raise DataError(
                f"mask {item.mask} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{item.image} is {img.shape[1]}x{img.shape[0]}")
    return img, mask


# ----------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------
def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder {path} does not exist")
    return path


def _child_dir(parent: Path, names: Sequence[str]) -> Optional[Path]:
    """The sub-folder of ``parent`` whose name matches one of ``names`` (case-insensitive)."""
    if not parent.is_dir():
        return None
    want = [n.lower() for n in names]
    found = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()}
    for n in want:
        if n in found:
            return found[n]
    return None


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _find_mask(mask_dir: Path, image: Path, suffixes: Sequence[str] = ("",)) -> Optional[Path]:
    for suf in suffixes:
        if not suf:
            p = mask_dir / image.name
            if p.is_file():
                return p
        for ext in IMAGE_EXTS:
            for e in (ext, ext.upper()):
                p = mask_dir / f"{image.stem}{suf}{e}"
                if p.is_file():
                    return p
    return None


def _paired(image_dir: Path, mask_dir: Optional[Path], what: str, suffixes=("",)) -> List[_Item]:
    images = _images_in(image_dir)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) found in {what} folder {image_dir}")
    items = []
    for p in sorted(images, key=lambda p: _natural_key(p.name)):
        m = None
        if mask_dir is not None:
            m = _find_mask(mask_dir, p, suffixes)
            if m is None:
                exts = "|".join(e[1:] for e in IMAGE_EXTS)
                raise DataError(f"no mask for image {p} (looked for {mask_dir / p.name} and "
                                f"{p.stem}{suffixes[-1]}.<{exts}> in {mask_dir})")
        items.append(_Item(p.stem, p, m))
    return items


_GLAS_RE = re.compile(r"^(train|testA|testB)_(\d+)$", re.IGNORECASE)


def _glas_dir(root: Path) -> Path:
    _require_dir(root, "GlaS")

    def has(d: Path) -> bool:
        return any(_GLAS_RE.match(p.stem) for p in d.iterdir() if p.is_file())

    if has(root):
        return root
    subs = [d for d in root.iterdir() if d.is_dir() and has(d)]
    if len(subs) == 1:
        return subs[0]
    if len(subs) > 1:
        raise DataError(f"GlaS folder {root}: several sub-folders hold GlaS images "
                        f"({', '.join(str(s) for s in subs)}); pass one of them as root")
    raise DataError(f"no GlaS images (train_N.bmp, testA_N.bmp, testB_N.bmp) found in GlaS folder {root}")


def _glas_items(root: Path, split: str) -> List[_Item]:
    d = _glas_dir(root)
    prefixes = {"train": ["train"], "testA": ["testA"], "testB": ["testB"], "test": ["testA", "testB"]}
    if split not in prefixes:
        raise ValueError(f"GlaS split must be one of {', '.join(prefixes)}, got {split!r}")
    items = []
    for prefix in prefixes[split]:
        found = []
        for p in d.iterdir():
            if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS:
                continue
            m = _GLAS_RE.match(p.stem)
            if m and m.group(1).lower() == prefix.lower():
                found.append((int(m.group(2)), p))
        if not found:
            raise DataError(f"no GlaS {prefix} images ({prefix}_N.bmp) found in {d}")
        for _, p in sorted(found):
            mask = _find_mask(d, p, ("_anno",))
            if mask is None or mask == p:
                raise DataError(f"no mask for image {p} (expected {d / (p.stem + '_anno' + p.suffix)})")
            items.append(_Item(p.stem, p, mask))
    return items


def _crag_items(root: Path, split: str) -> List[_Item]:
    _require_dir(root, "CRAG")
    sd = _child_dir(root, [split])
    if sd is None:
        raise DataError(f"CRAG folder {root} has no '{split}' sub-folder "
                        f"(expected {root / split / 'Images'})")
    img_dir = _child_dir(sd, ["Images", "Image"])
    if img_dir is None:
        raise DataError(f"CRAG folder {sd / 'Images'} does not exist")
    ann_dir = _child_dir(sd, ["Annotation", "Annotations", "Masks", "Mask"])
    if ann_dir is None:
        raise DataError(f"CRAG folder {sd / 'Annotation'} does not exist")
    return _paired(img_dir, ann_dir, "CRAG image")


def _folder_items(root: Path, split: str) -> List[_Item]:
    _require_dir(root, "dataset")
    base = _child_dir(root, [split])
    if base is None or _child_dir(base, ["image", "images"]) is None:
        if split == "train" and _child_dir(root, ["image", "images"]) is not None:
            base = root
        else:
            raise DataError(f"dataset folder {root} has no {split}/image folder "
                            f"(expected {root / split / 'image'} and {root / split / 'mask'})")
    img_dir = _child_dir(base, ["image", "images"])
    mask_dir = _child_dir(base, ["mask", "masks"])
    if mask_dir is None:
        raise DataError(f"mask folder {base / 'mask'} does not exist")
    return _paired(img_dir, mask_dir, "image")


def list_items(kind: str, root, split: str = "train") -> List[_Item]:
    """The (name, image path, mask path) records of a real dataset's split."""
    if root is None:
        raise DataError(f"the {kind} dataset needs its folder: set data.root (--root)")
    root = Path(root).expanduser()
    if kind == "glas":
        return _glas_items(root, split)
    if kind == "crag":
        return _crag_items(root, split)
    if kind == "folder":
        return _folder_items(root, split)
    raise ValueError(f"list_items: kind must be glas, crag or folder, got {kind!r}")


# ----------------------------------------------------------------------------
# Pools: decoded images shared by the datasets
# ----------------------------------------------------------------------------
def _n_threads(cfg_threads: int) -> int:
    return cfg_threads if cfg_threads > 0 else max(1, min(8, os.cpu_count() or 1))


class _Pool:
    """Decoded (image uint8 (H,W,3), mask int32 (H,W) | None) pairs by index.

    ``loader(key)`` decodes one item; ``keys[i]`` is the key of item ``i``.
    ``eager``: everything is decoded at construction (errors surface at
    once); otherwise each item is decoded on first access and kept.
    """

    def __init__(self, names: Sequence[str], keys: Sequence, loader: Callable, eager: bool, threads: int = 0):
        self.names = list(names)
        self.keys = list(keys)
        self._loader = loader
        self._cache: Dict[int, tuple] = {}
        if eager and self.names:
            n = _n_threads(threads)
            if n > 1 and len(self.names) > 1:
                with ThreadPoolExecutor(n) as ex:
                    loaded = list(ex.map(loader, self.keys))
            else:
                loaded = [loader(k) for k in self.keys]
            self._cache = dict(enumerate(loaded))

    def __len__(self) -> int:
        return len(self.names)

    def get(self, i: int):
        got = self._cache.get(i)
        if got is None:
            # two threads may both decode an item once; dict assignment is atomic
            got = self._loader(self.keys[i])
            self._cache[i] = got
        return got

    def mean_std(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        s = np.zeros(3)
        s2 = np.zeros(3)
        cnt = 0
        for i in range(len(self)):
            x = self.get(i)[0].reshape(-1, 3).astype(np.float64) / 255.0
            s += x.sum(0)
            s2 += (x * x).sum(0)
            cnt += x.shape[0]
        m = s / max(cnt, 1)
        sd = np.sqrt(np.maximum(s2 / max(cnt, 1) - m * m, 1e-12))
        return tuple(float(v) for v in m), tuple(float(v) for v in sd)


@functools.lru_cache(maxsize=4096)
def _synthetic_sample(tag: int, side: int, i: int):
    img, lab = make_sample([tag, i], (side, side))  # shared between pools: never written to
    return img, lab.astype(np.int32)


class _SyntheticLoader:
    # a class, not a closure: datasets must pickle for DataLoader workers (spawn)
    def __init__(self, tag: int, side: int, factor: float = 1.0):
        self.tag, self.side, self.factor = int(tag), int(side), float(factor)

    def __call__(self, i: int):
        img, lab = _synthetic_sample(self.tag, self.side, int(i))
        return resample_image(img, self.factor), resample_mask(lab, self.factor)


# semimoe.data.glas_synthetic is imported where used, so that
# ``python -m semimoe.data.glas_synthetic`` does not find it already imported
def _glas_synthetic_names(prefix: str, tag: int, n: int, domain: str = "a") -> List[str]:
    """``{prefix}_{i:05d}_{grade}``: the grade is the seed's first draw (in
    ``domain``), no rendering."""
    from .glas_synthetic import glas_grade

    return [f"{prefix}_{i:05d}_{glas_grade([tag, i], domain)}" for i in range(n)]


@functools.lru_cache(maxsize=1)
def _glas_generator_version() -> str:
    """First 12 hex digits of the SHA-256 of the generator's source (and of
    the synthetic helpers it draws with): any edit gives new cache names."""
    import hashlib

    from . import glas_synthetic, synthetic

    h = hashlib.sha256()
    for mod in (glas_synthetic, synthetic):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


def _glas_cache_name(tag: int, i: int, domain: str = "a") -> str:
    """File name of image ``[tag, i]`` of ``domain`` in ``data.synthetic_cache``:
    ``glas_<version>_<tag>_<i>.npz`` in domain a (as before domains existed),
    ``glas_<domain>_<version>_<tag>_<i>.npz`` in another."""
    dom = "" if domain == "a" else f"{domain}_"
    return f"glas_{dom}{_glas_generator_version()}_{tag:x}_{i:05d}.npz"


def _glas_draw(tag: int, i: int, cache: Optional[str], domain: str = "a"):
    """make_glas_sample([tag, i], domain=domain) -> (image, labels), read from
    / kept in the folder ``cache`` when given (one ``.npz`` per image, named
    by the generator's version and the domain, :func:`_glas_cache_name`;
    written atomically, so concurrent runs may share it)."""
    from .glas_synthetic import _domain, make_glas_sample

    _domain(domain)  # an unknown domain fails before the cache is looked at
    path = None
    if cache:
        path = Path(cache) / _glas_cache_name(tag, i, domain)
        try:
            with np.load(path) as z:
                return z["image"], z["labels"]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError) as e:  # a damaged file: draw again and replace it
            warnings.warn(f"data.synthetic_cache: unreadable {path} ({e}); drawing the image again", stacklevel=3)
    img, lab, _ = make_glas_sample([tag, i], domain=domain)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: np.savez(f, image=img, labels=lab))
        except OSError as e:
            warnings.warn(f"data.synthetic_cache: cannot write {path} ({e}); going on without it", stacklevel=3)
    return img, lab


class _GlasSyntheticLoader:
    # not cached in memory like _synthetic_sample: at 775x522 the pools hold the only copy
    def __init__(self, tag: int, factor: float = 1.0, cache: Optional[str] = None, domain: str = "a"):
        self.tag, self.factor, self.cache, self.domain = int(tag), float(factor), cache, str(domain)

    def __call__(self, i: int):
        img, lab = _glas_draw(self.tag, int(i), self.cache, self.domain)
        return resample_image(img, self.factor), resample_mask(lab, self.factor)


class _ItemLoader:
    def __init__(self, items: List[_Item], factor: float = 1.0, with_mask: bool = True):
        self.items, self.factor, self.with_mask = items, float(factor), with_mask

    def __call__(self, i: int):
        img, mask = _load_item(self.items[i], self.with_mask)
        img = resample_image(img, self.factor)
        return img, (None if mask is None else resample_mask(mask, self.factor))


class _Listing(NamedTuple):
    """The training pool of a dataset before decoding: names, a loader
    factory ``factor -> loader(key)``, and the stored (H, W) of every image.

    Image-label datasets (:data:`WEAK_KINDS`) also give ``labels`` (called:
    ``{name: 0 | 1}``; a callable like ``shapes``, since synthetic-weak
    labels need the images drawn) and ``val_among`` (the names that may
    validate, those with a mask; None: all); their loader factory takes
    ``with_mask`` too (``loader(factor, with_mask=False)``: images only).
    ``groups`` (``{name: group}``, or None): images of one group (the tiles
    of one source image) always land in the same part of the split.
    Mask datasets: all None."""

    names: List[str]
    loader: Callable[[float], Callable]
    shapes: Callable[[], List[Tuple[int, int]]]
    labels: Optional[Callable[[], Dict[str, int]]] = None
    val_among: Optional[List[str]] = None
    groups: Optional[Dict[str, str]] = None


def _train_listing(cfg: DataConfig) -> _Listing:
    if cfg.kind in WEAK_KINDS:
        from .weak import weak_listing

        return weak_listing(cfg)
    if cfg.kind == "synthetic":
        n, side = int(cfg.synthetic_train), int(cfg.synthetic_side)
        return _Listing([f"synthetic_{i:05d}" for i in range(n)],
                        lambda f: _SyntheticLoader(TRAIN_TAG, side, f), lambda: [(side, side)] * n)
    if cfg.kind == "synthetic-glas":
        from .glas_synthetic import GLAS_SYNTHETIC_SIZE

        n, dom = int(cfg.synthetic_train), cfg.synthetic_domain
        return _Listing(_glas_synthetic_names("glas_synthetic", GLAS_TRAIN_TAG, n, dom),
                        lambda f: _GlasSyntheticLoader(GLAS_TRAIN_TAG, f, cfg.synthetic_cache, dom),
                        lambda: [GLAS_SYNTHETIC_SIZE] * n)
    items = list_items(cfg.kind, cfg.root, "train")
    names = [it.name for it in items]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise DataError(f"duplicate image names in {cfg.root}: {', '.join(sorted(dup))}")
    return _Listing(names, lambda f: _ItemLoader(items, f), lambda: [image_size(it.image) for it in items])


def default_mean_std(cfg: DataConfig, pool: Optional[_Pool] = None):
    """(mean, std) used for ``cfg``: explicit values, else the dataset's
    constants; folder datasets: measured on ``pool`` (the training images at
    the training scale)."""
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    if cfg.kind == "glas":
        m, s = GLAS_MEAN, GLAS_STD
    elif cfg.kind == "crag":
        m, s = CRAG_MEAN, CRAG_STD
    elif cfg.kind == "synthetic":
        m, s = synthetic_mean_std()
    elif cfg.kind in ("synthetic-glas", "synthetic-weak"):
        from .glas_synthetic import mean_std as glas_synthetic_mean_std

        m, s = glas_synthetic_mean_std()
    elif pool is None:
        raise ValueError("default_mean_std: a folder dataset's statistics are measured on its training "
                         "images; pass their pool (or set data.mean and data.std)")
    else:
        m, s = pool.mean_std()
    return tuple(cfg.mean or m), tuple(cfg.std or s)


# ----------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------
class GlandDataset(Dataset):
    """Training view of a decoded pool: items ``{"image", "mask"?, "label"?, "name"}``.

    Attributes: ``names`` (list of str), ``mean``/``std`` (normalisation),
    ``spec`` (:class:`InputSpec`: normalisation and training scale, or None),
    ``with_mask``, ``labels`` (image labels, one per item, or None),
    ``has_image_labels``, ``augment``.

    Item: ``image`` float32 (3, H, W) = (pixel/255 - mean)/std, ``mask``
    int64 (H, W) instance labels (only when ``with_mask``), ``label`` int64
    0-dim image label (only when ``labels`` is given), ``name``.
    """

    def __init__(self, pool: _Pool, indices: Sequence[int], mean, std, with_mask: bool = True,
                 augment: Optional[Callable] = None, spec: Optional[InputSpec] = None,
                 labels: Optional[Sequence[int]] = None):
        self.pool = pool
        self.indices = [int(i) for i in indices]
        self.names = [pool.names[i] for i in self.indices]
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._m = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._inv_s = 1.0 / torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        self.with_mask = bool(with_mask)
        self.augment = augment
        self.spec = spec
        self.labels = None if labels is None else [int(v) for v in labels]
        if self.labels is not None and len(self.labels) != len(self.indices):
            raise ValueError(f"GlandDataset: {len(self.labels)} labels for {len(self.indices)} images")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def has_image_labels(self) -> bool:
        """Items carry an image-level ``label`` (weakly supervised data)."""
        return self.labels is not None

    def __repr__(self) -> str:
        lab = "" if self.labels is None else f", image labels ({sum(self.labels)} positive)"
        return f"GlandDataset({len(self)} images, mask={self.with_mask}{lab}, augment={self.augment!r})"

    def shapes(self) -> List[Tuple[int, int]]:
        """(H, W) of every image as the model sees it (before augmentation)."""
        return [tuple(self.pool.get(i)[0].shape[:2]) for i in self.indices]

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        img, mask = self.pool.get(self.indices[i])
        x = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
        x = x.sub_(self._m).mul_(self._inv_s)
        m = torch.from_numpy(mask.astype(np.int64)) if (self.with_mask and mask is not None) else None
        if self.augment is not None:
            x, m = self.augment(x, m)
        out = {"image": x, "name": self.names[i]}
        if m is not None:
            out["mask"] = m
        if self.labels is not None:
            out["label"] = torch.tensor(self.labels[i], dtype=torch.int64)
        return out


class Sample(NamedTuple):
    """One evaluation image as stored: ``image`` uint8 (H, W, 3), ``mask``
    int32 (H, W) instance labels (0 = background), ``name``."""

    name: str
    image: np.ndarray
    mask: np.ndarray


class ImageSet(Dataset):
    """Evaluation images at their native resolution, with masks.

    Attributes: ``names``, ``mpp`` (µm per pixel of the images, the pixel
    size handed to the predictor). Items are :class:`Sample` s.
    """

    def __init__(self, pool: _Pool, mpp: float):
        self.pool = pool
        self.names = list(pool.names)
        self.mpp = float(mpp)

    def __len__(self) -> int:
        return len(self.pool)

    def __repr__(self) -> str:
        return f"ImageSet({len(self)} images at {self.mpp:.4g} µm/px)"

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        img, mask = self.pool.get(i)
        if mask is None:
            raise DataError(f"image {self.names[i]} has no mask")
        return Sample(self.names[i], img, mask)


# ----------------------------------------------------------------------------
# Split
# ----------------------------------------------------------------------------
def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def make_split(names: Sequence[str], label_ratio: float, val_ratio: float, seed: int,
               val_among: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
    """Deterministic labeled / unlabeled / val split of ``names`` (see the module doc).

    Returns ``{"labeled": [...], "unlabeled": [...], "val": [...]}`` (each in
    name order). At least one labeled image; at least one validation image
    when ``val_ratio > 0`` and there are two or more images.

    ``val_among``: only these names may validate (images with masks in an
    image-label dataset); the validation images are the first of them in the
    permutation, as many as without it (counted on all names) but at most
    all of them; validation places left empty go to the labeled set. None
    (all names) gives the split above.
    """
    names = sorted(set(names), key=_natural_key)
    n = len(names)
    if n == 0:
        raise DataError("cannot split an empty training set")
    n_val = _round(val_ratio * n)
    if val_ratio > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1)
    perm = np.random.default_rng([int(seed), 0x5EED]).permutation(n)
    n_lab = _round(label_ratio * n)
    if val_among is not None:
        among = set(val_among)
        val = [i for i in perm if names[i] in among][:n_val]
        n_lab += n_val - len(val)
        n_val = len(val)
        taken = set(val)
        perm = np.array(val + [i for i in perm if i not in taken], dtype=np.int64)
    n_lab = max(1, min(n_lab, n - n_val))
    val = perm[:n_val]
    lab = perm[n_val:n_val + n_lab]
    unl = perm[n_val + n_lab:]

    def pick(idx):
        return [names[i] for i in sorted(idx)]

    return {"labeled": pick(lab), "unlabeled": pick(unl), "val": pick(val)}


def load_split(path) -> Dict[str, List[str]]:
    """Read a split file (:data:`SPLIT_FILE`); returns its dict. Raises
    :class:`DataError` naming the file when it is malformed."""
    path = Path(path)
    try:
        with open(path) as f:
            d = json.load(f)
    except Exception as e:
        raise DataError(f"cannot read split file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(d, dict):
        raise DataError(f"split file {path} must hold a JSON object")
    for k in ("labeled", "unlabeled", "val"):
        if not isinstance(d.get(k), list) or not all(isinstance(s, str) for s in d[k]):
            raise DataError(f"split file {path}: '{k}' must be a list of image names")
    seen: Dict[str, str] = {}
    for k in ("labeled", "unlabeled", "val"):
        for s in d[k]:
            if s in seen:
                raise DataError(f"split file {path}: image {s!r} is in both '{seen[s]}' and '{k}'")
            seen[s] = k
    if not d["labeled"]:
        raise DataError(f"split file {path}: no labeled images")
    return d


def make_grouped_split(names: Sequence[str], groups: Dict[str, str], label_ratio: float, val_ratio: float,
                       seed: int, val_among: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
    """:func:`make_split` of the groups (``groups[name]``, e.g. the source
    image of a tile), each part then holding every name of its groups: no
    group is split between training and validation. A group may validate
    when all its names are in ``val_among`` (None: every group)."""
    members: Dict[str, List[str]] = {}
    for n in sorted(set(names), key=_natural_key):
        members.setdefault(groups[n], []).append(n)
    among = None if val_among is None else \
        [g for g, ns in members.items() if set(ns) <= set(val_among)]
    gsplit = make_split(list(members), label_ratio, val_ratio, seed, among)
    return {k: sorted((n for g in v for n in members[g]), key=_natural_key) for k, v in gsplit.items()}


def _split_for(cfg: DataConfig, names: Sequence[str], run_dir,
               val_among: Optional[Sequence[str]] = None,
               groups: Optional[Dict[str, str]] = None) -> Dict[str, List[str]]:
    path = Path(run_dir) / SPLIT_FILE if run_dir is not None else None
    if path is not None and path.exists():
        d = load_split(path)
        known = set(names)
        missing = [s for k in ("labeled", "unlabeled", "val") for s in d[k] if s not in known]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(f"split file {path} names images that are not in the training data "
                            f"({cfg.kind} {cfg.root or ''}): {', '.join(missing[:5])}{more}")
        diff = [f"{k}: {d.get(k)!r} in the file, {getattr(cfg, k)!r} now"
                for k in ("kind", "seed", "label_ratio", "val_ratio")
                if k in d and d.get(k) != getattr(cfg, k)]
        if cfg.kind == "synthetic-glas" and d.get("synthetic_domain", "a") != cfg.synthetic_domain:
            diff.append(f"synthetic_domain: {d.get('synthetic_domain', 'a')!r} in the file, "
                        f"{cfg.synthetic_domain!r} now")
        if diff:
            warnings.warn(f"re-using the split in {path}, made with other settings ({'; '.join(diff)})",
                          stacklevel=3)
        return d
    split = make_split(names, cfg.label_ratio, cfg.val_ratio, cfg.seed, val_among) if groups is None else \
        make_grouped_split(names, groups, cfg.label_ratio, cfg.val_ratio, cfg.seed, val_among)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {
            "format": _SPLIT_FORMAT,
            "kind": cfg.kind,
            "root": str(cfg.root) if cfg.root is not None else None,
            "seed": cfg.seed,
            "label_ratio": cfg.label_ratio,
            "val_ratio": cfg.val_ratio,
            **({"synthetic_domain": cfg.synthetic_domain}
               if cfg.kind == "synthetic-glas" and cfg.synthetic_domain != "a" else {}),
            "n_train_images": len(names),
            "counts": {k: len(v) for k, v in split.items()},
            **split,
        })
    return split


def _split_args(cfg: DataConfig, listing: _Listing):
    """(config the split is made and recorded with, val_among): image-label
    datasets label every non-validation image and validate on masked ones."""
    if listing.labels is None:
        return cfg, None
    return replace(cfg, label_ratio=1.0 - cfg.val_ratio), listing.val_among


# ----------------------------------------------------------------------------
# Public builders
# ----------------------------------------------------------------------------
def build_datasets(cfg: DataConfig, run_dir: Optional[str] = None):
    """Labeled, unlabeled and validation data of the training pool.

    Args:
        cfg: :class:`DataConfig`.
        run_dir: if given, the split is written to ``run_dir/split.json``; an
            existing file there is re-used instead (resume sees the same split;
            a warning is issued if it was made with other settings).

    Returns:
        ``(labeled, unlabeled, val)``: two :class:`GlandDataset` s of the
        training images resampled to the training scale (one in-memory
        cache; augmented when ``cfg.augment``; unlabeled items have no mask)
        and an :class:`ImageSet` of the validation images at their native
        resolution. The two training datasets carry the :class:`InputSpec`
        ``spec`` (normalisation and training scale) that checkpoints record.

        Image-label datasets (:data:`WEAK_KINDS`): every non-validation image
        is labeled, the unlabeled set is empty, training items carry
        ``label`` and no mask (the pool holds none); validation images are
        chosen among those with a mask (none: no validation, with a warning).
    """
    listing = _train_listing(cfg)
    weak = listing.labels is not None
    scfg, among = _split_args(cfg, listing)
    split = _split_for(scfg, listing.names, run_dir, among, listing.groups)
    if weak and cfg.val_ratio > 0 and not split["val"]:
        warnings.warn(f"no validation images: none of the {cfg.kind} training images in {cfg.root} has a mask "
                      "(masks/ beside images/), so best.pt will be the last model", stacklevel=2)
    src, assumed = source_mpp(cfg.kind, cfg.source_mpp)
    if assumed:
        warnings.warn(f"data.source_mpp is not set for the {cfg.kind} dataset {cfg.root}: assuming "
                      f"{src} µm/px (a 20x scan); set it to record the model's true scale", stacklevel=2)
    mpp = training_mpp(src, listing.shapes() if (cfg.size and cfg.mpp is None) else [], cfg.size, cfg.mpp)
    index = {n: i for i, n in enumerate(listing.names)}
    train_names = sorted(split["labeled"] + split["unlabeled"], key=_natural_key)
    loader = listing.loader(src / mpp, with_mask=False) if weak else listing.loader(src / mpp)
    pool = _Pool(train_names, [index[n] for n in train_names], loader, eager=True, threads=cfg.threads)
    mean, std = default_mean_std(cfg, pool)
    spec = InputSpec(mean, std, mpp, src, assumed)
    val_pool = _Pool(split["val"], [index[n] for n in split["val"]], listing.loader(1.0), eager=True,
                     threads=cfg.threads)
    aug = Augment(cfg.crop_scale, cfg.crop_p) if cfg.augment else None
    at = {n: i for i, n in enumerate(train_names)}
    labels = listing.labels() if weak else None  # after the pools: synthetic-weak labels are known by then

    def view(key, with_mask):
        return GlandDataset(pool, [at[n] for n in split[key]], mean, std, with_mask=with_mask and not weak,
                            augment=aug, spec=spec, labels=[labels[n] for n in split[key]] if weak else None)

    return view("labeled", True), view("unlabeled", False), ImageSet(val_pool, src)


def build_split_set(cfg: DataConfig, run_dir: Optional[str] = None, part: str = "val") -> ImageSet:
    """One part (``"labeled"``, ``"unlabeled"``, ``"val"``) of a run's split
    (``run_dir/split.json``, else the split recomputed from ``cfg``) as an
    :class:`ImageSet` at native resolution, with masks, decoded lazily. For
    evaluation: the unlabeled images' masks are never used in training.

    Image-label datasets: the same split as :func:`build_datasets`, with the
    hidden masks (to score pseudo-masks). Kind ``"weak"``: a negative image
    without a mask file has an all-zero mask; a positive one has none
    (``pool.get(i)`` gives ``(image, None)``, indexing raises DataError).
    """
    if part not in ("labeled", "unlabeled", "val"):
        raise DataError(f"split part must be labeled, unlabeled or val, got {part!r}")
    listing = _train_listing(cfg)
    scfg, among = _split_args(cfg, listing)
    split = _split_for(scfg, listing.names, run_dir, among, listing.groups)
    names = split[part]
    index = {n: i for i, n in enumerate(listing.names)}
    pool = _Pool(names, [index[n] for n in names], listing.loader(1.0), eager=False)
    return ImageSet(pool, source_mpp(cfg.kind, cfg.source_mpp)[0])


def image_labels(cfg: DataConfig, split: str = "train") -> Dict[str, int]:
    """``{image name: 0 | 1}`` of an image-label dataset (:data:`WEAK_KINDS`):
    its whole training pool (``"train"``) or a test split; see
    :func:`semimoe.data.weak.image_labels`."""
    from .weak import image_labels as _image_labels

    return _image_labels(cfg, split)


def build_test_dataset(cfg: DataConfig, split: str = "test") -> ImageSet:
    """Test images at their native size (decoded lazily, once each), with masks.

    Args:
        cfg: :class:`DataConfig`.
        split: ``"test"``; for GlaS also ``"testA"`` / ``"testB"`` (``"test"``
            = A + B). Any sub-folder name for ``kind="folder"``.

    Returns:
        :class:`ImageSet` at the dataset's pixel size. Synthetic test images
        are ``synthetic_test_size`` (default ``synthetic_side``) square, drawn
        at the generator's scale, from seeds that never overlap the training
        pool; synthetic-glas test images are 775x522, named with their grade.
        Image-label kinds: the test images with their masks (a negative
        image without a mask file: all zero), see :mod:`semimoe.data.weak`.
    """
    mpp = source_mpp(cfg.kind, cfg.source_mpp)[0]
    if cfg.kind in SYNTHETIC_KINDS and split not in ("test", "testA", "testB"):
        raise DataError(f"{cfg.kind} data has one test split 'test', got {split!r}")
    if cfg.kind in WEAK_KINDS:
        from .weak import weak_test_set

        return weak_test_set(cfg, split, mpp)
    if cfg.kind == "synthetic-glas":
        n, dom = int(cfg.synthetic_test), cfg.synthetic_domain
        pool = _Pool(_glas_synthetic_names("glas_synthetic_test", GLAS_TEST_TAG, n, dom), range(n),
                     _GlasSyntheticLoader(GLAS_TEST_TAG, 1.0, cfg.synthetic_cache, dom), eager=False)
        return ImageSet(pool, mpp)
    if cfg.kind == "synthetic":
        n = int(cfg.synthetic_test)
        side = int(cfg.synthetic_test_size or cfg.synthetic_side)
        pool = _Pool([f"synthetic_test_{i:05d}" for i in range(n)], range(n), _SyntheticLoader(TEST_TAG, side),
                     eager=False)
        return ImageSet(pool, mpp)
    if cfg.kind == "glas" and split not in ("test", "testA", "testB"):
        raise DataError(f"GlaS test split must be test, testA or testB, got {split!r}")
    if cfg.kind != "glas" and split in ("testA", "testB"):
        raise DataError(f"split {split!r} exists only for GlaS")
    items = list_items(cfg.kind, cfg.root, split)
    pool = _Pool([it.name for it in items], range(len(items)), _ItemLoader(items), eager=False)
    return ImageSet(pool, mpp)
