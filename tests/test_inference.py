"""Tiled inference (semimoe.inference): grid, blending, equality with a
full-image forward pass where the receptive field fits in a tile, TTA,
post-processing, and an independent float64 reference of the blending."""
from __future__ import annotations

import warnings
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semimoe.data.scale import InputSpec
from semimoe.inference import (
    Predictor,
    Segmentation,
    TilingConfig,
    blend_weights,
    postprocess,
    sliding_window,
    tile_starts,
)
from semimoe.models import ModelConfig, build_model


def tiny_model(gate="spatial", depth=4, width=4, seed=0):
    torch.manual_seed(seed)
    m = build_model(ModelConfig.preset("cpu-demo", base_width=width, depth=depth, gate=gate)).eval()
    with torch.no_grad():  # non-zero spatial gate output, so the gate's receptive field counts too
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d) and not mod.weight.abs().sum():
                mod.weight.normal_(0, 0.1)
    return m


class ConvNet(nn.Module):
    """Small position-independent net: 3x3 convs, a 2x2 pool and an upsample
    (so tiles must sit on the pooling grid), softmax output (3 channels)."""

    size_multiple = 2

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        d = F.interpolate(torch.relu(self.b(F.max_pool2d(h, 2))), scale_factor=2.0, mode="nearest")
        return torch.softmax(self.c(torch.cat([h, d], 1)), 1)


# ----------------------------------------------------------------------------
# Grid and weights
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 7, 64, 65, 200, 255, 256, 257, 1512, 1516])
@pytest.mark.parametrize("tile,overlap,align", [(64, 0.25, 1), (64, 0.5, 8), (256, 0.25, 16), (96, 0.0, 8),
                                                (32, 0.9, 4)])
def test_tile_starts_cover_align_and_overlap(size, tile, overlap, align):
    starts, padded = tile_starts(size, tile, overlap, align)
    assert starts[0] == 0 and padded == starts[-1] + tile >= size
    assert all(s % align == 0 for s in starts)
    assert all(b > a for a, b in zip(starts, starts[1:]))
    stride = max(align, int(tile * (1 - overlap)) // align * align)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))  # overlap >= requested (aligned)
    assert padded - size < max(align, 1) or size <= tile


def test_tile_starts_equal_monai_grid_when_unaligned():
    # MONAI: interval int(t (1 - o)), positions d*interval clamped to size - t.
    def monai(size, t, o):
        s = int(t * (1 - o))
        n = next(d for d in range(10 ** 6) if d * s + t >= size) + 1
        return [min(d * s, size - t) for d in range(n)]

    for size in (257, 300, 775, 1512, 1516):
        for t, o in ((64, 0.25), (256, 0.25), (128, 0.5)):
            assert tile_starts(size, t, o, 1)[0] == monai(size, t, o)


def test_blend_weights_gaussian_formula_floor_and_cache():
    w = blend_weights((64, 48), "gaussian", 0.125)
    y = torch.arange(64, dtype=torch.float64) - 31.5
    x = torch.arange(48, dtype=torch.float64) - 23.5
    ref = torch.exp(-y[:, None] ** 2 / (2 * 8.0 ** 2)) * torch.exp(-x[None, :] ** 2 / (2 * 6.0 ** 2))
    ref = ref.clamp(min=1e-3).float()
    torch.testing.assert_close(w, ref, rtol=1e-6, atol=0)
    assert w.dtype == torch.float32 and w.min() >= 1e-3
    assert blend_weights((64, 48), "gaussian", 0.125) is w  # cached
    assert torch.equal(blend_weights(16, "constant"), torch.ones(16, 16))


# ----------------------------------------------------------------------------
# Blending against an independent float64 reference
# ----------------------------------------------------------------------------
class RecordingNet:
    """Runs ``net`` and records the origin (y0, x0) of every tile it is given:
    the test images carry their own pixel coordinates / 256 in channels 0 and 1, and
    a tile's top-left pixel always lies inside the image."""

    def __init__(self, net):
        self.net, self.size_multiple, self.origins = net, net.size_multiple, []

    def __call__(self, x):
        for t in x:
            self.origins.append((int(round(float(t[0, 0, 0]) * 256)), int(round(float(t[1, 0, 0]) * 256))))
        return self.net(x)


def reference_sliding_window(net, x, origins, tile, blend, sigma, pad_mode):
    """Straightforward version, independent of the tiler's grid code: pad the
    whole image, full-size float64 numerator and denominator, one tile at each
    origin the tiler actually used."""
    N, C, H, W = x.shape
    Hp = max(y0 for y0, _ in origins) + tile
    Wp = max(x0 for _, x0 in origins) + tile
    xp = x
    if Hp > H or Wp > W:
        mode = {"reflect": "reflect", "replicate": "replicate", "constant": "constant"}[pad_mode]
        # pad in steps (reflect pads must be smaller than the size)
        while xp.shape[2] < Hp or xp.shape[3] < Wp:
            ph = min(Hp - xp.shape[2], xp.shape[2] - 1) if mode == "reflect" else Hp - xp.shape[2]
            pw = min(Wp - xp.shape[3], xp.shape[3] - 1) if mode == "reflect" else Wp - xp.shape[3]
            xp = F.pad(xp, (0, pw, 0, ph), mode=mode)
    g = lambda n: torch.exp(-(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) ** 2 / (2 * (sigma * n) ** 2))  # noqa: E731
    w = (g(tile)[:, None] * g(tile)[None, :]).clamp(min=1e-3) if blend == "gaussian" else \
        torch.ones(tile, tile, dtype=torch.float64)
    num = torch.zeros(N, 3, Hp, Wp, dtype=torch.float64)
    den = torch.zeros(Hp, Wp, dtype=torch.float64)
    for y0, x0 in sorted(set(origins)):
        p = net(xp[:, :, y0:y0 + tile, x0:x0 + tile]).double()
        num[:, :, y0:y0 + tile, x0:x0 + tile] += p * w
        den[y0:y0 + tile, x0:x0 + tile] += w
    return (num / den)[:, :, :H, :W]


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("align,pad_mode,size", [(1, "reflect", (150, 203)), (8, "reflect", (150, 203)),
                                                 (8, "replicate", (77, 140)), (4, "constant", (130, 45))])
def test_matches_float64_reference(blend, align, pad_mode, size):
    net = ConvNet().eval()
    rec = RecordingNet(net)
    H, W = size
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.arange(H, dtype=torch.float32)[:, None] / 256  # coordinates: the recorder reads tile origins
    x[:, 1] = torch.arange(W, dtype=torch.float32)[None, :] / 256
    with torch.inference_mode():
        got = sliding_window(rec, x, tile=64, overlap=0.3, blend=blend, align=align, pad_mode=pad_mode,
                             batch_size=5)
        ref = reference_sliding_window(net, x, rec.origins, 64, blend, 0.125, pad_mode)
    assert got.shape == (2, 3, *size) and got.dtype == torch.float32
    # the tiles cover the image with the requested overlap, on the alignment grid
    ys = sorted({o[0] for o in rec.origins})
    xs = sorted({o[1] for o in rec.origins})
    assert len(rec.origins) == 2 * len(ys) * len(xs)
    for starts, n in ((ys, H), (xs, W)):
        assert starts[0] == 0 and starts[-1] + 64 >= n and all(s % align == 0 for s in starts)
        assert all(0 < b - a <= max(align, int(64 * 0.7) // align * align) for a, b in zip(starts, starts[1:]))
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("batch_size,fixed", [(1, False), (3, True), (7, False), (64, True)])
@pytest.mark.parametrize("tta", [None, "hflip", "flip"])
def test_identity_model_reproduces_the_input(batch_size, fixed, tta):
    # A weighted average of identical values is that value: exercises the band
    # flushes, batches spanning rows and images, uint8 normalisation, padding.
    img = torch.randint(0, 256, (2, 97, 131, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    calls = []

    def ident(x):
        calls.append(x.shape[0])
        return x.clone()

    out = sliding_window(ident, img, tile=(32, 48), overlap=0.4, batch_size=batch_size, align=4,
                         mean=mean, std=std, tta=tta, fixed_batch=fixed)
    want = (img.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    nv = {None: 1, "hflip": 2, "flip": 4}[tta]
    assert max(calls) <= max(batch_size, nv)
    if fixed:
        assert set(calls) == {max(batch_size, nv)}


def test_float16_output_and_single_image_layouts():
    net = ConvNet().eval()
    x = torch.randn(3, 70, 90)
    a = sliding_window(net, x, tile=32, out_dtype=torch.float16)
    b = sliding_window(net, x[None], tile=32)
    assert a.shape == (3, 70, 90) and a.dtype == torch.float16 and b.shape == (1, 3, 70, 90)
    torch.testing.assert_close(a.float(), b[0], rtol=0, atol=1e-3)


def test_tta_flip_averages_flipped_predictions():
    net = ConvNet().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        got = sliding_window(net, x, tile=64, tta="flip")
        want = (net(x) + net(x.flip(3)).flip(3) + net(x.flip(2)).flip(2) + net(x.flip((2, 3))).flip((2, 3))) / 4
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------
# Equality with a full-image forward pass (the real model)
# ----------------------------------------------------------------------------
def receptive_radius(depth: int) -> int:
    """Exact receptive-field radius of the gate's seg logits of a SemiMoE of
    ``depth`` levels: the support of d out / d in of a structural copy (all
    weights 1, BN identity, max-pool -> avg-pool, ReLU -> identity: the same
    dependency graph with no cancellations), maximised over the 2**(depth-1)
    pooling phases."""
    m = build_model(ModelConfig.preset("cpu-demo", base_width=1, depth=depth)).double().eval()
    m.set_fusion("reference")
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
            elif isinstance(mod, nn.BatchNorm2d):
                mod.weight.fill_(1.0), mod.bias.zero_(), mod.running_mean.zero_(), mod.running_var.fill_(1.0)
    mult = 2 ** (depth - 1)
    S = 16 * mult
    x = torch.ones(1, 3, S, S, dtype=torch.float64, requires_grad=True)
    with mock.patch.object(F, "max_pool2d", F.avg_pool2d), mock.patch.object(F, "relu", lambda t, inplace=False: t):
        out = m(x).seg[0, 1]
    c = S // 2
    radius = 0
    for ph in range(mult):
        (g,) = torch.autograd.grad(out[c + ph, c + ph], x, retain_graph=True)
        nz = (g[0].abs().sum(0) > 0).nonzero()
        radius = max(radius, int((nz - (c + ph)).abs().max()))
    return radius


def safe_axis(size: int, starts, tile: int, radius: int) -> np.ndarray:
    """Pixels of one axis that every covering tile sees with the full receptive
    field (a tile edge on the image border counts as seen: the full-image pass
    zero-pads there too)."""
    ok = np.ones(size, bool)
    idx = np.arange(size)
    for s in starts:
        cov = (idx >= s) & (idx < s + tile)
        lo_ok = (idx - s >= radius) | (s == 0)
        hi_ok = (s + tile - 1 - idx >= radius) | (s + tile == size)
        ok &= ~cov | (lo_ok & hi_ok)
    return ok


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_tiled_equals_full_image_where_receptive_field_fits(blend):
    depth, tile, overlap = 4, 256, 0.25
    R = receptive_radius(depth)
    assert 40 <= R <= 64, R  # sanity: a 4-level U-Net sees ~50 px around a pixel
    model = tiny_model(depth=depth)
    pred = model.predictor()
    # Grid ends exactly on the image borders (no padded tiles), tiles aligned to 8.
    H, W = 640, 448
    ys, Hp = tile_starts(H, tile, overlap, 8)
    xs, Wp = tile_starts(W, tile, overlap, 8)
    assert (Hp, Wp) == (H, W)
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = pred(x)[0]
        tiled = sliding_window(pred, x[0], tile=tile, overlap=overlap, blend=blend, batch_size=4)
    assert tiled.shape == full.shape
    safe = torch.from_numpy(safe_axis(H, ys, tile, R)[:, None] & safe_axis(W, xs, tile, R)[None, :])
    assert safe.float().mean() > 0.3
    d = (tiled - full).abs().amax(0)
    assert float(d[safe].max()) < 2e-5
    # Not vacuous: near tile edges inside the image the two differ.
    assert float(d[~safe].max()) > 1e-4


def test_unaligned_tiles_break_equality():
    # overlap 0.3 gives a stride of 179 px with align=1 (MONAI's grid): that tile
    # is off the pooling grid and differs from the full pass even where it sees
    # the whole receptive field. The default (align = 2**(depth-1)) does not.
    R = receptive_radius(4)
    model = tiny_model(depth=4)
    pred = model.predictor()
    S = 448
    x = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = pred(x)[0]
        aligned = sliding_window(pred, x[0], tile=256, overlap=0.3, blend="constant")
        unaligned = sliding_window(pred, x[0], tile=256, overlap=0.3, blend="constant", align=1)
    sa, _ = tile_starts(S, 256, 0.3, 8)
    su, _ = tile_starts(S, 256, 0.3, 1)
    assert any(s % 8 for s in su) and not any(s % 8 for s in sa)
    ok = safe_axis(S, sa, 256, R) & safe_axis(S, su, 256, R)
    safe = torch.from_numpy(ok[:, None] & ok[None, :])
    assert safe.sum() > 1000
    assert float((aligned - full).abs().amax(0)[safe].max()) < 2e-5
    assert float((unaligned - full).abs().amax(0)[safe].max()) > 1e-4


def test_one_tile_image_equals_full_forward_exactly():
    model = tiny_model(depth=3)
    pred = model.predictor()
    x = torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        full = pred(x)
        tiled = sliding_window(pred, x, tile=(96, 128))
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-6)


def test_tile_must_fit_the_model_and_inputs_are_checked():
    be_model = tiny_model(depth=4).predictor()
    from semimoe.deploy import TorchRuntime

    be = TorchRuntime(be_model)
    assert be.size_multiple == 8
    with pytest.raises(ValueError, match="multiple"):
        sliding_window(be, torch.randn(3, 64, 64), tile=60)
    with pytest.raises(ValueError, match="mean and std"):
        sliding_window(be, torch.zeros(64, 64, 3, dtype=torch.uint8), tile=64)
    with pytest.raises(ValueError, match="overlap"):
        TilingConfig(overlap=1.0)
    with pytest.raises(ValueError, match="blend"):
        TilingConfig(blend="linear")
    with pytest.raises(TypeError):
        sliding_window(be, torch.zeros(3, 64, 64, dtype=torch.int32), tile=64)


# ----------------------------------------------------------------------------
# Post-processing and the segmenter
# ----------------------------------------------------------------------------
def test_postprocess_splits_touching_glands_with_the_boundary():
    prob = np.zeros((3, 40, 60), np.float32)
    prob[1, 10:30, 5:55] = 0.9           # one blob...
    prob[2, 10:30, 29:31] = 0.8          # ...cut by a predicted boundary
    prob[1, 35:37, 2:4] = 0.9            # a 4-pixel speck
    prob[0] = 1 - prob[1]
    mask, inst = postprocess(prob)
    assert mask.dtype == bool and inst.dtype == np.int32
    assert inst.max() == 3 and (inst > 0).sum() == mask.sum()
    _, inst1 = postprocess(prob, split=False)
    assert inst1.max() == 2
    mask2, inst2 = postprocess(prob, min_size=10)
    assert inst2.max() == 2 and not mask2[35, 2]


SPEC = InputSpec(mean=(0.7, 0.5, 0.7), std=(0.2, 0.2, 0.2), mpp=1.0, source_mpp=0.5)


def test_predictor_on_uint8_image_of_any_size():
    model = tiny_model(depth=4)
    pr = Predictor(model.predictor(), SPEC, TilingConfig(tile=64, overlap=0.25, batch_size=4, tta="hflip"))
    img = np.random.default_rng(0).integers(0, 256, (93, 150, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match="assuming the training images' 0.5"):
        res = pr(img, progress=False)
    assert isinstance(res, Segmentation)
    assert res.prob.shape == (3, 93, 150) and res.prob.dtype == np.float32
    assert res.mask.shape == (93, 150) and res.instances.shape == (93, 150)
    np.testing.assert_allclose(res.prob[0] + res.prob[1], 1.0, atol=1e-5)
    assert np.isfinite(res.prob).all() and res.prob.min() >= 0 and res.prob.max() <= 1
    with pytest.raises(ValueError, match="uint8 RGB"):
        pr.probabilities(img.astype(np.float32))


def test_predictor_runs_the_model_at_its_training_scale():
    """An input of p µm/px reaches the runtime resampled by p / spec.mpp, and
    the output comes back at the input's size: checked with a recording
    runtime and against a direct computation with torch's interpolate."""
    seen = []

    def rt(x):  # probabilities from the normalised input: a pure per-pixel map
        seen.append(tuple(x.shape[-2:]))
        return torch.softmax(x[:, :3], 1)

    rt.size_multiple = 1
    img = np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    pr = Predictor(rt, SPEC, TilingConfig(tile=None))
    for mpp, shape in ((0.5, (60, 100)), (1.0, (120, 200)), (2.0, (240, 400)), (None, (60, 100))):
        seen.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = pr.probabilities(img, mpp)
        assert seen == [shape] and tuple(p.shape) == (3, 120, 200)
    # direct computation for mpp 0.5: resample (antialiased bilinear, rounded
    # to uint8), normalise, softmax, bilinear back to 120 x 200
    t = torch.from_numpy(img).permute(2, 0, 1)[None].double()
    small = F.interpolate(t, size=(60, 100), mode="bilinear", align_corners=False, antialias=True)
    small = small.round().clamp(0, 255) / 255.0
    z = (small - torch.tensor(SPEC.mean, dtype=torch.float64).view(1, 3, 1, 1)) / \
        torch.tensor(SPEC.std, dtype=torch.float64).view(1, 3, 1, 1)
    want = F.interpolate(torch.softmax(z, 1), size=(120, 200), mode="bilinear", align_corners=False)[0]
    got = pr.probabilities(img, 0.5).double()
    # uint8 rounding of float32 vs float64 resampling may differ by one grey level at a few pixels
    assert (got - want).abs().max() < 0.03 and (got - want).abs().mean() < 1e-4


def test_progress_lines(capsys, monkeypatch):
    import functools

    import semimoe.inference.tiled as tiled
    from semimoe.utils import Progress

    # not a terminal (captured): plain lines, here one per update
    monkeypatch.setattr(tiled, "Progress", functools.partial(Progress, interval=0.0))
    net = ConvNet().eval()
    sliding_window(net, torch.randn(3, 64, 64), tile=32, batch_size=2, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("tiles: 9/9 tiles (100%)")


def test_whole_image_mode_tiles_only_large_images(monkeypatch):
    import semimoe.inference.tiled as tiled

    seen = []

    def rt(x):
        seen.append(tuple(x.shape[-2:]))
        return x

    rt.size_multiple = 8
    sliding_window(rt, torch.rand(3, 50, 70), tile=None)
    assert seen == [(56, 72)]  # one pass, padded to the size multiple
    monkeypatch.setattr(tiled, "WHOLE_IMAGE_MAX_PIXELS", 40 * 40)
    monkeypatch.setattr(tiled, "LARGE_IMAGE_TILE", 30)  # -> 32, the next multiple of 8
    seen.clear()
    out = sliding_window(rt, torch.rand(3, 50, 70), tile=None, overlap=0.25)
    assert set(seen) == {(32, 32)} and out.shape == (3, 50, 70)


@pytest.mark.parametrize("gate", ["spatial", "image"])
def test_torch_runtime_chunks_and_folding_match_the_float64_model(gate):
    """The eager CPU runtime (BatchNorm folded, tiles run in chunks) gives the
    unfolded float64 model's output; the model it was given is not changed."""
    import copy

    from semimoe.deploy import TorchRuntime

    pred = tiny_model(gate=gate, depth=3, width=4).predictor().eval()
    for m in pred.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    before = copy.deepcopy(pred.state_dict())
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        exp = copy.deepcopy(pred).double()(x.double()).double()
    rt = TorchRuntime(pred)
    assert rt.chunk_pixels > 0
    rt.chunk_pixels = 2 * 32 * 32  # chunks of 2, 2 and 1 tiles
    chunked = rt(x)
    rt.chunk_pixels = 0
    whole = rt(x)
    torch.testing.assert_close(chunked.double(), exp, rtol=0, atol=2e-5)
    torch.testing.assert_close(whole.double(), exp, rtol=0, atol=2e-5)
    assert all(torch.equal(v, pred.state_dict()[k]) for k, v in before.items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in pred.modules())


def test_in_chunks_splits_the_batch_by_pixels():
    from semimoe.deploy.runtimes import in_chunks

    seen = []

    def fn(c):
        seen.append(c.shape[0])
        return c * 2

    x = torch.randn(7, 3, 16, 16)
    assert torch.equal(in_chunks(fn, x, 3 * 16 * 16), x * 2) and seen == [3, 3, 1]
    seen.clear()
    assert torch.equal(in_chunks(fn, x, 10), x * 2) and seen == [1] * 7  # at least one image
    seen.clear()
    assert torch.equal(in_chunks(fn, x, 0), x * 2) and seen == [7]  # 0: one call
