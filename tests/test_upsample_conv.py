"""upsample_conv2d: nearest x2 upsample + 3x3 convolution as a transposed convolution, against
F.interpolate + F.conv2d in float64 (values and gradients), and the U-Net's
UpConv built on it."""
import copy

import pytest
import torch
import torch.nn.functional as F

from semimoe.models.unet import UpConv
from semimoe.ops import upsample_conv2d, upsample_conv2d_ref
from semimoe.ops.upsample_conv import BACKENDS, transposed_weight

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _plain(x, w, b):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)


@pytest.mark.parametrize("shape, bias, channels_last", [((2, 3, 5, 7), True, False), ((1, 6, 4, 9), False, True),
                                                        ((3, 1, 1, 1), True, False)])
def test_values_and_gradients_match_upsample_then_conv(shape, bias, channels_last):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g)
    w = torch.randn(4, shape[1], 3, 3, generator=g)
    b = torch.randn(4, generator=g) if bias else None
    go = torch.randn(shape[0], 4, 2 * shape[2], 2 * shape[3], generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = [t.detach().clone().requires_grad_(True) for t in (x, w) + ((b,) if bias else ())]
    got = upsample_conv2d(args[0], args[1], args[2] if bias else None)
    assert got.shape == go.shape
    assert got.is_contiguous(memory_format=torch.channels_last) == (channels_last and shape[1] > 1)
    got.backward(go)
    ref_args = [t.detach().double().requires_grad_(True) for t in args]
    exp = _plain(ref_args[0], ref_args[1], ref_args[2] if bias else None)
    exp.backward(go.double())
    scale = float(exp.detach().abs().max())
    torch.testing.assert_close(got.double(), exp, rtol=0, atol=1e-5 * scale)
    for a, r in zip(args, ref_args):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=0, atol=1e-5 * float(r.grad.abs().max()))


def test_transposed_weight_against_one_hot_inputs():
    """Tap (ky, kx) of the transposed kernel is what input pixel i sends to
    output pixel 2i - 1 + k through the upsample + 3x3 convolution (computed
    here with a one-hot input, float64)."""
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    tw = transposed_weight(w)
    assert tw.shape == (3, 2, 4, 4)
    for ci in range(3):
        x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
        x[0, ci, 1, 2] = 1.0
        y = _plain(x, w, None)[0]  # (2, 8, 8); input (1, 2) reaches outputs 1..4 x 3..6
        for ky in range(4):
            for kx in range(4):
                torch.testing.assert_close(tw[ci, :, ky, kx], y[:, 1 + ky, 3 + kx])


def test_the_reference_backend_is_upsample_then_conv(monkeypatch):
    x, w = torch.randn(1, 2, 3, 3), torch.randn(3, 2, 3, 3)
    assert [b.name for b in BACKENDS["upsample_conv2d"]] == ["transposed", "reference"]
    monkeypatch.setenv("SEMIMOE_BACKEND", "reference")
    assert torch.equal(upsample_conv2d(x, w), _plain(x, w, None))
    assert torch.equal(upsample_conv2d_ref(x, w), _plain(x, w, None))


@pytest.mark.parametrize("bad, match", [
    (lambda: upsample_conv2d(torch.randn(2, 3, 4), torch.randn(1, 3, 3, 3)), "x must be a 4-D"),
    (lambda: upsample_conv2d(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 5, 5)), r"weight must be a \(Cout"),
    (lambda: upsample_conv2d(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 3, 3)), "Cin=3"),
    (lambda: upsample_conv2d(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3), torch.randn(3)), "bias must"),
])
def test_bad_input_names_the_argument(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_upconv_trains_like_upsample_then_block(monkeypatch):
    """UpConv in train mode (BatchNorm on batch statistics): output, input and
    parameter gradients as the plain upsample + block in float64."""
    torch.manual_seed(3)
    up = UpConv(5, 4).train()
    ref = copy.deepcopy(up).double()
    x = torch.randn(3, 5, 6, 4)
    go = torch.randn(3, 4, 12, 8)
    xa = x.clone().requires_grad_(True)
    up(xa).backward(go)
    xr = x.double().requires_grad_(True)
    exp = ref.block(F.interpolate(xr, scale_factor=2.0, mode="nearest"))
    exp.backward(go.double())
    torch.testing.assert_close(xa.grad.double(), xr.grad, rtol=0, atol=1e-5 * float(xr.grad.abs().max()))
    for (n, p), (_, q) in zip(up.named_parameters(), ref.named_parameters()):
        # (the conv bias before BatchNorm has a zero gradient up to rounding)
        tol = max(1e-5 * float(q.grad.abs().max()), 5e-5)
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=0, atol=tol, msg=n)
    for n in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(up.block[1], n).double(), getattr(ref.block[1], n), rtol=1e-6, atol=1e-7)
