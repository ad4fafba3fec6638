"""IKD-MIL segmenter and its losses (semimoe.models.mil, semimoe.losses.mil),
each against an independent reference: float64 NumPy loops written from the
method's description, scipy's softmax, a NumPy bilinear resampler."""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.special import softmax as sp_softmax

from semimoe.data.scale import InputSpec
from semimoe.losses import MIL_POOLINGS, distill_loss, mil_loss, mil_pool, oeem_weights
from semimoe.models import (MILOutput, MILPredictor, MILSegmenter, ModelConfig, SemiMoE, build_model,
                            load_checkpoint)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(arch="mil", base_width=4, depth=3)
NORM = {"mean": [0.78, 0.51, 0.78], "std": [0.43, 0.51, 0.43]}
SCALE = {"mpp": 1.0, "source_mpp": 0.5, "source_mpp_assumed": False}
EPS = 1e-6


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _out(B=4, H=6, W=5, n_sides=3, seed=0, scale=3.0, requires_grad=False):
    """A MILOutput of random side logits and a random fused probability."""
    g = _gen(seed)
    sides = tuple((scale * torch.randn(B, 1, H, W, generator=g)).requires_grad_(requires_grad)
                  for _ in range(n_sides))
    fused = (0.02 + 0.96 * torch.rand(B, 1, H, W, generator=g)).requires_grad_(requires_grad)
    return MILOutput(sides, fused)


def _np(t):
    return t.detach().double().numpy()


# ----------------------------------------------------------------------------
# float64 references, written from the description (loops over images and pixels)
# ----------------------------------------------------------------------------
def _ref_pool(p, mode, r=5.0, topk=0.1):
    """p: (H, W) float64 probabilities of one image -> score."""
    vals = [float(v) for v in p.ravel()]
    n = len(vals)
    if mode == "max":
        return max(vals)
    if mode == "lse":
        return math.log(sum(math.exp(r * v) for v in vals) / n) / r
    k = max(1, math.ceil(Fraction(str(topk)) * n))  # exact: 0.1 * 30 pixels is 3
    return sum(sorted(vals, reverse=True)[:k]) / k


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _ref_maps(out):
    """[(probabilities (B, H, W), pixel BCE function (b, i, j, target) -> float)] per map."""
    maps = []
    for s in out.sides:
        lg = _np(s)[:, 0]
        # BCE of sigmoid(l) against y: log(1 + e^l) - y * l
        maps.append((np.vectorize(_sigmoid)(lg),
                     lambda b, i, j, y, lg=lg: np.logaddexp(0.0, lg[b, i, j]) - y * lg[b, i, j]))
    f = _np(out.fused)[:, 0]
    fc = np.clip(f, EPS, 1 - EPS)
    maps.append((f, lambda b, i, j, y, fc=fc: -(y * math.log(fc[b, i, j]) + (1 - y) * math.log(1 - fc[b, i, j]))))
    return maps


def _ref_dice(p, g):
    inter = sp = sg = 0.0
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            inter += p[i, j] * g[i, j]
            sp += p[i, j]
            sg += g[i, j]
    return 1.0 - (2.0 * inter + EPS) / (sp + sg + EPS)


def _ref_mil_loss(out, labels, pooling, r=5.0, topk=0.1):
    labels = [int(v) for v in labels]
    total = pos_sum = neg_sum = 0.0
    for p, bce in _ref_maps(out):
        B, H, W = p.shape
        pos_l, neg_l = [], []
        for b in range(B):
            if labels[b]:
                if pooling == "dice":
                    pos_l.append(_ref_dice(p[b], np.ones((H, W))))
                else:
                    pos_l.append(-math.log(max(_ref_pool(p[b], pooling, r, topk), EPS)))
            else:
                neg_l.append(sum(bce(b, i, j, 0.0) for i in range(H) for j in range(W)) / (H * W))
        lp = sum(pos_l) / len(pos_l) if pos_l else 0.0
        ln = sum(neg_l) / len(neg_l) if neg_l else 0.0
        total += lp + ln
        pos_sum += lp
        neg_sum += ln
    return total, pos_sum, neg_sum


def _ref_distill(out, teacher, labels, thr=0.5):
    t = _np(teacher)[:, 0]
    labels = [int(v) for v in labels]
    total = 0.0
    for p, bce in _ref_maps(out):
        B, H, W = p.shape
        pos_l, neg_l = [], []
        for b in range(B):
            if labels[b]:
                ce = np.array([[bce(b, i, j, float(t[b, i, j] >= thr)) for j in range(W)] for i in range(H)])
                ex = np.array([[math.exp(-ce[i, j]) for j in range(W)] for i in range(H)])
                w = ex / ex.sum() * (H * W)  # OEEM: softmax of -loss over the image, mean 1
                wce = sum(w[i, j] * ce[i, j] for i in range(H) for j in range(W)) / (H * W)
                pos_l.append(_ref_dice(p[b], t[b]) + wce)
            else:
                neg_l.append(sum(bce(b, i, j, 0.0) for i in range(H) for j in range(W)) / (H * W))
        total += (sum(pos_l) / len(pos_l) if pos_l else 0.0) + (sum(neg_l) / len(neg_l) if neg_l else 0.0)
    return total


# ----------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["max", "lse", "topk"])
@pytest.mark.parametrize("shape", [(3, 1, 5, 6), (2, 1, 1, 1), (1, 1, 7, 3)])
def test_mil_pool_matches_float64_reference(mode, shape):
    p = torch.rand(*shape, generator=_gen(1))
    for kw in ({}, {"lse_r": 0.5, "topk": 0.3}, {"lse_r": 20.0, "topk": 1.0}):
        got = mil_pool(p, mode, **kw)
        assert got.shape == (shape[0],)
        ref = [_ref_pool(_np(p)[b, 0], mode, kw.get("lse_r", 5.0), kw.get("topk", 0.1)) for b in range(shape[0])]
        np.testing.assert_allclose(_np(got), ref, rtol=1e-6, atol=1e-7)


def test_topk_count_is_exact_ceil():
    # 0.1 * 30 = 3.0000000000000004 in floating point: still 3 pixels
    p = torch.arange(30, dtype=torch.float64).reshape(1, 1, 5, 6) / 30
    assert float(mil_pool(p, "topk", topk=0.1)) == pytest.approx((29 + 28 + 27) / 90)
    assert float(mil_pool(p, "topk", topk=0.11)) == pytest.approx((29 + 28 + 27 + 26) / 120)


def test_mil_pool_limits():
    p = torch.rand(3, 1, 8, 8, generator=_gen(2), dtype=torch.float64)
    mx, mean = p.flatten(1).amax(1), p.flatten(1).mean(1)
    n = 64
    for r in (10.0, 100.0, 1e4):
        lse = mil_pool(p, "lse", lse_r=r)
        # mean(exp(r p)) >= exp(r max) / n: max - log(n)/r <= lse <= max
        assert bool((lse <= mx + 1e-12).all()) and bool((lse >= mx - math.log(n) / r - 1e-12).all())
    torch.testing.assert_close(mil_pool(p, "lse", lse_r=1e-6), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mil_pool(p, "topk", topk=1 / n), mx)    # k = 1 pixel
    torch.testing.assert_close(mil_pool(p, "topk", topk=1e-9), mx)     # at least one pixel
    torch.testing.assert_close(mil_pool(p, "topk", topk=1.0), mean)


def test_mil_pool_argument_errors():
    p = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="mode"):
        mil_pool(p, "mean")
    with pytest.raises(ValueError, match="topk"):
        mil_pool(p, "topk", topk=0.0)
    with pytest.raises(ValueError, match="lse_r"):
        mil_pool(p, "lse", lse_r=0.0)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        mil_pool(torch.rand(2, 2, 4, 4))


# ----------------------------------------------------------------------------
# MIL loss
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", MIL_POOLINGS)
@pytest.mark.parametrize("labels", [[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]])
def test_mil_loss_matches_float64_reference(pooling, labels):
    out = _out(seed=3)
    lab = torch.tensor(labels)
    loss, parts = mil_loss(out, lab, pooling=pooling, lse_r=4.0, topk=0.2, eps=EPS)
    ref, ref_pos, ref_neg = _ref_mil_loss(out, labels, pooling, 4.0, 0.2)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert float(loss) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert float(parts["mil_pos"]) == pytest.approx(ref_pos, rel=1e-5, abs=1e-6)
    assert float(parts["mil_neg"]) == pytest.approx(ref_neg, rel=1e-5, abs=1e-6)
    assert float(parts["mil_fused"] + parts["mil_sides"]) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert all(not v.requires_grad and v.dim() == 0 for v in parts.values())
    if not any(labels):
        assert float(parts["mil_pos"]) == 0.0
    if all(labels):
        assert float(parts["mil_neg"]) == 0.0


def test_mil_loss_bool_labels_and_errors():
    out = _out(seed=4)
    a, _ = mil_loss(out, torch.tensor([True, False, True, False]))
    b, _ = mil_loss(out, torch.tensor([1, 0, 1, 0]))
    assert float(a) == float(b)
    with pytest.raises(ValueError, match="labels"):
        mil_loss(out, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="labels"):
        mil_loss(out, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="pooling"):
        mil_loss(out, torch.tensor([1, 0, 1, 0]), pooling="mean")
    bad = MILOutput(out.sides[:1] + (out.sides[1][..., :4],), out.fused)
    with pytest.raises(ValueError, match="sides"):
        mil_loss(bad, torch.tensor([1, 0, 1, 0]))


# ----------------------------------------------------------------------------
# OEEM weights and distillation
# ----------------------------------------------------------------------------
def test_oeem_weights_match_scipy_softmax():
    loss = 4.0 * torch.rand(3, 5, 7, generator=_gen(5), requires_grad=True)
    w = oeem_weights(loss)
    assert w.shape == (3, 5, 7) and not w.requires_grad
    ref = sp_softmax(-_np(loss).reshape(3, -1), axis=1) * 35
    np.testing.assert_allclose(_np(w).reshape(3, -1), ref, rtol=1e-5)
    np.testing.assert_allclose(_np(w).mean(axis=(1, 2)), 1.0, rtol=1e-6)
    # easy pixels (low loss) weigh more
    flat_l, flat_w = _np(loss).ravel(), _np(w).ravel()
    b0 = slice(0, 35)
    assert flat_w[b0][np.argmin(flat_l[b0])] == flat_w[b0].max()
    # a huge loss gives a zero weight, not a NaN
    big = torch.zeros(1, 2, 2)
    big[0, 0, 0] = 1e6
    w = oeem_weights(big)
    assert torch.isfinite(w).all() and float(w[0, 0, 0]) == 0.0
    assert float(w.sum()) == pytest.approx(4.0)


@pytest.mark.parametrize("labels", [[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_distill_loss_matches_float64_reference(labels, threshold):
    out = _out(seed=6)
    teacher = torch.rand(4, 1, 6, 5, generator=_gen(7))
    loss, parts = distill_loss(out, teacher, torch.tensor(labels), threshold=threshold, eps=EPS)
    ref = _ref_distill(out, teacher, labels, threshold)
    assert float(loss) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert float(parts["kd_pos"] + parts["kd_neg"]) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert float(parts["kd_dice"] + parts["kd_ce"]) == pytest.approx(float(parts["kd_pos"]), rel=1e-6, abs=1e-7)
    # the teacher is a constant; (B, H, W) works as (B, 1, H, W)
    t = teacher.clone().requires_grad_(True)
    loss2, _ = distill_loss(out, t[:, 0], torch.tensor(labels), threshold=threshold, eps=EPS)
    assert float(loss2) == float(loss) and not loss2.requires_grad


def test_distill_loss_shape_errors():
    out = _out(seed=8)
    with pytest.raises(ValueError, match="teacher"):
        distill_loss(out, torch.rand(4, 1, 6, 4), torch.tensor([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="teacher"):
        distill_loss(out, torch.ones(4, 1, 6, 5, dtype=torch.long), torch.tensor([1, 0, 1, 0]))


# ----------------------------------------------------------------------------
# Gradients at the extremes
# ----------------------------------------------------------------------------
def _extreme_outputs():
    B, H, W = 4, 4, 4
    for side_val, fused_val in ((-1e4, 0.0), (1e4, 1.0), (0.0, 0.0), (-50.0, 1.0), (200.0, 0.0)):
        sides = tuple(torch.full((B, 1, H, W), side_val, requires_grad=True) for _ in range(2))
        fused = torch.full((B, 1, H, W), fused_val, requires_grad=True)
        yield MILOutput(sides, fused)
    mixed = torch.tensor([-1e4, 1e4]).repeat(B * H * W // 2).reshape(B, 1, H, W)
    yield MILOutput((mixed.clone().requires_grad_(True),), (mixed > 0).float().requires_grad_(True))


@pytest.mark.parametrize("pooling", MIL_POOLINGS)
def test_gradients_finite_for_extreme_inputs(pooling):
    labels = torch.tensor([1, 0, 1, 0])
    for out in _extreme_outputs():
        for fn in (lambda o: mil_loss(o, labels, pooling=pooling),
                   lambda o: distill_loss(o, torch.ones(4, 1, 4, 4), labels),
                   lambda o: distill_loss(o, torch.zeros(4, 1, 4, 4), labels)):
            for t in (*out.sides, out.fused):
                t.grad = None
            loss, parts = fn(out)
            loss.backward()
            assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
            for t in (*out.sides, out.fused):
                assert t.grad is not None and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("mode", ["max", "lse", "topk"])
@pytest.mark.parametrize("val", [0.0, 1.0])
def test_mil_pool_gradients_finite(mode, val):
    p = torch.full((2, 1, 4, 4), val, requires_grad=True)
    mil_pool(p, mode).sum().backward()
    assert torch.isfinite(p.grad).all()


def test_mil_loss_pushes_the_right_way():
    out = _out(B=2, seed=9, requires_grad=True)
    loss, _ = mil_loss(out, torch.tensor([1, 0]), pooling="dice")
    loss.backward()
    for s in out.sides:
        assert bool((s.grad[0] <= 0).all()) and bool((s.grad[1] >= 0).all())  # up on the positive, down on the negative


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------
def _x(B=2, H=16, W=24, seed=0):
    return torch.randn(B, 3, H, W, generator=_gen(seed))


def _bilinear_np(a, H, W):
    """Half-pixel (align_corners=False) bilinear resampling of a (h, w) array."""
    h, w = a.shape

    def taps(n_out, n_in):
        out = []
        for o in range(n_out):
            src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(math.floor(src)), n_in - 1)
            out.append((i0, min(i0 + 1, n_in - 1), src - i0))
        return out

    res = np.empty((H, W))
    for i, (y0, y1, fy) in enumerate(taps(H, h)):
        for j, (x0, x1, fx) in enumerate(taps(W, w)):
            res[i, j] = ((1 - fy) * ((1 - fx) * a[y0, x0] + fx * a[y0, x1])
                         + fy * ((1 - fx) * a[y1, x0] + fx * a[y1, x1]))
    return res


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_model_shapes_and_side_count(depth):
    torch.manual_seed(0)
    m = build_model(**{**TINY, "depth": depth})
    assert isinstance(m, MILSegmenter) and m.cfg.arch == "mil"
    assert m.size_multiple == 2 ** (depth - 1)
    out = m(_x())
    assert isinstance(out, MILOutput) and len(out.sides) == depth
    assert all(s.shape == (2, 1, 16, 24) for s in out.sides)
    assert out.fused.shape == (2, 1, 16, 24) and out.fused.dtype == torch.float32
    assert bool(((out.fused >= 0) & (out.fused <= 1)).all())
    if depth > 1:
        with pytest.raises(ValueError, match="multiples"):
            m(_x(H=16 + m.size_multiple // 2))


def test_fixed_fusion_weights_are_applied():
    torch.manual_seed(1)
    m = build_model(**TINY, side_weights=[1, 2, 5]).eval()
    assert m.cfg.side_weights == (1.0, 2.0, 5.0)  # stored as given
    out = m(_x())
    manual = sum(w * torch.sigmoid(s.double()) for w, s in zip((1 / 8, 2 / 8, 5 / 8), out.sides))
    torch.testing.assert_close(out.fused.double(), manual, rtol=1e-6, atol=1e-7)
    m_eq = build_model(**TINY).eval()
    out = m_eq(_x())
    manual = sum(torch.sigmoid(s.double()) for s in out.sides) / 3
    torch.testing.assert_close(out.fused.double(), manual, rtol=1e-6, atol=1e-7)


def test_side_outputs_are_bilinear_upsampled_level_logits():
    torch.manual_seed(2)
    m = MILSegmenter(ModelConfig(base_width=4, depth=3)).eval()
    assert m.cfg.arch == "mil"
    low = {}
    hooks = [h.register_forward_hook(lambda mod, inp, o, i=i: low.__setitem__(i, o)) for i, h in enumerate(m.side)]
    out = m(_x(B=1))
    for h in hooks:
        h.remove()
    assert low[0].shape == (1, 1, 16, 24) and low[2].shape == (1, 1, 4, 6)
    for i, s in enumerate(out.sides):
        np.testing.assert_allclose(_np(s)[0, 0], _bilinear_np(_np(low[i])[0, 0], 16, 24), rtol=1e-5, atol=1e-5)


def test_predictor_contract():
    torch.manual_seed(3)
    m = build_model(**TINY).eval()
    p = m.predictor()
    assert isinstance(p, MILPredictor) and p.size_multiple == m.size_multiple
    with torch.no_grad():
        y = p(_x())
    assert y.shape == (2, 3, 16, 24) and y.dtype == torch.float32
    torch.testing.assert_close(y[:, 0] + y[:, 1], torch.ones(2, 16, 24))
    assert float(y[:, 2].abs().max()) == 0.0
    with torch.no_grad():
        torch.testing.assert_close(y[:, 1:2], m(_x()).fused)
    assert m.set_fusion("reference") is m  # accepted, nothing to switch
    with pytest.raises(ValueError, match="fusion"):
        m.set_fusion("fast")


def test_config_validation():
    assert ModelConfig().arch == "semimoe" and ModelConfig().side_weights is None
    with pytest.raises(ValueError, match="arch"):
        ModelConfig(arch="unet")
    for bad in ([1, 2], [1, 0, 1], [1, -1, 1], [1, float("nan"), 1], [1, True, 1], "abc", 3):
        with pytest.raises(ValueError, match="side_weights"):
            ModelConfig(arch="mil", depth=3, side_weights=bad)
    assert ModelConfig(depth=2, side_weights=[np.float32(1), 3]).side_weights == (1.0, 3.0)


def test_semimoe_unaffected():
    m = build_model(base_width=4, depth=3)
    assert isinstance(m, SemiMoE) and m.cfg.arch == "semimoe"
    # the class decides: a SemiMoE built from an arch="mil" config records "semimoe"
    assert SemiMoE(ModelConfig(**TINY)).cfg.arch == "semimoe"


def _trainer_like_payload(m):
    # the entries of Trainer.checkpoint_payload (best.pt: no optimiser)
    return {"format": "semimoe-ckpt-v1", "model": {k: v.detach().cpu() for k, v in m.state_dict().items()},
            "model_config": dataclasses.asdict(m.cfg), "norm": NORM, "scale": SCALE, "method": "supervised",
            "step": 3, "epoch": 0, "config": {}, "data_config": {}, "best": {"score": 0.5, "step": 3}}


def test_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(4)
    m = build_model(**TINY, side_weights=(2, 1, 1))
    m.train()
    m(_x(seed=1))  # BatchNorm running statistics that differ from the initial ones
    m.eval()
    path = tmp_path / "best.pt"
    torch.save(_trainer_like_payload(m), path)
    m2, meta = load_checkpoint(path)
    assert isinstance(m2, MILSegmenter) and not m2.training
    assert m2.cfg == m.cfg and meta["step"] == 3 and "model" not in meta
    x = _x(seed=2)
    a, b = m(x), m2(x)
    torch.testing.assert_close(a.fused, b.fused, rtol=0, atol=0)
    for s, t in zip(a.sides, b.sides):
        torch.testing.assert_close(s, t, rtol=0, atol=0)
    # a Semi-MoE checkpoint written before "arch" existed still loads as a SemiMoE
    sm = build_model(base_width=4, depth=2).eval()
    p = _trainer_like_payload(sm)
    for k in ("arch", "side_weights"):
        del p["model_config"][k]
    torch.save(p, path)
    sm2, _ = load_checkpoint(path)
    assert isinstance(sm2, SemiMoE)
    # weights that do not fit the named model: a CheckpointError naming the class
    p = _trainer_like_payload(m)
    p["model_config"]["arch"] = "semimoe"
    torch.save(p, path)
    with pytest.raises(ValueError, match="SemiMoE"):
        load_checkpoint(path)


def test_checkpoint_runs_in_the_predictor(tmp_path):
    from semimoe.inference import Predictor

    torch.manual_seed(5)
    m = build_model(**TINY).eval()
    path = tmp_path / "best.pt"
    torch.save(_trainer_like_payload(m), path)
    pred = Predictor.from_file(path, device="cpu")
    img = np.random.default_rng(0).integers(0, 256, size=(20, 28, 3), dtype=np.uint8)
    prob = pred.probabilities(img, mpp=1.0)
    assert prob.shape == (3, 20, 28)
    torch.testing.assert_close(prob[0] + prob[1], torch.ones(20, 28))
    assert float(prob[2].abs().max()) == 0.0


def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from semimoe.export import export_onnx

    torch.manual_seed(6)
    m = build_model(**TINY, side_weights=(1, 2, 3))
    m.train()
    m(_x(seed=3))
    m.eval()
    spec = InputSpec(NORM["mean"], NORM["std"], SCALE["mpp"], SCALE["source_mpp"])
    path = tmp_path / "mil.onnx"
    meta = export_onnx(m, path, spec=spec, tile=16, log=lambda *a, **k: None)
    assert meta["model_config"]["arch"] == "mil" and meta["input"]["size_multiple"] == 4
    assert not meta["tensorrt_unsupported_ops"]
    assert meta["input"]["tile"] is None  # dynamic H and W: checked at a second size below
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    p = m.predictor().eval()
    for shape in ((2, 3, 16, 16), (1, 3, 8, 24)):
        x = _x(*shape[:1], H=shape[2], W=shape[3], seed=4)
        got = sess.run(None, {name: x.numpy()})[0]
        with torch.no_grad():
            ref = p(x).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_config_keys_and_semimoe_methods_refuse_the_mil_model():
    import types

    from semimoe.config import ConfigError, config_from_dict, config_to_dict, make_config
    from semimoe.training.methods import METHODS

    cfg = make_config("cpu-demo", overrides=["model.arch=mil", "model.side_weights=[1,2,3,4]"])
    assert cfg.model.arch == "mil" and cfg.model.side_weights == (1.0, 2.0, 3.0, 4.0)
    assert config_from_dict(config_to_dict(cfg)).model == cfg.model
    trainer = types.SimpleNamespace(model=build_model(cfg.model), device=torch.device("cpu"))
    for name in ("supervised", "semimoe"):
        with pytest.raises(ConfigError, match="model.arch=mil"):
            METHODS[name](cfg).build(trainer)
