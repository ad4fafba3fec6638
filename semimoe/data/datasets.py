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
  training images from seeds ``[TRAIN_TAG, i]``, test images from
  ``[TEST_TAG, i]``: fixed pools independent of ``DataConfig.seed`` (like a real
  dataset) that never share a sample.

Training data (:func:`build_datasets`) is decoded once, resized to
``size x size`` (image bilinear with antialiasing, mask nearest -- the
reference's ``Resize(256)``) and cached in memory as uint8 / int32 arrays;
the labeled, unlabeled and validation datasets are index views of that one
cache. Test data (:func:`build_test_dataset`) keeps the native size and is
decoded lazily, once per image; it carries ``input_size = size`` for the real
layouts so that evaluation feeds the model the scale it was trained at
(:func:`semimoe.evaluate.evaluate`).

Split (:func:`make_split`): the training pool's names are sorted, permuted by
``numpy.random.default_rng([seed, 0x5EED])``; the first ``round(val_ratio*N)``
form the validation set, the next ``round(label_ratio*N)`` the labeled set
(counted on all N training images, as the reference's 35 labeled of CRAG's
173 = 20 %), the rest the unlabeled set. With a fixed seed, the validation
set does not depend on ``label_ratio`` and labeled sets are nested (10 % is a
subset of 20 %). Validation images are used by neither loss (their masks are
for model selection only); test data never enters a split.

Items are dicts (docs/CONTRACTS.md): ``image`` float32 (3, H, W) normalised
with the dataset mean/std, ``mask`` int64 (H, W) instance labels (labeled,
validation and test items only), ``name`` str.

Bad data raises :class:`DataError` naming the file or folder: unreadable
image or mask, mask/image size mismatch, missing mask, missing or empty folder.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .augment import Augment
from .synthetic import make_sample
from .synthetic import mean_std as synthetic_mean_std

__all__ = [
    "DataConfig",
    "DataError",
    "GlandDataset",
    "build_datasets",
    "build_test_dataset",
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
]

GLAS_MEAN = (0.7878, 0.5120, 0.7849)
GLAS_STD = (0.4282, 0.5078, 0.4264)
CRAG_MEAN = (0.8307, 0.7224, 0.8573)
CRAG_STD = (0.1200, 0.1523, 0.0914)

SPLIT_FILE = "split.json"
_SPLIT_FORMAT = "semimoe-split-v1"
KINDS = ("synthetic", "glas", "crag", "folder")
IMAGE_EXTS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
# Seed tags of the synthetic pools (first word of the seed sequence).
TRAIN_TAG = 0x5EED7A1
TEST_TAG = 0x7E57


class DataError(ValueError):
    """Bad or missing data; the message names the file or folder."""


@dataclass
class DataConfig:
    """Where the data comes from and how it is split, resized and augmented.

    kind: ``"synthetic"`` | ``"glas"`` | ``"crag"`` | ``"folder"``.
    root: dataset folder (unused for synthetic).
    label_ratio: fraction of the training images that are labeled.
    val_ratio: fraction of the training images held out for validation.
    seed: split seed (also the seed of nothing else here).
    size: training side; images are resized to ``size x size`` once.
    synthetic_train / synthetic_test: number of synthetic images.
    synthetic_test_size: side of synthetic test images (None: ``size``).
    mean, std: normalisation (None: the dataset's constants -- GlaS/CRAG from
        method.md, synthetic from ``mean_std()``, folder measured on the
        training pool).
    augment: augment labeled/unlabeled training items.
    crop_scale, crop_p: random crop side (reference 224/256) and probability.
    threads: decode threads (0: up to 8, bounded by the CPU count).
    """

    kind: str = "synthetic"
    root: Optional[str] = None
    label_ratio: float = 0.1
    val_ratio: float = 0.15
    seed: int = 0
    size: int = 256
    synthetic_train: int = 200
    synthetic_test: int = 40
    synthetic_test_size: Optional[int] = None
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None
    augment: bool = True
    crop_scale: float = 224 / 256
    crop_p: float = 0.5
    threads: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"DataConfig.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("label_ratio", "val_ratio"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"DataConfig.{name} must be in [0, 1], got {v}")
        if self.label_ratio + self.val_ratio > 1.0 + 1e-9:
            raise ValueError(f"label_ratio + val_ratio must be <= 1, got "
                             f"{self.label_ratio} + {self.val_ratio}")
        if int(self.size) < 1:
            raise ValueError(f"DataConfig.size must be positive, got {self.size}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(float(a) for a in v)
                if len(v) != 3:
                    raise ValueError(f"DataConfig.{name} needs 3 values, got {v}")
                setattr(self, name, v)
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"DataConfig.std must be positive, got {self.std}")


# ----------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------
def read_image(path) -> np.ndarray:
    """Read an RGB image as uint8 (H, W, 3); grey, palette, alpha and 16-bit
    images are converted. Raises :class:`DataError` naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im).astype(np.float64)
                a = np.clip(a / 257.0, 0, 255).round().astype(np.uint8)
                return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
            if im.mode != "RGB":
                im = im.convert("RGB")
            a = np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy)
    except FileNotFoundError as e:
        raise DataError(f"image {path} does not exist") from e
    except Exception as e:  # PIL raises several types for corrupt files
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    return np.ascontiguousarray(a)


def read_mask(path) -> np.ndarray:
    """Read an instance label map as int32 (H, W), 0 = background.

    Grey (8/16/32-bit) and palette images give their values (palette
    indices); RGB masks with equal channels give that channel, other RGB
    masks give one label per distinct non-black colour. Raises
    :class:`DataError` naming the file.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGBA", "LA", "PA"):
                im = im.convert("RGB" if mode == "RGBA" else "L" if mode == "LA" else "P")
                mode = im.mode
            a = np.asarray(im)
    except FileNotFoundError as e:
        raise DataError(f"mask {path} does not exist") from e
    except Exception as e:
        raise DataError(f"cannot read mask {path}: {type(e).__name__}: {e}") from e
    if a.ndim == 3:
        a = a[..., :3]
        if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
            a = a[..., 0]
        else:
            code = (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]
            _, inv = np.unique(code, return_inverse=True)
            inv = inv.reshape(code.shape)
            # black is background; other colours numbered 1.. in colour order
            a = inv + (0 if (code == 0).any() else 1)
    if a.ndim != 2:
        raise DataError(f"mask {path} has shape {a.shape}, expected a 2-D label image")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise DataError(f"mask {path} holds non-integer values")
    if a.size and a.min() < 0:
        raise DataError(f"mask {path} holds negative labels")
    return np.ascontiguousarray(a.astype(np.int32))


def _resize_pair(img: np.ndarray, mask: Optional[np.ndarray], size: Optional[int]):
    if size is None:
        return img, mask
    s = (int(size), int(size))
    if img.shape[:2] != s:
        img = np.array(Image.fromarray(img).resize(s[::-1], Image.BILINEAR))
    if mask is not None and mask.shape != s:
        mask = np.asarray(Image.fromarray(mask.astype(np.int32), mode="I").resize(s[::-1], Image.NEAREST))
        mask = mask.astype(np.int32)
    return img, mask


@dataclass(frozen=True)
class _Item:
    name: str
    image: Path
    mask: Optional[Path]


def _load_item(item: _Item, size: Optional[int], with_mask: bool = True):
    img = read_image(item.image)
    mask = None
    if with_mask and item.mask is not None:
        mask = read_mask(item.mask)
        if mask.shape != img.shape[:2]:
            raise DataError(
                f"mask {item.mask} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{item.image} is {img.shape[1]}x{img.shape[0]}")
    return _resize_pair(img, mask, size)


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
        raise DataError(f"DataConfig.root is required for kind={kind!r}")
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

    ``eager``: everything is decoded at construction (errors surface at once);
    otherwise each item is decoded on first access and kept.
    """

    def __init__(self, names: List[str], loader: Callable[[int], tuple], eager: bool, threads: int = 0):
        self.names = list(names)
        self._loader = loader
        self._cache: Dict[int, tuple] = {}
        if eager and self.names:
            n = _n_threads(threads)
            if n > 1 and len(self.names) > 1:
                with ThreadPoolExecutor(n) as ex:
                    loaded = list(ex.map(loader, range(len(self.names))))
            else:
                loaded = [loader(i) for i in range(len(self.names))]
            self._cache = dict(enumerate(loaded))

    def __len__(self) -> int:
        return len(self.names)

    def get(self, i: int):
        got = self._cache.get(i)
        if got is None:
            # two threads may both decode an item once; dict assignment is atomic
            got = self._loader(i)
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


class _SyntheticLoader:
    # a class, not a closure: datasets must pickle for DataLoader workers (spawn)
    def __init__(self, tag: int, size: int):
        self.tag, self.size = int(tag), int(size)

    def __call__(self, i: int):
        img, lab = make_sample([self.tag, i], (self.size, self.size))
        return img, lab.astype(np.int32)


class _ItemLoader:
    def __init__(self, items: List[_Item], size: Optional[int]):
        self.items, self.size = items, size

    def __call__(self, i: int):
        return _load_item(self.items[i], self.size)


_SYNTHETIC_POOLS: Dict[tuple, _Pool] = {}
_MEASURED_STATS: Dict[tuple, tuple] = {}


def _train_pool(cfg: DataConfig) -> _Pool:
    if cfg.kind == "synthetic":
        n = int(cfg.synthetic_train)
        if n < 1:
            raise DataError("DataConfig.synthetic_train must be >= 1")
        key = (TRAIN_TAG, int(cfg.size), n)
        pool = _SYNTHETIC_POOLS.get(key)
        if pool is None:
            pool = _Pool([f"synthetic_{i:05d}" for i in range(n)], _SyntheticLoader(TRAIN_TAG, int(cfg.size)),
                         eager=True, threads=cfg.threads)
            # keep the last pool: building datasets again in one process
            # (training, then evaluating on val) does not regenerate it
            _SYNTHETIC_POOLS.clear()
            _SYNTHETIC_POOLS[key] = pool
        return pool
    items = list_items(cfg.kind, cfg.root, "train")
    names = [it.name for it in items]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise DataError(f"duplicate image names in {cfg.root}: {', '.join(sorted(dup))}")
    return _Pool(names, _ItemLoader(items, cfg.size), eager=True, threads=cfg.threads)


def default_mean_std(cfg: DataConfig, pool: Optional[_Pool] = None):
    """(mean, std) used for ``cfg``: explicit values, else the dataset's constants
    (folder datasets: measured on the training pool)."""
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    if cfg.kind == "glas":
        m, s = GLAS_MEAN, GLAS_STD
    elif cfg.kind == "crag":
        m, s = CRAG_MEAN, CRAG_STD
    elif cfg.kind == "synthetic":
        m, s = synthetic_mean_std()
    else:
        # measured once per (root, size) and process: building the test set
        # after the training sets does not decode the training images again
        key = (str(Path(str(cfg.root)).expanduser().resolve()), int(cfg.size))
        if key not in _MEASURED_STATS:
            _MEASURED_STATS[key] = (pool if pool is not None else _train_pool(cfg)).mean_std()
        m, s = _MEASURED_STATS[key]
    return tuple(cfg.mean or m), tuple(cfg.std or s)


# ----------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------
class GlandDataset(Dataset):
    """A view of a decoded pool: items ``{"image", "mask"?, "name"}``.

    Attributes: ``names`` (list of str), ``mean``/``std`` (normalisation),
    ``input_size`` (side the model should see when evaluating, None = as is),
    ``with_mask``, ``augment``.

    Item: ``image`` float32 (3, H, W) = (pixel/255 - mean)/std, ``mask``
    int64 (H, W) instance labels (only when ``with_mask``), ``name``.
    """

    def __init__(self, pool: _Pool, indices: Sequence[int], mean, std, with_mask: bool = True,
                 augment: Optional[Callable] = None, input_size: Optional[int] = None):
        self.pool = pool
        self.indices = [int(i) for i in indices]
        self.names = [pool.names[i] for i in self.indices]
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._m = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._inv_s = 1.0 / torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        self.with_mask = bool(with_mask)
        self.augment = augment
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (f"GlandDataset({len(self)} images, mask={self.with_mask}, augment={self.augment!r}, "
                f"input_size={self.input_size})")

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
        return out


# ----------------------------------------------------------------------------
# Split
# ----------------------------------------------------------------------------
def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def make_split(names: Sequence[str], label_ratio: float, val_ratio: float, seed: int) -> Dict[str, List[str]]:
    """Deterministic labeled / unlabeled / val split of ``names`` (see the module doc).

    Returns ``{"labeled": [...], "unlabeled": [...], "val": [...]}`` (each in
    name order). At least one labeled image; at least one validation image
    when ``val_ratio > 0`` and there are two or more images.
    """
    names = sorted(set(names), key=_natural_key)
    n = len(names)
    if n == 0:
        raise DataError("cannot split an empty training set")
    n_val = _round(val_ratio * n)
    if val_ratio > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1)
    n_lab = max(1, min(_round(label_ratio * n), n - n_val))
    perm = np.random.default_rng([int(seed), 0x5EED]).permutation(n)
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


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _split_for(cfg: DataConfig, pool: _Pool, run_dir) -> Dict[str, List[str]]:
    path = Path(run_dir) / SPLIT_FILE if run_dir is not None else None
    if path is not None and path.exists():
        d = load_split(path)
        known = set(pool.names)
        missing = [s for k in ("labeled", "unlabeled", "val") for s in d[k] if s not in known]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(f"split file {path} names images that are not in the training data "
                            f"({cfg.kind} {cfg.root or ''}): {', '.join(missing[:5])}{more}")
        diff = [f"{k}: {d.get(k)!r} in the file, {getattr(cfg, k)!r} now"
                for k in ("kind", "seed", "label_ratio", "val_ratio")
                if k in d and d.get(k) != getattr(cfg, k)]
        if diff:
            warnings.warn(f"re-using the split in {path}, made with other settings ({'; '.join(diff)})",
                          stacklevel=3)
        return d
    split = make_split(pool.names, cfg.label_ratio, cfg.val_ratio, cfg.seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, {
            "format": _SPLIT_FORMAT,
            "kind": cfg.kind,
            "root": str(cfg.root) if cfg.root is not None else None,
            "seed": cfg.seed,
            "label_ratio": cfg.label_ratio,
            "val_ratio": cfg.val_ratio,
            "size": cfg.size,
            "n_train_images": len(pool),
            "counts": {k: len(v) for k, v in split.items()},
            **split,
        })
    return split


# ----------------------------------------------------------------------------
# Public builders
# ----------------------------------------------------------------------------
def build_datasets(cfg: DataConfig, run_dir: Optional[str] = None):
    """Labeled, unlabeled and validation datasets of the training data.

    Args:
        cfg: :class:`DataConfig`.
        run_dir: if given, the split is written to ``run_dir/split.json``; an
            existing file there is re-used instead (resume sees the same split;
            a warning is issued if it was made with other settings).

    Returns:
        ``(labeled, unlabeled, val)`` :class:`GlandDataset` s of ``size x size``
        images sharing one in-memory cache. ``labeled`` and ``unlabeled`` are
        augmented when ``cfg.augment``; ``unlabeled`` items have no mask;
        ``val`` is never augmented. Each has ``mean``/``std`` attributes (the
        normalisation to store in checkpoints).
    """
    pool = _train_pool(cfg)
    mean, std = default_mean_std(cfg, pool)
    split = _split_for(cfg, pool, run_dir)
    index = {n: i for i, n in enumerate(pool.names)}
    aug = Augment(cfg.crop_scale, cfg.crop_p) if cfg.augment else None

    def view(key, with_mask, augment):
        return GlandDataset(pool, [index[n] for n in split[key]], mean, std, with_mask=with_mask,
                            augment=augment)

    return view("labeled", True, aug), view("unlabeled", False, aug), view("val", True, None)


def build_test_dataset(cfg: DataConfig, split: str = "test") -> GlandDataset:
    """Test images at their native size (decoded lazily, once each), with masks.

    Args:
        cfg: :class:`DataConfig`.
        split: ``"test"``; for GlaS also ``"testA"`` / ``"testB"`` (``"test"``
            = A + B). Any sub-folder name for ``kind="folder"``.

    Returns:
        :class:`GlandDataset` without augmentation. For the real layouts its
        ``input_size`` is ``cfg.size`` (the model was trained on images resized
        to that side; evaluation resizes the input and upsamples the
        prediction back). Synthetic test images are ``synthetic_test_size``
        (default ``size``) square, drawn at the training scale, from seeds that
        never overlap the training pool.
    """
    if cfg.kind == "synthetic":
        if split not in ("test", "testA", "testB"):
            raise ValueError(f"synthetic data has one test split 'test', got {split!r}")
        n = int(cfg.synthetic_test)
        if n < 1:
            raise DataError("DataConfig.synthetic_test must be >= 1")
        side = int(cfg.synthetic_test_size or cfg.size)
        pool = _Pool([f"synthetic_test_{i:05d}" for i in range(n)], _SyntheticLoader(TEST_TAG, side),
                     eager=False)
        mean, std = default_mean_std(cfg)
        return GlandDataset(pool, range(n), mean, std, with_mask=True, input_size=None)
    if cfg.kind == "glas" and split not in ("test", "testA", "testB"):
        raise ValueError(f"GlaS test split must be test, testA or testB, got {split!r}")
    if cfg.kind != "glas" and split in ("testA", "testB"):
        raise ValueError(f"split {split!r} exists only for GlaS")
    items = list_items(cfg.kind, cfg.root, split)
    pool = _Pool([it.name for it in items], _ItemLoader(items, None), eager=False)
    mean, std = default_mean_std(cfg)
    return GlandDataset(pool, range(len(items)), mean, std, with_mask=True, input_size=int(cfg.size))


def config_from_dict(d: dict) -> DataConfig:
    """:class:`DataConfig` from a dict (unknown keys ignored), e.g. from a checkpoint."""
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{k: v for k, v in d.items() if k in fields})
