"""Image-level-label (weak) data: the labels.csv reader, synthetic-weak tiles
(labels and hidden masks recomputed from the generator's output), training
items and batches without masks, the split, and the "weak" folder round trip."""
import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from semimoe.data import weak
from semimoe.data.datasets import (
    GLAS_TEST_TAG,
    GLAS_TRAIN_TAG,
    KINDS,
    DataConfig,
    DataError,
    _glas_draw,
    build_datasets,
    build_split_set,
    build_test_dataset,
    image_labels,
    make_split,
)
from semimoe.data.glas_synthetic import GLAS_SYNTHETIC_MEAN, make_glas_sample
from semimoe.data.scale import source_mpp
from semimoe.data.weak import read_labels_csv
from semimoe.training.streams import BatchSource, Stream

N_TRAIN, N_TEST = 2, 2  # GlaS-like images: train 0 malignant, 1 benign; test 0 benign, 1 malignant
FOUR = ndimage.generate_binary_structure(2, 1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("glas_cache"))


def _cfg(cache, **kw):
    base = dict(kind="synthetic-weak", synthetic_train=N_TRAIN, synthetic_test=N_TEST, synthetic_cache=cache,
                val_ratio=0.25, augment=False, threads=1)
    base.update(kw)
    return DataConfig(**base)


def _expected_tiles(image, labels, grade):
    """Independent recomputation: 256-px tiles of a 522x775 image, grid centred at y 5, x 3."""
    assert labels.shape == (522, 775)
    out = []
    for r in range(2):
        for c in range(3):
            y, x = 5 + 256 * r, 3 + 256 * c
            lab = labels[y:y + 256, x:x + 256]
            frac = (lab > 0).mean()
            pos = grade == "malignant" and frac >= 0.02
            out.append((f"r{r}c{c}", image[y:y + 256, x:x + 256], lab, int(pos)))
    return out


# ----------------------------------------------------------------------------
# labels.csv
# ----------------------------------------------------------------------------
def _folder(tmp_path, names=("a.png", "b.png", "c.png")):
    d = tmp_path / "images"
    d.mkdir()
    for n in names:
        Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(d / n)
    return d


ERRORS = {
    "header": ("file,y\na.png,0\n", r"line 1: the header must name the columns 'image' and 'label'"),
    "duplicate": ("image,label\na.png,0\nb.png,1\na.png,1\nc.png,0\n", r"'a.png' is listed twice \(lines 2 and 4\)"),
    "label": ("image,label\na.png,0\nb.png,2\nc.png,1\n", r"line 3: label '2' of image 'b.png' is not 0 or 1"),
    "empty label": ("image,label\na.png,0\nb.png\nc.png,1\n", r"line 3: label '' of image 'b.png'"),
    "listed missing": ("image,label\na.png,0\nb.png,1\nc.png,1\nd.png,0\n",
                       r"lists images that are not in .*images: 'd.png' \(line 5\)"),
    "not listed": ("image,label\na.png,0\nb.png,1\n", r"has no row for 1 image\(s\) in .*images: c.png"),
    "no negative": ("image,label\na.png,1\nb.png,1\nc.png,1\n", r"no negative \(label 0, tumour absent\) image"),
    "no positive": ("image,label\na.png,0\nb.png,0\nc.png,0\n", r"no positive \(label 1, tumour present\) image"),
    "folder": ("image,label\nimages/a.png,0\nb.png,1\nc.png,1\n", r"line 2: .* without folders"),
    "no name": ("image,label\n,0\n", r"line 2: no image name"),
    "empty": ("\n\n", r"is empty"),
    "extension": ("image,label\na,0\nb,1\nc,1\n", r"lists images that are not in .*: 'a' \(line 2\)"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_read_labels_csv_errors(tmp_path, case):
    img_dir = _folder(tmp_path)
    text, pattern = ERRORS[case]
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=pattern) as e:
        read_labels_csv(path, img_dir)
    assert str(path) in str(e.value)


def test_read_labels_csv_missing_file_and_folder(tmp_path):
    img_dir = _folder(tmp_path)
    with pytest.raises(DataError, match=r"labels file .*nope.csv does not exist"):
        read_labels_csv(tmp_path / "nope.csv", img_dir)
    (tmp_path / "labels.csv").write_text("image,label\na.png,0\n")
    with pytest.raises(DataError, match=r"image folder .*missing of labels file .*labels.csv does not exist"):
        read_labels_csv(tmp_path / "labels.csv", tmp_path / "missing")


def test_read_labels_csv_accepts(tmp_path):
    img_dir = _folder(tmp_path, ("img10.png", "img2.png", "x.tif"))
    (img_dir / "notes.txt").write_text("not an image")  # not an image: needs no row
    path = tmp_path / "labels.csv"
    # BOM, other columns, column order, case and spaces, empty rows
    path.write_text("\ufeffpatient, Label ,IMAGE\n\np1,1, img10.png\n , ,\np2, 0,img2.png\np3,1,x.tif\n\n",
                    encoding="utf-8")
    got = read_labels_csv(path, img_dir)
    assert got == {"img2.png": 0, "img10.png": 1, "x.tif": 1} and list(got) == ["img2.png", "img10.png", "x.tif"]


# ----------------------------------------------------------------------------
# synthetic-weak
# ----------------------------------------------------------------------------
def test_kinds_and_scale():
    assert "weak" in KINDS and "synthetic-weak" in KINDS
    assert source_mpp("synthetic-weak") == (0.62, False) and source_mpp("weak") == (0.5, True)
    assert weak.tile_grid() == [(r, c, 5 + 256 * r, 3 + 256 * c) for r in range(2) for c in range(3)]
    with pytest.raises(DataError, match="weak"):
        image_labels(DataConfig(kind="synthetic"))


def test_synthetic_weak_labels_and_hidden_masks(cache):
    cfg = _cfg(cache)
    labels = image_labels(cfg)
    assert list(labels) == [f"weak_{i:05d}_r{r}c{c}" for i in range(N_TRAIN) for r in range(2) for c in range(3)]
    parts = {p: build_split_set(cfg, None, p) for p in ("labeled", "unlabeled", "val")}
    assert len(parts["unlabeled"]) == 0
    samples = {s.name: s for p in parts.values() for s in p}
    assert sorted(samples) == sorted(labels)
    for i in range(N_TRAIN):
        img, lab, grade = make_glas_sample([GLAS_TRAIN_TAG, i])
        for suffix, tile_img, tile_lab, label in _expected_tiles(img, lab, grade):
            name = f"weak_{i:05d}_{suffix}"
            s = samples[name]
            assert labels[name] == label
            assert np.array_equal(s.image, tile_img) and s.mask.dtype == np.int32
            if label:  # the malignant glands' pixels, each instance one 4-connected piece, numbered 1..n
                assert np.array_equal(s.mask > 0, tile_lab > 0)
                n = int(s.mask.max())
                assert set(np.unique(s.mask)) == set(range(n + 1))
                for k in range(1, n + 1):
                    assert ndimage.label(s.mask == k, structure=FOUR)[1] == 1
                # same partition as the generator's labels, pieces apart
                pairs = set(zip(s.mask[s.mask > 0].tolist(), tile_lab[s.mask > 0].tolist()))
                assert len({a for a, _ in pairs}) == len(pairs)
            else:
                assert not s.mask.any()
    assert set(labels.values()) == {0, 1}  # image 0 malignant, image 1 benign
    # test tiles: the test pool's images, labels likewise
    test = build_test_dataset(cfg)
    test_labels = image_labels(cfg, "test")
    assert test.names == list(test_labels) and test.mpp == pytest.approx(0.62)
    assert test.names[0] == "weak_test_00000_r0c0" and len(test) == 6 * N_TEST
    for i in range(N_TEST):
        img, lab = _glas_draw(GLAS_TEST_TAG, i, cache)
        grade = ("benign", "malignant")[i]
        for suffix, tile_img, tile_lab, label in _expected_tiles(img, lab, grade):
            s = test[test.names.index(f"weak_test_{i:05d}_{suffix}")]
            assert test_labels[s.name] == label and np.array_equal(s.image, tile_img)
            assert np.array_equal(s.mask > 0, (tile_lab > 0) & bool(label))


def test_training_items_batches_and_split(cache, tmp_path):
    cfg = _cfg(cache, label_ratio=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lab_ds, unl_ds, val = build_datasets(cfg, run_dir=str(tmp_path))
    labels = image_labels(cfg)
    n = 6 * N_TRAIN
    # every non-validation tile labeled; label_ratio ignored and recorded as 1 - val_ratio; the split is
    # made over source images (one of the two validates), each image's 6 tiles in one part
    assert len(unl_ds) == 0 and len(val) == 6 and len(lab_ds) == n - 6
    assert sorted(lab_ds.names + val.names) == sorted(labels)
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["label_ratio"] == pytest.approx(0.75) and split["unlabeled"] == []
    assert split["labeled"] == sorted(lab_ds.names) and split["val"] == val.names
    images = make_split([f"weak_{i:05d}" for i in range(N_TRAIN)], 0.75, 0.25, 0)
    assert {v.rsplit("_r", 1)[0] for v in split["val"]} == set(images["val"])
    # no hidden mask in the training items (nor in their pool), an int64 0-dim label instead
    assert lab_ds.has_image_labels and not lab_ds.with_mask
    assert all(lab_ds.pool.get(i)[1] is None for i in range(len(lab_ds.pool)))
    for i in range(len(lab_ds)):
        item = lab_ds[i]
        assert "mask" not in item and item["label"].dtype == torch.int64 and item["label"].shape == ()
        assert int(item["label"]) == labels[item["name"]] and item["image"].shape == (3, 256, 256)
    assert lab_ds.mean == GLAS_SYNTHETIC_MEAN and lab_ds.spec.source_mpp == pytest.approx(0.62)
    # validation: native tiles with their hidden masks
    assert val[0].mask.shape == (256, 256) and val.mpp == pytest.approx(0.62)
    # batches: (images, labels)
    src = BatchSource(lab_ds, unl_ds, Stream(len(lab_ds), 4, 0, 1, 0, 1), None, 128)
    (x, y), unl = src[0]
    assert unl is None and x.shape == (4, 3, 128, 128) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.shape == (4,)
    want = [labels[lab_ds.names[i]] for i, _ in src.lab_stream.batch_at(0)]
    assert y.tolist() == want
    # a run re-uses its split without a warning about label_ratio
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = build_datasets(_cfg(cache, label_ratio=0.5), run_dir=str(tmp_path))[0]
    assert again.names == lab_ds.names
    # mask datasets' batches are unchanged: (images, masks)
    syn = DataConfig(kind="synthetic", synthetic_train=4, synthetic_side=32, label_ratio=0.5, val_ratio=0.25,
                     augment=False, threads=1)
    lab2, unl2, _ = build_datasets(syn)
    (x2, m2), (u2, none) = BatchSource(lab2, unl2, Stream(len(lab2), 2, 0, 1, 0, 1),
                                       Stream(len(unl2), 2, 0, 2, 0, 1), 32)[0]
    assert m2.shape == (2, 32, 32) and m2.dtype == torch.int64 and none is None and "label" not in lab2[0]
    assert not lab2.has_image_labels


def test_tile_loader_pickles(cache):
    loader = weak._TileLoader(GLAS_TRAIN_TAG, 0.5, cache)
    a = loader(7)
    b = pickle.loads(pickle.dumps(loader))(7)
    assert a[0].shape == (128, 128, 3) and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_folder_round_trip(cache, tmp_path):
    """The CLI writes synthetic-weak as a "weak" folder; kind="weak" reads back
    the same images, labels, masks and split."""
    root = tmp_path / "weakset"
    assert weak.main(["--write", str(root), "--n-train", str(N_TRAIN), "--n-test", str(N_TEST),
                      "--cache", cache]) == 0
    assert (root / "labels.csv").read_text().splitlines()[:2] == ["image,label,group",
                                                                   "weak_00000_r0c0.png,1,weak_00000"]
    syn = _cfg(cache)
    fol = DataConfig(kind="weak", root=str(root), source_mpp=0.62, val_ratio=0.25, augment=False, threads=1)
    assert image_labels(fol) == image_labels(syn)
    assert image_labels(fol, "test") == image_labels(syn, "test")
    for part in ("labeled", "val"):
        a, b = build_split_set(fol, None, part), build_split_set(syn, None, part)
        assert a.names == b.names and len(a) > 0
        for sa, sb in zip(a, b):
            assert np.array_equal(sa.image, sb.image) and np.array_equal(sa.mask, sb.mask)
    ta, tb = build_test_dataset(fol), build_test_dataset(syn)
    assert ta.names == tb.names and ta.mpp == tb.mpp
    for sa, sb in zip(ta, tb):
        assert np.array_equal(sa.image, sb.image) and np.array_equal(sa.mask, sb.mask)
        assert sa.mask.dtype == sb.mask.dtype == np.int32
    la, _, va = build_datasets(fol)
    lb, _, vb = build_datasets(syn)
    assert la.names == lb.names and la.labels == lb.labels and va.names == vb.names


# ----------------------------------------------------------------------------
# the "weak" folder: masks, validation, test split
# ----------------------------------------------------------------------------
def _weak_root(parent, masks=("p1", "p2", "n1"), tumour_in=(), name="w"):
    """``parent/name``: 6 tiny images p1..p3 (positive), n1..n3 (negative); masks for ``masks``."""
    rng = np.random.default_rng(0)
    root = parent / name
    (root / "images").mkdir(parents=True)
    rows = ["image,label"]
    for name in ("p1", "p2", "p3", "n1", "n2", "n3"):
        Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        rows.append(f"{name}.png,{int(name[0] == 'p')}")
        if name in masks:
            (root / "masks").mkdir(exist_ok=True)
            m = np.zeros((8, 10), np.uint8)
            if name[0] == "p" or name in tumour_in:
                m[2:5, 3:7] = 1
            Image.fromarray(m).save(root / "masks" / f"{name}.png")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_weak_folder_validation_and_split_sets(tmp_path):
    root = _weak_root(tmp_path)
    cfg = DataConfig(kind="weak", root=str(root), source_mpp=0.5, val_ratio=0.5, augment=False, threads=1)
    lab, unl, val = build_datasets(cfg, run_dir=str(tmp_path / "run"))
    # 3 validation images, all among those with a mask file
    assert sorted(val.names) == ["n1", "p1", "p2"] and len(unl) == 0 and sorted(lab.names) == ["n2", "n3", "p3"]
    assert lab.labels == [int(n[0] == "p") for n in lab.names] and lab.spec.mpp == 0.5
    assert val[val.names.index("n1")].mask.sum() == 0 and val[val.names.index("p1")].mask.max() == 1
    # the labeled part: negatives all background, p3 without a mask
    part = build_split_set(cfg, str(tmp_path / "run"), "labeled")
    assert part.names == ["n2", "n3", "p3"] and all(not part[i].mask.any() for i in (0, 1))
    assert part.pool.get(2)[1] is None and part.pool.get(2)[0].shape == (8, 10, 3)
    with pytest.raises(DataError, match="p3 has no mask"):
        part[2]
    assert image_labels(cfg) == {"n1": 0, "n2": 0, "n3": 0, "p1": 1, "p2": 1, "p3": 1}
    # source_mpp not given: assumed 0.5, said
    with pytest.warns(UserWarning, match="source_mpp is not set"):
        build_datasets(DataConfig(kind="weak", root=str(root), val_ratio=0.5, augment=False, threads=1))


def test_weak_folder_without_masks_has_no_validation(tmp_path):
    root = _weak_root(tmp_path, masks=())
    cfg = DataConfig(kind="weak", root=str(root), source_mpp=0.5, val_ratio=0.3, augment=False, threads=1)
    with pytest.warns(UserWarning, match="no validation images: none of the weak training images"):
        lab, unl, val = build_datasets(cfg)
    assert len(val) == 0 and len(unl) == 0 and len(lab) == 6


def test_weak_folder_test_split(tmp_path):
    root = _weak_root(tmp_path)
    _weak_root(root, masks=("p1", "p2", "p3"), name="test")
    cfg = DataConfig(kind="weak", root=str(root), source_mpp=0.5)
    test = build_test_dataset(cfg)
    assert test.names == ["n1", "n2", "n3", "p1", "p2", "p3"] and test.mpp == 0.5
    assert all(not test[i].mask.any() for i in (0, 1, 2)) and all(test[i].mask.any() for i in (3, 4, 5))
    assert image_labels(cfg, "test") == {"p1": 1, "p2": 1, "p3": 1, "n1": 0, "n2": 0, "n3": 0}
    # a test positive without a mask
    (root / "test" / "masks" / "p3.png").unlink()
    with pytest.raises(DataError, match=r"positive image\(s\) of the 'test' split .* have no mask .*p3.png"):
        build_test_dataset(cfg)
    with pytest.raises(DataError, match="no 'other' sub-folder"):
        build_test_dataset(cfg, "other")


def test_negative_with_tumour_mask(tmp_path):
    root = _weak_root(tmp_path, tumour_in=("n1",))
    cfg = DataConfig(kind="weak", root=str(root), source_mpp=0.5, val_ratio=0.5, augment=False, threads=1)
    with pytest.raises(DataError, match=r"mask .*n1.png marks 12 tumour pixels but its image n1.png is negative"):
        build_datasets(cfg)


def test_make_split_val_among():
    names = [f"im{i}" for i in range(20)]
    for lr, vr, seed in ((0.2, 0.15, 3), (0.85, 0.15, 0), (0.5, 0.5, 1)):
        assert make_split(names, lr, vr, seed, val_among=names) == make_split(names, lr, vr, seed)
    among = names[:4]
    s = make_split(names, 0.5, 0.5, 2, val_among=among)
    assert s["val"] == among and len(s["labeled"]) == 16  # 4 candidates; the 6 empty places go to labeled
    s = make_split(names, 0.85, 0.15, 2, val_among=names[::2])
    assert len(s["val"]) == 3 and set(s["val"]) <= set(names[::2]) and s["unlabeled"] == []
    assert make_split(names, 0.85, 0.15, 2, val_among=[])["val"] == []


def test_tiles_of_one_image_stay_in_one_part_of_the_split(tmp_path):
    from semimoe.data.datasets import make_grouped_split, make_split

    names = [f"img{i}_r{r}c{c}" for i in range(10) for r in range(2) for c in range(3)]
    groups = {n: n.split("_", 1)[0] for n in names}
    split = make_grouped_split(names, groups, 0.5, 0.2, 3)
    part = {n: k for k, v in split.items() for n in v}
    assert sorted(part) == sorted(names)
    for g in set(groups.values()):
        assert len({part[n] for n in names if groups[n] == g}) == 1, g
    # the groups' split is make_split's split of the group names
    gs = make_split(sorted(set(groups.values())), 0.5, 0.2, 3)
    assert {groups[n] for n in split["val"]} == set(gs["val"]) and len(split["val"]) == 6 * len(gs["val"])
    # only groups wholly in val_among may validate
    among = [n for n in names if not n.startswith("img1_")] + ["img1_r0c0"]
    s2 = make_grouped_split(names, groups, 0.5, 0.5, 3, val_among=among)
    assert not any(n.startswith("img1_") for n in s2["val"]) and s2["val"]


def test_group_column(tmp_path):
    from semimoe.data.weak import read_labels_table

    img = tmp_path / "images"
    img.mkdir()
    for n in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(img / n)
    (tmp_path / "labels.csv").write_text("image,label,group\na.png,1,slide1\nb.png,0,slide1\nc.png,0,\n")
    labels, groups = read_labels_table(tmp_path / "labels.csv", img)
    assert labels == {"a.png": 1, "b.png": 0, "c.png": 0}
    assert groups == {"a.png": "slide1", "b.png": "slide1", "c.png": "c.png"}  # empty cell: its own group
    (tmp_path / "labels.csv").write_text("label,image\n1,a.png\n0,b.png\n0,c.png\n")
    assert read_labels_table(tmp_path / "labels.csv", img)[1] is None
