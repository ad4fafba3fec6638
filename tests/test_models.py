"""Semi-MoE model: shapes, gates, fusion paths, gradients, checkpoints (docs/CONTRACTS.md)."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
from scipy import signal

from semimoe.losses import boundary_dice_loss, dice_loss_sq, sdf_loss
from semimoe.models import (EXPERTS, TASKS, ImageGate, ModelConfig, SemiMoE, SemiMoEOutput, SpatialGate,
                            UNet, build_model, load_checkpoint)
from semimoe.ops import gated_fusion, gated_fusion_ref

TINY = dict(base_width=4, depth=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(B=2, S=32, seed=0):
    return torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(seed))


def _sup_loss(out, mask):
    sdf_t = torch.where(mask > 0, 0.5, -0.5)
    total = 0
    for seg, sdf, bnd in ((out.seg, out.sdf, out.bnd),
                          (out.experts["seg"], out.experts["sdf"], out.experts["bnd"])):
        total = total + dice_loss_sq(seg, mask) + sdf_loss(sdf, sdf_t) + boundary_dice_loss(bnd, mask)
    return total


@pytest.mark.parametrize("gate", ["image", "spatial"])
def test_output_contract(gate):
    torch.manual_seed(0)
    m = build_model(gate=gate, **TINY)
    out = m(_x())
    assert isinstance(out, SemiMoEOutput)
    assert out.seg.shape == (2, 2, 32, 32)
    assert out.sdf.shape == (2, 1, 32, 32)
    assert out.bnd.shape == (2, 2, 32, 32)
    assert set(out.experts) == {"seg", "sdf", "bnd"}
    assert out.experts["seg"].shape == (2, 2, 32, 32)
    assert out.experts["sdf"].shape == (2, 1, 32, 32)
    assert out.experts["bnd"].shape == (2, 2, 32, 32)
    want = (2, 3, 3) if gate == "image" else (2, 3, 3, 32, 32)
    assert out.gates.shape == want and out.gates.dtype == torch.float32
    torch.testing.assert_close(out.gates.sum(dim=2), torch.ones_like(out.gates.sum(dim=2)))


def test_spatial_gate_starts_uniform():
    m = build_model(gate="spatial", **TINY)
    g = m(_x()).gates
    torch.testing.assert_close(g, torch.full_like(g, 1 / 3))


def test_paper_preset_matches_reference_sizes():
    cfg = ModelConfig.preset("paper")
    assert (cfg.base_width, cfg.depth, cfg.gate) == (64, 5, "image")
    u = UNet(3, 2, 64, 5)
    assert abs(sum(p.numel() for p in u.parameters()) - 34.527e6) < 0.01e6  # ~34.5 M per expert
    assert u.widths == [64, 128, 256, 512, 1024]
    g = ImageGate(3, 64)
    h = g.heads[0]
    # reference gate: Linear 192->96, attention Linear 96->96, Linear 96->3
    assert (h.linear1.in_features, h.linear1.out_features) == (192, 96)
    assert (h.attention.in_features, h.attention.out_features) == (96, 96)
    assert (h.linear2.in_features, h.linear2.out_features) == (96, 3)
    assert h.dropout.p == 0.1 and len(g.heads) == 3


@pytest.mark.parametrize("name", ["cpu-demo", "fast", "paper"])
def test_presets_build_and_size_multiple(name):
    # cpu-demo is cheap enough to build as is; the GPU presets keep their
    # depth and gate but get 2-channel experts so the forward pass stays tiny.
    overrides = {} if name == "cpu-demo" else {"base_width": 2}
    cfg = ModelConfig.preset(name, **overrides)
    torch.manual_seed(7)
    m = build_model(cfg).eval()
    mult = m.size_multiple
    # documented: H and W must be multiples of 2**(depth-1) (the experts' pooling)
    assert mult == 2 ** (cfg.depth - 1)
    with torch.no_grad():
        out = m(torch.randn(1, 3, 2 * mult, 3 * mult))  # non-square, odd multiple
    assert out.seg.shape == (1, 2, 2 * mult, 3 * mult)
    assert out.sdf.shape == (1, 1, 2 * mult, 3 * mult)
    assert torch.isfinite(out.seg).all()
    bad = mult + mult // 2  # not a multiple: the experts' skip connections cannot line up
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            m.expert_forward(torch.randn(1, 3, bad, 2 * mult))
        with pytest.raises(ValueError, match=rf"multiples of .*= {mult}\b"):
            m(torch.randn(1, 3, bad, 2 * mult))
        with pytest.raises(ValueError, match=rf"multiples of .*= {mult}\b"):
            m(torch.randn(1, 3, 2 * mult, bad))


def test_preset_overrides_and_validation():
    assert ModelConfig.preset("paper", depth=3, gate="spatial").depth == 3
    assert build_model("cpu-demo", base_width=2, depth=2).size_multiple == 2
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="model.gate"):
        ModelConfig(gate="pixel")
    with pytest.raises(ValueError, match="model.fusion"):
        ModelConfig(fusion="triton")
    with pytest.raises(ValueError, match="model.depth"):
        ModelConfig(depth=0)
    with pytest.raises(ValueError, match="model.gate"):
        ModelConfig.preset("cpu-demo", gate="pixel")
    m = build_model(**TINY)
    with pytest.raises(ValueError, match="multiples of 2"):
        m(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="B, C, H, W"):
        m(torch.randn(3, 32, 32))


def test_init_follows_reference():
    torch.manual_seed(0)
    m = build_model(base_width=16, depth=3, gate="image")
    bn = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    w = torch.cat([b.weight.detach() for b in bn])
    assert abs(w.mean().item() - 1.0) < 0.01 and 0.01 < w.std().item() < 0.03
    assert all(b.bias.abs().max() == 0 for b in bn)
    convs = [mod for mod in m.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    assert all(c.bias is None or c.bias.abs().max() == 0 for c in convs)
    big = m.experts["seg"].enc[2][0]  # a 3x3 conv, fan_in = 32*9
    std = big.weight.std().item()
    assert abs(std - (2.0 / (32 * 9)) ** 0.5) < 0.01


@pytest.mark.parametrize("gate", ["image", "spatial"])
def test_fused_equals_reference_fusion(gate):
    torch.manual_seed(1)
    m = build_model(gate=gate, fusion="fused", **TINY).eval()
    x = _x(seed=3)
    a = m(x)
    m.set_fusion("reference")
    assert m.cfg.fusion == "reference"
    b = m(x)
    for k in ("seg", "sdf", "bnd", "gates"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        m.set_fusion("magic")


@pytest.mark.parametrize("fuse", [gated_fusion, gated_fusion_ref], ids=["op", "ref"])
def test_fusion_properties(fuse):
    # properties of a softmax-weighted sum over experts, checked on the
    # experts' real features without restating the formula
    torch.manual_seed(2)
    m = build_model(gate="image", **TINY).eval()
    with torch.no_grad():
        feats, _ = m.expert_forward(_x())  # (B, K, C, H, W)
    B, K, C, H, W = feats.shape
    T = len(TASKS)
    tol = dict(rtol=1e-6, atol=1e-6)
    # (a) a saturated one-hot gate picks one expert: per image ...
    choice = torch.tensor([[2, 0, 1], [1, 1, 0]])  # (B, T) expert chosen per image and task
    big = torch.zeros(B, T, K).scatter_(2, choice[..., None], 1e4)
    fused = fuse(feats, big)
    assert fused.shape == (B, T, C, H, W)
    for b in range(B):
        for t in range(T):
            torch.testing.assert_close(fused[b, t], feats[b, choice[b, t]], **tol)
    # ... and per pixel
    pix = torch.randint(0, K, (B, T, H, W), generator=torch.Generator().manual_seed(9))
    big_px = torch.zeros(B, T, K, H, W).scatter_(2, pix[:, :, None], 1e4)
    fused_px = fuse(feats, big_px)
    for t in range(T):
        picked = torch.gather(feats, 1, pix[:, t, None, None].expand(B, 1, C, H, W))[:, 0]
        torch.testing.assert_close(fused_px[:, t], picked, **tol)
    # (b) equal logits (whatever their value) give the mean over experts
    for level in (0.0, 3.5):
        eq = fuse(feats, torch.full((B, T, K), level))
        for t in range(T):
            torch.testing.assert_close(eq[:, t], feats.mean(dim=1), **tol)
    # (c) linear in the features for fixed logits
    logits = torch.randn(B, T, K, generator=torch.Generator().manual_seed(10))
    f2 = torch.randn(feats.shape, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(fuse(feats + f2, logits), fuse(feats, logits) + fuse(f2, logits),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fuse(2.5 * feats, logits), 2.5 * fuse(feats, logits), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate", ["image", "spatial"])
def test_heads_read_fused_task_features(gate):
    # (d) each task head of the model runs on its task's fused features,
    # with the model's own gate and experts
    torch.manual_seed(2)
    m = build_model(gate=gate, **TINY).eval()
    if gate == "spatial":  # move off the uniform start (zero last conv) so the tasks mix differently
        torch.nn.init.normal_(m.gate.out.weight, std=0.5)
    x = _x()
    with torch.no_grad():
        out = m(x)
        feats, expert_logits = m.expert_forward(x)
        fused = gated_fusion_ref(feats, m.gate(feats))
        for t, name in enumerate(TASKS):
            torch.testing.assert_close(getattr(out, name), m.heads[name](fused[:, t]), rtol=1e-5, atol=1e-5)
        for name in EXPERTS:
            torch.testing.assert_close(out.experts[name], expert_logits[name])
        # the three tasks get different mixtures, so the order matters
        assert not torch.allclose(fused[:, 0], fused[:, 1], atol=1e-4)


@pytest.mark.parametrize("gate", ["image", "spatial"])
def test_gradients_reach_all_experts_and_gates(gate):
    torch.manual_seed(3)
    m = build_model(gate=gate, **TINY).train()
    x = _x(B=2, S=32)
    mask = (torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(4)) > 0.5).long()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    # one step first: the spatial gate's last conv starts at zero, so the
    # layers before it get their first gradient after that conv has moved
    for _ in range(2):
        opt.zero_grad()
        _sup_loss(m(x), mask).backward()
        opt.step()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().max() == 0]
    assert not missing, f"no gradient for {missing}"
    for name in EXPERTS:
        assert any(p.grad.abs().sum() > 0 for p in m.experts[name].parameters())
    assert any(p.grad.abs().sum() > 0 for p in m.gate.parameters())


def test_predictor_and_channels_last():
    torch.manual_seed(5)
    m = build_model(gate="spatial", **TINY).eval()
    x = _x()
    p = m.predictor()(x)
    assert p.shape == (2, 3, 32, 32)
    torch.testing.assert_close(p[:, :2].sum(1), torch.ones(2, 32, 32))
    assert ((p >= 0) & (p <= 1)).all()
    ref = m(x)
    torch.testing.assert_close(p[:, :2], torch.softmax(ref.seg, 1))
    m.to(memory_format=torch.channels_last)
    out = m(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out.seg, ref.seg, rtol=1e-4, atol=1e-4)


def test_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(6)
    m = build_model(gate="image", **TINY).eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": m.state_dict(), "model_config": dataclasses.asdict(m.cfg),
                "norm": {"mean": [0.5] * 3, "std": [0.2] * 3}, "step": 7}, path)
    m2, meta = load_checkpoint(path, map_location="cpu")
    assert isinstance(m2, SemiMoE) and not m2.training
    assert meta["step"] == 7 and meta["norm"]["mean"] == [0.5] * 3 and "model" not in meta
    x = _x()
    torch.testing.assert_close(m(x).seg, m2(x).seg)
    # prefixes of DDP / torch.compile wrappers are accepted
    torch.save({"model": {"module." + k: v for k, v in m.state_dict().items()},
                "model_config": dataclasses.asdict(m.cfg)}, path)
    m3, _ = load_checkpoint(path)
    torch.testing.assert_close(m(x).seg, m3(x).seg)
    torch.save({"weights": 1}, path)
    with pytest.raises(ValueError, match="not a semimoe checkpoint"):
        load_checkpoint(path)


def _np(t):
    return t.detach().double().numpy()


def _softmax_np(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _image_gate_np(gate, f):
    """ImageGate in eval mode, float64 NumPy, from the documented math (METHOD.md §1)."""
    B, K, C, H, W = f.shape
    q = f.mean(axis=(3, 4)).reshape(B, K * C)  # GAP of the channel concatenation
    out = []
    for head in gate.heads:
        h = np.maximum(q @ _np(head.linear1.weight).T + _np(head.linear1.bias), 0.0)
        h = h * _softmax_np(h @ _np(head.attention.weight).T + _np(head.attention.bias), axis=1)
        out.append(h @ _np(head.linear2.weight).T + _np(head.linear2.bias))  # dropout: identity
    return np.stack(out, axis=1)  # (B, T, K)


def _conv2d_np(x, w, b):
    """Cross-correlation with zero padding k//2 by explicit shifts (x: B,I,H,W; w: O,I,k,k)."""
    B, I, H, W = x.shape
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((B, w.shape[0], H, W))
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("oi,bihw->bohw", w[:, :, dy, dx], xp[:, :, dy:dy + H, dx:dx + W])
    return out + b[None, :, None, None]


def _spatial_gate_np(gate, f, num_tasks):
    """SpatialGate in eval mode, float64 NumPy: conv3x3 -> BN (running stats) -> ReLU -> conv1x1."""
    B, K, C, H, W = f.shape
    conv, bn = gate.body[0], gate.body[1]
    y = _conv2d_np(f.reshape(B, K * C, H, W), _np(conv.weight), _np(conv.bias))
    c = (None, slice(None), None, None)
    y = (y - _np(bn.running_mean)[c]) / np.sqrt(_np(bn.running_var)[c] + bn.eps) * _np(bn.weight)[c] \
        + _np(bn.bias)[c]
    y = np.maximum(y, 0.0)
    y = _conv2d_np(y, _np(gate.out.weight), _np(gate.out.bias))
    return y.reshape(B, num_tasks, K, H, W)


def _randomise_(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for mod in module.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 1.5 + 0.5)
    return module


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_image_gate_matches_numpy(dtype):
    K, C, T = 3, 6, 3
    gate = _randomise_(ImageGate(K, C, T), seed=0).to(dtype).eval()
    assert gate.heads[0].linear1.out_features == int(K * C * 0.5)
    f = torch.randn(2, K, C, 5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = gate(f.to(dtype))
    assert got.shape == (2, T, K) and got.dtype == dtype
    want = _image_gate_np(gate, f.numpy())
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(_np(got), want, rtol=tol, atol=tol)
    assert np.abs(want[:, 0] - want[:, 1]).max() > 1e-3  # one head per task, not shared


def test_image_gate_dropout_only_in_training():
    gate = _randomise_(ImageGate(3, 8), seed=2).train()
    f = torch.randn(2, 3, 8, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    a = gate(f)
    torch.manual_seed(1)
    b = gate(f)
    assert not torch.equal(a, b)  # dropout in training mode
    gate.eval()
    np.testing.assert_allclose(_np(gate(f)), _image_gate_np(gate, f.double().numpy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spatial_gate_matches_numpy(dtype):
    K, C, T, hidden = 3, 4, 3, 5
    gate = SpatialGate(K, C, T, hidden=hidden)
    # the last conv starts at zero (uniform mixture); randomise it, the BN
    # affine parameters and the running statistics so every step shows
    gate = _randomise_(gate, seed=4).to(dtype).eval()
    assert gate.out.weight.abs().min() > 0
    f = torch.randn(2, K, C, 6, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = gate(f.to(dtype))
    assert got.shape == (2, T, K, 6, 9) and got.dtype == dtype
    want = _spatial_gate_np(gate, f.numpy(), T)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(_np(got), want, rtol=tol, atol=tol)
    # cross-check the hand-written conv with SciPy on one output channel
    w = _np(gate.body[0].weight)
    x = f.numpy()[0].reshape(K * C, 6, 9)
    ch0 = sum(signal.correlate(x[i], w[0, i], mode="same") for i in range(K * C)) + _np(gate.body[0].bias)[0]
    np.testing.assert_allclose(_conv2d_np(x[None], w, _np(gate.body[0].bias))[0, 0], ch0, rtol=1e-12, atol=1e-12)
    # the zero-initialised gate really is uniform (logits 0) before randomising
    fresh = SpatialGate(K, C, T, hidden=hidden)
    fresh.reset_output()
    assert torch.equal(fresh(f.float()), torch.zeros(2, T, K, 6, 9))


# ------------------------------------------------------------- BatchNorm folding
def _with_running_stats(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(n, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("arch, ref_dtype, atol", [("semimoe", torch.float64, 2e-5),
                                                   ("icmoe", torch.float32, 1e-4)])
def test_fold_batchnorm_matches_the_unfolded_model(arch, ref_dtype, atol):
    """The folded copy against the unfolded model (in float64 where the model
    runs in float64; IC-MoE's vote works in float32)."""
    from semimoe.models import build_model, fold_batchnorm

    cfg = ModelConfig(arch=arch, base_width=8, depth=3, gate="spatial")
    model = _with_running_stats(build_model(cfg))
    pred = model.predictor().eval()
    before = {k: v.clone() for k, v in pred.state_dict().items()}
    folded = fold_batchnorm(pred)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in pred.modules())
    left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert n_bn > 0 and left < n_bn
    # The original is untouched.
    assert all(torch.equal(v, pred.state_dict()[k]) for k, v in before.items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        exp = copy.deepcopy(pred).to(ref_dtype)(x.to(ref_dtype)).double()
        got = folded(x)
    torch.testing.assert_close(got.double(), exp, rtol=0, atol=atol)


# ------------------------------------------------------- heads-first predictor
@pytest.mark.parametrize("gate", ["image", "spatial"])
def test_predictor_heads_first_matches_the_model_forward(gate):
    """The predictor mixes each expert's head projections; the reference is
    the model's own forward (stacked features, gated fusion, heads) in
    float64, with gates far from uniform."""
    torch.manual_seed(11)
    m = _with_running_stats(build_model(gate=gate, base_width=6, depth=3))
    with torch.no_grad():
        for p in m.gate.parameters():
            p.normal_(0, 1.0)
    x = _x(B=3, S=24, seed=4)
    with torch.no_grad():
        ref = copy.deepcopy(m).double()(x.double())
        exp = torch.cat([torch.softmax(ref.seg, 1), torch.softmax(ref.bnd, 1)[:, 1:2]], 1)
        w = torch.softmax(ref.gates, 2)
        got = m.predictor()(x)
    assert float(w.amax() - w.amin()) > 0.2  # the gates really mix unequally
    torch.testing.assert_close(got.double(), exp, rtol=0, atol=2e-5)  # float32 rounding (the fold test's bound)
    with pytest.raises(ValueError, match="multiples"):
        m.predictor()(torch.randn(1, 3, 30, 32))


# ------------------------------------------- upsampling as a transposed convolution
@pytest.mark.parametrize("bias, channels_last", [(True, False), (False, True)])
def test_transposed_upconv_matches_upsample_then_conv(bias, channels_last):
    """TransposedUpConv against F.interpolate(nearest x2) + conv2d + BN + ReLU of
    the original block in float64, on a non-square input with odd sides."""
    from semimoe.models import TransposedUpConv
    from semimoe.models.unet import UpConv

    torch.manual_seed(12)
    up = _with_running_stats(UpConv(5, 7))
    if not bias:
        up.block[0].bias = None
    x = torch.randn(2, 5, 5, 9)
    with torch.no_grad():
        ref = copy.deepcopy(up).double()
        ref.transposed = False  # the plain path: F.interpolate, then the block
        exp = ref(x.double())
        ph = TransposedUpConv.from_upconv(up)
        if channels_last:
            ph = ph.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        got = ph(x)
    assert got.shape == (2, 7, 10, 18)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(got.double(), exp, rtol=0, atol=1e-5 * float(exp.abs().max()))
    assert ph.deconv.kernel_size == (4, 4) and ph.deconv.stride == (2, 2) and ph.deconv.out_channels == 7


def test_transposed_upconv_refuses_other_layouts():
    from semimoe.models import TransposedUpConv, transpose_upconvs
    from semimoe.models.unet import UpConv

    up = UpConv(4, 4)
    up.block[0] = torch.nn.Conv2d(4, 4, 5, padding=2)
    assert not TransposedUpConv.convertible(up)
    with pytest.raises(ValueError, match="3x3"):
        TransposedUpConv.from_upconv(up)
    assert isinstance(transpose_upconvs(torch.nn.Sequential(up))[0], UpConv)  # left as it is


@pytest.mark.parametrize("arch, ref_dtype, atol", [("semimoe", torch.float64, 2e-5), ("mil", torch.float64, 2e-5),
                                                   ("icmoe", torch.float32, 1e-4)])
def test_inference_copy_matches_the_model(arch, ref_dtype, atol, monkeypatch):
    """inference_copy (BatchNorm folded, upsampling as transposed convolutions) against the
    unchanged predictor with every op on its reference backend (upsample, then
    convolution); the original is untouched."""
    from semimoe.models import TransposedUpConv, inference_copy
    from semimoe.models.unet import UpConv

    model = _with_running_stats(build_model(ModelConfig(arch=arch, base_width=8, depth=3, gate="spatial")))
    pred = model.predictor().eval()
    before = {k: v.clone() for k, v in pred.state_dict().items()}
    ic = inference_copy(pred)
    n_up = sum(isinstance(m, UpConv) for m in pred.modules())
    assert sum(isinstance(m, TransposedUpConv) for m in ic.modules()) == n_up
    assert not any(isinstance(m, (UpConv, torch.nn.BatchNorm2d)) for m in ic.modules())
    assert all(torch.equal(v, pred.state_dict()[k]) for k, v in before.items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        monkeypatch.setenv("SEMIMOE_BACKEND", "reference")
        exp = copy.deepcopy(pred).to(ref_dtype)(x.to(ref_dtype)).double()
        monkeypatch.delenv("SEMIMOE_BACKEND")
        got = ic(x)
    torch.testing.assert_close(got.double(), exp, rtol=0, atol=atol)
    plain = inference_copy(pred, transposed=False)  # GPU targets: the upsample stays
    assert not any(isinstance(m, TransposedUpConv) for m in plain.modules())
    assert all(m.transposed is False for m in plain.modules() if isinstance(m, UpConv))
    with torch.no_grad():
        torch.testing.assert_close(plain(x).double(), exp, rtol=0, atol=atol)
