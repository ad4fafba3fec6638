"""GlaS-like synthetic colon histology: benign and malignant glands at 20x.

A harder sibling of :mod:`semimoe.data.synthetic` (whose building blocks it
reuses: stain model, smooth noise, gland outlines, ellipse splatting,
relabelling). One call of :func:`make_glas_sample` draws one image of GlaS's
size, 775x522 (W x H), at :data:`GLAS_SYNTHETIC_MPP` = 0.62 µm/px (GlaS is a
20x scan released at 0.62005 µm/px); every length below is set in µm and
converted at that pixel size. The grade, ``"benign"`` or ``"malignant"``, is
the first draw of the seed's generator (P = 1/2 each in the default domain
``"a"``; :func:`glas_grade` reads it without rendering), unless forced. A
second domain, ``"b"`` (another lab: more malignant images, another stain),
is drawn with ``domain="b"``; see Domains below.

What is drawn
-------------
* **Benign.** Round to elongated (up to 2.6:1) colonic crypts with smooth
  outlines (weak Fourier perturbation and a 1.5-4 px warp), short axis
  ~48-92 µm times a per-image size factor (0.75-1.35), at least 8-25 µm of
  lamina propria between them; up to three touching pairs per image (a
  partner placed to overlap, split where the two normalised radii are
  equal). A columnar epithelial rim (16-28 µm, at most 40-70 % of the
  gland's depth) with a basal row of elongated nuclei (8-12 µm long)
  oriented perpendicular to the basement membrane, a few goblet vacuoles,
  and a clear lumen (faint mucin in some). ~6 % are tangential cuts without
  lumen. Stroma: lamina propria with many lymphocytes and plasma cells, a
  few spindle fibroblasts, lymphoid aggregates, rare pale gaps.
* **Malignant.** Larger irregular glands (short axis ~60-200 µm times a
  per-image factor 0.8-1.5, strong Fourier perturbation and a 5-12 px warp
  at two scales, so outlines are ragged), crowded (spacing down to
  overlapping), 2-6 touching partners, and lobes pressed deep into about
  half of the glands -- fused with them (one instance) or a separate gland
  sharing a long border; small solid nests / tumour buds in the stroma;
  centres up to 0.8 radii outside the image, so glands are cut by the
  border. Per gland: tubular (stratified epithelium 20-45 µm with a lumen, a
  third of them with "dirty" eosinophilic necrotic debris and nuclear dust
  in part of the lumen), cribriform (30 % of large glands: 2-12 punched-out
  lumina, 12-32 µm across, inside one gland instance) or solid (no lumen; 18
  per cent of the glands, and every small one). Nuclei are larger (elongated
  ones 9-15 µm long, round vesicular ones 6-10 µm, sizes spread by a
  log-normal factor, sd 0.2), crowded, stratified and darker. Poorly defined
  boundaries: in about half the glands the epithelium's colour is pulled
  15-60 % towards the stroma's, and (independently) in about half the
  cytoplasm and stroma colours are blended over 3-10 µm across the outline,
  with tumour nuclei spilling into the stroma next to it. Desmoplastic
  stroma: pinker, stronger wavy fibres, more fibroblasts, fewer lymphocytes,
  more pale gaps.
* **Both.** Slide glass beyond a wavy tissue edge along one side in 20 % of
  the images (glands cut by it). Stain and scanner variation, stronger than
  the old generator's: haematoxylin and eosin vectors jittered by N(0, 0.1)
  per component, stain gains 0.4-1.25 (H) and 0.45-1.45 (E), background
  optical density, brightness 0.9-1.0 and white balance (sd 3 % per
  channel), a smooth staining drift across the image (sd up to 15 %),
  stain-map blur 0.6-1.2 px, camera noise 1.5-5 grey levels; out-of-focus
  Gaussian blur (sigma 0.7-2 px) in 30 % of the images and JPEG compression
  (Pillow, in memory, quality 60-95) in 35 %.

Domains
-------
:data:`GLAS_DOMAINS` names each domain's grade mix and stain / scanner
parameters (for domain-shift experiments: pretrain on one, adapt to the
other). Only those draws' parameters differ, never the number or order of
draws: the same seed and grade give the same tissue and labels in both, and
the grade is the same first draw ``u`` (malignant when ``u < P``).

* ``"a"`` (default): the generator above, bit-identical to before domains
  existed. P(malignant) = 0.5; H = (0.650, 0.704, 0.286), E = (0.072,
  0.990, 0.105) (Ruifrok and Johnston's optical density vectors), jitter
  sd 0.1; gains 0.4-1.25 (H), 0.45-1.45 (E); background OD 0-0.05;
  brightness 0.9-1.0.
* ``"b"``: another lab. P(malignant) = 0.75; H = (0.5626, 0.7201, 0.4062),
  E = (0.2159, 0.8012, 0.5581) (the reference H&E matrix often used with
  Macenko et al.'s 2009 stain normalisation: a more purple haematoxylin,
  an eosin that also absorbs blue, so more orange-red), jitter sd 0.08;
  gains 0.6-1.45 (H, stronger), 0.3-0.95 (E, paler); background OD
  0.02-0.07; brightness 0.88-0.98. White balance (sd 3 %), drift, blur,
  noise, focus and JPEG as in a.

Measured with ``python -m semimoe.data.glas_synthetic --domains 16`` (seeds
``[0, i]``, i < 16, each with the grade it draws in that domain; optical
density ``-ln((v + 1) / 256)``, per stain by least squares on the domain's
own H and E vectors; malignant fraction over 200 grade draws):

=================================  ===================  ===================
domain                             a                    b
=================================  ===================  ===================
mean RGB (0-255)                   186.1, 139.0, 204.0  170.2, 142.0, 166.4
same, with domain a's grades       186.1, 139.0, 204.0  173.3, 146.0, 169.9
mean OD (R, G, B)                  0.367, 0.677, 0.235  0.475, 0.696, 0.464
mean OD per stain (H, E)           0.556, 0.292         0.740, 0.234
malignant images of the 16         6                    12
malignant fraction, 200 draws      0.525                0.765
=================================  ===================  ===================

So b is darker in blue (-38 grey levels) and red (-16), about as green,
with more haematoxylin and less eosin. The data module draws b with
``DataConfig.synthetic_domain = "b"`` and normalises it with domain a's
constants below (set ``data.mean`` / ``data.std`` to change that).

Labels
------
int32, 0 = background (stroma, gaps, glass), 1..n = glands numbered in
row-major order of first appearance. Each gland is ONE 4-connected component
without holes; its lumen (all lumina of a cribriform gland) belongs to it, as
in GlaS. Touching glands are separate instances that share a border. Pieces
under 60 µm^2 are dropped; a gland split by a neighbour, the warp or the
tissue edge keeps its largest piece.

Measured facts
--------------
``python -m semimoe.data.glas_synthetic --stats 128`` (seeds ``[0, i]``,
i < 128: 64 benign, 64 malignant; diameters and solidity over glands that
the image border does not cut):

===============================  ===================  ===================
grade                            benign               malignant
===============================  ===================  ===================
gland pixels (mean, range)       32 % (19-46 %)       51 % (29-74 %)
glands per image (mean, range)   13.4 (7-29)          11.3 (4-22)
touching pairs per image         1.19                 3.64
images with a touching pair      75 %                 100 %
equivalent diameter, median      67 µm                80 µm
equivalent diameter, 10-90 %     48-96 µm             35-155 µm
mean solidity                    0.963                0.850
CPU time per image               0.36 s               0.55 s
===============================  ===================  ===================

The best single global threshold on R, G, B or grey (either direction) over
those 128 images reaches a pooled gland Dice of 0.59 (the old generator's
docstring: ~0.67). Times are single-threaded NumPy/SciPy CPU seconds on a
shared 2-core machine (build_datasets decodes in threads).

Supervised reference
--------------------
One seed each (not a mean over seeds), ``python -m semimoe.train --preset
cpu-demo data.kind=synthetic-glas train.method=supervised model.gate=image
train.refine=null data.label_ratio=<r> data.val_ratio=0.15
train.overlays=0 train.progress=false train.threads=2 --run-dir <dir>``:
16-wide U-Net experts, 300 AdamW iterations of 4 128x128 crops at
1.26 µm/px (images resampled by 0.49), 200 training images of which 30
validate, 40 test images; 2 CPU threads, ~8.5 min per run. Pooled Dice
and object F1 of best.pt through the deployed predictor:

==========================  =========  =========  ==============
labeled images (r)          val Dice   test Dice  test object F1
==========================  =========  =========  ==============
170 (0.85)                  0.801      0.845      0.557
20 (0.1)                    0.766      0.818      0.536
==========================  =========  =========  ==============

Both runs were still improving (best.pt is the last validation, iteration
300). On the old generator the same supervised setting with 20 labeled
images reached a validation Dice of 0.920 (one seed).

The benchmark's CPU scale (``scripts/results.py``, docs/RESULTS.md: 8-wide
experts, 300 iterations of 96x96 crops, 85 training images of which 13
validate, 40 test images), 3 seeds, supervised-only test Dice mean ± sd:
0.841 ± 0.008 with 72 labeled images (the ceiling), 0.791 ± 0.043 with 9
(10 %), 0.695 ± 0.066 with 4 (5 %). The ceiling is 5.0 points above 10 %
and 14.7 above 5 %: room for unlabeled images to matter, which Semi-MoE
uses at 5 % (+8.8 points, 95 % interval [+2.1, +15.4]).

Determinism
-----------
All randomness comes from one ``numpy.random.Generator`` seeded with the
seed; the same seed (and grade) gives identical arrays. JPEG artefacts come
from Pillow's encoder/decoder, so bit-identical output across machines
also assumes the same libjpeg build.

Normalisation: :data:`GLAS_SYNTHETIC_MEAN` / :data:`GLAS_SYNTHETIC_STD`
(``compute_mean_std(n=128)``). In the data module this is
``DataConfig.kind = "synthetic-glas"`` (:mod:`semimoe.data.datasets`). A
figure of samples: ``python -m semimoe.data.glas_synthetic --figure
docs/synthetic.png``.
"""
from __future__ import annotations

import argparse
import io
import math
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.special import ndtri

from .scale import GLAS_SYNTHETIC_MPP
from .synthetic import (
    _E_VEC,
    _H_VEC,
    _candidates,
    channel_mean_std,
    SeedLike,
    _fits,
    _Gland,
    _place_glands,
    _relabel,
    _render_glands,
    _smooth_noise,
    _splat_ellipses,
)

__all__ = [
    "make_glas_sample",
    "glas_grade",
    "GlasDomain",
    "GLAS_DOMAINS",
    "measure_domains",
    "compute_mean_std",
    "mean_std",
    "touching_pairs",
    "measure",
    "save_figure",
    "main",
    "GRADES",
    "GLAS_SYNTHETIC_SIZE",
    "GLAS_SYNTHETIC_MPP",
    "GLAS_SYNTHETIC_MEAN",
    "GLAS_SYNTHETIC_STD",
]

GRADES = ("benign", "malignant")
#: (H, W) of a GlaS image (775x522 W x H).
GLAS_SYNTHETIC_SIZE = (522, 775)
# Measured with compute_mean_std(n=128, base_seed=0); see
# tests/test_glas_synthetic.py::test_mean_std_constants.
GLAS_SYNTHETIC_MEAN = (0.7205, 0.5335, 0.7950)
GLAS_SYNTHETIC_STD = (0.2059, 0.1985, 0.1334)

_MIN_GLAND_UM2 = 60.0  # smallest kept gland piece, µm^2 (GlaS labels tiny edge fragments too)


def _px(um):
    """µm -> pixels at GLAS_SYNTHETIC_MPP."""
    return um / GLAS_SYNTHETIC_MPP


@dataclass(frozen=True)
class GlasDomain:
    """One lab's slides: the grade mix and the stain/scanner draws of
    :func:`make_glas_sample` (every other draw is the same in all domains).
    Pairs are the (low, high) of a uniform draw per image."""

    p_malignant: float  # P(malignant): the seed's first draw is compared with it
    h_vec: Tuple[float, float, float]  # haematoxylin optical density direction (R, G, B), before jitter
    e_vec: Tuple[float, float, float]  # eosin likewise
    vec_sd: float  # per-image N(0, vec_sd) jitter of each component of both vectors
    h_gain: Tuple[float, float]  # haematoxylin gain
    e_gain: Tuple[float, float]  # eosin gain
    bg_od: Tuple[float, float]  # background optical density, plus N(0, bg_od_sd) per channel
    bg_od_sd: float
    brightness: Tuple[float, float]  # lamp brightness
    white_sd: float  # white balance: sd of the per-channel gain


#: The domains, by name (module docstring, "Domains"). ``"a"`` is the
#: generator as it always was; ``"b"`` another lab. Read-only.
GLAS_DOMAINS: Dict[str, GlasDomain] = {
    "a": GlasDomain(
        p_malignant=0.5, h_vec=tuple(_H_VEC.tolist()), e_vec=tuple(_E_VEC.tolist()), vec_sd=0.1,
        h_gain=(0.4, 1.25), e_gain=(0.45, 1.45), bg_od=(0.0, 0.05), bg_od_sd=0.012,
        brightness=(0.9, 1.0), white_sd=0.03),
    "b": GlasDomain(
        p_malignant=0.75, h_vec=(0.5626, 0.7201, 0.4062), e_vec=(0.2159, 0.8012, 0.5581), vec_sd=0.08,
        h_gain=(0.6, 1.45), e_gain=(0.3, 0.95), bg_od=(0.02, 0.07), bg_od_sd=0.012,
        brightness=(0.88, 0.98), white_sd=0.03),
}


def _domain(domain: str) -> GlasDomain:
    try:
        return GLAS_DOMAINS[domain]
    except (KeyError, TypeError):
        raise ValueError(f"domain must be one of {', '.join(GLAS_DOMAINS)}, got {domain!r}") from None


def glas_grade(seed: SeedLike, domain: str = "a") -> str:
    """The grade ``make_glas_sample(seed, domain=domain)`` draws: the first
    draw of the seed's generator compared with the domain's P(malignant)
    (1/2 in ``"a"``, 3/4 in ``"b"``), without rendering anything."""
    p = _domain(domain).p_malignant
    return GRADES[int(np.random.default_rng(seed).random() < p)]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _no_tissue(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """Bool (H, W): slide glass beyond a wavy tissue edge along one image side."""
    side = int(rng.integers(4))
    L, D = (W, H) if side < 2 else (H, W)
    depth = rng.uniform(0.06, 0.3) * D
    wave = _smooth_noise(rng, 1, L, rng.uniform(80.0, 250.0))[0] * rng.uniform(0.03, 0.1) * D
    edge = depth + wave  # glass where the distance from the side is below edge
    pos = np.arange(D, dtype=np.float64)
    if side % 2 == 1:
        pos = D - 1 - pos
    glass = pos[:, None] < edge[None, :]  # (D, L)
    return glass if side < 2 else glass.T


def make_glas_sample(
    seed: SeedLike,
    size: Tuple[int, int] = GLAS_SYNTHETIC_SIZE,
    grade: Optional[str] = None,
    domain: str = "a",
) -> Tuple[np.ndarray, np.ndarray, str]:
    """Draw one GlaS-like H&E image with gland instance labels.

    Args:
        seed: anything ``numpy.random.default_rng`` accepts. Same seed (and
            grade) -> identical output.
        size: (H, W); the default is GlaS's 522x775. Tissue is drawn at
            :data:`GLAS_SYNTHETIC_MPP` µm/px whatever the size.
        grade: ``"benign"`` or ``"malignant"``; None: :func:`glas_grade` of
            the seed. Forcing the grade keeps the rest of the seed's stream.
        domain: a key of :data:`GLAS_DOMAINS`: ``"a"`` (the default, the
            generator as it always was) or ``"b"`` (another lab: P(malignant)
            3/4 and another stain). Only the grade threshold and the stain /
            scanner draws differ: the same seed and grade give the same
            tissue and labels in every domain.

    Returns:
        image uint8 (H, W, 3) RGB; labels int32 (H, W): 0 background, 1..n
        glands (lumen included), each one 4-connected component, numbered
        in row-major order of first appearance; touching glands share a
        border; grade.
    """
    H, W = int(size[0]), int(size[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    dom = _domain(domain)
    rng = np.random.default_rng(seed)
    natural = GRADES[int(rng.random() < dom.p_malignant)]  # same draw as glas_grade
    if grade is None:
        grade = natural
    if grade not in GRADES:
        raise ValueError(f"grade must be one of {', '.join(GRADES)} or None, got {grade!r}")
    mal = grade == "malignant"

    # ---- scanner and stain: per-image ---------------------------------------------
    # (the domain changes these draws' parameters, never their number or order)
    hv = _unit(np.abs(np.asarray(dom.h_vec) + rng.normal(0.0, dom.vec_sd, 3)))
    ev = _unit(np.abs(np.asarray(dom.e_vec) + rng.normal(0.0, dom.vec_sd, 3)))
    h_gain = rng.uniform(*dom.h_gain)
    e_gain = rng.uniform(*dom.e_gain)
    bg_od = rng.uniform(*dom.bg_od) + rng.normal(0.0, dom.bg_od_sd, 3)
    white = rng.uniform(*dom.brightness) * (1.0 + rng.normal(0.0, dom.white_sd, 3))  # brightness, white balance
    stain_sigma = rng.uniform(0.6, 1.2)
    noise_std = rng.uniform(1.5, 5.0)
    focus_sigma = rng.uniform(0.7, 2.0) if rng.random() < 0.3 else 0.0
    jpeg_q = int(rng.integers(60, 96)) if rng.random() < 0.35 else 0

    # ---- tissue: per-image ----------------------------------------------------------
    sc = math.exp(rng.uniform(math.log(0.75), math.log(1.35)) if not mal else
                  rng.uniform(math.log(0.8), math.log(1.5)))  # gland size factor
    e_stroma = rng.uniform(0.3, 0.5) if not mal else rng.uniform(0.35, 0.6)
    h_stroma = rng.uniform(0.05, 0.14) if not mal else rng.uniform(0.03, 0.1)
    pale_frac = rng.uniform(0.0, 0.05) if not mal else rng.uniform(0.02, 0.1)

    # ---- geometry: components, then instances -------------------------------------
    if not mal:
        glands = _place_glands(
            rng, H, W, sc, n_range=(2.0, 3.4), radius_range=(_px(24.0), _px(46.0)),
            n_touch=int(rng.choice([0, 1, 1, 2, 3])), gap=_px(rng.uniform(8.0, 25.0)), margin=0.5,
            overlap=(0.8, 0.9), shape=dict(aspect_spread=1.6, amp_max=0.10))
    else:
        glands = _place_glands(
            rng, H, W, sc, n_range=(1.6, 3.0), radius_range=(_px(30.0), _px(100.0)),
            n_touch=int(rng.integers(2, 7)), gap=_px(rng.uniform(-8.0, 4.0)), margin=0.8,
            overlap=(0.72, 0.88), shape=dict(aspect_spread=1.2, amp_max=0.22))
    n_main = len(glands)
    inst = list(range(1, n_main + 1))  # component -> instance
    if mal:
        # lobes overlapping a gland deeply: fused with it (one instance) or a
        # separate gland pressed against it (back-to-back, a long shared border)
        for p in range(n_main):
            if rng.random() >= 0.5:
                continue
            own = [p]
            for _lobe in range(int(rng.integers(1, 4))):
                par = glands[p]
                psi = rng.uniform(0.0, 2 * math.pi)
                g = _Gland(rng, 0.0, 0.0, par.r0 * rng.uniform(0.45, 0.9), aspect_spread=1.2, amp_max=0.22)
                d = (par.extent(psi) + g.extent(psi + math.pi)) * rng.uniform(0.35, 0.65)
                g.cy, g.cx = par.cy + d * math.sin(psi), par.cx + d * math.cos(psi)
                if _fits(glands, g, _px(2.0), ignore=own):
                    own.append(len(glands))
                    glands.append(g)
                    inst.append(inst[p] if rng.random() < 0.55 else len(glands) + 10_000)
        # small solid nests and tumour buds in the stroma
        for _nest in range(int(rng.poisson(3.0 * H * W / (522.0 * 775.0)))):
            g = _Gland(rng, rng.uniform(0, H), rng.uniform(0, W), _px(rng.uniform(9.0, 22.0)),
                       aspect_spread=0.8, amp_max=0.22)
            if _fits(glands, g, _px(4.0)):
                glands.append(g)
                inst.append(len(glands) + 20_000)  # own instance
    comp, _ = _render_glands(glands, H, W)
    lut = np.concatenate([[0], np.asarray(inst, np.int64)]).astype(np.int32)
    owner = lut[comp]

    # irregular outlines: warp the instance map by smooth displacement fields
    yy = np.arange(H, dtype=np.float64)[:, None]
    xx = np.arange(W, dtype=np.float64)[None, :]
    if not mal:
        amp, cell = rng.uniform(1.5, 4.0), rng.uniform(20.0, 35.0)
        wy = amp * _smooth_noise(rng, H, W, cell)
        wx = amp * _smooth_noise(rng, H, W, cell)
    else:
        amp, cell = rng.uniform(5.0, 12.0), rng.uniform(25.0, 50.0)
        fine = rng.uniform(1.5, 3.5)
        wy = amp * _smooth_noise(rng, H, W, cell) + fine * _smooth_noise(rng, H, W, 8.0)
        wx = amp * _smooth_noise(rng, H, W, cell) + fine * _smooth_noise(rng, H, W, 8.0)
    iy = np.clip(np.rint(yy + wy), 0, H - 1).astype(np.int64)
    ix = np.clip(np.rint(xx + wx), 0, W - 1).astype(np.int64)
    owner = owner[iy, ix]

    glass = _no_tissue(rng, H, W) if rng.random() < 0.2 else np.zeros((H, W), bool)
    owner[glass] = 0
    labels = _relabel(owner, min_size=int(round(_MIN_GLAND_UM2 / GLAS_SYNTHETIC_MPP ** 2)), connectivity=1)
    # the warp can fold a few background pixels into a gland: a gland has no holes
    for k, sl in enumerate(ndimage.find_objects(labels), 1):
        sub = labels[sl]
        sub[ndimage.binary_fill_holes(sub == k) & (sub == 0)] = k
    inside = labels > 0
    n = int(labels.max())

    # distance of every pixel to the nearest gland outline (shared borders
    # count, the image border does not); the nearest outline pixel gives the
    # outward normal for nucleus orientation
    lp = np.pad(labels, 1, mode="edge")
    edge = inside & ((lp[:-2, 1:-1] != labels) | (lp[2:, 1:-1] != labels)
                     | (lp[1:-1, :-2] != labels) | (lp[1:-1, 2:] != labels))
    if edge.any():
        dist, (ny, nx) = ndimage.distance_transform_edt(~edge, return_indices=True)
    else:
        dist = np.full((H, W), 1e6)
        ny = np.broadcast_to(np.arange(H)[:, None], (H, W))
        nx = np.broadcast_to(np.arange(W)[None, :], (H, W))
    depth = np.where(inside, dist + 0.5, 0.0)
    near_lab = labels[ny, nx]  # label of the nearest outline pixel

    # ---- per-gland structure -----------------------------------------------------------
    objs = ndimage.find_objects(labels)
    maxd = np.zeros(n + 1)
    for k, sl in enumerate(objs, 1):
        maxd[k] = float(depth[sl][labels[sl] == k].max())
    mf = _smooth_noise(rng, H, W, 6.0)   # fine modulation
    lf = _smooth_noise(rng, H, W, 40.0 * sc)  # coarse modulation
    kind = np.zeros(n + 1, np.int64)  # 0 tubular, 1 cribriform, 2 solid
    if not mal:
        rim0 = _px(rng.uniform(16.0, 28.0, n + 1)) * math.sqrt(sc)
        rim0 = np.minimum(rim0, rng.uniform(0.4, 0.7, n + 1) * maxd)
        kind[1:] = np.where(rng.random(n) < 0.06, 2, 0)
        rim_mod = 0.2
    else:
        rim0 = _px(rng.uniform(20.0, 45.0, n + 1))
        rim0 = np.minimum(rim0, rng.uniform(0.5, 0.85, n + 1) * maxd)
        u = rng.random(n)
        big = maxd[1:] > _px(28.0)
        kind[1:] = np.where(big & (u < 0.3), 1, np.where((u > 0.82) | (maxd[1:] < _px(14.0)), 2, 0))
        rim_mod = 0.35
    rim = rim0[labels] * (1.0 + rim_mod * _smooth_noise(rng, H, W, _px(15.0)))
    lumen = inside & (kind[labels] == 0) & (depth > rim)

    # cribriform: several punched-out lumina inside one gland
    if mal and (kind == 1).any():
        crib = np.zeros((H, W))
        ly, lx, la, lb, lang = [], [], [], [], []
        for k in np.flatnonzero(kind == 1):
            sl = objs[k - 1]
            rim_c = _px(rng.uniform(8.0, 14.0))
            sub_d = depth[sl] * (labels[sl] == k)
            cand = np.flatnonzero(sub_d > rim_c + _px(7.0))
            got = []
            for _t in range(min(60, cand.size)):
                c = int(cand[rng.integers(cand.size)])
                cy0, cx0 = divmod(c, sub_d.shape[1])
                r = min(_px(rng.uniform(6.0, 16.0)), float(sub_d.flat[c]) - rim_c)
                bridge = _px(rng.uniform(4.0, 9.0))
                if r < _px(5.0) or any(math.hypot(cy0 - y, cx0 - x) < r + q + bridge for y, x, q in got):
                    continue
                got.append((cy0, cx0, r))
                if len(got) >= 12:
                    break
            if len(got) < 2:  # no room for two lumina: an ordinary tubular gland
                kind[k] = 0
                continue
            for y, x, r in got:
                ly.append(y + sl[0].start)
                lx.append(x + sl[1].start)
                la.append(r)
                lb.append(r * rng.uniform(0.7, 1.0))
                lang.append(rng.uniform(0.0, math.pi))
        if ly:
            _splat_ellipses(crib, np.asarray(ly, float), np.asarray(lx, float), np.asarray(la),
                            np.asarray(lb), np.asarray(lang), np.ones(len(la)))
            lumen |= (crib > 0.5) & (kind[labels] == 1)
        lumen = inside & np.where(kind[labels] == 0, depth > rim, lumen)
    epi = inside & ~lumen
    if lumen.any():
        dlum = ndimage.distance_transform_edt(~lumen)
    else:
        dlum = np.full((H, W), 1e6)

    # pale gaps in the stroma (tears, vessels, fat): lumen-like colour
    pale = np.clip((lf - float(ndtri(1.0 - pale_frac))) * 2.0, 0.0, 1.0) * ~inside

    # ---- stain concentration maps -----------------------------------------------------
    fib_h = bool(rng.random() < 0.5)
    fl, fs = _px(rng.uniform(8.0, 16.0)), _px(1.2)
    fib = _smooth_noise(rng, H, W, fs, fl) if fib_h else _smooth_noise(rng, H, W, fl, fs)
    fib = fib[iy, ix]  # wavy fibres
    fib_amp = rng.uniform(0.1, 0.2) if not mal else rng.uniform(0.18, 0.32)
    E = e_stroma * np.clip(1.0 + fib_amp * fib + 0.12 * mf + 0.12 * lf, 0.15, None)
    Hc = h_stroma * np.clip(1.0 + 0.3 * mf, 0.2, None)
    E = E * (1.0 - 0.9 * pale)
    Hc = Hc * (1.0 - 0.8 * pale)
    if not mal:
        e_epi = e_stroma * rng.uniform(0.55, 0.95, n + 1)
        h_epi = rng.uniform(0.12, 0.3, n + 1)
    else:
        e_epi = e_stroma * rng.uniform(0.75, 1.2, n + 1)
        h_epi = rng.uniform(0.15, 0.35, n + 1)
        # poorly defined glands: epithelium pulled towards the stroma's colour
        contrast = np.where(rng.random(n + 1) < 0.5, rng.uniform(0.4, 0.85, n + 1), 1.0)
        e_epi = e_stroma + contrast * (e_epi - e_stroma)
        h_epi = h_stroma + contrast * (h_epi - h_stroma)
    E = np.where(epi, e_epi[labels] * (1.0 + 0.15 * mf), E)
    Hc = np.where(epi, h_epi[labels] * (1.0 + 0.25 * mf), Hc)

    # lumen: clear, faint mucin, or (malignant) eosinophilic necrotic debris
    sm = _smooth_noise(rng, H, W, _px(12.0))
    lum_e = rng.uniform(0.02, 0.1) * (1.0 + 0.3 * sm)
    mucin = rng.uniform(0.0, 0.12, n + 1) * (rng.random(n + 1) < 0.4)
    debris = (rng.random(n + 1) < 0.35) & (kind == 0) if mal else np.zeros(n + 1, bool)
    deb_e = rng.uniform(0.25, 0.5) * np.clip(1.0 + 0.3 * mf + 0.3 * lf, 0.3, None)
    deb = lumen & debris[labels] & (sm > rng.uniform(-0.8, 0.3))  # debris fills part of a lumen
    E = np.where(lumen, np.where(deb, deb_e, lum_e), E)
    Hc = np.where(lumen, mucin[labels] * (1.0 + 0.4 * sm) + 0.1 * deb, Hc)

    # poorly defined boundaries (malignant, about half the glands): the
    # cytoplasm and stroma colours are blended across the outline over a few
    # µm, and tumour nuclei spill into the stroma next to it (below)
    spill = np.zeros((H, W))
    if mal and n:
        wdt = np.where(rng.random(n + 1) < 0.5, _px(rng.uniform(3.0, 10.0, n + 1)), 0.0)
        wdt[0] = 0.0
        w_pix = wdt[near_lab]
        spill = np.clip(1.0 - dist / np.maximum(w_pix, 1e-9), 0.0, 1.0) * (w_pix > 0)
        if spill.any():
            s_b = _px(rng.uniform(2.0, 4.0))
            E = E + spill * (ndimage.gaussian_filter(E, s_b, truncate=2.5) - E)
            Hc = Hc + spill * (ndimage.gaussian_filter(Hc, s_b, truncate=2.5) - Hc)

    # ---- cells ------------------------------------------------------------------------------
    n_cand = int(H * W / 12.0)
    cy, cx, ci, cj, u = _candidates(rng, H, W, n_cand)
    lab_c = labels[ci, cj]
    d_c = depth[ci, cj]
    rim_c = rim[ci, cj]
    dl_c = dlum[ci, cj]
    epi_c = epi[ci, cj]
    kind_c = kind[lab_c]
    # outward normal at the candidate: away from the nearest outline pixel
    normal = np.arctan2(cy - ny[ci, cj], cx - nx[ci, cj])

    nuc = np.zeros((H, W))
    gob = np.zeros((H, W))

    def splat(out, sel, a_um, ratio, amp, angle=None, jitter=0.3, y=None, x=None, log_sd=0.0):
        y = cy[sel] if y is None else y
        x = cx[sel] if x is None else x
        k = y.size
        if k == 0:
            return
        a = _px(rng.uniform(a_um[0], a_um[1], k)) * np.exp(log_sd * rng.standard_normal(k))
        b = a * rng.uniform(ratio[0], ratio[1], k)
        if angle is None:
            ang = rng.uniform(0, math.pi, k)
        else:
            ang = angle + rng.normal(0.0, jitter, k)
        _splat_ellipses(out, y, x, a, b, ang, rng.uniform(amp[0], amp[1], k))

    if not mal:
        band = np.maximum(0.35 * rim_c, _px(5.0))
        basal = epi_c & (d_c > 1.0) & (d_c < band)
        pick = basal & (u < rng.uniform(0.15, 0.25))
        splat(nuc, pick, (4.0, 6.0), (0.3, 0.5), (0.75, 1.1), angle=normal[pick], jitter=0.25)
        # goblet cells: mucin vacuoles in the apical cytoplasm
        apical = epi_c & (d_c > band + _px(2.0)) & (dl_c > _px(1.5))
        pick = apical & (u < rng.uniform(0.015, 0.05))
        splat(gob, pick, (2.5, 4.5), (0.6, 0.95), (0.6, 1.0), angle=normal[pick], jitter=0.3)
    else:
        # stratified, crowded, pleomorphic: anywhere in the epithelium, denser
        # near the basement membrane and (cribriform) around each lumen
        strat = rng.uniform(0.6, 0.95, n + 1)[lab_c]
        near = (d_c < strat * rim_c) | (dl_c < _px(10.0)) | (kind_c == 2)
        p_epi = rng.uniform(0.05, 0.09)
        spill_c = spill[ci, cj] * (lab_c == 0) * ~glass[ci, cj]
        pick = (epi_c & (d_c > 1.0) & (u < np.where(near, p_epi, 0.3 * p_epi))) | (u < 0.6 * p_epi * spill_c)
        elong = rng.random(pick.sum()) < rng.uniform(0.5, 0.85)
        ang_n = normal[pick]
        sel = np.flatnonzero(pick)
        splat(nuc, sel[elong], (4.5, 7.5), (0.3, 0.55), (0.85, 1.3), angle=ang_n[elong], jitter=0.35,
              log_sd=0.2)
        # round vesicular nuclei: a dark membrane around paler chromatin
        ves = sel[~elong]
        a_v = _px(rng.uniform(3.0, 5.0, ves.size)) * np.exp(0.2 * rng.standard_normal(ves.size))
        r_v = rng.uniform(0.7, 1.0, ves.size)
        ang_v = rng.uniform(0, math.pi, ves.size)
        _splat_ellipses(nuc, cy[ves], cx[ves], a_v, a_v * r_v, ang_v, rng.uniform(0.8, 1.3, ves.size))
        _splat_ellipses(nuc, cy[ves], cx[ves], 0.7 * a_v, 0.7 * a_v * r_v, ang_v,
                        -rng.uniform(0.3, 0.6, ves.size))
        # necrotic debris: nuclear dust in the lumen
        pick = deb[ci, cj] & (u < 0.08)
        splat(nuc, pick, (0.8, 2.2), (0.6, 1.0), (0.7, 1.3))

    lum_c = (lab_c > 0) & ~epi_c
    pick = lum_c & ~debris[lab_c] & (u < rng.uniform(0.0, 0.004))  # shed cells
    splat(nuc, pick, (2.0, 3.2), (0.7, 1.0), (0.8, 1.2))

    # stroma: lymphocytes and plasma cells (dense in benign lamina propria),
    # spindle fibroblasts along the fibres, lymphoid clusters
    stroma_c = (lab_c == 0) & (pale[ci, cj] < 0.5) & ~glass[ci, cj]
    p_lym = rng.uniform(0.008, 0.03) if not mal else rng.uniform(0.002, 0.012)
    p_fib = rng.uniform(0.002, 0.006) if not mal else rng.uniform(0.003, 0.009)
    pick = stroma_c & (u > 1.0 - p_lym)
    splat(nuc, pick, (2.6, 3.6), (0.8, 1.0), (0.9, 1.4))
    pick = stroma_c & (u > 1.0 - p_lym - p_fib) & (u <= 1.0 - p_lym)
    splat(nuc, pick, (5.0, 9.0), (0.12, 0.25), (0.5, 0.9), angle=0.0 if fib_h else 0.5 * math.pi, jitter=0.3)
    n_cl = int(rng.poisson(1.0 * H * W / (522.0 * 775.0)))
    if n_cl:
        k_per = rng.integers(20, 120, n_cl)
        ccy = np.repeat(rng.uniform(0, H, n_cl), k_per)
        ccx = np.repeat(rng.uniform(0, W, n_cl), k_per)
        spread = np.repeat(_px(rng.uniform(8.0, 25.0, n_cl)), k_per)
        ly = ccy + rng.standard_normal(ccy.size) * spread
        lx = ccx + rng.standard_normal(ccx.size) * spread
        ok = (ly >= 0) & (ly < H) & (lx >= 0) & (lx < W)
        ly, lx = ly[ok], lx[ok]
        iy_l, ix_l = ly.astype(np.int64), lx.astype(np.int64)
        ok = (labels[iy_l, ix_l] == 0) & ~glass[iy_l, ix_l]
        splat(nuc, None, (2.4, 3.3), (0.85, 1.0), (1.0, 1.4), y=ly[ok], x=lx[ok])

    gob = np.minimum(gob, 1.0) * epi
    E = E * (1.0 - 0.6 * gob)
    Hc = Hc * (1.0 - gob) + gob * rng.uniform(0.08, 0.2) * (1.0 + 0.4 * mf)
    h_nuc = rng.uniform(1.0, 1.5) if not mal else rng.uniform(1.2, 1.8)
    nuc = np.clip(nuc, 0.0, 1.5)
    chromatin = 0.6 + 0.8 * rng.random((H, W), dtype=np.float32)
    Hc = Hc + h_nuc * nuc * chromatin
    E = E * (1.0 - 0.45 * np.minimum(nuc, 1.0))

    # slide glass beyond the tissue edge; uneven staining across the image
    E = np.where(glass, 0.0, E)
    Hc = np.where(glass, 0.0, Hc)
    drift = 1.0 + rng.uniform(0.0, 0.15) * _smooth_noise(rng, H, W, rng.uniform(150.0, 300.0))
    Hc = Hc * drift
    E = E * drift

    # ---- optics ---------------------------------------------------------------------------
    Hc = ndimage.gaussian_filter(Hc * h_gain, stain_sigma, truncate=2.5)
    E = ndimage.gaussian_filter(E * e_gain, stain_sigma, truncate=2.5)
    od = hv[:, None, None] * Hc + ev[:, None, None] * E + bg_od[:, None, None]
    img = (255.0 * white)[:, None, None] * np.exp(-1.15 * od)
    if focus_sigma > 0:
        img = ndimage.gaussian_filter(img, (0.0, focus_sigma, focus_sigma), truncate=2.5)
    img += (rng.random(img.shape, dtype=np.float32) - 0.5) * (noise_std / 0.2887)
    image = np.ascontiguousarray(np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(1, 2, 0))
    if jpeg_q:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=jpeg_q)
        buf.seek(0)
        image = np.asarray(Image.open(buf).convert("RGB")).copy()
    return image, labels.astype(np.int32), grade


# ----------------------------------------------------------------------------
# Statistics, figure, command line
# ----------------------------------------------------------------------------
def compute_mean_std(
    n: int = 32, base_seed: int = 0, size: Tuple[int, int] = GLAS_SYNTHETIC_SIZE, domain: str = "a"
) -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
    """Per-channel mean and std of images in [0, 1] over the ``n`` samples of
    seeds ``[base_seed, 0..n-1]`` (each with the grade its seed draws) of ``domain``."""
    return channel_mean_std(make_glas_sample([int(base_seed), i], size, domain=domain)[0] for i in range(n))


def mean_std() -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
    """Per-channel (mean, std) of the generator's images scaled to [0, 1]:
    constants measured once with ``compute_mean_std(n=128)``."""
    return GLAS_SYNTHETIC_MEAN, GLAS_SYNTHETIC_STD


def touching_pairs(labels: np.ndarray) -> int:
    """Number of distinct pairs of glands that share a border (4-neighbours)."""
    a, b = labels[:, :-1].ravel(), labels[:, 1:].ravel()
    c, d = labels[:-1].ravel(), labels[1:].ravel()
    u = np.concatenate([a, c]).astype(np.int64)
    v = np.concatenate([b, d]).astype(np.int64)
    m = (u > 0) & (v > 0) & (u != v)
    if not m.any():
        return 0
    lo, hi = np.minimum(u[m], v[m]), np.maximum(u[m], v[m])
    return int(np.unique(lo * (int(labels.max()) + 1) + hi).size)


def _best_threshold_dice(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Best pooled Dice of one global threshold on R, G, B or grey (either side)."""
    best = 0.0
    n_fg = int(sum(int(m.sum()) for m in masks))
    for ch in range(4):
        h_fg = np.zeros(256, np.int64)
        h_all = np.zeros(256, np.int64)
        for img, m in zip(images, masks):
            v = img[..., ch] if ch < 3 else np.rint(img.astype(np.float64).mean(-1)).astype(np.int64)
            v = v.astype(np.int64)
            h_fg += np.bincount(v[m], minlength=256)
            h_all += np.bincount(v.ravel(), minlength=256)
        tp_lo = np.concatenate([[0], np.cumsum(h_fg)])
        p_lo = np.concatenate([[0], np.cumsum(h_all)])
        for tp, p in ((tp_lo, p_lo), (n_fg - tp_lo, p_lo[-1] - p_lo)):
            best = max(best, float((2 * tp / np.maximum(p + n_fg, 1)).max()))
    return best


def measure_domains(n_images: int = 16, n_grades: int = 200, base_seed: int = 0) -> dict:
    """The domain shift the docstring quotes, per domain of :data:`GLAS_DOMAINS`:
    over the ``n_images`` images of seeds ``[base_seed, i]`` (each with the
    grade it draws in that domain) the mean RGB (0-255), the mean optical
    density ``-ln((v + 1) / 256)`` per channel and per stain (least squares
    on the domain's own H and E vectors), the mean RGB of the same seeds
    drawn with domain a's grades (same tissue, only the stain differs), and
    the malignant fraction of ``n_grades`` :func:`glas_grade` draws."""
    out = {}
    for name, dom in GLAS_DOMAINS.items():
        basis = np.stack([_unit(np.asarray(dom.h_vec)), _unit(np.asarray(dom.e_vec))], 1)  # (3, 2)
        rgb, od, stain, same = [], [], [], []
        for i in range(n_images):
            s = [int(base_seed), i]
            v = make_glas_sample(s, domain=name)[0].reshape(-1, 3).astype(np.float64)
            d = -np.log((v + 1.0) / 256.0)
            rgb.append(v.mean(0))
            od.append(d.mean(0))
            stain.append(np.linalg.lstsq(basis, d.mean(0), rcond=None)[0])  # linear: unmix the mean
            same.append(make_glas_sample(s, grade=glas_grade(s), domain=name)[0].reshape(-1, 3).mean(0))
        mal = sum(glas_grade([int(base_seed), i], name) == "malignant" for i in range(n_grades))
        out[name] = dict(
            mean_rgb=tuple(round(float(x), 1) for x in np.mean(rgb, 0)),
            mean_od=tuple(round(float(x), 3) for x in np.mean(od, 0)),
            stain_od_h_e=tuple(round(float(x), 3) for x in np.mean(stain, 0)),
            mean_rgb_a_grades=tuple(round(float(x), 1) for x in np.mean(same, 0)),
            malignant_fraction=mal / n_grades,
            malignant_images=sum(glas_grade([int(base_seed), i], name) == "malignant" for i in range(n_images)),
        )
    return out


def measure(n: int = 64, base_seed: int = 0, domain: str = "a") -> dict:
    """The facts the module docstring quotes, over seeds ``[base_seed, 0..n-1]``
    (each with its own grade): per grade the images, gland pixel fraction,
    glands per image, touching pairs per image and share of images with one,
    median equivalent diameter (µm) and mean solidity of glands away from the
    image border, cribriform glands; the best single colour threshold's
    pooled Dice; CPU seconds per image."""
    from skimage.measure import regionprops

    out: dict = {}
    per = {g: dict(fg=[], n=[], pairs=[], diam=[], sol=[], t=[]) for g in GRADES}
    imgs, masks = [], []
    for i in range(n):
        t0 = time.process_time()
        img, lab, g = make_glas_sample([int(base_seed), i], domain=domain)
        dt = time.process_time() - t0
        H, W = lab.shape
        r = per[g]
        r["t"].append(dt)
        r["fg"].append(float((lab > 0).mean()))
        r["n"].append(int(lab.max()))
        r["pairs"].append(touching_pairs(lab))
        for p in regionprops(lab):
            y0, x0, y1, x1 = p.bbox
            if y0 > 0 and x0 > 0 and y1 < H and x1 < W:
                r["diam"].append(p.equivalent_diameter_area * GLAS_SYNTHETIC_MPP)
                r["sol"].append(p.solidity)
        imgs.append(img)
        masks.append(lab > 0)
    for g, r in per.items():
        if not r["n"]:
            continue
        out[g] = dict(
            images=len(r["n"]),
            gland_fraction=float(np.mean(r["fg"])),
            gland_fraction_range=(float(np.min(r["fg"])), float(np.max(r["fg"]))),
            glands_per_image=float(np.mean(r["n"])),
            glands_range=(int(np.min(r["n"])), int(np.max(r["n"]))),
            touching_pairs_per_image=float(np.mean(r["pairs"])),
            images_with_touching_pair=float(np.mean(np.asarray(r["pairs"]) > 0)),
            diameter_um_median=float(np.median(r["diam"])) if r["diam"] else float("nan"),
            diameter_um_p10_p90=(tuple(float(v) for v in np.percentile(r["diam"], [10, 90]))
                                 if r["diam"] else (float("nan"),) * 2),
            solidity_mean=float(np.mean(r["sol"])) if r["sol"] else float("nan"),
            cpu_s_per_image=float(np.mean(r["t"])),
        )
    out["best_threshold_dice"] = _best_threshold_dice(imgs, masks)
    return out


def save_figure(path, n_per_grade: int = 3, seed: int = 0, domain: str = "a") -> str:
    """A PNG grid: ``n_per_grade`` rows, each with a benign image, its
    instance labels, a malignant image and its labels (half resolution). The
    samples are the first seeds ``[seed, i]`` of each grade (in ``domain``).
    Returns the path."""
    from PIL import ImageDraw, ImageFont

    from ..visualize import hcat, outline, palette

    found = {g: [] for g in GRADES}
    i = 0
    while min(len(v) for v in found.values()) < n_per_grade:
        s = [int(seed), i]
        g = glas_grade(s, domain)
        if len(found[g]) < n_per_grade:
            found[g].append(s)
        i += 1
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()

    def titled(panel: np.ndarray, title: str, head: int = 20) -> np.ndarray:
        im = Image.new("RGB", (panel.shape[1], panel.shape[0] + head), "white")
        im.paste(Image.fromarray(panel), (0, head))
        ImageDraw.Draw(im).text((3, 2), title, fill=(0, 0, 0), font=font)
        return np.asarray(im)

    rows = []
    for r in range(n_per_grade):
        panels = []
        for g in GRADES:
            s = found[g][r]
            img, lab, _ = make_glas_sample(s, domain=domain)
            pal = palette(int(lab.max()) + 1)
            col = np.where((lab > 0)[..., None], pal[lab], 0).astype(np.uint8)
            col[outline(lab, thick=True)] = 255
            panels.append(titled(img[::2, ::2], f"{g}, seed {s}" + ("" if domain == "a" else f", domain {domain}")))
            t = touching_pairs(lab)
            panels.append(titled(col[::2, ::2], f"{int(lab.max())} glands, {t} touching pair{'' if t == 1 else 's'}"))
        rows.append(hcat(panels[:2], 4))
        rows[-1] = hcat([rows[-1], np.full((rows[-1].shape[0], 12, 3), 255, np.uint8), hcat(panels[2:], 4)], 0)
    body = np.concatenate([np.concatenate([row, np.full((6,) + row.shape[1:], 255, np.uint8)], 0) for row in rows], 0)
    head = 30
    im = Image.new("RGB", (body.shape[1], body.shape[0] + head), "white")
    im.paste(Image.fromarray(body), (0, head))
    H, W = GLAS_SYNTHETIC_SIZE
    ImageDraw.Draw(im).text(
        (4, 6), f"semimoe.data.glas_synthetic: benign (left) and malignant (right) samples with instance "
        f"labels; {W}x{H} px at {GLAS_SYNTHETIC_MPP} um/px, shown at half size", fill=(0, 0, 0), font=font)
    im.save(path, optimize=True)
    return str(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m semimoe.data.glas_synthetic",
                                description="GlaS-like synthetic gland images: a sample figure and statistics.")
    p.add_argument("--figure", default=None, help="write the sample grid PNG here (e.g. docs/synthetic.png)")
    p.add_argument("--per-grade", type=int, default=3, help="samples per grade in the figure")
    p.add_argument("--seed", type=int, default=0, help="first seed word of the samples")
    p.add_argument("--stats", type=int, default=0, metavar="N",
                   help="measure the docstring's facts over N images (seeds [--seed, 0..N-1])")
    p.add_argument("--mean-std", type=int, default=0, metavar="N",
                   help="measure the normalisation constants over N images")
    p.add_argument("--domain", default="a", choices=list(GLAS_DOMAINS),
                   help="domain of --figure, --stats and --mean-std (default a)")
    p.add_argument("--domains", type=int, default=0, metavar="N",
                   help="measure the shift between the domains over N images each (and 200 grade draws)")
    args = p.parse_args(argv)
    if not (args.figure or args.stats or args.mean_std or args.domains):
        p.error("nothing to do: give --figure, --stats, --mean-std and/or --domains")
    if args.figure:
        print(save_figure(args.figure, args.per_grade, args.seed, args.domain))
    if args.stats:
        for k, v in measure(args.stats, args.seed, args.domain).items():
            print(f"{k}: {v}")
    if args.mean_std:
        m, s = compute_mean_std(args.mean_std, args.seed, domain=args.domain)
        print("mean", tuple(round(v, 4) for v in m), "std", tuple(round(v, 4) for v in s))
    if args.domains:
        for k, v in measure_domains(args.domains, 200, args.seed).items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
