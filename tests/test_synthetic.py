"""Synthetic gland generator: determinism, label properties, dataset wrapper."""
import hashlib

import numpy as np
import pytest
import torch
from scipy import ndimage

from semimoe.data.synthetic import (
    SYNTHETIC_MEAN,
    SYNTHETIC_STD,
    SyntheticGlands,
    compute_mean_std,
    make_sample,
    mean_std,
)

N_PROP = 24  # 256x256 samples used by the property tests


@pytest.fixture(scope="module")
def samples():
    return [make_sample(s) for s in range(N_PROP)]


def _touching(lab):
    a, b = lab[:, :-1], lab[:, 1:]
    c, d = lab[:-1], lab[1:]
    return bool((((a > 0) & (b > 0) & (a != b)).any()) or (((c > 0) & (d > 0) & (c != d)).any()))


def test_determinism():
    img1, lab1 = make_sample(123)
    img2, lab2 = make_sample(123)
    assert np.array_equal(img1, img2) and np.array_equal(lab1, lab2)
    img3, lab3 = make_sample(124)
    assert not np.array_equal(img1, img3)
    assert not np.array_equal(lab1, lab3)
    # sequences of ints are seeds too (the dataset uses [base_seed, index])
    a, _ = make_sample([5, 7])
    b, _ = make_sample([5, 7])
    c, _ = make_sample([7, 5])
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_golden_hash():
    # Guards machine/version independence: the same seed must give these exact
    # bytes everywhere. A failure means the generator (or NumPy's Generator
    # streams) changed: update the hash only for an intended generator change.
    img, lab = make_sample(2024, size=(96, 128))
    h = hashlib.sha256(img.tobytes() + lab.tobytes()).hexdigest()
    assert h == GOLDEN, h


GOLDEN = "f8331c43ab7b5abec07f3ed880aa0bfb2e182ea83b1176fc4f3ab3484b1a8036"


def test_output_types_and_shapes():
    img, lab = make_sample(0, size=(100, 140))
    assert img.shape == (100, 140, 3) and img.dtype == np.uint8
    assert lab.shape == (100, 140) and lab.dtype == np.int32
    img, lab = make_sample(0, size=(128, 128), scale=0.5)
    assert img.shape == (128, 128, 3) and lab.max() >= 1
    with pytest.raises(ValueError, match="size"):
        make_sample(0, size=(0, 10))
    with pytest.raises(ValueError, match="scale"):
        make_sample(0, scale=-1.0)


def test_label_properties(samples):
    n_touch = 0
    for img, lab in samples:
        ids = np.unique(lab)
        assert ids[0] == 0  # background present
        assert np.array_equal(ids, np.arange(ids.size))  # contiguous 0..n
        assert 3 <= ids.size - 1 <= 40
        fg = (lab > 0).mean()
        assert 0.05 < fg < 0.8
        sizes = np.bincount(lab.ravel())[1:]
        assert sizes.min() >= 20
        for k in range(1, ids.size):  # each gland is one 8-connected piece
            assert ndimage.label(lab == k, np.ones((3, 3)))[1] == 1
        n_touch += _touching(lab)
    # touching pairs (distinct labels sharing a border) in a good share of images
    assert n_touch >= 0.4 * len(samples), n_touch


def test_not_separable_by_one_colour_threshold(samples):
    # best single global threshold on R, G, B or grey (either direction),
    # pooled over the images, must stay far from perfect
    imgs = np.stack([s[0] for s in samples]).astype(np.float64)
    fg = np.stack([s[1] for s in samples]) > 0
    chans = [imgs[..., 0], imgs[..., 1], imgs[..., 2], imgs.mean(-1)]
    n_fg = fg.sum()
    best = 0.0
    for ch in chans:
        v = np.clip(np.rint(ch), 0, 255).astype(np.int64)
        h_fg = np.bincount(v[fg], minlength=256)
        h_all = np.bincount(v.ravel(), minlength=256)
        # predict fg for v < t (t = 0..256) and for v >= t
        tp_lo = np.concatenate([[0], np.cumsum(h_fg)])
        p_lo = np.concatenate([[0], np.cumsum(h_all)])
        for tp, p in ((tp_lo, p_lo), (n_fg - tp_lo, p_lo[-1] - p_lo)):
            dice = 2 * tp / np.maximum(p + n_fg, 1)
            best = max(best, float(dice.max()))
    assert best < 0.8, best


def test_dataset(samples):
    ds = SyntheticGlands(5, size=(64, 80), base_seed=3)
    assert len(ds) == 5
    x, y = ds[2]
    assert x.shape == (3, 64, 80) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.shape == (64, 80) and y.dtype == torch.int64
    img, lab = make_sample([3, 2], size=(64, 80))
    assert torch.equal(x, torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    assert torch.equal(y, torch.from_numpy(lab).long())
    assert torch.equal(ds[-1][0], ds[4][0])
    with pytest.raises(IndexError):
        ds[5]
    # different base seeds give different samples at the same index
    assert not torch.equal(SyntheticGlands(1, (64, 80), base_seed=4)[0][0], SyntheticGlands(1, (64, 80), base_seed=3)[0][0])
    # transform hook
    ds_t = SyntheticGlands(2, size=(32, 32), transform=lambda im, lb: (im * 2, lb > 0))
    im2, m2 = ds_t[0]
    assert m2.dtype == torch.bool and torch.allclose(im2, SyntheticGlands(2, size=(32, 32))[0][0] * 2)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch[0].shape == (2, 3, 64, 80) and batch[1].shape == (2, 64, 80)


def test_mean_std_constants():
    m, s = mean_std()
    assert m == SYNTHETIC_MEAN and s == SYNTHETIC_STD
    m32, s32 = compute_mean_std(n=32)
    assert np.allclose(m32, m, atol=0.02), (m32, m)
    assert np.allclose(s32, s, atol=0.02), (s32, s)
