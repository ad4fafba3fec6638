"""GlaS-like synthetic generator: determinism, grades, instance labels, cribriform glands,
stain variation, the data module's "synthetic-glas" kind and the normalisation constants."""
import math
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.measure import regionprops

from semimoe.data import glas_synthetic as gs
from semimoe.data.datasets import (
    GLAS_TEST_TAG,
    GLAS_TRAIN_TAG,
    KINDS,
    DataConfig,
    DataError,
    _train_listing,
    build_datasets,
    build_test_dataset,
    default_mean_std,
)
from semimoe.data.glas_synthetic import (
    GLAS_SYNTHETIC_MEAN,
    GLAS_SYNTHETIC_MPP,
    GLAS_SYNTHETIC_STD,
    compute_mean_std,
    glas_grade,
    make_glas_sample,
    mean_std,
)
from semimoe.data.scale import source_mpp
from semimoe.data.synthetic import make_sample

N_PER_GRADE = 8  # 775x522 samples of each grade for the property tests (~0.4 s each)
FOUR = ndimage.generate_binary_structure(2, 1)


@pytest.fixture(scope="module")
def samples():
    # other seeds per grade: the stain draws come first, a seed forced to both grades shares them
    return {g: [make_glas_sample([base, i], grade=g) for i in range(N_PER_GRADE)]
            for g, base in (("benign", 101), ("malignant", 202))}


def _pairs(lab):
    """Distinct (a, b) label pairs that are 4-neighbours."""
    out = set()
    for a, b in ((lab[:, :-1], lab[:, 1:]), (lab[:-1], lab[1:])):
        m = (a > 0) & (b > 0) & (a != b)
        out |= {(min(x, y), max(x, y)) for x, y in zip(a[m].tolist(), b[m].tolist())}
    return out


def test_determinism_and_grade():
    img1, lab1, g1 = make_glas_sample(123)
    img2, lab2, g2 = make_glas_sample(123)
    assert np.array_equal(img1, img2) and np.array_equal(lab1, lab2) and g1 == g2
    assert g1 == glas_grade(123)
    img3, lab3, _ = make_glas_sample(124)
    assert not np.array_equal(img1, img3) and not np.array_equal(lab1, lab3)
    # sequences of ints are seeds too (the data module uses [tag, index])
    a = make_glas_sample([5, 7], size=(96, 128))[0]
    b = make_glas_sample([5, 7], size=(96, 128))[0]
    c = make_glas_sample([7, 5], size=(96, 128))[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # forcing the other grade changes the picture, and is itself deterministic
    other = "benign" if g1 == "malignant" else "malignant"
    f1, fl1, fg1 = make_glas_sample(123, grade=other)
    f2, fl2, _ = make_glas_sample(123, grade=other)
    assert fg1 == other and np.array_equal(f1, f2) and np.array_equal(fl1, fl2)
    assert not np.array_equal(f1, img1)


def test_shapes_dtypes_and_errors():
    img, lab, g = make_glas_sample(0)
    assert gs.GLAS_SYNTHETIC_SIZE == (522, 775)
    assert img.shape == (522, 775, 3) and img.dtype == np.uint8
    assert lab.shape == (522, 775) and lab.dtype == np.int32
    assert g in ("benign", "malignant")
    img, lab, _ = make_glas_sample(0, size=(100, 140), grade="malignant")
    assert img.shape == (100, 140, 3) and lab.shape == (100, 140)
    with pytest.raises(ValueError, match="size"):
        make_glas_sample(0, size=(0, 10))
    with pytest.raises(ValueError, match="grade"):
        make_glas_sample(0, grade="adenoma")
    assert GLAS_SYNTHETIC_MPP == 0.62 and source_mpp("synthetic-glas") == (0.62, False)


def test_grade_balance():
    grades = [glas_grade(s) for s in range(40)]
    frac = grades.count("malignant") / len(grades)
    assert 0.3 <= frac <= 0.7, frac
    assert set(grades) == {"benign", "malignant"}


def test_instance_labels(samples):
    for grade, items in samples.items():
        for img, lab, g in items:
            assert g == grade
            ids = np.unique(lab)
            assert ids[0] == 0 and np.array_equal(ids, np.arange(ids.size))  # contiguous 0..n
            assert 3 <= ids.size - 1 <= 60
            fg = (lab > 0).mean()
            assert 0.1 < fg < 0.95, fg
            for k, sl in enumerate(ndimage.find_objects(lab), 1):
                # each gland is one 4-connected piece, lumen included (no label-0 hole fully inside
                # it would be a gland with a missing lumen)
                m = lab[sl] == k
                assert ndimage.label(m, FOUR)[1] == 1, (grade, k)
                assert m.sum() >= 100
                filled = ndimage.binary_fill_holes(m)
                assert not (filled & ~m & (lab[sl] == 0)).any(), (grade, k)


def test_physical_gland_size(samples):
    # glands that the image border does not cut, in µm at 0.62 µm/px
    diam = {}
    for grade, items in samples.items():
        d = []
        for _, lab, _ in items:
            H, W = lab.shape
            d += [p.equivalent_diameter_area * GLAS_SYNTHETIC_MPP for p in regionprops(lab)
                  if p.bbox[0] > 0 and p.bbox[1] > 0 and p.bbox[2] < H and p.bbox[3] < W]
        diam[grade] = np.asarray(d)
    b = diam["benign"]
    assert 45 <= np.median(b) <= 110, np.median(b)  # benign crypts: ~50-150 µm across
    assert np.mean((b > 35) & (b < 180)) > 0.85
    assert np.percentile(diam["malignant"], 90) > np.percentile(b, 90)  # malignant: larger structures


def test_malignant_more_irregular_and_touching(samples):
    sol, touch = {}, {}
    for grade, items in samples.items():
        s, t = [], []
        for _, lab, _ in items:
            s += [p.solidity for p in regionprops(lab) if p.area >= 500]
            t.append(len(_pairs(lab)))
        sol[grade], touch[grade] = float(np.mean(s)), float(np.mean(t))
    assert sol["malignant"] < sol["benign"] - 0.05, sol
    assert touch["malignant"] > touch["benign"], touch
    # touching glands are separate instances sharing a border, in both grades
    assert sum(len(_pairs(lab)) > 0 for _, lab, _ in samples["benign"]) >= N_PER_GRADE // 3


def _lumen_components(img, lab, k, sl, min_px=150):
    """Background-coloured (lumen-like) connected pieces inside gland k, away from its outline."""
    grey = img.astype(np.float64).mean(-1)
    t = 0.5 * (np.median(grey[lab == 0]) + np.percentile(grey, 99.5))
    pale = ndimage.binary_opening(grey[sl] > t, np.ones((3, 3)))
    inner = ndimage.binary_erosion(lab[sl] == k, iterations=3)
    cc, n = ndimage.label(pale & inner)
    return int((np.bincount(cc.ravel())[1:] >= min_px).sum())


def test_cribriform_glands_appear(samples):
    found = 0
    for img, lab, _ in samples["malignant"]:
        found += sum(_lumen_components(img, lab, k, sl) >= 2 for k, sl in enumerate(ndimage.find_objects(lab), 1))
    assert found >= 1


def _best_threshold_dice(images, masks):
    best, n_fg = 0.0, sum(int(m.sum()) for m in masks)
    for ch in range(4):
        vals = [im[..., ch] if ch < 3 else im.mean(-1).round() for im in images]
        h_fg = sum(np.bincount(v.astype(int)[m], minlength=256) for v, m in zip(vals, masks))
        h_all = sum(np.bincount(v.astype(int).ravel(), minlength=256) for v in vals)
        tp, p = np.cumsum(h_fg), np.cumsum(h_all)  # predict glands for values <= t ...
        for tp_, p_ in ((tp, p), (n_fg - tp, p[-1] - p)):  # ... or > t
            best = max(best, float((2 * tp_ / (p_ + n_fg)).max()))
    return best


def test_not_separable_by_one_colour_threshold(samples):
    items = samples["benign"] + samples["malignant"]
    d = _best_threshold_dice([i[0] for i in items], [i[1] > 0 for i in items])
    assert d < 0.75, d


def test_stronger_stain_variation_than_the_old_generator(samples):
    def od(im):
        return -np.log((im.reshape(-1, 3).astype(np.float64) + 1.0) / 256.0)

    def nuclear_hue(im):  # direction of the mean optical density of the 3 % darkest pixels (~ haematoxylin)
        d = od(im)
        s = d.sum(1)
        v = d[s >= np.percentile(s, 97)].mean(0)
        return v / np.linalg.norm(v)

    def spread(vectors):  # root of the summed per-component variance across images
        return float(np.sqrt(np.var(np.array(vectors), axis=0).sum()))

    new = [i[0] for g in ("benign", "malignant") for i in samples[g]]
    old = [make_sample([101, i])[0] for i in range(len(new))]
    assert spread([nuclear_hue(im) for im in new]) > 1.3 * spread([nuclear_hue(im) for im in old])
    # and the mean colour of an image varies more
    assert spread([im.reshape(-1, 3).mean(0) for im in new]) > spread([im.reshape(-1, 3).mean(0) for im in old])


def test_data_module_kind(monkeypatch, tmp_path):
    assert "synthetic-glas" in KINDS
    pat = re.compile(r"^glas_synthetic_(\d{5})_(benign|malignant)$")
    cfg = DataConfig(kind="synthetic-glas", synthetic_train=6, synthetic_test=2, synthetic_side=64,
                     label_ratio=0.5, val_ratio=0.2, size=128, augment=False, threads=1)
    # names (with grades) are listed without rendering a single image
    with monkeypatch.context() as mp:
        mp.setattr(gs, "make_glas_sample", lambda *a, **k: pytest.fail("rendered while listing"))
        names = _train_listing(cfg).names
        test_names = build_test_dataset(cfg).names
    assert len(names) == 6 and all(pat.match(n) for n in names)
    for n in names:
        i, g = pat.match(n).groups()
        assert g == glas_grade([GLAS_TRAIN_TAG, int(i)])
    assert test_names == [f"glas_synthetic_test_{i:05d}_{glas_grade([GLAS_TEST_TAG, i])}" for i in range(2)]

    lab_ds, unl_ds, val = build_datasets(cfg, run_dir=str(tmp_path))
    assert (tmp_path / "split.json").exists()
    assert len(lab_ds) + len(unl_ds) + len(val) == 6 and len(val) >= 1
    assert set(lab_ds.names + unl_ds.names + val.names) == set(names)
    # synthetic_side does not apply: images are drawn at 775x522 and resampled so that the
    # shorter side is data.size
    spec = lab_ds.spec
    assert spec.source_mpp == pytest.approx(0.62) and spec.mpp == pytest.approx(0.62 * 522 / 128)
    item = lab_ds[0]
    assert item["image"].shape == (3, 128, round(775 * 128 / 522)) and item["mask"].shape[0] == 128
    assert lab_ds.mean == GLAS_SYNTHETIC_MEAN and default_mean_std(cfg) == (GLAS_SYNTHETIC_MEAN, GLAS_SYNTHETIC_STD)
    # validation images at native resolution, exactly the generator's output for their seed
    s = val[0]
    idx = int(pat.match(s.name).group(1))
    img, lab, g = make_glas_sample([GLAS_TRAIN_TAG, idx])
    assert val.mpp == pytest.approx(0.62) and s.name.endswith(g)
    assert np.array_equal(s.image, img) and np.array_equal(s.mask, lab)
    # test pool: native size, other seeds than the training pool
    test = build_test_dataset(cfg)
    t0 = test[0]
    assert t0.image.shape == (522, 775, 3) and t0.mask.dtype == np.int32
    assert np.array_equal(t0.image, make_glas_sample([GLAS_TEST_TAG, 0])[0]) and GLAS_TEST_TAG != GLAS_TRAIN_TAG
    with pytest.raises(DataError, match="one test split"):
        build_test_dataset(cfg, "val")


def test_mean_std_constants():
    m, s = mean_std()
    assert m == GLAS_SYNTHETIC_MEAN and s == GLAS_SYNTHETIC_STD
    m12, s12 = compute_mean_std(n=12)  # the first 12 of the 128 images the constants come from
    assert np.allclose(m12, m, atol=0.035), (m12, m)
    assert np.allclose(s12, s, atol=0.035), (s12, s)


def test_figure_cli(tmp_path):
    out = tmp_path / "fig.png"
    assert gs.main(["--figure", str(out), "--per-grade", "1", "--seed", "3"]) == 0
    im = Image.open(out)
    W, H = im.size
    assert W > 2 * 775 and H > math.ceil(522 / 2)
    with pytest.raises(SystemExit):
        gs.main([])


def test_synthetic_cache_gives_the_same_pixels(tmp_path):
    """data.synthetic_cache: the first build draws and keeps the images, later
    builds read them; every pixel equals a fresh draw; a damaged file is drawn
    again (with a warning) and replaced."""
    from semimoe.data import datasets as ds

    cache = tmp_path / "cache"
    cfg = DataConfig(kind="synthetic-glas", synthetic_train=3, synthetic_test=2, synthetic_cache=str(cache),
                     label_ratio=0.34, val_ratio=0.34, augment=False, threads=1)
    test = build_test_dataset(cfg)
    first = [(s.image.copy(), s.mask.copy()) for s in test]
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 2 and all(ds._glas_generator_version() in f.name for f in files)
    for i, (img, lab) in enumerate(first):
        ref_img, ref_lab, _ = make_glas_sample([GLAS_TEST_TAG, i])
        assert np.array_equal(img, ref_img) and np.array_equal(lab, ref_lab) and lab.dtype == ref_lab.dtype
    files[0].write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable"):
        again = build_test_dataset(cfg)[0]
    assert np.array_equal(again.image, first[0][0]) and np.array_equal(again.mask, first[0][1])
    assert np.load(files[0])["image"].shape == (522, 775, 3)  # replaced by a good file
    # the training pool reads the same cache; no cache: same pixels
    _, _, val = build_datasets(cfg, run_dir=str(tmp_path / "run"))
    assert len(list(cache.glob(f"*_{GLAS_TRAIN_TAG:x}_*.npz"))) == 3
    plain = DataConfig(**{**cfg.__dict__, "synthetic_cache": None})
    _, _, val2 = build_datasets(plain, run_dir=str(tmp_path / "run"))
    assert np.array_equal(val[0].image, val2[0].image) and np.array_equal(val[0].mask, val2[0].mask)
