"""Tests of ``semimoe::gated_fusion``: Triton kernels (interpreter on CPU), the
custom op (CPU path, autograd, opcheck, torch.compile) and input errors.

Ground truth is the float64 PyTorch reference. Low-precision results are
bounded flash-attention style: error <= 2 x the error of PyTorch computing the
same thing in that dtype, plus a small atol.
"""
import importlib

import pytest
import torch

from semimoe.ops.gated_fusion import BACKENDS, gated_fusion, gated_fusion_ref

# the module (``semimoe.ops.gated_fusion`` the attribute is the function)
gf_mod = importlib.import_module("semimoe.ops.gated_fusion")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GATES = ["image", "pixel"]


# ----------------------------------------------------------------- helpers
def make_inputs(gates, dtype=torch.float32, gate_dtype=None, B=2, K=3, C=3, H=5, W=7, T=2,
                layout="contiguous", seed=0, device="cpu"):
    """features (B,K,C,H,W), gate_logits (B,T,K[,H,W]), grad_out (B,T,C,H,W)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    gshape = (B, T, K, H, W) if gates == "pixel" else (B, T, K)
    if layout == "contiguous":
        f, g, go = rnd(B, K, C, H, W), rnd(*gshape), rnd(B, T, C, H, W)
    elif layout == "strided":
        # channels-last features (pixel stride C, still one pixel axis);
        # logits with padded W (pixel axes not mergeable -> copied) or K/T swapped;
        # grad_out with swapped B/T.
        f = rnd(B, K, H, W, C).permute(0, 1, 4, 2, 3)
        g = (rnd(B, K, T, H, W + 2).transpose(1, 2)[..., :W] if gates == "pixel"
             else rnd(B, K, T).transpose(1, 2))
        go = rnd(T, B, C, H, W).transpose(0, 1)
        assert not (f.is_contiguous() or g.is_contiguous() or go.is_contiguous())
    else:
        raise ValueError(layout)
    gate_dtype = gate_dtype or dtype
    return (f.to(device=device, dtype=dtype), g.to(device=device, dtype=gate_dtype),
            go.to(device=device, dtype=dtype))


def ref64(f, g, go):
    """float64 forward and autograd gradients of the reference."""
    fd = f.detach().double().requires_grad_()
    gd = g.detach().double().requires_grad_()
    out = gated_fusion_ref(fd, gd)
    gfd, ggd = torch.autograd.grad(out, (fd, gd), go.double())
    return out.detach(), gfd, ggd


def torch_lowp(f, g, go):
    """PyTorch computing everything in features' dtype (its own low-precision error)."""
    fl = f.detach().clone().requires_grad_()
    gl = g.detach().clone().requires_grad_()
    w = torch.softmax(gl.to(f.dtype), dim=2)
    if w.dim() == 3:
        w = w[..., None, None]
    out = (w.unsqueeze(3) * fl.unsqueeze(1)).sum(dim=2)
    gfl, ggl = torch.autograd.grad(out, (fl, gl), go)
    return out.detach(), gfl, ggl


def assert_close_to_ref(ours, ref, lowp, name):
    """fp32: tight absolute bound; bf16/fp16: error <= 2 x PyTorch's own + atol."""
    scale = max(1.0, ref.abs().max().item())
    err = (ours.double() - ref).abs().max().item()
    if ours.dtype in (torch.float32, torch.float64):
        assert err <= 1e-5 * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"
        return
    err_pt = (lowp.double() - ref).abs().max().item()
    assert err <= 2 * err_pt + 1e-5 * scale, f"{name}: max error {err:.3g} > 2 x PyTorch's {err_pt:.3g}"


def check_all(results, f, g, go):
    """results = (out, grad_features, grad_gate_logits) checked against float64."""
    refs = ref64(f, g, go)
    lows = torch_lowp(f, g, go)
    out, gfeat, ggate = results
    assert out.dtype == f.dtype and gfeat.dtype == f.dtype and ggate.dtype == g.dtype
    assert out.shape == go.shape and gfeat.shape == f.shape and ggate.shape == g.shape
    for name, ours, r, lp in zip(("out", "grad_features", "grad_gate_logits"), results, refs, lows):
        assert torch.isfinite(ours).all(), name
        assert_close_to_ref(ours, r, lp, name)


# ------------------------------------------------------------ triton (interpreter on CPU)
@pytest.fixture(scope="module")
def tk():
    pytest.importorskip("triton")
    from semimoe.ops.triton import gated_fusion as mod

    return mod


def run_triton(tk, f, g, go, **blocks):
    out = tk.triton_gated_fusion_fwd(f, g, **blocks)
    gfeat, ggate = tk.triton_gated_fusion_bwd(go, f, g, **blocks)
    return out, gfeat, ggate


@pytest.mark.parametrize("gate_dtype", ["float32", "same"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gates", GATES)
def test_triton_vs_float64(tk, gates, dtype, gate_dtype):
    if gate_dtype == "float32" and dtype == torch.float32:
        pytest.skip("same as gate_dtype='same'")
    f, g, go = make_inputs(gates, dtype, torch.float32 if gate_dtype == "float32" else dtype)
    # small blocks: masked tails in C and P, several channel chunks in backward
    check_all(run_triton(tk, f, g, go, block_c=2, block_p=16), f, g, go)


@pytest.mark.parametrize("gates", GATES)
def test_triton_noncontiguous(tk, gates):
    f, g, go = make_inputs(gates, layout="strided", seed=1)
    res = run_triton(tk, f, g, go, block_c=2, block_p=16)
    check_all(res, f, g, go)
    res_c = run_triton(tk, f.contiguous(), g.contiguous(), go.contiguous(), block_c=2, block_p=16)
    for a, b in zip(res, res_c):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("K,T", [(1, 1), (5, 3), (9, 5)])
@pytest.mark.parametrize("gates", GATES)
def test_triton_default_config_and_padding(tk, gates, K, T):
    # K, T not powers of two (padded rows), P > BLOCK_P, C > BLOCK_C of the defaults
    f, g, go = make_inputs(gates, K=K, T=T, C=10, H=17, W=19, B=1, seed=2)
    check_all(run_triton(tk, f, g, go), f, g, go)


@pytest.mark.parametrize("gates", GATES)
def test_triton_expanded_grad_out_and_extreme_logits(tk, gates):
    f, g, _ = make_inputs(gates, seed=3)
    g = g * 1e3  # saturated softmax: stability of the in-kernel max subtraction
    g[0, 0, 1] = float("-inf")  # an expert switched off
    go = torch.randn(1, 1, 3, 1, 1).expand(2, 2, 3, 5, 7)  # stride-0 axes
    out, gfeat, ggate = run_triton(tk, f, g, go, block_c=2, block_p=16)
    ro, rf, rg = ref64(f, g, go)
    for ours, r in ((out, ro), (gfeat, rf), (ggate, rg)):
        torch.testing.assert_close(ours.double(), r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [dict(B=0), dict(H=0), dict(T=0)])
def test_triton_empty(tk, shape):
    f, g, go = make_inputs("pixel", **shape)
    out, gfeat, ggate = run_triton(tk, f, g, go)
    assert out.shape == go.shape and gfeat.shape == f.shape and ggate.shape == g.shape
    assert not gfeat.any() and not ggate.any()


def test_triton_launcher_rejects_bad_shapes(tk):
    f, g, go = make_inputs("image")
    with pytest.raises(ValueError, match="gate_logits"):
        tk.triton_gated_fusion_fwd(f, g[:, :, :2])
    with pytest.raises(ValueError, match="grad_out"):
        tk.triton_gated_fusion_bwd(go[:, :1], f, g)


# ------------------------------------------------------------ the op on CPU
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gates", GATES)
def test_op_vs_float64(gates, dtype):
    f, g, go = make_inputs(gates, dtype, seed=4)
    fr, gr = f.clone().requires_grad_(), g.clone().requires_grad_()
    out = gated_fusion(fr, gr)
    gfeat, ggate = torch.autograd.grad(out, (fr, gr), go)
    check_all((out.detach(), gfeat, ggate), f, g, go)


@pytest.mark.parametrize("gates", GATES)
def test_op_float32_gates_with_low_precision_features(gates):
    f, g, go = make_inputs(gates, torch.bfloat16, torch.float32, seed=5)
    fr, gr = f.clone().requires_grad_(), g.clone().requires_grad_()
    out = gated_fusion(fr, gr)
    check_all((out.detach(), *torch.autograd.grad(out, (fr, gr), go)), f, g, go)


@pytest.mark.parametrize("gates", GATES)
def test_op_noncontiguous(gates):
    f, g, go = make_inputs(gates, layout="strided", seed=6)
    fr, gr = f.clone().requires_grad_(), g.clone().requires_grad_()
    out = gated_fusion(fr, gr)
    assert out.is_contiguous()
    check_all((out.detach(), *torch.autograd.grad(out, (fr, gr), go)), f, g, go)


@pytest.mark.parametrize("gates", GATES)
def test_gradcheck(gates):
    f, g, _ = make_inputs(gates, torch.float64, B=2, K=3, C=2, H=3, W=4, T=2, seed=7)
    assert torch.autograd.gradcheck(gated_fusion, (f.requires_grad_(), g.requires_grad_()))


@pytest.mark.parametrize("gates", GATES)
def test_opcheck(gates):
    f, g, go = make_inputs(gates, seed=8)
    torch.library.opcheck(torch.ops.semimoe.gated_fusion.default,
                          (f.requires_grad_(), g.requires_grad_()))
    torch.library.opcheck(torch.ops.semimoe.gated_fusion_backward.default,
                          (go, f.detach(), g.detach()))


@pytest.mark.parametrize("gates", GATES)
def test_compile_fullgraph(gates):
    torch._dynamo.reset()
    f, g, go = make_inputs(gates, seed=9)

    def step(f, g):
        return (gated_fusion(f, g) * go).sum()

    compiled = torch.compile(step, fullgraph=True)
    fc, gc = f.clone().requires_grad_(), g.clone().requires_grad_()
    fe, ge = f.clone().requires_grad_(), g.clone().requires_grad_()
    loss_c, loss_e = compiled(fc, gc), step(fe, ge)
    loss_c.backward()
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(fc.grad, fe.grad)
    torch.testing.assert_close(gc.grad, ge.grad)


@pytest.mark.parametrize("gates", GATES)
def test_torch_path_matches_reference_backend(gates, monkeypatch):
    f, g, go = make_inputs(gates, torch.float64, seed=10)
    res_torch = (gf_mod._torch_fwd(f, g), *gf_mod._torch_bwd(go, f, g))
    res_ref = (gated_fusion_ref(f, g), *gf_mod._reference_bwd(go, f, g))
    for a, b, r in zip(res_torch, res_ref, ref64(f, g, go)):
        torch.testing.assert_close(a, r)
        torch.testing.assert_close(b, r)
    monkeypatch.setenv("SEMIMOE_BACKEND", "reference")
    fr, gr = f.clone().requires_grad_(), g.clone().requires_grad_()
    out = gated_fusion(fr, gr)
    for a, r in zip((out, *torch.autograd.grad(out, (fr, gr), go)), res_ref):
        torch.testing.assert_close(a, r)


def test_backends_explain_themselves(monkeypatch):
    assert [b.name for b in BACKENDS["gated_fusion"]] == ["triton", "torch", "reference"]
    f, g, _ = make_inputs("image")
    triton_b = BACKENDS["gated_fusion"][0]
    assert "cuda" in triton_b.why_not(f, g)
    assert triton_b.available() is not None or torch.cuda.is_available()
    from semimoe.ops import backend_table

    assert any(s.startswith("torch (available") for s in backend_table()["gated_fusion"])
    monkeypatch.setenv("SEMIMOE_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="triton: tensors on cpu"):
        gated_fusion(f, g)


def _bad_inputs():
    f = torch.randn(2, 3, 4, 5, 6)
    g = torch.randn(2, 2, 3)
    return [
        ("features_ndim", (f[0], g), ValueError, r"features must be 5-D \(B, K, C, H, W\)"),
        ("features_dtype", (f.to(torch.int32), g), TypeError, "features must have a floating-point dtype"),
        ("features_type", (f.numpy(), g), TypeError, "features must be a torch.Tensor"),
        ("gates_ndim", (f, g[0]), ValueError, r"gate_logits must be 3-D \(B, T, K\)"),
        ("gates_dtype", (f, g.to(torch.int64)), TypeError, "gate_logits must have a floating-point dtype"),
        ("batch", (f, g[:1]), ValueError, "gate_logits must have batch size B=2"),
        ("experts", (f, torch.randn(2, 2, 4)), ValueError, "gate_logits must have K=3 expert logits"),
        ("spatial", (f, torch.randn(2, 2, 3, 5, 5)), ValueError, r"spatial size \(H, W\)=\(5, 6\)"),
        ("device", (f, g.to("meta")), ValueError, "gate_logits must be on the same device as features"),
        ("no_experts", (f[:, :0], g[:, :, :0]), ValueError, r"K >= 1"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_inputs(case):
    _, args, exc, match = case
    with pytest.raises(exc, match=match):
        gated_fusion(*args)
    with pytest.raises(exc, match=match):
        gated_fusion_ref(*args)


def test_bad_grad_out():
    f, g, go = make_inputs("image")
    with pytest.raises(ValueError, match="grad_out must have shape"):
        torch.ops.semimoe.gated_fusion_backward(go[:, :, :2], f, g)


# ------------------------------------------------------------ CUDA
@pytest.mark.needs_cuda
class TestCUDA:
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("gates", GATES)
    def test_op_uses_triton_and_matches(self, gates, dtype):
        pytest.importorskip("triton")
        f, g, go = make_inputs(gates, dtype, B=2, K=3, C=64, H=33, W=47, T=3, device="cuda", seed=11)
        assert gf_mod._select("gated_fusion", BACKENDS["gated_fusion"], (f, g), f, g).name == "triton"
        fr, gr = f.clone().requires_grad_(), g.clone().requires_grad_()
        out = gated_fusion(fr, gr)
        res = (out.detach(), *torch.autograd.grad(out, (fr, gr), go))
        check_all(tuple(r.cpu() for r in res), f.cpu(), g.cpu(), go.cpu())

    @pytest.mark.parametrize("gates", GATES)
    def test_noncontiguous_and_fixed_blocks(self, gates):
        tkm = pytest.importorskip("semimoe.ops.triton.gated_fusion")
        f, g, go = make_inputs(gates, torch.bfloat16, C=16, H=31, W=29, layout="strided", device="cuda", seed=12)
        cpu = (f.cpu(), g.cpu(), go.cpu())
        check_all(tuple(r.cpu() for r in run_triton(tkm, f, g, go)), *cpu)
        check_all(tuple(r.cpu() for r in run_triton(tkm, f, g, go, block_c=4, block_p=64)), *cpu)

    def test_int64_offsets(self):
        # 3 * 64 * 4096 * 4096 > 2**31 feature elements (6.4 GB bf16): offsets past int32
        tkm = pytest.importorskip("semimoe.ops.triton.gated_fusion")
        K, C, H, W = 3, 64, 4096, 4096
        f = torch.randn(1, K, C, H, W, device="cuda", dtype=torch.bfloat16)
        g = torch.randn(1, 1, K, H, W, device="cuda")
        go = torch.randn(1, 1, C, H, W, device="cuda", dtype=torch.bfloat16)
        out = tkm.triton_gated_fusion_fwd(f, g)
        gfeat, ggate = tkm.triton_gated_fusion_bwd(go, f, g)
        rows = slice(H - 2, H)  # the last rows: the largest offsets
        ro, rf, rg = ref64(f[..., rows, :], g[..., rows, :], go[..., rows, :])
        torch.testing.assert_close(out[..., rows, :].double(), ro, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(gfeat[..., rows, :].double(), rf, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(ggate[..., rows, :].double(), rg, rtol=1e-4, atol=1e-4)

    @pytest.mark.parametrize("gates", GATES)
    def test_opcheck_and_compile(self, gates):
        pytest.importorskip("triton")
        f, g, go = make_inputs(gates, torch.float32, C=8, H=16, W=16, device="cuda", seed=13)
        torch.library.opcheck(torch.ops.semimoe.gated_fusion.default, (f.requires_grad_(), g.requires_grad_()))
        torch._dynamo.reset()
        step = torch.compile(lambda f, g: (gated_fusion(f, g) * go).sum(), fullgraph=True)
        fc, gc = f.detach().clone().requires_grad_(), g.detach().clone().requires_grad_()
        step(fc, gc).backward()
        _, rf, rg = ref64(f, g, go)
        torch.testing.assert_close(fc.grad.double(), rf, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gc.grad.double(), rg, rtol=1e-4, atol=1e-4)
