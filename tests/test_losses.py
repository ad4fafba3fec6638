"""Losses, multi-objective weighting, ramp and pseudo-labels.

Most checks use one tiny example, B=1, C=2, H=1, W=2, written out by hand:

    logits pixel 0 = (0, 0)      -> p = (1/2, 1/2)
    logits pixel 1 = (0, ln 3)   -> p = (1/4, 3/4)
    target = [0, 1]
"""
import math

import numpy as np
import pytest
import torch

from semimoe.losses import (
    AdaptiveMultiObjectiveLoss,
    PseudoLabels,
    boundary_dice_loss,
    dice_loss_sq,
    make_pseudo_labels,
    sdf_loss,
    unsup_weight,
)
from semimoe.metrics import label_components


def _tiny(dtype=torch.float64, requires_grad=False):
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]], dtype=dtype)  # (W, C)
    logits = logits.t().reshape(1, 2, 1, 2).clone().requires_grad_(requires_grad)
    target = torch.tensor([[[0, 1]]])
    return logits, target


# ----------------------------------------------------------------------------
# dice_loss_sq
# ----------------------------------------------------------------------------
def test_dice_sq_hand_value():
    logits, target = _tiny()
    # class 0: p = [1/2, 1/4], g = [1, 0]: inter 1/2, sum p^2 = 5/16, sum g^2 = 1
    #   loss0 = 1 - (2*1/2 + 1) / (5/16 + 1 + 1) = 1 - 2 / (37/16) = 5/37
    # class 1: p = [1/2, 3/4], g = [0, 1]: inter 3/4, sum p^2 = 13/16, sum g^2 = 1
    #   loss1 = 1 - (3/2 + 1) / (13/16 + 2) = 1 - (5/2) / (45/16) = 1/9
    # mean = (5/37 + 1/9) / 2 = 41/333
    assert dice_loss_sq(logits, target).item() == pytest.approx(41 / 333, abs=1e-12)


def test_dice_sq_smooth_zero():
    logits, target = _tiny()
    # class 0: 1 - 1 / (5/16 + 1) = 5/21 ; class 1: 1 - (3/2) / (13/16 + 1) = 5/29
    expect = (5 / 21 + 5 / 29) / 2
    assert dice_loss_sq(logits, target, smooth=0.0).item() == pytest.approx(expect, abs=1e-12)


def test_dice_sq_weighted():
    logits, target = _tiny()
    w = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    # only pixel 0 counts: class 0: inter 1/2, den 1/4 + 1 -> 1 - 2 / (9/4) = 1/9
    #                      class 1: inter 0,   den 1/4 + 0 -> 1 - 1 / (5/4) = 1/5
    assert dice_loss_sq(logits, target, weight=w).item() == pytest.approx((1 / 9 + 1 / 5) / 2, abs=1e-12)
    ones = torch.ones(1, 1, 1, 2, dtype=torch.float64)  # (B,1,H,W) also accepted
    assert dice_loss_sq(logits, target, weight=ones).item() == pytest.approx(41 / 333, abs=1e-12)


def test_dice_sq_batch_pooled_and_target_b1hw():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 5, 4, dtype=torch.float64)
    target = torch.randint(0, 2, (3, 5, 4))
    p = torch.softmax(logits, 1)
    g = torch.stack([target == 0, target == 1], 1).double()
    ref = 0.0
    for c in range(2):
        ref += 1 - (2 * (p[:, c] * g[:, c]).sum() + 1) / ((p[:, c] ** 2).sum() + (g[:, c] ** 2).sum() + 1)
    ref /= 2
    assert dice_loss_sq(logits, target).item() == pytest.approx(ref.item(), abs=1e-12)
    assert dice_loss_sq(logits, target[:, None]).item() == pytest.approx(ref.item(), abs=1e-12)


def _per_image_dice_ref(logits, target, weight, kind, eps):
    """The released code's per-image Dice, written out in numpy float64 loops:
    one Dice per (image, class), then the mean."""
    p = torch.softmax(logits, 1).numpy()
    t, w = target.numpy(), weight.numpy()
    losses = []
    for b in range(p.shape[0]):
        for c in range(p.shape[1]):
            g = (t[b] == c).astype(np.float64)
            pc, wb = p[b, c], w[b]
            if kind == "sq":
                num = 2 * (wb * pc * g).sum() + eps
                den = (wb * pc * pc).sum() + (wb * g * g).sum() + eps
            else:
                tp, fp, fn = (wb * pc * g).sum(), (wb * pc * (1 - g)).sum(), (wb * (1 - pc) * g).sum()
                num, den = 2 * tp + eps, 2 * tp + fp + fn + eps
            losses.append(1 - num / den)
    return float(np.mean(losses))


@pytest.mark.parametrize("weighted", [False, True])
def test_dice_losses_per_image_match_a_direct_loop(weighted):
    torch.manual_seed(4)
    logits = torch.randn(3, 2, 6, 5, dtype=torch.float64)
    target = torch.randint(0, 2, (3, 6, 5))
    target[1] = 0  # an image without class 1: where per-image and pooled differ most
    w = torch.rand(3, 6, 5, dtype=torch.float64) if weighted else torch.ones(3, 6, 5, dtype=torch.float64)
    kw = {"weight": w} if weighted else {}
    got = dice_loss_sq(logits, target, per_image=True, **kw).item()
    assert got == pytest.approx(_per_image_dice_ref(logits, target, w, "sq", 1.0), abs=1e-12)
    got = boundary_dice_loss(logits, target, eps=1e-8, per_image=True, **kw).item()
    assert got == pytest.approx(_per_image_dice_ref(logits, target, w, "bnd", 1e-8), abs=1e-12)
    pooled, per_image = dice_loss_sq(logits, target, **kw), dice_loss_sq(logits, target, per_image=True, **kw)
    assert abs(pooled.item() - per_image.item()) > 1e-3
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: dice_loss_sq(z, target, per_image=True) +
                                    boundary_dice_loss(z, target, per_image=True), (x,))


def test_objective_dice_form_reaches_the_losses():
    from semimoe.losses import SupervisedObjective

    with pytest.raises(ValueError, match="dice"):
        SupervisedObjective(dice="pixel")
    torch.manual_seed(5)
    logits = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 4, 4))
    target[0] = 0
    img = SupervisedObjective(dice="image")
    assert img.seg_loss(logits, target).item() == pytest.approx(
        _per_image_dice_ref(logits, target, torch.ones(2, 4, 4, dtype=torch.float64), "sq", 1.0), abs=1e-6)
    assert img.bnd_loss(logits, target).item() == pytest.approx(
        _per_image_dice_ref(logits, target, torch.ones(2, 4, 4, dtype=torch.float64), "bnd", 1e-8), abs=1e-6)


def test_dice_sq_gradcheck():
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (2, 3, 3))
    w = torch.rand(2, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: dice_loss_sq(x, target), (logits,))
    assert torch.autograd.gradcheck(lambda x: dice_loss_sq(x, target, weight=w), (logits,))


def test_dice_sq_shape_errors():
    logits, target = _tiny()
    with pytest.raises(ValueError, match="target"):
        dice_loss_sq(logits, torch.zeros(1, 1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        dice_loss_sq(logits, torch.zeros(2, 1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        dice_loss_sq(logits, target.float())
    with pytest.raises(ValueError, match="logits"):
        dice_loss_sq(logits[0], target)
    with pytest.raises(ValueError, match="logits"):
        dice_loss_sq(logits[:, :1], target)
    with pytest.raises(ValueError, match="weight"):
        dice_loss_sq(logits, target, weight=torch.ones(1, 2, 1, 2))


# ----------------------------------------------------------------------------
# sdf_loss
# ----------------------------------------------------------------------------
def test_sdf_hand_value_and_weight():
    x = torch.tensor([math.atanh(0.5), 0.0], dtype=torch.float64).reshape(1, 1, 1, 2)
    t = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    # tanh(x) = [0.5, 0]; squared errors [0.25, 1.0]; mean 0.625
    assert sdf_loss(x, t).item() == pytest.approx(0.625, abs=1e-12)
    assert sdf_loss(x, t[:, None]).item() == pytest.approx(0.625, abs=1e-12)
    # weights [3, 1]: (3*0.25 + 1*1.0) / 4 = 0.4375
    w = torch.tensor([[[3.0, 1.0]]], dtype=torch.float64)
    assert sdf_loss(x, t, weight=w).item() == pytest.approx(0.4375, abs=1e-12)
    # all-zero weights: 0, not nan
    assert sdf_loss(x, t, weight=torch.zeros_like(w)).item() == 0.0


def test_sdf_per_image_not_cross_batch():
    # The reference's (B,1,H,W) - (B,H,W) broadcast compares every prediction
    # with every target of the batch; sdf_loss must compare image i with target i.
    rng = np.random.default_rng(0)
    B, H, W = 3, 4, 5
    x = rng.normal(size=(B, 1, H, W))
    t = np.tanh(rng.normal(size=(B, H, W)))  # targets differ between images
    w = rng.uniform(0.1, 2.0, size=(B, H, W))
    per_image = np.stack([(np.tanh(x[i, 0]) - t[i]) ** 2 for i in range(B)])  # float64, image by image
    want = per_image.mean()
    got = sdf_loss(torch.from_numpy(x), torch.from_numpy(t))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert sdf_loss(torch.from_numpy(x), torch.from_numpy(t[:, None])).item() == pytest.approx(want, rel=1e-12)
    want_w = (w * per_image).sum() / w.sum()
    got_w = sdf_loss(torch.from_numpy(x), torch.from_numpy(t), weight=torch.from_numpy(w)).item()
    assert got_w == pytest.approx(want_w, rel=1e-12)
    cross = np.mean([(np.tanh(x[i, 0]) - t[j]) ** 2 for i in range(B) for j in range(B)])
    assert abs(cross - want) > 1e-2  # the two readings are told apart by this batch
    # a perfect prediction per image gives 0 although the images' targets differ
    assert sdf_loss(torch.from_numpy(np.arctanh(t))[:, None], torch.from_numpy(t)).item() == pytest.approx(
        0.0, abs=1e-12)


def test_sdf_shape_errors_and_grad():
    x = torch.zeros(2, 1, 3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="target"):
        sdf_loss(x, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="target"):
        sdf_loss(x, torch.zeros(2, 2, 3, 4))
    with pytest.raises(ValueError, match="target"):
        sdf_loss(x, torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="sdf_logits"):
        sdf_loss(torch.zeros(2, 2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="sdf_logits"):
        sdf_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="weight"):
        sdf_loss(x, torch.zeros(2, 3, 4), weight=torch.ones(2, 4, 3))
    loss = sdf_loss(x, torch.full((2, 3, 4), 0.5))
    loss.backward()
    # d/dx mean((tanh x - t)^2) at x = 0 = 2 * (0 - 0.5) * 1 / 24
    assert torch.allclose(x.grad, torch.full_like(x, -1.0 / 24))


# ----------------------------------------------------------------------------
# boundary_dice_loss
# ----------------------------------------------------------------------------
def test_boundary_dice_hand_value():
    logits, target = _tiny()
    # class 0: p = [1/2, 1/4], g = [1, 0]: TP 1/2, FP 1/4, FN 1/2 -> 1 - 1 / (7/4) = 3/7
    # class 1: p = [1/2, 3/4], g = [0, 1]: TP 3/4, FP 1/2, FN 1/4 -> 1 - (3/2) / (9/4) = 1/3
    # mean = (3/7 + 1/3) / 2 = 8/21
    assert boundary_dice_loss(logits, target, eps=0.0).item() == pytest.approx(8 / 21, abs=1e-12)
    e = 1e-5
    expect = ((1 - (1 + e) / (1.75 + e)) + (1 - (1.5 + e) / (2.25 + e))) / 2
    assert boundary_dice_loss(logits, target).item() == pytest.approx(expect, abs=1e-12)


def test_boundary_dice_weighted_and_grad():
    logits, target = _tiny(requires_grad=True)
    w = torch.tensor([[[0.0, 2.0]]], dtype=torch.float64)
    # only pixel 1 (weight 2): class 0: TP 0, FP 2*1/4, FN 0 -> 1 - 0 / (1/2) = 1
    #                          class 1: TP 2*3/4, FP 0, FN 2*1/4 -> 1 - 3 / (3 + 1/2) = 1/7
    loss = boundary_dice_loss(logits, target, eps=0.0, weight=w)
    assert loss.item() == pytest.approx((1 + 1 / 7) / 2, abs=1e-12)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[..., 1].abs().sum() > 0
    assert logits.grad[..., 0].abs().sum() == 0  # weight 0 -> no gradient
    torch.manual_seed(2)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 2, (2, 3, 3))
    assert torch.autograd.gradcheck(lambda z: boundary_dice_loss(z, t), (x,))


def test_boundary_dice_shape_errors():
    logits, target = _tiny()
    with pytest.raises(ValueError, match="target"):
        boundary_dice_loss(logits, torch.zeros(1, 2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        boundary_dice_loss(torch.zeros(1, 2, 2), target)


# ----------------------------------------------------------------------------
# AdaptiveMultiObjectiveLoss
# ----------------------------------------------------------------------------
def test_amo_reference_value_and_grads():
    amo = AdaptiveMultiObjectiveLoss().double()
    l1 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    l2 = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    l3 = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    m = amo(l1, l2, l3)
    e = math.e
    # s = 1: e^-1*0.3 + 0.4e + 0.5*e^-1*0.2 + 0.4e + e^-1*0.1 + 0.4e = 0.5/e + 1.2e
    assert m.item() == pytest.approx(0.5 / e + 1.2 * e, abs=1e-12)
    m.backward()
    # dM/ds_seg = -e^-1 L1 + 0.4 e ; dM/ds_sdf = -0.5 e^-1 L2 + 0.4 e ; dM/ds_bnd = -e^-1 L3 + 0.4 e
    assert amo.s_seg.grad.item() == pytest.approx(-0.3 / e + 0.4 * e, abs=1e-12)
    assert amo.s_sdf.grad.item() == pytest.approx(-0.1 / e + 0.4 * e, abs=1e-12)
    assert amo.s_bnd.grad.item() == pytest.approx(-0.1 / e + 0.4 * e, abs=1e-12)
    assert l1.grad.item() == pytest.approx(1 / e)
    assert l2.grad.item() == pytest.approx(0.5 / e)
    w = amo.weights()
    assert w["seg"] == pytest.approx(1 / e) and w["sdf"] == pytest.approx(0.5 / e)


def test_amo_kendall_value_and_grads():
    amo = AdaptiveMultiObjectiveLoss(variant="kendall").double()
    assert amo.s_seg.item() == 0.0  # log sigma = 0
    ls = [torch.tensor(v, dtype=torch.float64) for v in (0.3, 0.2, 0.1)]
    m = amo(*ls)
    # sum 0.5 * e^0 * L + 0 = 0.3
    assert m.item() == pytest.approx(0.3, abs=1e-12)
    m.backward()
    # d/ds (0.5 e^{-2s} L + s) = 1 - e^{-2s} L = 1 - L at s = 0
    assert amo.s_seg.grad.item() == pytest.approx(0.7, abs=1e-12)
    assert amo.s_sdf.grad.item() == pytest.approx(0.8, abs=1e-12)
    assert amo.s_bnd.grad.item() == pytest.approx(0.9, abs=1e-12)
    amo2 = AdaptiveMultiObjectiveLoss(variant="kendall", init=0.5).double()
    # 0.5 e^{-1} (0.6) + 1.5
    assert amo2(*ls).item() == pytest.approx(0.3 / math.e + 1.5, abs=1e-12)


def test_amo_parameters_and_optimizer():
    amo = AdaptiveMultiObjectiveLoss()
    names = dict(amo.named_parameters())
    assert set(names) == {"s_seg", "s_sdf", "s_bnd"}
    assert all(p.item() == 1.0 and p.dim() == 0 for p in names.values())
    opt = amo.make_optimizer()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 0.05 and opt.defaults["weight_decay"] == 5e-5
    before = amo.s_seg.item()
    amo(torch.tensor(0.5), torch.tensor(0.5), torch.tensor(0.5)).backward()
    opt.step()
    assert amo.s_seg.item() != before
    with pytest.raises(ValueError, match="variant"):
        AdaptiveMultiObjectiveLoss(variant="nope")
    with pytest.raises(ValueError, match="l_sdf"):
        amo(torch.tensor(0.5), torch.ones(2), torch.tensor(0.5))


def test_end_to_end_grad_to_logits_and_s():
    torch.manual_seed(3)
    seg = torch.randn(2, 2, 8, 8, requires_grad=True)
    sdf = torch.randn(2, 1, 8, 8, requires_grad=True)
    bnd = torch.randn(2, 2, 8, 8, requires_grad=True)
    mask = torch.randint(0, 2, (2, 8, 8))
    amo = AdaptiveMultiObjectiveLoss()
    m = amo(dice_loss_sq(seg, mask), sdf_loss(sdf, torch.rand(2, 8, 8) * 2 - 1), boundary_dice_loss(bnd, mask))
    m.backward()
    for t in (seg, sdf, bnd, amo.s_seg, amo.s_sdf, amo.s_bnd):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


# ----------------------------------------------------------------------------
# unsup_weight
# ----------------------------------------------------------------------------
def test_unsup_weight():
    assert unsup_weight(0, 200) == pytest.approx(0.5 / 200)
    assert unsup_weight(99, 200) == pytest.approx(0.25)
    assert unsup_weight(199, 200) == pytest.approx(0.5)
    assert unsup_weight(500, 200) == pytest.approx(0.5)
    assert unsup_weight(9, 10, max_weight=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="total_epochs"):
        unsup_weight(0, 0)


# ----------------------------------------------------------------------------
# pseudo-labels
# ----------------------------------------------------------------------------
def _heads(seg_p1, sdf, bnd_p1, requires_grad=True):
    """Heads for a (1, 1, W) image from foreground probabilities and tanh values."""
    def two_class(p1):
        p1 = torch.tensor(p1, dtype=torch.float64)
        lg = torch.stack([torch.zeros_like(p1), torch.log(p1) - torch.log1p(-p1)])  # softmax -> (1-p1, p1)
        return lg.reshape(1, 2, 1, -1).clone().requires_grad_(requires_grad)

    s = torch.atanh(torch.tensor(sdf, dtype=torch.float64)).reshape(1, 1, 1, -1).clone()
    return two_class(seg_p1), s.requires_grad_(requires_grad), two_class(bnd_p1)


def test_pseudo_reference():
    seg, sdf, bnd = _heads([0.9, 0.2, 0.6, 0.4], [0.5, -0.5, 0.25, 0.0], [0.1, 0.8, 0.3, 0.7])
    pl = make_pseudo_labels(seg, sdf, bnd)
    assert isinstance(pl, PseudoLabels)
    assert pl.mask.tolist() == [[[1, 0, 1, 0]]] and pl.mask.dtype == torch.long
    assert pl.boundary.tolist() == [[[0, 1, 0, 1]]] and pl.boundary.dtype == torch.long
    assert pl.sdf.shape == (1, 1, 4)
    assert torch.allclose(pl.sdf, torch.tensor([[[0.5, -0.5, 0.25, 0.0]]], dtype=torch.float64))
    assert pl.weight is None
    for t in (pl.mask, pl.sdf, pl.boundary):
        assert not t.requires_grad


def test_pseudo_sdf_agree():
    # mask [1, 1, 0, 0, 1, 0], sdf [+, -, +, -, 0, 0]: disagree at 1 and 2; 0 agrees with both
    seg, sdf, bnd = _heads([0.9, 0.9, 0.1, 0.1, 0.9, 0.1], [0.5, -0.5, 0.5, -0.5, 0.0, 0.0], [0.1] * 6)
    pl = make_pseudo_labels(seg, sdf, bnd, refine="sdf_agree")
    assert pl.weight.tolist() == [[[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]]]
    assert not pl.weight.requires_grad
    assert pl.mask.tolist() == [[[1, 1, 0, 0, 1, 0]]]  # mask itself unchanged


def test_pseudo_confidence():
    # p_max = 0.5, 0.75, 0.9, 0.75 (p1 = 0.25) -> weight (p_max - 0.5) / 0.5
    seg, sdf, bnd = _heads([0.5, 0.75, 0.9, 0.25], [0.1] * 4, [0.1] * 4)
    pl = make_pseudo_labels(seg, sdf, bnd, refine="confidence")
    assert torch.allclose(pl.weight, torch.tensor([[[0.0, 0.5, 0.8, 0.5]]], dtype=torch.float64))


def test_pseudo_boundary_split_separates_touching_glands():
    # one row, two glands merged by the seg head, boundary predicted between them
    seg, sdf, bnd = _heads([0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1], [0.0] * 7, [0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1])
    ref = make_pseudo_labels(seg, sdf, bnd)
    pl = make_pseudo_labels(seg, sdf, bnd, refine="boundary_split")
    assert ref.mask.tolist() == [[[0, 1, 1, 1, 1, 1, 0]]]
    assert pl.mask.tolist() == [[[0, 1, 1, 0, 1, 1, 0]]]
    assert pl.boundary.tolist() == ref.boundary.tolist() == [[[0, 0, 0, 1, 0, 0, 0]]]  # split leaves it alone
    assert pl.weight is None
    assert label_components(ref.mask[0].numpy()).max() == 1
    assert label_components(pl.mask[0].numpy()).max() == 2


def test_pseudo_combinations_and_order():
    seg, sdf, bnd = _heads([0.9, 0.75, 0.9, 0.1], [-0.5, 0.5, 0.5, 0.5], [0.9, 0.1, 0.1, 0.1])
    # boundary_split first: pixel 0 becomes background, so its negative SDF now agrees
    pl = make_pseudo_labels(seg, sdf, bnd, refine="sdf_agree+boundary_split")
    assert pl.mask.tolist() == [[[0, 1, 1, 0]]]
    assert pl.weight.tolist() == [[[1.0, 1.0, 1.0, 0.0]]]
    # a list spells the same steps; the order they are applied in is fixed, not the list's
    pl2 = make_pseudo_labels(seg, sdf, bnd, refine=["sdf_agree", "boundary_split"])
    assert pl2.mask.tolist() == [[[0, 1, 1, 0]]]
    assert pl2.weight.tolist() == [[[1.0, 1.0, 1.0, 0.0]]]
    # weights multiply: sdf_agree [0, 1, 1, 0] (no split) x confidence [0.8, 0.5, 0.8, 0.8]
    pl3 = make_pseudo_labels(seg, sdf, bnd, refine=("confidence", "sdf_agree"))
    assert torch.allclose(pl3.weight, torch.tensor([[[0.0, 0.5, 0.8, 0.0]]], dtype=torch.float64))
    pl4 = make_pseudo_labels(seg, sdf, bnd, refine="sdf_agree+confidence+boundary_split")
    assert torch.allclose(pl4.weight, torch.tensor([[[0.8, 0.5, 0.8, 0.0]]], dtype=torch.float64))
    for p in (pl, pl2, pl3, pl4):
        assert not any(t.requires_grad for t in p if t is not None)


def test_pseudo_errors_and_use_in_losses():
    seg, sdf, bnd = _heads([0.9, 0.2], [0.5, -0.5], [0.1, 0.8])
    with pytest.raises(ValueError, match="refine"):
        make_pseudo_labels(seg, sdf, bnd, refine="sharpen")
    with pytest.raises(ValueError, match="sdf_logits"):
        make_pseudo_labels(seg, torch.zeros(1, 1, 1, 3), bnd)
    with pytest.raises(ValueError, match="bnd_logits"):
        make_pseudo_labels(seg, sdf, torch.zeros(1, 2, 2, 2))
    pl = make_pseudo_labels(seg, sdf, bnd, refine="sdf_agree+confidence")
    x = torch.zeros(1, 2, 1, 2, dtype=torch.float64, requires_grad=True)
    z = torch.zeros(1, 1, 1, 2, dtype=torch.float64, requires_grad=True)
    total = dice_loss_sq(x, pl.mask, weight=pl.weight) + sdf_loss(z, pl.sdf, weight=pl.weight) \
        + boundary_dice_loss(x, pl.boundary, weight=pl.weight)
    total.backward()
    assert x.grad is not None and z.grad is not None
    assert seg.grad is None and sdf.grad is None  # nothing flows back to the teacher heads
