"""Semi-MoE model: shapes, gates, fusion paths, gradients, checkpoints (docs/CONTRACTS.md)."""
import dataclasses

import pytest
import torch

from semimoe.losses import boundary_dice_loss, dice_loss_sq, sdf_loss
from semimoe.models import (EXPERTS, TASKS, ImageGate, ModelConfig, SemiMoE, SemiMoEOutput, SpatialGate,
                            UNet, build_model, load_checkpoint)
from semimoe.ops import gated_fusion_ref

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
    assert TASKS == ("seg", "sdf", "bnd") and EXPERTS == ("seg", "sdf", "bnd")


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


def test_presets_and_validation():
    for name in ("paper", "fast", "cpu-demo"):
        assert ModelConfig.preset(name).depth >= 3
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="model.gate"):
        ModelConfig(gate="pixel")
    with pytest.raises(ValueError, match="model.fusion"):
        ModelConfig(fusion="triton")
    with pytest.raises(ValueError, match="model.depth"):
        ModelConfig(depth=0)
    m = build_model(**TINY)
    with pytest.raises(ValueError, match="multiples of 2"):
        m(torch.randn(1, 3, 30, 32))


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


def test_fusion_is_gated_sum_of_expert_features():
    torch.manual_seed(2)
    m = build_model(gate="image", **TINY).eval()
    x = _x()
    feats, _ = m.expert_forward(x)
    logits = m.gate(feats)
    fused = gated_fusion_ref(feats, logits)
    w = torch.softmax(logits, dim=2)
    manual = (w[..., None, None, None] * feats[:, None]).sum(dim=2)
    torch.testing.assert_close(fused, manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x).seg, m.heads["seg"](fused[:, 0]), rtol=1e-5, atol=1e-5)


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


def test_gate_modules_shapes():
    f = torch.randn(2, 3, 8, 16, 16)
    assert ImageGate(3, 8)(f).shape == (2, 3, 3)
    sg = SpatialGate(3, 8)
    assert sg(f).shape == (2, 3, 3, 16, 16)
    ig = ImageGate(3, 8).train()
    torch.manual_seed(0)
    a = ig(f)
    torch.manual_seed(1)
    b = ig(f)
    assert not torch.equal(a, b)  # dropout in training mode
    ig.eval()
    torch.testing.assert_close(ig(f), ig(f))
