"""IC-MoE building blocks (semimoe.losses.icmoe), each against an
independent reference: float64 per-pixel / per-pair loops in plain Python
(``math.exp``/``math.log``) and NumPy, written from the formulas in the
docstrings, plus ``torch.autograd.gradcheck``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semimoe.losses import (boundary_band, confident_pseudo_labels, consensus, load_balance_loss,
                            pixel_contrastive_loss, pixel_vote, sample_pixels, vote_logits)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 1e-6


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _probs(B=2, E=3, C=4, H=5, W=6, seed=0, dtype=torch.float64):
    g = _gen(seed)
    return torch.softmax(2.0 * torch.randn(B, E, C, H, W, generator=g, dtype=torch.float64), dim=2).to(dtype)


# ----------------------------------------------------------------------------
# References (plain loops)
# ----------------------------------------------------------------------------
def _ref_vote(probs, router=None, target=None, valid=None, w_cons=1.0, eps=EPS):
    """(gate (B, E, H, W), fused (B, C, H, W)) by a per-pixel loop."""
    P = probs.detach().double().numpy()
    R = None if router is None else router.detach().double().numpy()
    T = None if target is None else target.numpy()
    V = None if valid is None else valid.numpy()
    B, E, C, H, W = P.shape
    gate = np.zeros((B, E, H, W))
    fused = np.zeros((B, C, H, W))
    for b in range(B):
        for h in range(H):
            for w in range(W):
                g = []
                for e in range(E):
                    v = math.log(max(P[b, e, c, h, w] for c in range(C)) + eps)
                    if R is not None:
                        v += R[b, e, h, w]
                    if T is not None and (V is None or V[b, h, w]):
                        v += w_cons * math.log(P[b, e, T[b, h, w], h, w] + eps)
                    g.append(v)
                m = max(g)
                ex = [math.exp(x - m) for x in g]
                wts = [x / sum(ex) for x in ex]
                gate[b, :, h, w] = g
                for c in range(C):
                    fused[b, c, h, w] = sum(wts[e] * P[b, e, c, h, w] for e in range(E))
    return gate, fused


def _ref_load_balance(gate, mask=None):
    G = gate.detach().double().numpy()
    if G.ndim == 5:
        G = G[:, 0]
    B, E, H, W = G.shape
    f, P, n = [0.0] * E, [0.0] * E, 0
    for b in range(B):
        for h in range(H):
            for w in range(W):
                if mask is not None and not bool(mask[b, h, w]):
                    continue
                n += 1
                logits = [float(G[b, e, h, w]) for e in range(E)]
                m = max(logits)
                ex = [math.exp(x - m) for x in logits]
                s = sum(ex)
                best = logits.index(m)  # first maximum
                f[best] += 1.0
                for e in range(E):
                    P[e] += ex[e] / s
    if n == 0:
        return 0.0
    return E * sum((f[e] / n) * (P[e] / n) for e in range(E))


def _normalise(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / max(n, 1e-12) for x in v]


def _ref_contrastive(emb, labels, tau, prototypes):
    X = emb.detach().double().tolist()
    Y = labels.tolist()
    N = len(X)
    Z = [_normalise(x) for x in X]
    keys = [(j, Z[j], Y[j]) for j in range(N)]  # (pixel index or None, vector, class)
    if prototypes:
        for c in sorted(set(Y)):
            members = [Z[j] for j in range(N) if Y[j] == c]
            mean = [sum(col) / len(members) for col in zip(*members)]
            keys.append((None, _normalise(mean), c))
    losses = []
    for i in range(N):
        sims, positive = [], []
        for j, k, c in keys:
            if j == i:
                continue
            sims.append(sum(a * b for a, b in zip(Z[i], k)) / tau)
            positive.append(c == Y[i])
        if not any(positive):
            continue
        m = max(sims)
        log_den = m + math.log(sum(math.exp(s - m) for s in sims))
        terms = [s - log_den for s, p in zip(sims, positive) if p]
        losses.append(-sum(terms) / len(terms))
    return sum(losses) / len(losses) if losses else 0.0


def _ref_band(labels, width):
    L = labels.numpy()
    B, H, W = L.shape
    out = np.zeros((B, H, W), dtype=bool)
    if width == 0:
        return out
    for b in range(B):
        for h in range(H):
            for w in range(W):
                win = L[b, max(0, h - width):h + width + 1, max(0, w - width):w + width + 1]
                out[b, h, w] = bool((win != L[b, h, w]).any())
    return out


# ----------------------------------------------------------------------------
# Voting
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["plain", "router", "target", "all"])
def test_vote_matches_loop(case):
    B, E, C, H, W = 2, 3, 4, 5, 6
    probs = _probs(B, E, C, H, W, seed=1)
    g = _gen(2)
    router = torch.randn(B, E, H, W, generator=g, dtype=torch.float64) if case in ("router", "all") else None
    target = torch.randint(0, C, (B, H, W), generator=g) if case in ("target", "all") else None
    valid = torch.rand(B, H, W, generator=g) > 0.3 if case == "all" else None
    if valid is not None:
        target = torch.where(valid, target, torch.full_like(target, 255))  # ignore index at invalid pixels
    w_cons = 0.7 if case == "all" else 1.0
    gate = vote_logits(probs, router, target, valid, consistency_weight=w_cons)
    assert gate.shape == (B, 1, E, H, W) and gate.dtype == torch.float64
    fused = pixel_vote(probs, gate)
    assert fused.shape == (B, C, H, W) and fused.dtype == torch.float64
    ref_gate, ref_fused = _ref_vote(probs, router, target, valid, w_cons)
    np.testing.assert_allclose(gate[:, 0].numpy(), ref_gate, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused.numpy(), ref_fused, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused.sum(1).numpy(), 1.0, atol=1e-12)
    # float32 input: float32 gate, same values to float32 precision; 4-D gate accepted
    gate32 = vote_logits(probs.float(), None if router is None else router.float(), target, valid, w_cons)
    assert gate32.dtype == torch.float32
    np.testing.assert_allclose(gate32[:, 0].numpy(), ref_gate, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pixel_vote(probs.float(), gate32[:, 0]).numpy(), ref_fused, rtol=1e-5, atol=1e-6)


def test_vote_gradcheck_router_and_gate():
    B, E, C, H, W = 1, 3, 2, 2, 3
    probs = _probs(B, E, C, H, W, seed=3)
    g = _gen(4)
    router = torch.randn(B, E, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, C, (B, H, W), generator=g)
    valid = torch.rand(B, H, W, generator=g) > 0.4

    def f(r):
        return pixel_vote(probs, vote_logits(probs, r, target, valid, consistency_weight=0.5))

    assert torch.autograd.gradcheck(f, (router,))
    gate = torch.randn(B, 1, E, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pixel_vote, (probs.clone().requires_grad_(True), gate))


def test_vote_terms_are_detached():
    probs = _probs(seed=5).requires_grad_(True)
    B, E, C, H, W = probs.shape
    target = torch.randint(0, C, (B, H, W), generator=_gen(6))
    assert not vote_logits(probs).requires_grad
    assert not vote_logits(probs, target=target).requires_grad
    router = torch.zeros(B, E, H, W, dtype=torch.float64, requires_grad=True)
    gate = vote_logits(probs, router, target)
    assert gate.requires_grad
    g_router, g_probs = torch.autograd.grad(gate.square().sum(), [router, probs], allow_unused=True)
    assert g_probs is None and g_router is not None
    # the fused output reaches probs only through the direct (weighted sum) path
    fused = pixel_vote(probs, vote_logits(probs, target=target))
    (gp,) = torch.autograd.grad(fused[:, 0].sum(), probs)
    w = torch.softmax(vote_logits(probs, target=target)[:, 0], dim=1)
    expected = torch.zeros_like(probs)
    expected[:, :, 0] = w
    torch.testing.assert_close(gp, expected)


def test_consensus_and_pseudo_labels():
    probs = _probs(seed=7)
    mean, lab = consensus(probs)
    P = probs.numpy()
    ref = P.sum(axis=1) / P.shape[1]
    np.testing.assert_allclose(mean.numpy(), ref, rtol=1e-12)
    np.testing.assert_array_equal(lab.numpy(), ref.argmax(axis=1))
    assert lab.dtype == torch.int64
    labels, valid = confident_pseudo_labels(mean, 0.6)
    np.testing.assert_array_equal(labels.numpy(), ref.argmax(axis=1))
    np.testing.assert_array_equal(valid.numpy(), ref.max(axis=1) >= 0.6)
    assert labels.dtype == torch.int64 and valid.dtype == torch.bool
    assert confident_pseudo_labels(mean, 0.0)[1].all()


# ----------------------------------------------------------------------------
# Load balancing
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("five_d", [True, False])
def test_load_balance_matches_loop(five_d):
    B, E, H, W = 2, 3, 4, 5
    g = _gen(8)
    gate = 1.5 * torch.randn(B, E, H, W, generator=g, dtype=torch.float64)
    if five_d:
        gate = gate.unsqueeze(1)
    mask = torch.rand(B, H, W, generator=g) > 0.4
    for m in (None, mask):
        loss = load_balance_loss(gate, m)
        assert loss.shape == () and loss.dtype == torch.float64
        assert loss.item() == pytest.approx(_ref_load_balance(gate, m), rel=1e-12, abs=1e-12)
    # the mask is respected: changing excluded pixels does not change the loss
    other = gate.clone()
    sel = ~mask[:, None, None] if five_d else ~mask[:, None]
    other = torch.where(sel, torch.full_like(other, 9.0), other)
    assert load_balance_loss(other, mask).item() == pytest.approx(load_balance_loss(gate, mask).item(), rel=1e-12)
    # float32 in, float32 out
    assert load_balance_loss(gate.float(), mask).dtype == torch.float32


def test_load_balance_limits_and_gradient():
    B, E, H, W = 2, 3, 3, 4  # B*H*W divisible by E: an exactly balanced argmax exists
    uniform = torch.zeros(B, 1, E, H, W, dtype=torch.float64)
    assert load_balance_loss(uniform).item() == pytest.approx(1.0, rel=1e-12)
    # balanced argmax (f_e = 1/E) with arbitrary probabilities: also 1
    idx = torch.arange(B * H * W).reshape(B, H, W) % E
    bal = torch.nn.functional.one_hot(idx, E).permute(0, 3, 1, 2).double()[:, None]
    assert load_balance_loss(bal).item() == pytest.approx(1.0, rel=1e-12)
    for e in range(E):
        onehot = torch.full((B, 1, E, H, W), -1e3, dtype=torch.float64)
        onehot[:, :, e] = 1e3
        assert load_balance_loss(onehot).item() == pytest.approx(float(E), rel=1e-12)
    # gradient through P_e only: d/dg of E * sum_e f_e * mean(p_e), f fixed
    gate = torch.randn(B, E, H, W, generator=_gen(9), dtype=torch.float64, requires_grad=True)
    mask = torch.rand(B, H, W, generator=_gen(10)) > 0.5
    (grad,) = torch.autograd.grad(load_balance_loss(gate, mask), gate)
    with torch.no_grad():
        n = mask.sum().item()
        f = torch.tensor([((gate.argmax(1) == e) & mask).sum().item() / n for e in range(E)], dtype=torch.float64)
    g2 = gate.detach().clone().requires_grad_(True)
    p = torch.softmax(g2, dim=1)
    surrogate = E * sum(f[e] * p[:, e][mask].sum() / n for e in range(E))
    (ref,) = torch.autograd.grad(surrogate, g2)
    torch.testing.assert_close(grad, ref)
    # empty mask: 0, connected to the graph
    empty = load_balance_loss(gate, torch.zeros(B, H, W, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


# ----------------------------------------------------------------------------
# Contrastive loss
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("prototypes", [True, False])
@pytest.mark.parametrize("tau", [0.07, 0.1, 0.5, 2.0])
def test_contrastive_matches_loop(prototypes, tau):
    g = _gen(11)
    N, D = 13, 5
    emb = torch.randn(N, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 2, 2, 0, 5, 2, 0, 0, 2, 5, 5, 2, 7])  # class 7 has a single member
    loss = pixel_contrastive_loss(emb, labels, temperature=tau, prototypes=prototypes)
    assert loss.shape == () and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(_ref_contrastive(emb, labels, tau, prototypes), rel=1e-10, abs=1e-12)
    # the embeddings are normalised inside: scale-invariant per row
    scaled = emb * torch.rand(N, 1, generator=g, dtype=torch.float64).add(0.5)
    assert pixel_contrastive_loss(scaled, labels, tau, prototypes).item() == pytest.approx(loss.item(), rel=1e-10)
    # float32
    l32 = pixel_contrastive_loss(emb.float(), labels, tau, prototypes)
    assert l32.dtype == torch.float32 and l32.item() == pytest.approx(loss.item(), rel=1e-4)


def test_contrastive_single_member_and_no_positive():
    g = _gen(12)
    emb = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    distinct = torch.tensor([0, 1, 2, 3])
    # no positives without prototypes: 0, connected, zero gradient
    loss = pixel_contrastive_loss(emb, distinct, prototypes=False)
    assert loss.item() == 0.0 and loss.requires_grad
    (grad,) = torch.autograd.grad(loss, emb)
    assert torch.all(grad == 0)
    # with prototypes each anchor's only positive is its own (detached) prototype
    loss_p = pixel_contrastive_loss(emb, distinct, temperature=0.2, prototypes=True)
    assert loss_p.item() == pytest.approx(_ref_contrastive(emb, distinct, 0.2, True), rel=1e-10)
    assert loss_p.item() > 0
    # one sample
    one = pixel_contrastive_loss(emb[:1], distinct[:1], prototypes=False)
    assert one.item() == 0.0 and one.requires_grad
    assert pixel_contrastive_loss(emb[:0], distinct[:0]).item() == 0.0
    # N = 1 with its prototype as the only key: log(1) = 0
    assert pixel_contrastive_loss(emb[:1], distinct[:1], prototypes=True).item() == pytest.approx(0.0, abs=1e-12)


def test_contrastive_gradient_and_detached_prototypes():
    g = _gen(13)
    emb = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0, 2, 1, 0])

    def f(x):
        return pixel_contrastive_loss(x, labels, temperature=0.3, prototypes=False)

    assert torch.autograd.gradcheck(f, (emb,))
    # prototypes are detached: the gradient equals that of a loss whose
    # prototypes are fixed constants (computed from the same embeddings)
    (grad,) = torch.autograd.grad(pixel_contrastive_loss(emb, labels, 0.3, True), emb)
    num = torch.zeros_like(emb)
    h = 1e-6
    base = emb.detach()
    for i in range(emb.shape[0]):
        for d in range(emb.shape[1]):
            vals = []
            for s in (h, -h):
                x = base.clone()
                x[i, d] += s
                vals.append(_contrastive_fixed_protos(x, base, labels, 0.3))
            num[i, d] = (vals[0] - vals[1]) / (2 * h)
    torch.testing.assert_close(grad, num, rtol=1e-5, atol=1e-7)


def _contrastive_fixed_protos(x, proto_source, labels, tau):
    """The loop reference with prototypes taken from ``proto_source`` (constants)."""
    Z = [_normalise(v) for v in x.tolist()]
    S = [_normalise(v) for v in proto_source.tolist()]
    Y = labels.tolist()
    protos = {}
    for c in sorted(set(Y)):
        members = [S[j] for j in range(len(Y)) if Y[j] == c]
        protos[c] = _normalise([sum(col) / len(members) for col in zip(*members)])
    total = 0.0
    for i in range(len(Z)):
        keys = [(Z[j], Y[j]) for j in range(len(Z)) if j != i] + [(p, c) for c, p in protos.items()]
        sims = [sum(a * b for a, b in zip(Z[i], k)) / tau for k, _ in keys]
        log_den = math.log(sum(math.exp(s) for s in sims))
        pos = [s - log_den for s, (_, c) in zip(sims, keys) if c == Y[i]]
        total += -sum(pos) / len(pos)
    return total / len(Z)


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------
def _labels(B=2, H=12, W=14, C=4, seed=14):
    lab = torch.randint(0, C, (B, H, W), generator=_gen(seed))
    lab[:, :, :4] = 0  # a big class 0
    lab[0, 0, 5] = 9  # a rare class
    return lab


@pytest.mark.parametrize("width", [0, 1, 2, 3])
def test_boundary_band_matches_loop(width):
    blocks = torch.zeros(2, 9, 11, dtype=torch.long)
    blocks[:, 3:7, 2:6] = 1
    blocks[1, :, 8:] = 4
    for lab in (blocks, _labels(H=7, W=9, seed=15), torch.full((1, 4, 5), 3)):
        band = boundary_band(lab, width)
        assert band.dtype == torch.bool and band.shape == lab.shape
        np.testing.assert_array_equal(band.numpy(), _ref_band(lab, width))


def test_sample_pixels_reproducible_and_counts():
    lab = _labels()
    valid = torch.rand(lab.shape, generator=_gen(16)) > 0.2
    valid[0, 0, 5] = True
    hard = boundary_band(lab, 1)
    for n in (1, 5, 40, 1000):
        a = sample_pixels(lab, n, hard=hard, valid=valid, generator=_gen(17))
        b = sample_pixels(lab, n, hard=hard, valid=valid, generator=_gen(17))
        c = sample_pixels(lab, n, hard=hard, valid=valid, generator=_gen(18))
        assert a.dtype == torch.int64
        assert torch.equal(a, b)
        assert n == 1000 or n == 1 or not torch.equal(a, c)
        assert a.unique().numel() == a.numel()  # without replacement
        flat_l, flat_v = lab.flatten(), valid.flatten()
        assert flat_v[a].all()  # invalid pixels never sampled
        got = flat_l[a].tolist()
        # classes ascending, each a contiguous block
        assert got == sorted(got)
        for cls in lab[valid].unique().tolist():
            avail = int(((lab == cls) & valid).sum())
            assert got.count(cls) == min(n, avail)
    # without hard: the same counts
    s = sample_pixels(lab, 7, valid=valid, generator=_gen(19))
    for cls in lab[valid].unique().tolist():
        assert (lab.flatten()[s] == cls).sum().item() == min(7, int(((lab == cls) & valid).sum()))
    # all invalid: empty sample
    none = sample_pixels(lab, 3, valid=torch.zeros_like(valid))
    assert none.numel() == 0 and none.dtype == torch.int64


def test_sample_pixels_hard_fraction():
    H, W = 20, 20
    lab = torch.zeros(1, H, W, dtype=torch.long)
    lab[:, :, 10:] = 1
    hard = torch.zeros(1, H, W, dtype=torch.bool)
    hard[:, :, 7:13] = True  # 60 hard pixels per class, 140 easy
    flat_h = hard.flatten()
    for n, frac in ((20, 0.5), (30, 0.25), (10, 1.0), (9, 0.0), (50, 0.7)):
        s = sample_pixels(lab, n, hard=hard, hard_fraction=frac, generator=_gen(20))
        for cls in (0, 1):
            sel = s[lab.flatten()[s] == cls]
            assert sel.numel() == n
            assert int(flat_h[sel].sum()) == math.floor(frac * n + 1e-9)
    # shortfall of hard pixels: all hard ones, the rest from the easy ones
    few = torch.zeros_like(hard)
    few[0, 0, 0] = few[0, 1, 1] = True
    s = sample_pixels(lab, 10, hard=few, hard_fraction=0.8, generator=_gen(21))
    sel0 = s[lab.flatten()[s] == 0]
    assert sel0.numel() == 10 and int(few.flatten()[sel0].sum()) == 2
    # shortfall of easy pixels: topped up with hard ones
    most = torch.ones_like(hard)
    most[0, 0, 0] = False
    s = sample_pixels(lab, 10, hard=most, hard_fraction=0.2, generator=_gen(22))
    sel0 = s[lab.flatten()[s] == 0]
    assert sel0.numel() == 10 and int(most.flatten()[sel0].sum()) == 9


# ----------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------
def test_bad_inputs_raise():
    probs = _probs(B=1, E=3, C=2, H=3, W=3)
    gate = vote_logits(probs)
    lab = torch.zeros(1, 3, 3, dtype=torch.long)
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    emb = torch.randn(4, 2)
    y = torch.tensor([0, 0, 1, 1])
    cases = [
        (TypeError, "probs", lambda: vote_logits(probs.numpy())),
        (ValueError, "probs", lambda: vote_logits(probs[0])),
        (TypeError, "probs", lambda: vote_logits(probs.long())),
        (ValueError, "router_logits", lambda: vote_logits(probs, torch.zeros(1, 2, 3, 3))),
        (TypeError, "target", lambda: vote_logits(probs, target=lab.float())),
        (ValueError, "target", lambda: vote_logits(probs, target=lab[:, :2])),
        (ValueError, "target", lambda: vote_logits(probs, target=lab + 2)),
        (ValueError, "valid", lambda: vote_logits(probs, valid=mask)),
        (TypeError, "valid", lambda: vote_logits(probs, target=lab, valid=mask.long())),
        (ValueError, "consistency_weight", lambda: vote_logits(probs, target=lab, consistency_weight=-1.0)),
        (ValueError, "eps", lambda: vote_logits(probs, eps=0.0)),
        (ValueError, "gate_logits", lambda: pixel_vote(probs, gate[:, :, :2])),
        (TypeError, "gate_logits", lambda: pixel_vote(probs, gate.long())),
        (ValueError, "fused", lambda: confident_pseudo_labels(probs, 0.5)),
        (ValueError, "threshold", lambda: confident_pseudo_labels(probs[:, 0], 1.5)),
        (ValueError, "gate_logits", lambda: load_balance_loss(gate[0, 0])),
        (ValueError, "gate_logits", lambda: load_balance_loss(gate.expand(1, 2, 3, 3, 3))),
        (ValueError, "mask", lambda: load_balance_loss(gate, mask[:, :2])),
        (TypeError, "mask", lambda: load_balance_loss(gate, mask.float())),
        (TypeError, "labels", lambda: sample_pixels(lab.float(), 3)),
        (ValueError, "n_per_class", lambda: sample_pixels(lab, 0)),
        (TypeError, "n_per_class", lambda: sample_pixels(lab, 2.5)),
        (ValueError, "hard_fraction", lambda: sample_pixels(lab, 3, hard=mask, hard_fraction=1.5)),
        (ValueError, "hard", lambda: sample_pixels(lab, 3, hard=mask[:, :1])),
        (ValueError, "valid", lambda: sample_pixels(lab, 3, valid=mask[0])),
        (TypeError, "generator", lambda: sample_pixels(lab, 3, generator=0)),
        (ValueError, "width", lambda: boundary_band(lab, -1)),
        (ValueError, "labels", lambda: boundary_band(lab[0], 1)),
        (ValueError, "embeddings", lambda: pixel_contrastive_loss(emb[0], y)),
        (TypeError, "embeddings", lambda: pixel_contrastive_loss(emb.long(), y)),
        (ValueError, "labels", lambda: pixel_contrastive_loss(emb, y[:3])),
        (TypeError, "labels", lambda: pixel_contrastive_loss(emb, y.float())),
        (ValueError, "temperature", lambda: pixel_contrastive_loss(emb, y, temperature=0.0)),
        (ValueError, "temperature", lambda: pixel_contrastive_loss(emb, y, temperature=float("nan"))),
    ]
    for exc, name, call in cases:
        with pytest.raises(exc, match=name):
            call()
