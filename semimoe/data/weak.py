"""Image-level-label ("weak") datasets: tumour present (1) or absent (0) per image.

For weakly supervised methods (IKD-MIL, docs/METHOD.md §7): training sees
one label per image; masks, where there are any, only score the model.
Two ``DataConfig.kind`` s (:mod:`semimoe.data.datasets`):

* ``"weak"`` -- a folder::

      root/labels.csv          header "image,label", one row per image
      root/images/<file>       the images
      root/masks/<mask>        optional tumour instance masks
      root/test/labels.csv, root/test/images/, root/test/masks/

  The ``image`` column holds the exact file name inside ``images/``,
  extension included (``a.png``, not ``a``); ``label`` is ``0`` or ``1``.
  :func:`read_labels_csv` checks the table against the folder. A mask is
  named like its image (same file name, or same stem with an image
  extension, as for the ``"folder"`` kind). Item names are the file stems.
  A negative image without a mask file has an all-zero mask; a negative
  image whose mask marks tumour pixels is an error. Training masks are
  optional; in the test split every positive image needs one. Any other
  sub-folder of ``root`` with the same layout is a test split of that name.
* ``"synthetic-weak"`` -- tiles of the GlaS-like images
  (:func:`semimoe.data.glas_synthetic.make_glas_sample`, 775x522 at
  0.62 µm/px): a centred grid of :data:`WEAK_TILE` x :data:`WEAK_TILE` tiles,
  3 columns x 2 rows (:func:`tile_grid`), named ``weak_00012_r0c1`` (training
  image 12 of seeds ``[GLAS_TRAIN_TAG, i]``, i < ``data.synthetic_train``,
  row 0, column 1) and ``weak_test_00003_r1c2`` (seeds ``[GLAS_TEST_TAG, i]``,
  i < ``data.synthetic_test``): the pools of ``"synthetic-glas"``, cut. A
  tile is positive iff its image is malignant and gland pixels cover at
  least :data:`WEAK_MIN_FRACTION` (2 %) of it; tiles of benign images and
  (nearly) gland-free tiles are negative. The hidden mask is the instance
  mask of the malignant glands in the tile (each 4-connected piece of a
  gland that the tile cuts is one instance, numbered 1..n in row-major order
  of first appearance), all zero for negative tiles: benign glands are not
  tumour. ``data.synthetic_cache`` keeps the drawn images. Normalisation:
  the synthetic-glas constants.

Training (:func:`~semimoe.data.datasets.build_datasets`): every
non-validation image is labeled (``data.label_ratio`` is taken as
``1 - val_ratio`` and recorded so in ``split.json``), the unlabeled set is
empty, validation images are chosen among images with a mask file (every
synthetic-weak tile). Training items carry ``label`` (0-dim int64), never
the masks; :class:`~semimoe.training.streams.BatchSource` batches them as
``(images, labels)``, labels int64 (B,). Validation, ``build_split_set`` and
``build_test_dataset`` give :class:`~semimoe.data.datasets.Sample` s with the
masks (a ``"weak"`` training positive without a mask file has none: its
``ImageSet.pool.get(i)`` is ``(image, None)``). :func:`image_labels` gives
``{name: 0 | 1}`` (also ``semimoe.data.datasets.image_labels``).

The synthetic-weak split is over tiles: tiles of one image may fall in both
the training and the validation set (and such an image is drawn twice by
``build_datasets``, once per pool, unless ``data.synthetic_cache`` is set).

Measured facts (``python -m semimoe.data.weak --stats 40``: training seeds
``[GLAS_TRAIN_TAG, i]``, i < 40, 19 malignant images, 240 tiles): 114 tiles
(47.5 %) are positive -- every tile of a malignant image: their gland
fraction is 2.7 % at the least, 12 % at the 5th percentile, 53 % the
median, so the 2 % rule rarely bites and the tile label is in practice the
image's grade. Drawing one image (6 tiles) takes 0.33-0.87 s of one CPU core
on a shared 2-core machine (0.52 s mean over the 40); reading it back from
``data.synthetic_cache`` and cutting it about 12 ms.

Command line: ``python -m semimoe.data.weak --write DIR --n-train N --n-test
M [--cache DIR]`` writes the synthetic-weak set in the ``"weak"`` layout
(PNG images, a PNG mask for every tile, ``labels.csv``, ``test/``): read with
``kind="weak"`` it gives the same images, labels, masks and split as
``kind="synthetic-weak"`` with ``synthetic_train=N, synthetic_test=M``.
"""
from __future__ import annotations

import argparse
import csv
import io
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

from ..utils import atomic_write, atomic_write_text
from .datasets import (
    GLAS_TEST_TAG,
    GLAS_TRAIN_TAG,
    WEAK_KINDS,
    DataConfig,
    ImageSet,
    _child_dir,
    _find_mask,
    _glas_draw,
    _images_in,
    _Item,
    _Listing,
    _load_item,
    _n_threads,
    _natural_key,
    _Pool,
)
from .glas_synthetic import GLAS_SYNTHETIC_MPP, GLAS_SYNTHETIC_SIZE, glas_grade
from .io import DataError, image_size
from .scale import resample_image, resample_mask, source_mpp

__all__ = [
    "WEAK_TILE",
    "WEAK_MIN_FRACTION",
    "WEAK_KINDS",
    "LABELS_FILE",
    "Tile",
    "tile_grid",
    "cut_tiles",
    "read_labels_csv",
    "image_labels",
    "weak_listing",
    "weak_test_set",
    "write_synthetic_weak",
    "main",
]

#: Side of a synthetic-weak tile in pixels (at 0.62 µm/px: 159 µm).
WEAK_TILE = 256
#: A tile of a malignant image is positive when gland pixels cover at least this fraction of it.
WEAK_MIN_FRACTION = 0.02
LABELS_FILE = "labels.csv"
_FOUR = ndimage.generate_binary_structure(2, 1)
_RECENT = 8  # drawn images (as tiles) a tile loader keeps: the pools ask for an image's tiles together


# ----------------------------------------------------------------------------
# Tiles of the GlaS-like images
# ----------------------------------------------------------------------------
def tile_grid(shape: Tuple[int, int] = GLAS_SYNTHETIC_SIZE, tile: int = WEAK_TILE) -> List[Tuple[int, int, int, int]]:
    """``(row, col, y0, x0)`` of the ``tile`` x ``tile`` tiles of an image of
    ``shape`` (H, W): as many as fit, the grid centred (the margin split
    evenly, the odd pixel at the end), in row-major order. GlaS's 522x775:
    2 rows x 3 columns at y0 5, 261 and x0 3, 259, 515."""
    H, W = int(shape[0]), int(shape[1])
    rows, cols = H // tile, W // tile
    y0, x0 = (H - rows * tile) // 2, (W - cols * tile) // 2
    return [(r, c, y0 + r * tile, x0 + c * tile) for r in range(rows) for c in range(cols)]


_GRID = tile_grid()
TILES_PER_IMAGE = len(_GRID)


class Tile(NamedTuple):
    """One synthetic-weak tile: ``suffix`` (``"r0c1"``), ``image`` uint8
    (T, T, 3), ``mask`` int32 (T, T) tumour instances (all zero when
    negative), ``label`` 0/1, ``fraction`` of gland pixels in the tile."""

    suffix: str
    image: np.ndarray
    mask: np.ndarray
    label: int
    fraction: float


def _instances(lab: np.ndarray) -> np.ndarray:
    """Every 4-connected piece of every label as its own instance, numbered
    1..n in row-major order of first appearance (a gland the tile cuts in
    two is two objects in the tile; the numbering survives a PNG round trip
    through :func:`~semimoe.data.io.read_mask`)."""
    out = np.zeros(lab.shape, np.int32)
    n = 0
    for k, sl in enumerate(ndimage.find_objects(lab), 1):
        if sl is None:
            continue
        m = lab[sl] == k
        cc, ncc = ndimage.label(m, structure=_FOUR)
        out[sl][m] = cc[m] + n
        n += ncc
    if n == 0:
        return out
    vals, first = np.unique(out.ravel(), return_index=True)
    order = vals[1:][np.argsort(first[1:], kind="stable")]
    remap = np.zeros(n + 1, np.int32)
    remap[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return remap[out]


def cut_tiles(image: np.ndarray, labels: np.ndarray, grade: str) -> List[Tile]:
    """The tiles of one GlaS-like image (``make_glas_sample``'s image uint8
    (H, W, 3), gland labels int32 (H, W) and grade), in :func:`tile_grid`
    order, each with its image label and hidden tumour mask (own copies)."""
    if grade not in ("benign", "malignant"):
        raise ValueError(f"grade must be benign or malignant, got {grade!r}")
    tiles = []
    for r, c, y, x in tile_grid(labels.shape):
        lab = labels[y:y + WEAK_TILE, x:x + WEAK_TILE]
        frac = float(np.count_nonzero(lab)) / lab.size
        pos = grade == "malignant" and frac >= WEAK_MIN_FRACTION
        mask = _instances(lab) if pos else np.zeros(lab.shape, np.int32)
        tiles.append(Tile(f"r{r}c{c}", image[y:y + WEAK_TILE, x:x + WEAK_TILE].copy(), mask, int(pos), frac))
    return tiles


# labels of the drawn images' tiles, (tag, i) -> (label, ...): a few bytes an image, for the life of the process
_LABELS: Dict[Tuple[int, int], Tuple[int, ...]] = {}


def _draw_tiles(tag: int, i: int, cache: Optional[str]) -> List[Tile]:
    img, lab = _glas_draw(tag, i, cache)
    tiles = cut_tiles(img, lab, glas_grade([tag, i]))
    _LABELS[(tag, i)] = tuple(t.label for t in tiles)
    return tiles


def _tile_labels(tag: int, n: int, cache: Optional[str], threads: int = 0) -> List[int]:
    """Labels of the tiles of images 0..n-1 (drawing those not seen yet)."""
    todo = [i for i in range(n) if (tag, i) not in _LABELS]
    if todo:
        k = _n_threads(threads)
        if k > 1 and len(todo) > 1:
            with ThreadPoolExecutor(k) as ex:
                for _ in ex.map(lambda i: _draw_tiles(tag, i, cache), todo):
                    pass
        else:
            for i in todo:
                _draw_tiles(tag, i, cache)
    return [v for i in range(n) for v in _LABELS[(tag, i)]]


def _tile_names(prefix: str, n: int) -> List[str]:
    return [f"{prefix}_{i:05d}_r{r}c{c}" for i in range(n) for r, c, _, _ in _GRID]


class _TileLoader:
    """Key ``j`` -> tile ``j % TILES_PER_IMAGE`` of image ``j // TILES_PER_IMAGE``
    as (image, hidden mask | None), resampled by ``factor``. Keeps the tiles
    of the last few images drawn, and draws each image once when several
    threads ask for its tiles at the same time."""

    # a class, not a closure: datasets must pickle for DataLoader workers (spawn)
    def __init__(self, tag: int, factor: float = 1.0, cache: Optional[str] = None, with_mask: bool = True):
        self.tag, self.factor, self.cache, self.with_mask = int(tag), float(factor), cache, bool(with_mask)
        self._fresh()

    def _fresh(self):
        self._lock = threading.Lock()
        self._drawing: Dict[int, threading.Lock] = {}
        self._recent: "OrderedDict[int, List[Tile]]" = OrderedDict()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_drawing", "_recent")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fresh()

    def _tiles(self, i: int) -> List[Tile]:
        with self._lock:
            got = self._recent.get(i)
            if got is not None:
                self._recent.move_to_end(i)
                return got
            lock = self._drawing.setdefault(i, threading.Lock())
        with lock:
            with self._lock:
                got = self._recent.get(i)
            if got is None:
                got = _draw_tiles(self.tag, i, self.cache)
                with self._lock:
                    self._recent[i] = got
                    while len(self._recent) > _RECENT:
                        self._recent.popitem(last=False)
                    self._drawing.pop(i, None)
        return got

    def __call__(self, j: int):
        i, t = divmod(int(j), TILES_PER_IMAGE)
        tile = self._tiles(i)[t]
        mask = resample_mask(tile.mask, self.factor) if self.with_mask else None
        return resample_image(tile.image, self.factor), mask


# ----------------------------------------------------------------------------
# The "weak" folder
# ----------------------------------------------------------------------------
def _some(xs: Sequence[str], k: int = 5) -> str:
    more = f" and {len(xs) - k} more" if len(xs) > k else ""
    return ", ".join(xs[:k]) + more


def read_labels_csv(path, image_dir) -> Dict[str, int]:
    """``{file name: 0 | 1}`` of a labels file: :func:`read_labels_table`
    without the groups."""
    return read_labels_table(path, image_dir)[0]


def read_labels_table(path, image_dir) -> Tuple[Dict[str, int], Optional[Dict[str, str]]]:
    """Read an image-label table and check it against its image folder.

    Args:
        path: the CSV file: a header naming the columns ``image`` and
            ``label`` (any order, other columns ignored, case and spaces
            around names ignored), then one row per image: the exact file
            name inside ``image_dir`` and ``0`` (tumour absent) or ``1``
            (present). Empty rows are ignored. An optional ``group`` column
            names the source of each image (slide, patient, or the image a
            tile was cut from): images of one group always land in the same
            part of the training / validation split (an empty cell: the
            image is its own group).
        image_dir: the folder of the images.

    Returns:
        ``({file name: 0 | 1}`` in natural order of the file names, ``{file
        name: group}`` or None without a ``group`` column).

    Raises :class:`DataError` naming the file (and the line where there is
    one) for: a missing file or image folder, a missing header, a row without
    an image name, a file name with a folder in it, a label other than 0/1,
    an image listed twice, listed images missing from ``image_dir``, images
    in ``image_dir`` without a row, no negative or no positive image.
    """
    path, image_dir = Path(path), Path(image_dir)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist (expected a CSV with the header 'image,label' "
                        f"and one row per image in {image_dir})")
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} of labels file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read labels file {path}: {type(e).__name__}: {e}") from e
    reader = csv.reader(io.StringIO(text))
    cols = None
    labels: Dict[str, int] = {}
    groups: Dict[str, str] = {}
    gcol = None
    line: Dict[str, int] = {}
    try:
        for row in reader:
            ln = reader.line_num
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            where = f"labels file {path}, line {ln}"
            if cols is None:
                low = [c.lower() for c in cells]
                if "image" not in low or "label" not in low:
                    raise DataError(f"{where}: the header must name the columns 'image' and 'label', got "
                                    f"{','.join(cells)!r}")
                cols = (low.index("image"), low.index("label"))
                gcol = low.index("group") if "group" in low else None
                continue
            name = cells[cols[0]] if cols[0] < len(cells) else ""
            value = cells[cols[1]] if cols[1] < len(cells) else ""
            if not name:
                raise DataError(f"{where}: no image name")
            if "/" in name or "\\" in name:
                raise DataError(f"{where}: image {name!r} must be a file name inside {image_dir}, without folders")
            if value not in ("0", "1"):
                raise DataError(f"{where}: label {value!r} of image {name!r} is not 0 or 1 "
                                "(0 = tumour absent, 1 = tumour present)")
            if name in labels:
                raise DataError(f"labels file {path}: image {name!r} is listed twice (lines {line[name]} and {ln})")
            labels[name] = int(value)
            if gcol is not None:
                groups[name] = (cells[gcol] if gcol < len(cells) else "") or name
            line[name] = ln
    except csv.Error as e:
        raise DataError(f"labels file {path}, line {reader.line_num}: {e}") from e
    if cols is None:
        raise DataError(f"labels file {path} is empty: expected the header 'image,label' and one row per image")
    missing = [n for n in labels if not (image_dir / n).is_file()]
    if missing:
        raise DataError(f"labels file {path} lists images that are not in {image_dir}: "
                        + _some([f"{n!r} (line {line[n]})" for n in missing]))
    unlisted = [p.name for p in _images_in(image_dir) if p.name not in labels]
    if unlisted:
        raise DataError(f"labels file {path} has no row for {len(unlisted)} image(s) in {image_dir}: "
                        f"{_some(unlisted)}; add a row '<file name>,0' or '<file name>,1' for each")
    if not labels:
        raise DataError(f"labels file {path} lists no images")
    for v, what in ((0, "negative (label 0, tumour absent)"), (1, "positive (label 1, tumour present)")):
        if v not in labels.values():
            raise DataError(f"labels file {path}: no {what} image among its {len(labels)}: image-level "
                            "training and its evaluation need both")
    return dict(sorted(labels.items(), key=lambda kv: _natural_key(kv[0]))), (groups if gcol is not None else None)


def _weak_table(root, split: str, masks_required: bool) -> Tuple[List[_Item], List[int], Optional[Dict[str, str]]]:
    """Items (name = file stem, image, mask | None), labels and groups
    (``{name: group}``, None without a ``group`` column) of one split of a
    ``"weak"`` folder: ``"train"`` is ``root`` itself, any other split
    ``root/<split>``."""
    if root is None:
        raise DataError("the weak dataset needs its folder: set data.root (--root)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"weak dataset folder {root} does not exist")
    base = root if split == "train" else _child_dir(root, [split])
    if base is None:
        raise DataError(f"weak dataset folder {root} has no '{split}' sub-folder "
                        f"(expected {root / split / LABELS_FILE} and {root / split / 'images'})")
    img_dir = _child_dir(base, ["images", "image"])
    if img_dir is None:
        raise DataError(f"image folder {base / 'images'} does not exist")
    files, groups = read_labels_table(base / LABELS_FILE, img_dir)
    mask_dir = _child_dir(base, ["masks", "mask"])
    items, labels, seen = [], [], {}
    for f, v in files.items():
        p = img_dir / f
        if p.stem in seen:
            raise DataError(f"images {seen[p.stem]} and {p} have the same name {p.stem!r} (file name without "
                            f"extension) in {base / LABELS_FILE}; rename one")
        seen[p.stem] = p
        items.append(_Item(p.stem, p, _find_mask(mask_dir, p) if mask_dir is not None else None))
        labels.append(v)
    if masks_required:
        bare = [str(it.image.name) for it, v in zip(items, labels) if v == 1 and it.mask is None]
        if bare:
            where = mask_dir if mask_dir is not None else base / "masks"
            raise DataError(f"{len(bare)} positive image(s) of the '{split}' split in {base} have no mask in "
                            f"{where}: {_some(bare)} (test positives need masks; negatives without one are "
                            "all background)")
    return items, labels, (None if groups is None else {Path(f).stem: g for f, g in groups.items()})


class _WeakItemLoader:
    """Index -> (image, mask | None) of a "weak" folder: a negative image
    without a mask file gets an all-zero mask, a positive one None."""

    def __init__(self, items: List[_Item], labels: List[int], factor: float = 1.0, with_mask: bool = True):
        self.items, self.labels, self.factor, self.with_mask = items, labels, float(factor), bool(with_mask)

    def __call__(self, i: int):
        it = self.items[i]
        img, mask = _load_item(it, self.with_mask)
        if self.with_mask and self.labels[i] == 0:
            if mask is None:
                mask = np.zeros(img.shape[:2], np.int32)
            elif mask.any():
                raise DataError(f"mask {it.mask} marks {int(np.count_nonzero(mask))} tumour pixels but its image "
                                f"{it.image.name} is negative (label 0) in its {LABELS_FILE}")
        img = resample_image(img, self.factor)
        return img, (None if mask is None else resample_mask(mask, self.factor))


# ----------------------------------------------------------------------------
# Entry points used by semimoe.data.datasets
# ----------------------------------------------------------------------------
def _check_kind(cfg: DataConfig):
    if cfg.kind not in WEAK_KINDS:
        raise DataError(f"image labels exist for data.kind {' or '.join(WEAK_KINDS)} only, got {cfg.kind!r}")
    if cfg.kind == "synthetic-weak" and cfg.synthetic_domain != "a":
        raise DataError(f"data.kind=synthetic-weak cuts domain 'a' of the GlaS-like generator only, got "
                        f"data.synthetic_domain={cfg.synthetic_domain!r}")


def weak_listing(cfg: DataConfig) -> _Listing:
    """The training pool of a weak kind, with ``labels`` and ``val_among``
    (see ``semimoe.data.datasets._Listing``)."""
    _check_kind(cfg)
    if cfg.kind == "synthetic-weak":
        n = int(cfg.synthetic_train)
        names = _tile_names("weak", n)

        def labels() -> Dict[str, int]:
            return dict(zip(names, _tile_labels(GLAS_TRAIN_TAG, n, cfg.synthetic_cache, cfg.threads)))

        # the tiles of one image stay together in the split (no image in both training and validation)
        return _Listing(names, lambda f, with_mask=True: _TileLoader(GLAS_TRAIN_TAG, f, cfg.synthetic_cache, with_mask),
                        lambda: [(WEAK_TILE, WEAK_TILE)] * len(names), labels, None,
                        {t: t.rsplit("_r", 1)[0] for t in names})
    items, labs, groups = _weak_table(cfg.root, "train", masks_required=False)
    names = [it.name for it in items]
    table = dict(zip(names, labs))
    return _Listing(names, lambda f, with_mask=True: _WeakItemLoader(items, labs, f, with_mask),
                    lambda: [image_size(it.image) for it in items], lambda: dict(table),
                    [it.name for it in items if it.mask is not None], groups)


def weak_test_set(cfg: DataConfig, split: str = "test", mpp: Optional[float] = None) -> ImageSet:
    """Test images of a weak kind at native resolution, with masks (decoded
    lazily). ``"weak"``: ``root/<split>/``; ``"synthetic-weak"``: the tiles of
    ``data.synthetic_test`` images. ``mpp``: pixel size (None: the kind's)."""
    _check_kind(cfg)
    mpp = source_mpp(cfg.kind, cfg.source_mpp)[0] if mpp is None else float(mpp)
    if cfg.kind == "synthetic-weak":
        if split != "test":
            raise DataError(f"synthetic-weak data has one test split 'test', got {split!r}")
        names = _tile_names("weak_test", int(cfg.synthetic_test))
        pool = _Pool(names, range(len(names)), _TileLoader(GLAS_TEST_TAG, 1.0, cfg.synthetic_cache), eager=False)
        return ImageSet(pool, mpp)
    items, labs, _ = _weak_table(cfg.root, split, masks_required=True)
    pool = _Pool([it.name for it in items], range(len(items)), _WeakItemLoader(items, labs), eager=False)
    return ImageSet(pool, mpp)


def image_labels(cfg: DataConfig, split: str = "train") -> Dict[str, int]:
    """``{image name: 0 | 1}`` of a weak kind's training pool (``"train"``:
    every training image, whatever the split) or test split (``"test"``, or
    another sub-folder of a ``"weak"`` root). Names as the datasets' items.
    synthetic-weak labels need the images: those not drawn yet in this
    process are drawn (or read from ``data.synthetic_cache``)."""
    _check_kind(cfg)
    if split == "train":
        return weak_listing(cfg).labels()
    if cfg.kind == "synthetic-weak":
        if split != "test":
            raise DataError(f"synthetic-weak data has one test split 'test', got {split!r}")
        n = int(cfg.synthetic_test)
        return dict(zip(_tile_names("weak_test", n), _tile_labels(GLAS_TEST_TAG, n, cfg.synthetic_cache,
                                                                  cfg.threads)))
    items, labs, _ = _weak_table(cfg.root, split, masks_required=False)
    return {it.name: v for it, v in zip(items, labs)}


# ----------------------------------------------------------------------------
# Writing the synthetic-weak set as a "weak" folder; statistics
# ----------------------------------------------------------------------------
def save_png(path: Path, a: np.ndarray):
    """Write ``a`` (uint8 RGB / uint8 or uint16 grey) as a PNG, atomically."""
    atomic_write(path, lambda f: Image.fromarray(a).save(f, format="PNG"))


def mask_png(mask: np.ndarray) -> np.ndarray:
    """Instance labels as PNG pixels: 8-bit up to 255 instances, else 16-bit."""
    return mask.astype(np.uint8) if int(mask.max(initial=0)) <= 255 else mask.astype(np.uint16)


def write_synthetic_weak(out_dir, n_train: int, n_test: int, cache: Optional[str] = None) -> Path:
    """Write the synthetic-weak tiles of ``n_train`` training and ``n_test``
    test images as a ``"weak"`` folder in ``out_dir``: ``images/<name>.png``,
    ``masks/<name>.png`` (every tile; 8-bit, 16-bit beyond 255 instances),
    ``labels.csv``, and the same under ``test/``. Returns ``out_dir``."""
    out = Path(out_dir)
    for sub, tag, n, prefix in (("", GLAS_TRAIN_TAG, n_train, "weak"), ("test", GLAS_TEST_TAG, n_test, "weak_test")):
        base = out / sub if sub else out
        (base / "images").mkdir(parents=True, exist_ok=True)
        (base / "masks").mkdir(parents=True, exist_ok=True)
        rows = ["image,label,group"]
        for i in range(int(n)):
            for t in _draw_tiles(tag, i, cache):
                name = f"{prefix}_{i:05d}_{t.suffix}.png"
                save_png(base / "images" / name, t.image)
                save_png(base / "masks" / name, mask_png(t.mask))
                rows.append(f"{name},{t.label},{name.rsplit('_r', 1)[0]}")
        atomic_write_text(base / LABELS_FILE, "\n".join(rows) + "\n")
    return out


def measure(n: int = 40, cache: Optional[str] = None) -> dict:
    """Label statistics and draw time over the training images 0..n-1."""
    fracs, labels, grades, secs = [], [], [], []
    for i in range(n):
        t0 = time.process_time()
        tiles = _draw_tiles(GLAS_TRAIN_TAG, i, cache)
        secs.append(time.process_time() - t0)
        g = glas_grade([GLAS_TRAIN_TAG, i])
        for t in tiles:
            fracs.append(t.fraction)
            labels.append(t.label)
            grades.append(g)
    fracs, labels = np.array(fracs), np.array(labels)
    mal = np.array(grades) == "malignant"
    return {"images": n, "malignant_images": int(mal.sum()) // TILES_PER_IMAGE, "tiles": int(labels.size),
            "positive": int(labels.sum()), "positive_fraction": float(labels.mean()),
            "malignant_tiles_below_threshold": int((mal & (labels == 0)).sum()),
            "malignant_tiles": int(mal.sum()),
            "median_gland_fraction_positive": float(np.median(fracs[labels == 1])) if labels.any() else 0.0,
            "cpu_s_per_image_mean": float(np.mean(secs)), "cpu_s_per_image_min": float(np.min(secs)),
            "cpu_s_per_image_max": float(np.max(secs))}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m semimoe.data.weak",
                                description="Synthetic image-level-label (weak) data: write it as a 'weak' "
                                            "folder, or measure its labels.")
    p.add_argument("--write", metavar="DIR", help="write the synthetic-weak set in the 'weak' folder layout")
    p.add_argument("--n-train", type=int, default=200, help="training images (6 tiles each; default 200)")
    p.add_argument("--n-test", type=int, default=40, help="test images (6 tiles each; default 40)")
    p.add_argument("--cache", metavar="DIR", default=None, help="synthetic image cache (data.synthetic_cache)")
    p.add_argument("--stats", type=int, metavar="N", default=None,
                   help="label statistics and draw time over the first N training images")
    a = p.parse_args(argv)
    if a.write is None and a.stats is None:
        p.error("nothing to do: give --write DIR and/or --stats N")
    if a.stats is not None:
        for k, v in measure(a.stats, a.cache).items():
            print(f"{k:34s} {v:.4g}" if isinstance(v, float) else f"{k:34s} {v}")
    if a.write is not None:
        if a.n_train < 1 or a.n_test < 1:
            p.error("--n-train and --n-test must be >= 1")
        t0 = time.perf_counter()
        out = write_synthetic_weak(a.write, a.n_train, a.n_test, a.cache)
        print(f"wrote {a.n_train * TILES_PER_IMAGE} training and {a.n_test * TILES_PER_IMAGE} test tiles to {out} "
              f"in {time.perf_counter() - t0:.1f} s; read them with data.kind=weak data.root={out} "
              f"data.source_mpp={GLAS_SYNTHETIC_MPP:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
