"""semimoe.wsi.outputs against independent readers and references.

* Pyramid TIFF: read back with OpenSlide (generic tiled TIFF; skipped when
  ``openslide`` cannot be imported) and with tifffile; every level compared
  with a NumPy 2x2 block mean computed here (edge-replicated odd sides,
  rounded half up).
* Memory: the peak of traced Python allocations (``tracemalloc``, which sees
  NumPy buffers) while a 12000 x 12000 raster is written from rows generated
  on the fly must stay under H * W / 4 bytes (36 MB; measured about 8 MB).
* Gland polygons: the shoelace area and an even-odd rasterisation of the
  returned rings with ``skimage.draw.polygon`` (both done here) against the
  mask; solidity and perimeter against ``skimage.measure.regionprops``.
* GeoJSON files: ``json.load``; nothing left behind after an exception.
"""
from __future__ import annotations

import json
import math
import tracemalloc
import uuid

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import binary_erosion
from skimage.draw import disk, polygon
from skimage.measure import regionprops

from semimoe.wsi.outputs import (
    GeoJSONWriter,
    gland_feature,
    overlay_thumbnail,
    write_pyramid_tiff,
)

MPP = 0.4962
KEYS = ("Area µm^2", "Perimeter µm", "Solidity", "Mean probability")


# ----------------------------------------------------------------------------- references

def block_mean(a: np.ndarray) -> np.ndarray:
    """2x2 mean of uint8 (h, w[, c]) with an odd last row/column repeated, rounded half up."""
    a = a.astype(np.float64)
    pad = [(0, a.shape[0] % 2), (0, a.shape[1] % 2)] + [(0, 0)] * (a.ndim - 2)
    a = np.pad(a, pad, mode="edge")
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return np.floor(a.reshape(h, 2, w, 2, *a.shape[2:]).mean(axis=(1, 3)) + 0.5).astype(np.uint8)


def pyramid(a: np.ndarray, min_size: int) -> list:
    levels = [a]
    while max(levels[-1].shape[:2]) > min_size:
        levels.append(block_mean(levels[-1]))
    return levels


def make_raster(h: int, w: int, channels: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    a = ((xx * 7 + yy * 3) % 256).astype(np.uint8)
    a[h // 5:h // 2, w // 6:w // 2] = 200
    a[disk((2 * h // 3, 2 * w // 3), h // 6, shape=(h, w))] = 17
    a[::97] = 255
    if channels == 3:
        a = np.stack([a, 255 - a, (a // 2 + 60).astype(np.uint8)], -1)
    return a


def write(tmp_path, a, **kw):
    return write_pyramid_tiff(tmp_path / "p.tif", lambda y0, y1: a[y0:y1].copy(), a.shape[:2], MPP, **kw)


# ----------------------------------------------------------------------------- pyramid TIFF

@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    a = make_raster(1500, 2300)
    d = tmp_path_factory.mktemp("pyr")
    return a, write(d, a, description="semimoe test"), d


def test_pyramid_openslide(grey):
    openslide = pytest.importorskip("openslide")
    a, path, folder = grey
    ref = pyramid(a, 512)
    assert [p.name for p in folder.iterdir()] == ["p.tif"]  # no temporary files left
    with openslide.OpenSlide(str(path)) as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert s.level_count == len(ref) == 4
        assert s.level_dimensions == tuple((r.shape[1], r.shape[0]) for r in ref)
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(MPP, rel=1e-6)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(MPP, rel=1e-6)
        for k, r in enumerate(ref):
            got = np.asarray(s.read_region((0, 0), k, (r.shape[1], r.shape[0])))
            assert (got[..., 3] == 255).all()
            for c in range(3):  # greyscale comes back as RGB
                np.testing.assert_array_equal(got[..., c], r, err_msg=f"level {k} channel {c}")


def test_pyramid_tifffile(grey):
    a, path, _ = grey
    ref = pyramid(a, 512)
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == len(ref)  # top-level pages: a SubIFD pyramid would have one
        assert not tf.is_bigtiff
        for k, (page, r) in enumerate(zip(tf.pages, ref)):
            assert page.subifds is None
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
            assert page.subfiletype == (1 if k else 0)
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            for tag in ("XResolution", "YResolution"):
                num, den = page.tags[tag].value
                assert num / den == pytest.approx(1e4 / (MPP * 2 ** k), rel=1e-6)
            np.testing.assert_array_equal(page.asarray(), r)
        assert tf.pages[0].description == "semimoe test"


def test_pyramid_rgb_small_tile(tmp_path):
    openslide = pytest.importorskip("openslide")
    a = make_raster(700, 1033, channels=3)
    path = write(tmp_path, a, channels=3, tile=128, min_size=200)
    ref = pyramid(a, 200)
    with tifffile.TiffFile(path) as tf:
        assert [p.shape for p in tf.pages] == [r.shape for r in ref]
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB and tf.pages[0].tilewidth == 128
        assert tf.pages[0].description == ""  # none given
    with openslide.OpenSlide(str(path)) as s:
        for k, r in enumerate(ref):
            got = np.asarray(s.read_region((0, 0), k, (r.shape[1], r.shape[0])))[..., :3]
            np.testing.assert_array_equal(got, r)


def test_pyramid_single_level_and_uncompressed(tmp_path):
    a = make_raster(300, 200)
    path = write(tmp_path, a, compression=None)
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 1 and tf.pages[0].compression == tifffile.COMPRESSION.NONE
        np.testing.assert_array_equal(tf.pages[0].asarray(), a)


def test_pyramid_bad_rows_leave_nothing(tmp_path):
    a = make_raster(600, 700)
    (tmp_path / "p.tif").write_bytes(b"old")
    with pytest.raises(ValueError, match="read_rows returned"):
        write_pyramid_tiff(tmp_path / "p.tif", lambda y0, y1: a[y0:y1].astype(np.float32), a.shape, MPP)
    with pytest.raises(ValueError, match="read_rows returned"):
        write_pyramid_tiff(tmp_path / "p.tif", lambda y0, y1: a[y0:y1, :-1], a.shape, MPP)
    assert [p.name for p in tmp_path.iterdir()] == ["p.tif"]
    assert (tmp_path / "p.tif").read_bytes() == b"old"
    with pytest.raises(ValueError, match="tile a multiple of 16"):
        write_pyramid_tiff(tmp_path / "q.tif", lambda y0, y1: a[y0:y1], a.shape, MPP, tile=100)


@pytest.mark.slow
def test_pyramid_memory_is_bounded(tmp_path):
    """A 12000 x 12000 raster (144 MB) written with a traced peak under H * W / 4
    = 36 MB (about 8 MB is typical: two strips of 256 x 12000 and change)."""
    H = W = 12000
    period = 446
    table = make_raster(period, W)  # rows repeat with this period: nothing of size H * W exists

    def read_rows(y0, y1):
        return table[np.arange(y0, y1) % period]

    tracemalloc.start()
    try:
        path = write_pyramid_tiff(tmp_path / "big.tif", read_rows, (H, W), MPP)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < H * W / 4, f"peak {peak / 1e6:.1f} MB"
    with tifffile.TiffFile(path) as tf:
        assert [p.shape for p in tf.pages] == [(12000, 12000), (6000, 6000), (3000, 3000), (1500, 1500),
                                               (750, 750), (375, 375)]
        np.testing.assert_array_equal(tf.pages[0].asarray()[8000:8300, 5000:5300], read_rows(8000, 8300)[:, 5000:5300])
        top = read_rows(0, 3200)  # 3200 and 12000 are multiples of 2**5: no edge effects
        for _ in range(5):
            top = block_mean(top)
        np.testing.assert_array_equal(tf.pages[5].asarray()[:100], top)
    assert [p.name for p in tmp_path.iterdir()] == ["big.tif"]


# ----------------------------------------------------------------------------- gland polygons

ORIGIN = (37, 51)


def affine(rows, cols):  # canvas -> level 0: scale 2, offset (x, y) = (1000, 500)
    return 2.0 * np.asarray(cols) + 1000.0, 2.0 * np.asarray(rows) + 500.0


def affine_inv(xs, ys):
    return (np.asarray(ys) - 500.0) / 2.0, (np.asarray(xs) - 1000.0) / 2.0


def polygons_of(feature) -> list:
    g = feature["geometry"]
    return [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]


def shoelace(ring) -> float:
    xy = np.asarray(ring, np.float64)
    return 0.5 * float(np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]))


def rasterise(feature, shape, inverse=affine_inv, origin=ORIGIN) -> np.ndarray:
    """Pixels of the crop whose centres are inside the geometry (even-odd over all rings)."""
    out = np.zeros(shape, bool)
    for poly in polygons_of(feature):
        for ring in poly:
            xy = np.asarray(ring)
            r, c = inverse(xy[:, 0], xy[:, 1])
            # pixel (r, c) spans [r, r+1): its centre is (r + .5, c + .5), skimage's is (r, c)
            rr, cc = polygon(r - origin[0] - 0.5, c - origin[1] - 0.5, shape)
            hit = np.zeros(shape, bool)
            hit[rr, cc] = True
            out ^= hit
    return out


def with_hole():
    m = np.zeros((30, 40), bool)
    m[3:27, 4:36] = True
    m[10:18, 12:25] = False
    return m


def non_convex():  # a C shape
    m = np.zeros((40, 40), bool)
    m[disk((20, 20), 17)] = True
    m[12:28, 20:] = False
    return m


def one_pixel_wide():  # an L of width 1, plus a staircase diagonal
    m = np.zeros((25, 30), bool)
    m[2, 2:28] = True
    m[2:23, 27] = True
    for k in range(20):
        m[2 + k, 2 + k] = True
        m[3 + k, 2 + k] = True
    return m


def touching_border():
    m = np.ones((20, 25), bool)
    m[5:9, 7:12] = False  # a hole
    m[-3:, :4] = False
    return m


def pinched():  # a loop closed only through a corner: the hole touches the exterior at one point
    return np.array([[1, 1, 1, 1, 0],
                     [1, 0, 0, 1, 0],
                     [1, 0, 0, 1, 0],
                     [1, 1, 1, 0, 0],
                     [0, 0, 0, 0, 0]], bool)


SHAPES = {"hole": with_hole, "non_convex": non_convex, "one_pixel_wide": one_pixel_wide,
          "border": touching_border, "pinched": pinched}


def check_geometry(f, mask, inverse=affine_inv, scale=2.0, origin=ORIGIN):
    polys = polygons_of(f)
    total = 0.0
    for poly in polys:
        for k, ring in enumerate(poly):
            assert ring[0] == ring[-1] and len(ring) >= 5
            assert len({tuple(p) for p in ring[:-1]}) == len(ring) - 1  # simple: no vertex twice
            a = shoelace(ring)
            assert (a > 0) == (k == 0)  # RFC 7946: exterior counter-clockwise (y up), holes clockwise
            total += a
    assert total / scale ** 2 == pytest.approx(mask.sum(), abs=1e-9)
    np.testing.assert_array_equal(rasterise(f, mask.shape, inverse, origin), mask)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_gland_polygon_exact(shape):
    mask = SHAPES[shape]()
    f = gland_feature(mask, mask.astype(np.uint8) * 200, ORIGIN, affine, MPP)
    check_geometry(f, mask)
    xy = np.concatenate([np.asarray(ring) for poly in polygons_of(f) for ring in poly])
    r, c = affine_inv(xy[:, 0], xy[:, 1])  # every vertex is a pixel corner of the crop
    np.testing.assert_array_equal(r, np.round(r))
    np.testing.assert_array_equal(c, np.round(c))
    assert r.min() >= ORIGIN[0] and r.max() <= ORIGIN[0] + mask.shape[0]
    assert c.min() >= ORIGIN[1] and c.max() <= ORIGIN[1] + mask.shape[1]
    if shape in ("hole", "border", "pinched"):
        assert f["geometry"]["type"] == "Polygon" and len(f["geometry"]["coordinates"]) == 2


def test_gland_known_coordinates():
    mask = np.zeros((3, 4), bool)
    mask[1, 1:3] = True
    f = gland_feature(mask, mask, (10, 20), affine, 0.5)
    assert f["geometry"] == {"type": "Polygon", "coordinates": [
        [[1042.0, 522.0], [1046.0, 522.0], [1046.0, 524.0], [1042.0, 524.0], [1042.0, 522.0]]]}
    m = f["properties"]["measurements"]
    assert m["Area µm^2"] == pytest.approx(2 * 0.25)
    assert m["Solidity"] == pytest.approx(1.0)
    assert m["Perimeter µm"] == pytest.approx((6 - 4 * (1 - math.sqrt(0.5))) * 0.5)  # corners cut


def test_gland_mirrored_transform_keeps_orientation():
    mask = with_hole()

    def flip(rows, cols):  # y up: a mirror image
        return 3.0 * np.asarray(cols), -3.0 * np.asarray(rows)

    f = gland_feature(mask, mask, (4, 9), flip, 1.0)
    check_geometry(f, mask, inverse=lambda x, y: (-np.asarray(y) / 3.0, np.asarray(x) / 3.0), scale=3.0,
                   origin=(4, 9))


def test_gland_two_pieces_multipolygon():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 1:4] = True
    mask[4:8, 4:9] = True  # touches the first piece at one corner only
    mask[6, 6] = False
    f = gland_feature(mask, mask, ORIGIN, affine, MPP)
    assert f["geometry"]["type"] == "MultiPolygon"
    assert sorted(len(p) for p in polygons_of(f)) == [1, 2]
    check_geometry(f, mask)


def test_gland_measurements_and_schema():
    mask = non_convex()
    rng = np.random.default_rng(0)
    prob = rng.integers(0, 256, mask.shape).astype(np.uint8)
    f = gland_feature(mask, prob, ORIGIN, affine, MPP, name="Tumour gland", color=(200, 10, 30),
                      feature_id="7f0e1d8c-3c4b-4e5a-9f3e-2b1a0c9d8e7f")
    assert set(f) == {"type", "id", "geometry", "properties"} and f["type"] == "Feature"
    assert f["id"] == "7f0e1d8c-3c4b-4e5a-9f3e-2b1a0c9d8e7f"
    props = f["properties"]
    assert props["objectType"] == "detection"
    assert props["classification"] == {"name": "Tumour gland", "color": [200, 10, 30]}
    m = props["measurements"]
    assert tuple(m) == KEYS
    assert all(type(v) is float and math.isfinite(v) for v in m.values())
    assert m["Area µm^2"] == pytest.approx(mask.sum() * MPP ** 2)
    assert m["Mean probability"] == pytest.approx(prob[mask].mean() / 255.0)
    json.loads(json.dumps(f, allow_nan=False))
    f2 = gland_feature(mask, prob / 255.0, ORIGIN, affine, MPP)
    uuid.UUID(f2["id"])
    assert f2["id"] != gland_feature(mask, prob, ORIGIN, affine, MPP)["id"]
    assert f2["properties"]["measurements"]["Mean probability"] == pytest.approx(m["Mean probability"])


@pytest.mark.parametrize("shape", ["hole", "non_convex", "one_pixel_wide", "disc", "ellipse"])
def test_gland_shape_measurements_vs_regionprops(shape):
    """Solidity here is pixel count / area of the convex hull of the pixel corners;
    regionprops divides by the number of pixels whose centres lie in that hull,
    which is a little smaller: ours is lower, by up to ~3 % for glands >= 200 px
    (the thinner the gland, the more).
    Perimeter: the corner-cut outline, within 5 % (+ 3 px) of regionprops'."""
    if shape == "disc":
        mask = np.zeros((40, 40), bool)
        mask[disk((20, 20), 15)] = True
    elif shape == "ellipse":
        yy, xx = np.mgrid[:50, :70]
        mask = ((yy - 25) * 0.8 + (xx - 35) * 0.6) ** 2 / 400 + ((yy - 25) * 0.6 - (xx - 35) * 0.8) ** 2 / 64 <= 1
    else:
        mask = SHAPES[shape]()
    assert mask.sum() >= 200 or shape == "one_pixel_wide"
    m = gland_feature(mask, mask, ORIGIN, affine, 1.0)["properties"]["measurements"]
    rp = regionprops(mask.astype(np.uint8))[0]
    if shape != "one_pixel_wide":
        assert 0.0 <= rp.solidity - m["Solidity"] <= 0.03
        assert m["Perimeter µm"] == pytest.approx(rp.perimeter, rel=0.05, abs=3.0)
    assert 0.0 < m["Solidity"] <= 1.0


def test_gland_empty_is_none():
    assert gland_feature(np.zeros((5, 5), bool), np.zeros((5, 5), np.uint8), (0, 0), affine, 1.0) is None


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 24), w=st.integers(1, 24), density=st.floats(0.2, 0.8), seed=st.integers(0, 2 ** 31))
def test_gland_random_masks_exact(h, w, density, seed):
    """Random masks (many pieces, holes, corner contacts): exact area, rasterisation
    and simple, correctly oriented rings."""
    mask = np.random.default_rng(seed).random((h, w)) < density
    f = gland_feature(mask, mask, ORIGIN, affine, MPP)
    if not mask.any():
        assert f is None
        return
    check_geometry(f, mask)


# ----------------------------------------------------------------------------- GeoJSON file

def small_features(n):
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    return [gland_feature(mask, mask, (10 * k, 0), affine, MPP) for k in range(n)]


def test_geojson_writer(tmp_path):
    feats = small_features(3)
    path = tmp_path / "glands.geojson"
    with GeoJSONWriter(path) as w:
        for f in feats:
            w.add(f)
        assert not path.exists()  # only renamed into place at the end
    assert w.count == 3
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    assert doc["type"] == "FeatureCollection" and doc["features"] == json.loads(json.dumps(feats))
    assert list(tmp_path.iterdir()) == [path]
    with GeoJSONWriter(path) as w:
        pass
    assert w.count == 0 and json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}


def test_geojson_writer_exception_leaves_nothing(tmp_path):
    path = tmp_path / "glands.geojson"
    with pytest.raises(RuntimeError, match="boom"), GeoJSONWriter(path) as w:
        w.add(small_features(1)[0])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    path.write_text("old")
    with pytest.raises(KeyError), GeoJSONWriter(path) as w:
        raise KeyError("x")
    assert list(tmp_path.iterdir()) == [path] and path.read_text() == "old"


# ----------------------------------------------------------------------------- thumbnail

def test_overlay_thumbnail():
    thumb = np.full((80, 100, 3), 128, np.uint8)
    prob = np.zeros((80, 100), np.uint8)
    gland = np.zeros((80, 100), bool)
    gland[disk((40, 50), 12)] = True
    prob[gland] = 230
    prob[5, 5] = 127  # below threshold 0.5 (127 / 255 < 0.5)
    tissue = np.zeros((80, 100), bool)
    tissue[10:70, 15:90] = True
    out = overlay_thumbnail(thumb, prob, tissue)
    assert out.shape == thumb.shape and out.dtype == np.uint8
    assert (out[gland] != thumb[gland]).any(axis=1).all()  # every gland pixel changed colour
    away = ~gland & ~tissue
    np.testing.assert_array_equal(out[away], thumb[away])
    ring = tissue & ~binary_erosion(tissue)
    assert (out[ring] != 128).any(axis=1).all()  # the tissue outline is drawn
    np.testing.assert_array_equal(overlay_thumbnail(thumb, prob / 255.0, tissue), out)
    no_tissue = overlay_thumbnail(thumb, prob)
    np.testing.assert_array_equal(no_tissue[~gland], thumb[~gland])
    with pytest.raises(ValueError, match="overlay_thumbnail"):
        overlay_thumbnail(thumb, prob[:-1])
