"""Datasets: GlaS / CRAG / folder readers, bad data, split, augmentation, synthetic pools."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from semimoe.data.augment import Augment, nearest_indices, resize_mask
from semimoe.data.scale import CRAG_MPP, GLAS_MPP, NOMINAL_MPP, SYNTHETIC_MPP
from semimoe.data.datasets import (
    CRAG_MEAN,
    GLAS_MEAN,
    GLAS_STD,
    DataConfig,
    DataError,
    build_datasets,
    build_test_dataset,
    load_split,
    make_split,
    read_mask,
)
from semimoe.data.synthetic import mean_std

# ----------------------------------------------------------------------------
# fake trees
# ----------------------------------------------------------------------------
def _blobs(h, w, seed, n=3):
    """Instance labels: n axis-aligned rectangles (touching allowed)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        lab[y:y + rng.integers(3, h // 2), x:x + rng.integers(3, w // 2)] = k
    return lab


def _image(h, w, seed):
    return np.random.default_rng(seed + 1000).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_mask(path, lab, mode="L"):
    if mode == "I;16":
        Image.fromarray(lab.astype(np.uint16)).save(path)
    else:
        Image.fromarray(lab.astype(np.uint8), mode="L").save(path)


def make_glas(root, n_train=6, n_a=2, n_b=2, h=30, w=40):
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for j, (prefix, n) in enumerate((("train", n_train), ("testA", n_a), ("testB", n_b))):
        for i in range(1, n + 1):
            s = 100 * j + i
            img, lab = _image(h, w, s), _blobs(h, w, s)
            Image.fromarray(img).save(root / f"{prefix}_{i}.bmp")
            _save_mask(root / f"{prefix}_{i}_anno.bmp", lab)
            truth[f"{prefix}_{i}"] = (img, lab)
    (root / "Grade.csv").write_text("name,grade\n")
    return truth


def make_crag(root, n_train=5, n_test=2, h=36, w=28):
    truth = {}
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split / "Images").mkdir(parents=True)
        (root / split / "Annotation").mkdir(parents=True)
        for i in range(1, n + 1):
            img, lab = _image(h, w, 50 + i), _blobs(h, w, 50 + i)
            lab[lab > 0] += 300  # 16-bit labels
            Image.fromarray(img).save(root / split / "Images" / f"{split}_{i}.png")
            _save_mask(root / split / "Annotation" / f"{split}_{i}.png", lab, "I;16")
            truth[f"{split}_{i}"] = (img, lab)
    return truth


def make_folder(root, n_train=5, n_test=2, h=20, w=24, flat=False):
    truth = {}
    for split, n in (("train", n_train), ("test", n_test)):
        base = root if (flat and split == "train") else root / split
        (base / "image").mkdir(parents=True)
        (base / "mask").mkdir(parents=True)
        for i in range(n):
            img, lab = _image(h, w, 80 + i), _blobs(h, w, 80 + i)
            Image.fromarray(img).save(base / "image" / f"tile{i}.png")
            _save_mask(base / "mask" / f"tile{i}.png", lab)
            truth[f"tile{i}"] = (img, lab)
    return truth


def _cfg(kind, root, **kw):
    kw.setdefault("augment", False)
    if kind == "folder":
        kw.setdefault("source_mpp", 0.5)
    kw.setdefault("threads", 2)
    return DataConfig(kind=kind, root=str(root), **kw)


# ----------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------
def test_glas_reader(tmp_path):
    truth = make_glas(tmp_path / "glas")
    cfg = _cfg("glas", tmp_path / "glas", label_ratio=0.5, val_ratio=0.2, size=15)
    lab, unl, val = build_datasets(cfg, None)
    assert len(lab) + len(unl) + len(val) == 6
    item = lab[0]
    assert set(item) == {"image", "mask", "name"}
    # 30x40 images, median shorter side 30 -> 15: one factor 0.5, aspect kept
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 15, 20)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (15, 20)
    assert set(unl[0]) == {"image", "name"}
    assert lab.mean == GLAS_MEAN and lab.std == GLAS_STD
    assert lab.spec.source_mpp == GLAS_MPP and lab.spec.mpp == pytest.approx(2 * GLAS_MPP)
    # resampled training masks keep instance labels (nearest)
    _, gt = truth[item["name"]]
    assert set(np.unique(item["mask"].numpy())) <= set(np.unique(gt))
    # validation and test images: native size, exact pixels and masks
    assert val.mpp == GLAS_MPP and val[0].image.shape == (30, 40, 3)
    assert np.array_equal(val[0].image, truth[val[0].name][0])
    for split, names in (("testA", ["testA_1", "testA_2"]), ("testB", ["testB_1", "testB_2"]),
                         ("test", ["testA_1", "testA_2", "testB_1", "testB_2"])):
        te = build_test_dataset(cfg, split)
        assert te.names == names and te.mpp == GLAS_MPP
    it = te[0]
    img, gt = truth[it.name]
    assert np.array_equal(it.image, img) and np.array_equal(it.mask, gt)


def test_training_scale_is_one_factor_per_dataset(tmp_path):
    # images of two sizes: one factor (from the median shorter side) for all
    root = tmp_path / "f"
    for split, n in (("train", 6), ("test", 1)):
        (root / split / "image").mkdir(parents=True)
        (root / split / "mask").mkdir(parents=True)
        for i in range(n):
            h, w = (40, 60) if i % 3 else (20, 30)
            Image.fromarray(_image(h, w, i)).save(root / split / "image" / f"t{i}.png")
            _save_mask(root / split / "mask" / f"t{i}.png", _blobs(h, w, i))
    cfg = _cfg("folder", root, label_ratio=1.0, val_ratio=0.0, size=20, source_mpp=0.25)
    lab, _, _ = build_datasets(cfg, None)
    assert sorted(set(lab.shapes())) == [(10, 15), (20, 30)]  # median shorter side 40 -> 20: factor 0.5
    assert lab.spec.mpp == pytest.approx(0.5) and lab.spec.source_mpp == 0.25
    assert not lab.spec.source_mpp_assumed
    # data.mpp wins over data.size
    lab, _, _ = build_datasets(_cfg("folder", root, label_ratio=1.0, val_ratio=0.0, size=20, mpp=1.0,
                                    source_mpp=0.25), None)
    assert sorted(set(lab.shapes())) == [(5, 8), (10, 15)] and lab.spec.mpp == 1.0
    # native resolution without size or mpp; an undeclared folder pixel size is assumed, and said
    with pytest.warns(UserWarning, match="data.source_mpp is not set"):
        lab, _, _ = build_datasets(_cfg("folder", root, label_ratio=1.0, val_ratio=0.0, source_mpp=None), None)
    assert sorted(set(lab.shapes())) == [(20, 30), (40, 60)]
    assert lab.spec.mpp == lab.spec.source_mpp == NOMINAL_MPP and lab.spec.source_mpp_assumed


def test_glas_subfolder_root(tmp_path):
    make_glas(tmp_path / "Warwick QU Dataset (Released 2016_07_08)")
    te = build_test_dataset(_cfg("glas", tmp_path), "testB")
    assert len(te) == 2


def test_crag_reader_16bit(tmp_path):
    truth = make_crag(tmp_path / "crag")
    cfg = _cfg("crag", tmp_path / "crag", label_ratio=0.4, val_ratio=0.2)
    lab, unl, val = build_datasets(cfg, None)
    assert (len(lab), len(val), len(unl)) == (2, 1, 2)
    assert lab.mean == CRAG_MEAN and lab.spec.mpp == CRAG_MPP  # native resolution
    te = build_test_dataset(cfg)
    assert te.names == ["test_1", "test_2"] and te.mpp == CRAG_MPP
    it = te[1]
    assert it.image.shape == (36, 28, 3)
    assert np.array_equal(it.mask, truth["test_2"][1])
    assert it.mask.max() > 300


@pytest.mark.parametrize("flat", [False, True])
def test_folder_reader(tmp_path, flat):
    truth = make_folder(tmp_path / "f", flat=flat)
    cfg = _cfg("folder", tmp_path / "f", label_ratio=0.4, val_ratio=0.2)
    lab, unl, val = build_datasets(cfg, None)
    assert len(lab) + len(unl) + len(val) == 5
    # folder datasets measure their mean/std on the training images
    imgs = np.stack([truth[f"tile{i}"][0] for i in range(5)])
    assert np.allclose(lab.mean, imgs.reshape(-1, 3).mean(0) / 255, atol=0.02)
    te = build_test_dataset(cfg)
    assert te.names == ["tile0", "tile1"]
    assert np.array_equal(te[0].mask, truth["tile0"][1])


def test_mask_formats(tmp_path):
    lab = _blobs(16, 16, 3)
    # palette mask
    im = Image.fromarray(lab.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    im.save(tmp_path / "p.png")
    assert np.array_equal(read_mask(tmp_path / "p.png"), lab)
    # grey RGB
    Image.fromarray(np.repeat(lab[..., None].astype(np.uint8), 3, 2)).save(tmp_path / "g.png")
    assert np.array_equal(read_mask(tmp_path / "g.png"), lab)
    # colour-coded RGB: one label per colour, black = background
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[lab == 1] = (200, 10, 10)
    rgb[lab == 2] = (10, 200, 10)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    got = read_mask(tmp_path / "c.png")
    assert np.array_equal(got > 0, (lab == 1) | (lab == 2))
    assert len(np.unique(got[lab == 1])) == 1 and len(np.unique(got[lab == 2])) == 1
    assert got[lab == 1][0] != got[lab == 2][0]


# ----------------------------------------------------------------------------
# bad data: each error names the file or folder
# ----------------------------------------------------------------------------
def _train_paths(kind, root):
    """(an image path, its mask path, the image folder) of a training item."""
    if kind == "glas":
        return root / "train_2.bmp", root / "train_2_anno.bmp", root
    if kind == "crag":
        d = root / "train"
        return d / "Images" / "train_2.png", d / "Annotation" / "train_2.png", d / "Images"
    d = root / "train"
    return d / "image" / "tile1.png", d / "mask" / "tile1.png", d / "image"


MAKERS = {"glas": make_glas, "crag": make_crag, "folder": make_folder}


@pytest.mark.parametrize("kind", ["glas", "crag", "folder"])
@pytest.mark.parametrize("case", ["unreadable_image", "unreadable_mask", "size_mismatch", "missing_mask",
                                  "empty"])
def test_bad_data(tmp_path, kind, case):
    root = tmp_path / kind
    MAKERS[kind](root)
    img_p, mask_p, img_dir = _train_paths(kind, root)
    if case == "unreadable_image":
        img_p.write_bytes(b"not an image at all")
        culprit = img_p
    elif case == "unreadable_mask":
        mask_p.write_bytes(b"\x89PNG garbage")
        culprit = mask_p
    elif case == "size_mismatch":
        _save_mask(mask_p, np.zeros((7, 9), np.int32))
        culprit = mask_p
    elif case == "missing_mask":
        mask_p.unlink()
        culprit = img_p
    else:
        for p in list(img_dir.iterdir()):
            if p.is_file():
                p.unlink()
        culprit = img_dir
    with pytest.raises(DataError) as ei:
        build_datasets(_cfg(kind, root), None)
    assert str(culprit) in str(ei.value)


def test_missing_root_and_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(_cfg("glas", tmp_path / "nope"), None)
    make_crag(tmp_path / "crag", n_test=0)
    with pytest.raises(DataError, match="test"):
        build_test_dataset(_cfg("crag", tmp_path / "crag"))
    with pytest.raises(DataError, match=r"set data.root \(--root\)"):
        build_datasets(DataConfig(kind="folder"), None)  # names the key and the option
    with pytest.raises(ValueError):
        DataConfig(kind="kaggle")
    with pytest.raises(ValueError):
        DataConfig(label_ratio=0.9, val_ratio=0.2)


def test_test_images_size_mismatch_named_on_access(tmp_path):
    make_glas(tmp_path)
    _save_mask(tmp_path / "testA_2_anno.bmp", np.zeros((5, 5), np.int32))
    te = build_test_dataset(_cfg("glas", tmp_path), "testA")
    te[0]
    with pytest.raises(DataError, match="testA_2_anno.bmp"):
        te[1]


# ----------------------------------------------------------------------------
# split
# ----------------------------------------------------------------------------
NAMES = [f"img_{i}" for i in range(173)]


def test_split_counts_disjoint_deterministic():
    s = make_split(NAMES, 0.2, 0.15, seed=3)
    assert len(s["labeled"]) == 35  # the reference's CRAG count (20 % of 173)
    assert len(s["val"]) == 26
    assert len(s["unlabeled"]) == 173 - 35 - 26
    a, b, c = (set(s[k]) for k in ("labeled", "unlabeled", "val"))
    assert not (a & b or a & c or b & c) and (a | b | c) == set(NAMES)
    assert make_split(list(reversed(NAMES)), 0.2, 0.15, seed=3) == s  # order independent
    assert make_split(NAMES, 0.2, 0.15, seed=4) != s
    # same seed: validation set independent of the label ratio, labeled sets nested
    s10 = make_split(NAMES, 0.1, 0.15, seed=3)
    assert s10["val"] == s["val"] and set(s10["labeled"]) < set(s["labeled"])
    # tiny sets still have a labeled and a validation image
    t = make_split(["a", "b", "c"], 0.01, 0.01, seed=0)
    assert len(t["labeled"]) == 1 and len(t["val"]) == 1
    full = make_split(NAMES, 1.0, 0.0, seed=0)
    assert len(full["labeled"]) == 173 and not full["unlabeled"] and not full["val"]


def test_split_file_round_trip(tmp_path):
    make_folder(tmp_path / "f", n_train=10)
    run = tmp_path / "run"
    cfg = _cfg("folder", tmp_path / "f", label_ratio=0.3, val_ratio=0.2, seed=7)
    lab, unl, val = build_datasets(cfg, str(run))
    d = json.loads((run / "split.json").read_text())
    assert d["seed"] == 7 and d["label_ratio"] == 0.3 and d["kind"] == "folder"
    assert d["labeled"] == lab.names and d["unlabeled"] == unl.names and d["val"] == val.names
    assert d["counts"] == {"labeled": 3, "unlabeled": 5, "val": 2}
    assert load_split(run / "split.json")["val"] == val.names
    # resume with other settings: the file wins (with a warning)
    cfg2 = _cfg("folder", tmp_path / "f", label_ratio=0.5, val_ratio=0.2, seed=8)
    with pytest.warns(UserWarning, match="re-using the split"):
        lab2, unl2, val2 = build_datasets(cfg2, str(run))
    assert (lab2.names, unl2.names, val2.names) == (lab.names, unl.names, val.names)
    # same settings: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_datasets(cfg, str(run))
    # a split naming unknown images, or a broken file, is an error naming the file
    d["labeled"].append("ghost")
    (run / "split.json").write_text(json.dumps(d))
    with pytest.raises(DataError, match="ghost"):
        build_datasets(cfg, str(run))
    (run / "split.json").write_text("{")
    with pytest.raises(DataError, match="split.json"):
        build_datasets(cfg, str(run))


# ----------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------
def _coord_pair(H, W):
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    image = torch.stack([ys, xs, torch.zeros_like(ys)])
    mask = (ys * W + xs).long() + 1
    return image, mask


@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_augment_keeps_image_and_mask_aligned(shape):
    H, W = shape
    image, mask = _coord_pair(H, W)
    g = torch.Generator().manual_seed(0)
    aug = Augment(crop_p=0.5, generator=g)
    seen = set()
    for _ in range(120):
        im, m = aug(image.clone(), mask.clone())
        assert im.shape == image.shape and m.shape == mask.shape and m.dtype == torch.int64
        my = ((m - 1) // W).float()
        mx = ((m - 1) % W).float()
        # the mask pixel is the source pixel nearest to where the image pixel samples
        assert (im[0] - my).abs().max() <= 0.5 + 1e-4
        assert (im[1] - mx).abs().max() <= 0.5 + 1e-4
        # which D4 element / crop was drawn, from the corner pixels
        c = tuple(int(v) for v in (m[0, 0], m[0, -1], m[-1, 0]))
        crop = bool(len(torch.unique(m)) < H * W)
        seen.add((c if not crop else None, crop))
    n_d4 = len({k for k, crop in seen if not crop})
    assert n_d4 == (8 if H == W else 4)
    assert any(crop for _, crop in seen)


def test_augment_identity_and_dataset_integration():
    aug = Augment(crop_p=0.0, dihedral=False)
    image, mask = _coord_pair(16, 16)
    im, m = aug(image, mask)
    assert torch.equal(im, image) and torch.equal(m, mask)
    # unlabeled items: image only
    im2, none = Augment(generator=torch.Generator().manual_seed(1))(image)
    assert none is None and im2.shape == image.shape
    assert torch.equal(nearest_indices(4, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert torch.equal(resize_mask(mask, (16, 16)), mask)


def test_augmented_dataset_reproducible(tmp_path):
    make_folder(tmp_path / "f", n_train=6, h=32, w=32)
    cfg = _cfg("folder", tmp_path / "f", label_ratio=0.5, val_ratio=0.0, augment=True)
    lab, unl, val = build_datasets(cfg, None)
    assert len(val) == 0
    torch.manual_seed(0)
    a = [lab[i] for i in range(len(lab))]
    torch.manual_seed(0)
    b = [lab[i] for i in range(len(lab))]
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
               for x, y in zip(a, b))
    # validation images are never augmented: the stored pixels
    cfg2 = _cfg("folder", tmp_path / "f", label_ratio=0.5, val_ratio=0.3, augment=True)
    _, _, val2 = build_datasets(cfg2, None)
    assert np.array_equal(val2[0].image, np.asarray(Image.open(tmp_path / "f" / "train" / "image"
                                                               / f"{val2[0].name}.png")))


# ----------------------------------------------------------------------------
# synthetic
# ----------------------------------------------------------------------------
def test_synthetic_datasets(tmp_path):
    cfg = DataConfig(synthetic_train=10, synthetic_test=3, synthetic_side=48, label_ratio=0.2, val_ratio=0.2,
                     augment=False, threads=2)
    lab, unl, val = build_datasets(cfg, str(tmp_path))
    assert (len(lab), len(val), len(unl)) == (2, 2, 6)
    assert lab.mean == tuple(mean_std()[0]) and lab.spec.mpp == SYNTHETIC_MPP
    x = lab[0]
    assert x["image"].shape == (3, 48, 48) and x["mask"].max() > 0
    # the same samples again on a second build
    lab2, _, _ = build_datasets(cfg, str(tmp_path))
    assert torch.equal(lab2[0]["image"], x["image"])
    te = build_test_dataset(cfg)
    assert len(te) == 3 and te.mpp == SYNTHETIC_MPP
    train_imgs = [lab.pool.get(i)[0] for i in range(len(lab.pool))] + [v.image for v in val]
    for t in te:
        assert not any(np.array_equal(t.image, a) for a in train_imgs)
    big = build_test_dataset(DataConfig(synthetic_test=1, synthetic_test_size=72, synthetic_side=48))
    assert big[0].image.shape == (72, 72, 3)
    # training at half the resolution: the training images shrink, validation stays native
    half, _, val_h = build_datasets(DataConfig(synthetic_train=10, synthetic_side=48, size=24, label_ratio=0.2,
                                               val_ratio=0.2, augment=False), None)
    assert half[0]["image"].shape == (3, 24, 24) and val_h[0].image.shape == (48, 48, 3)
    assert half.spec.mpp == pytest.approx(2 * SYNTHETIC_MPP)
    with pytest.raises(DataError):
        build_test_dataset(cfg, "val")


def test_dataloader_batches(tmp_path):
    cfg = DataConfig(synthetic_train=8, synthetic_side=32, label_ratio=0.5, val_ratio=0.25, threads=1)
    lab, unl, val = build_datasets(cfg, None)
    loader = torch.utils.data.DataLoader(lab, batch_size=2, shuffle=True)
    b = next(iter(loader))
    assert b["image"].shape == (2, 3, 32, 32) and b["mask"].shape == (2, 32, 32) and len(b["name"]) == 2
    from semimoe.data import make_targets
    t = make_targets(b["mask"])
    assert t.sdf.shape == (2, 32, 32)


# ----------------------------------------------------------------------------
# the one image reader
# ----------------------------------------------------------------------------
def test_read_image_converts_every_mode_the_same_way(tmp_path):
    from semimoe.data.io import read_image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)
    # 16-bit grey: round(v / 257), the same map for every image (no per-image stretch)
    v = np.array([[0, 128, 257, 32896], [65535, 1000, 40000, 65000]], np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    got = read_image(tmp_path / "g16.png")
    want = np.floor(v.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    assert got.shape == (2, 4, 3) and np.array_equal(got[..., 0], want) and np.array_equal(got[..., 2], want)
    dim = (v // 4).astype(np.uint16)  # a darker 16-bit image stays darker: no stretching to its max
    Image.fromarray(dim).save(tmp_path / "g16dim.png")
    assert read_image(tmp_path / "g16dim.png").max() < 70
    # alpha is composited over white, the colour of an empty slide
    rgba = np.dstack([rgb, np.full((9, 11), 255, np.uint8)])
    rgba[0, 0] = (10, 20, 30, 0)
    rgba[0, 1] = (10, 20, 30, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    got = read_image(tmp_path / "rgba.png")
    assert tuple(got[0, 0]) == (255, 255, 255) and np.array_equal(got[1:], rgb[1:])
    a = 128 / 255
    assert np.allclose(got[0, 1], np.array([10, 20, 30]) * a + 255 * (1 - a), atol=0.51)
    # grey and palette images become RGB
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    assert np.array_equal(read_image(tmp_path / "grey.png"), np.repeat(rgb[..., :1], 3, 2))
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (9, 11, 3)
    # float images have no known scale: refused, naming the file
    Image.fromarray(rng.random((4, 4)).astype(np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="f.tif"):
        read_image(tmp_path / "f.tif")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n trunc")
    with pytest.raises(DataError, match="bad.png"):
        read_image(tmp_path / "bad.png")


def test_training_crops_of_small_images_are_reflected():
    from semimoe.training.streams import BatchSource, Stream

    class Small:
        def __init__(self, h, w):
            self.h, self.w = h, w

        def __len__(self):
            return 3

        def __getitem__(self, i):
            ys, xs = torch.meshgrid(torch.arange(self.h), torch.arange(self.w), indexing="ij")
            return {"image": torch.stack([ys, xs, ys * 0]).float(), "mask": ys * self.w + xs, "name": str(i)}

    ds = Small(5, 12)  # shorter than the crop in H, longer in W
    src = BatchSource(ds, ds, Stream(3, 3, 0, 1, 0, 1), None, crop=8)
    (x, m), unl = src[0]
    assert unl is None and x.shape == (3, 3, 8, 8) and m.shape == (3, 8, 8)
    rows = x[0, 0, :, 0].long().tolist()
    assert rows == [0, 1, 2, 3, 4, 3, 2, 1]  # reflected about the last row, not repeated
    assert torch.equal(m[0], (x[0, 0] * 12 + x[0, 1]).long())  # image and mask cropped alike
