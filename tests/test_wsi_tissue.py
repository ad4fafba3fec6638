"""Tissue detection on slide thumbnails (semimoe.wsi.tissue).

The synthetic thumbnail holds what real slides hold around the tissue --
grey noisy glass, pure white and pure black out-of-slide areas, pen strokes
and a pen circle in four inks, dust, a dark slide edge -- and two kinds of
tissue: dense H&E and pale eosin (RGB about (230, 210, 222)). Pixel colours
are made the way light makes them: optical densities of glass, stains and
inks add, then I = 256 exp(-OD) - 1.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from semimoe.errors import DataError
from semimoe.wsi.tissue import TISSUE_MPP, detect_tissue, load_tissue_mask

DATA = Path(__file__).parent / "data"
MPP = 8.0
# Ruifrok & Johnston's H and E optical density vectors
HAEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
INKS = {"blue": (30, 60, 150), "green": (40, 120, 70), "black": (30, 30, 35), "red": (200, 35, 40),
        "light red": (225, 70, 75), "blue-black": (25, 25, 45)}


def _od(rgb) -> np.ndarray:
    return -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / 256.0)


def _noise(rng, shape, sigma) -> np.ndarray:
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return f / f.std()


def _blob(rng, yy, xx, centre, radii, wobble=0.15) -> np.ndarray:
    r2 = ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2
    return r2 + wobble * _noise(rng, yy.shape, 12) < 1.0


def _stroke(yy, xx, points, width) -> np.ndarray:
    """float (h, w): anti-aliased coverage of a polyline `width` px wide."""
    dist = np.full(yy.shape, np.inf)
    for (y0, x0), (y1, x1) in itertools.pairwise(points):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx), 0, 1)
        dist = np.minimum(dist, np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)))
    return np.clip(width / 2 - dist + 0.5, 0, 1)


def synthetic_thumbnail(seed: int = 0, noise: float = 2.5):
    """(uint8 (h, w, 3) thumbnail at 8 µm/px, dict of bool truth masks); `noise`: sigma in grey levels."""
    rng = np.random.default_rng(seed)
    h, w = 400, 560
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    od = np.broadcast_to(_od((236, 236, 239)), (h, w, 3)) + 0.01 * (xx / w)[..., None]  # grey glass
    dense = _blob(rng, yy, xx, (205, 175), (105, 95))
    c_h = 0.45 + 0.12 * _noise(rng, (h, w), 4) + 0.5 * (rng.random((h, w)) < 0.15)  # nuclei speckle
    c_e = 0.55 + 0.15 * _noise(rng, (h, w), 6)
    od = od + dense[..., None] * (np.clip(c_h, 0.1, None)[..., None] * HAEMATOXYLIN
                                  + np.clip(c_e, 0.1, None)[..., None] * EOSIN)
    pale = _blob(rng, yy, xx, (215, 420), (75, 65))
    pale_od = _od((230, 210, 222)) - _od((236, 236, 239))
    od = od + (pale[..., None] * pale_od * (1 + 0.15 * _noise(rng, (h, w), 3))[..., None])
    pen = np.zeros((h, w), dtype=bool)
    strokes = [("blue", [(140, 175 - 135), (60, 175), (140, 175 + 135), (270, 175 + 135), (345, 175),
                         (270, 175 - 135), (140, 175 - 135)], 5),  # a pen "circle" around the dense tissue
               ("green", [(30, 320), (60, 520), (110, 540)], 6),
               ("black", [(360, 300), (385, 460), (330, 540)], 7),
               ("red", [(40, 60), (25, 250)], 5),
               ("blue", [(320, 20), (390, 120)], 12)]
    for ink, points, width in strokes:
        cover = _stroke(yy, xx, points, width)
        od = od + cover[..., None] * _od(INKS[ink])
        pen |= cover > 0.25
    dust = np.zeros((h, w), dtype=bool)
    for _ in range(30):
        y, x = rng.integers(0, h), rng.integers(0, w)
        if not (dense | pale | pen)[max(y - 6, 0):y + 7, max(x - 6, 0):x + 7].any():
            spot = np.hypot(yy - y, xx - x) < rng.uniform(1.0, 2.5)
            od = od + spot[..., None] * rng.uniform(0.4, 1.5) * np.array([1.0, 1.05, 1.15])
            dust |= spot
    edge = np.abs(yy - 8) < 1.2  # a dark slide/coverslip edge
    od = od + edge[..., None] * 0.9
    smudge = _blob(rng, yy, xx, (330, 215), (25, 45))  # grey dirt, out of focus
    od = od + ndi.gaussian_filter(smudge * 0.15, 4)[..., None]
    rgb = 256.0 * np.exp(-od) - 1.0 + rng.normal(0, noise, (h, w, 3))
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    rgb[:, w - 30:] = 255  # out of the slide, filled white by the reader
    rgb[h - 40:, :40] = 0  # out of the slide, black
    truth = {"dense": dense, "pale": pale, "pen": pen, "dust": dust}
    truth["background"] = ~(dense | pale | pen | dust | edge)
    # beyond 3 px (24 µm) of tissue: the blur and the closing may move an edge by a pixel
    truth["far background"] = truth["background"] & (ndi.distance_transform_edt(~(dense | pale)) > 3)
    return rgb, truth


def _rates(mask: np.ndarray, truth: dict) -> dict:
    return {k: float(mask[v].mean()) for k, v in truth.items()}


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_thumbnail(0)


@pytest.mark.parametrize("noise", [2.5, 6.0])
def test_synthetic_thumbnail(synthetic, noise):
    rgb, truth = synthetic if noise == 2.5 else synthetic_thumbnail(1, noise)
    r = _rates(detect_tissue(rgb, MPP), truth)
    print(f"\nrates on the synthetic thumbnail (noise {noise}):", {k: round(v, 4) for k, v in r.items()})
    assert r["dense"] >= 0.95 and r["pale"] >= 0.95, r
    assert r["pen"] <= 0.05, r
    assert r["background"] <= 0.01 and r["far background"] <= 0.001, r
    assert r["dust"] == 0.0, r


def test_otsu_on_grey_fails_where_detect_tissue_does_not(synthetic):
    """Why the module exists: Otsu on grey misses pale tissue and keeps the pens."""
    from skimage.color import rgb2gray
    from skimage.filters import threshold_otsu

    rgb, truth = synthetic
    grey = rgb2gray(rgb)
    r = _rates(grey < threshold_otsu(grey), truth)
    print("\nOtsu on grey:", {k: round(v, 4) for k, v in r.items()})
    assert r["pale"] < 0.5 and r["pen"] > 0.5, r


@pytest.mark.parametrize("ink", sorted(INKS))
def test_each_ink_alone_is_not_tissue(ink):
    rgb = np.full((120, 120, 3), 238, dtype=np.uint8)
    rgb[30:90, 20:100] = INKS[ink]  # a thick smear: no size or shape rule can remove it
    assert not detect_tissue(rgb, MPP).any()


def test_tissue_on_tinted_glass_beside_white_fill():
    """Glass is measured, not assumed white: pinkish glass next to the white fill is not tissue."""
    rng = np.random.default_rng(1)
    rgb = np.clip(rng.normal((236, 226, 236), 2.0, (200, 300, 3)), 0, 255).astype(np.uint8)
    rgb[:, 200:] = 255
    rgb[50:150, 50:150] = np.clip(np.asarray(rgb[50:150, 50:150], float) * [0.92, 0.80, 0.88], 0, 255)
    mask = detect_tissue(rgb, MPP)
    assert mask[55:145, 55:145].mean() > 0.95
    assert mask[:, 160:].sum() == 0


def test_small_and_thin_objects_are_dropped():
    rgb = np.full((300, 300, 3), 240, dtype=np.uint8)
    purple = (150, 90, 170)
    rgb[20:30, 20:30] = purple      # 6400 µm²: below the 20000 µm² default
    rgb[100:125, 20:45] = purple    # 40000 µm²
    rgb[200:203, 20:280] = purple   # 24 µm x 2 mm: a line, not tissue
    mask = detect_tissue(rgb, MPP)
    assert not mask[15:35, 15:35].any()
    assert mask[100:125, 20:45].all()
    assert not mask[195:210].any()
    assert detect_tissue(rgb, MPP, min_area_um2=1000.0)[20:30, 20:30].all()


def test_loose_tissue_fragments_are_joined():
    """Loose stroma: specks each far below the area limit, 32 µm apart, make one piece of tissue."""
    rgb = np.full((200, 200, 3), 240, dtype=np.uint8)
    for y in range(40, 160, 10):
        for x in range(40, 160, 10):
            rgb[y:y + 6, x:x + 6] = (215, 150, 190)  # 48 µm specks, 2300 µm² each
    mask = detect_tissue(rgb, MPP)
    assert mask[40:156, 40:156].mean() > 0.95
    assert not mask[:30].any() and not mask[170:].any()


def test_sensitivity_reaches_paler_tissue():
    rgb = np.full((100, 100, 3), 240, dtype=np.uint8)
    rgb[20:80, 20:80] = (238, 232, 236)  # barely stained
    assert not detect_tissue(rgb, MPP).any()
    assert detect_tissue(rgb, MPP, sensitivity=3.0)[25:75, 25:75].all()


@pytest.mark.parametrize("value", [255, 0, 240])
def test_blank_images_have_no_tissue(value):
    rgb = np.full((64, 80, 3), value, dtype=np.uint8)
    mask = detect_tissue(rgb, MPP)
    assert mask.shape == (64, 80) and mask.dtype == bool and not mask.any()


def test_tiny_and_empty_images():
    assert detect_tissue(np.full((3, 3, 3), 255, np.uint8), MPP).shape == (3, 3)
    tiny = np.full((3, 3, 3), (150, 90, 170), np.uint8)
    assert detect_tissue(tiny, 64.0, min_area_um2=0).all()
    assert detect_tissue(np.zeros((0, 5, 3), np.uint8), MPP).shape == (0, 5)


@pytest.mark.parametrize("kwargs, name", [
    ({"rgb": np.zeros((4, 4, 3), np.float32)}, "rgb"),
    ({"rgb": np.zeros((4, 4), np.uint8)}, "rgb"),
    ({"rgb": np.zeros((4, 4, 4), np.uint8)}, "rgb"),
    ({"rgb": [[[0, 0, 0]]]}, "rgb"),
    ({"mpp": 0.0}, "mpp"),
    ({"mpp": -8.0}, "mpp"),
    ({"mpp": float("nan")}, "mpp"),
    ({"sensitivity": 0.0}, "sensitivity"),
    ({"min_area_um2": -1.0}, "min_area_um2"),
    ({"mpp": "8"}, "mpp"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    args = {"rgb": np.zeros((4, 4, 3), np.uint8), "mpp": MPP}
    args.update(kwargs)
    rgb, mpp = args.pop("rgb"), args.pop("mpp")
    with pytest.raises(ValueError, match=name):
        detect_tissue(rgb, mpp, **args)


def test_speed_2000_square(synthetic):
    rgb, _ = synthetic
    big = np.tile(rgb, (5, 4, 1))[:2000, :2000]
    detect_tissue(big[:200, :200], MPP)
    t = time.perf_counter()
    detect_tissue(big, MPP)
    seconds = time.perf_counter() - t
    print(f"\n2000 x 2000 thumbnail: {seconds:.2f} s")
    assert seconds < 3.0  # about 0.5 s on an idle core; generous for a shared machine


def _cmu_thumbnail(mpp: float):
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(DATA / "cmu_small_region.svs")) as s:
        mpp0 = float(s.properties["openslide.mpp-x"])
        w0, h0 = s.dimensions
        thumb = s.get_thumbnail((round(w0 * mpp0 / mpp), round(h0 * mpp0 / mpp)))
    rgb = np.asarray(thumb.convert("RGB"))
    return rgb, w0 * mpp0 / rgb.shape[1]


def test_cmu_slide():
    """A skin biopsy on white glass, teal marking dye on some edges: about 42 % of the region is tissue."""
    rgb, mpp = _cmu_thumbnail(TISSUE_MPP)
    mask = detect_tissue(rgb, mpp)
    h, w = mask.shape
    print(f"\nCMU region {w} x {h} px at {mpp:.2f} µm/px: tissue fraction {mask.mean():.3f}")
    assert 0.36 <= mask.mean() <= 0.48
    assert mask[: h // 10, : w // 4].mean() < 0.02  # top left is glass
    assert mask[-h // 4:, w // 3: 2 * w // 3].all()  # bottom middle is tissue


def test_cmu_slide_at_other_scales():
    """The same tissue at 2 µm/px, and a crop that is all tissue (its glass only in small holes)."""
    rgb, mpp = _cmu_thumbnail(2.0)
    fine = detect_tissue(rgb, mpp)
    coarse = detect_tissue(*_cmu_thumbnail(TISSUE_MPP))
    assert abs(fine.mean() - coarse.mean()) < 0.02
    crop = np.ascontiguousarray(rgb[-240:, 180:400])
    assert detect_tissue(crop, mpp).mean() > 0.99


# --- load_tissue_mask -------------------------------------------------------------------------

def _save(path: Path, a: np.ndarray) -> Path:
    Image.fromarray(a).save(path)
    return path


def test_mask_png_round_trip(tmp_path):
    m = np.zeros((40, 60), dtype=bool)
    m[5:20, 10:50] = True
    p = _save(tmp_path / "m.png", m.astype(np.uint8) * 255)
    assert np.array_equal(load_tissue_mask(p, (40, 60)), m)
    p1 = _save(tmp_path / "m1.png", m.astype(np.uint8))  # 0/1 labels: non-zero is tissue
    assert np.array_equal(load_tissue_mask(p1, (40, 60)), m)


def test_mask_resized_nearest(tmp_path):
    m = np.zeros((40, 60), dtype=np.uint8)
    m[:20, :30] = 255
    p = _save(tmp_path / "m.png", m)
    up = load_tissue_mask(p, (80, 120))
    assert up.shape == (80, 120) and up[:40, :60].all() and not up[40:].any() and not up[:, 60:].any()
    down = load_tissue_mask(p, (20, 30))
    assert down[:10, :15].all() and down.sum() == 150
    assert load_tissue_mask(p, (40, 61)).shape == (40, 61)  # within 2 %


def test_mask_rgba_alpha_and_colour(tmp_path):
    a = np.zeros((10, 10, 4), dtype=np.uint8)
    a[:5, :, 0] = 200          # red, but half of it transparent
    a[:5, :5, 3] = 255
    a[5:, :, 3] = 255          # opaque black: not tissue
    a[8:, 8:, 2] = 1           # a faint blue channel: tissue
    got = load_tissue_mask(_save(tmp_path / "m.png", a), (10, 10))
    want = np.zeros((10, 10), bool)
    want[:5, :5] = True
    want[8:, 8:] = True
    assert np.array_equal(got, want)


def test_mask_16_bit_tiff(tmp_path):
    m = np.zeros((30, 40), dtype=np.uint16)
    m[10:20, 5:35] = 1000
    p = tmp_path / "m.tif"
    Image.fromarray(m).save(p)
    assert np.array_equal(load_tissue_mask(p, (30, 40)), m > 0)


def test_mask_aspect_mismatch_names_file_and_sizes(tmp_path):
    p = _save(tmp_path / "wide.png", np.full((40, 60), 255, np.uint8))
    with pytest.raises(DataError, match=r"wide\.png.*60 x 40.*62 x 40"):
        load_tissue_mask(p, (40, 62))


def test_mask_without_tissue(tmp_path):
    p = _save(tmp_path / "empty.png", np.zeros((40, 60), np.uint8))
    with pytest.raises(DataError, match=r"empty\.png.*no tissue"):
        load_tissue_mask(p, (40, 60))
    m = np.zeros((400, 600), np.uint8)
    m[1, 1] = 255  # one pixel, lost when shrunk to 4 x 6
    with pytest.raises(DataError, match="too small"):
        load_tissue_mask(_save(tmp_path / "speck.png", m), (4, 6))


def test_mask_unreadable(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"bad\.png"):
        load_tissue_mask(bad, (4, 4))
    with pytest.raises(DataError, match=r"missing\.png"):
        load_tissue_mask(tmp_path / "missing.png", (4, 4))
    with pytest.raises(ValueError, match="shape"):
        load_tissue_mask(bad, (0, 4))


def test_mask_jpeg_compression_noise_is_not_tissue(tmp_path):
    """JPEG rings around edges (black becomes 1..20 there): only bright pixels count."""
    yy, xx = np.mgrid[:64, :64]
    m = (np.hypot(yy - 30.5, xx - 33.5) < 17).astype(np.uint8) * 255
    p = tmp_path / "m.jpg"
    Image.fromarray(m).save(p, quality=60)
    got = load_tissue_mask(p, (64, 64))
    assert (got != (m > 0)).mean() < 0.01
