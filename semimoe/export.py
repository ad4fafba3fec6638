"""Export a trained Semi-MoE for deployment: ONNX, AOTInductor, TensorRT.

    python -m semimoe.export --checkpoint runs/x/best.pt --format onnx
    python -m semimoe.export --checkpoint runs/x/best.pt --format aoti
    python -m semimoe.export --checkpoint runs/x/best.pt --format tensorrt   # needs TensorRT + GPU

What is exported is ``SemiMoE.predictor()``: x (B, 3, H, W) float32,
normalised -> (B, 3, H, W) float32 probabilities (segmentation background,
gland, boundary); a ``MILSegmenter`` (``model.arch=mil``) exports the same
way (its boundary channel is zeros, its ``set_fusion`` a no-op). The model
is switched to ``fusion="reference"`` first: the default fusion is a Python
custom op (``semimoe::gated_fusion``), which neither an ONNX runtime nor
AOTInductor's C++ runtime can call; the reference path is the same math in
plain PyTorch ops (Inductor and TensorRT fuse it anyway).

* ``onnx``: ``torch.onnx.export(dynamo=True)``, opset 18 (TensorRT 10.0's
  parser accepts opsets 9-20, later 10.x up to 24), dynamic batch and, where
  the graph allows, dynamic H and W (multiples of ``2**(depth-1)``); weights
  embedded; metadata in ``metadata_props["semimoe"]`` and ``<file>.json``.
  Verified against onnxruntime (max abs difference <= 1e-4 in fp32) on
  random inputs at the tile size and at a second size, and checked against
  TensorRT's supported-operator list.
* ``aoti``: ``torch.export`` + ``torch._inductor.aoti_compile_and_package``:
  a compiled ``.pt2`` package (C++ wrapper + kernels + weights) for one device
  type and one tile size, dynamic batch; verified by loading it back.
* ``tensorrt``: the ONNX export above (precision from ``--precision``: the
  ONNX graph is exported in fp16/bf16 and the strongly typed TensorRT network
  follows its types), then :func:`semimoe.deploy.tensorrt.build_engine`.
  Untested here: TensorRT cannot be installed on this project's machines.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .data.scale import InputSpec
from .errors import SemimoeError, UsageError, check_range, describe, run_cli
from .deploy import meta as _meta
from .deploy.trust import trust

__all__ = ["export_onnx", "export_aoti", "export_tensorrt", "deployable_predictor", "verify_onnx",
           "DEFAULT_OPSET", "main"]

DEFAULT_OPSET = 18
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FORMATS = ("onnx", "aoti", "tensorrt")
_SUFFIX = {"onnx": ".onnx", "aoti": ".pt2", "tensorrt": ".engine"}


class _CastPredictor(nn.Module):
    """Runs the predictor in a low precision with float32 input and output,
    so that the exported graph carries the precision in its tensor types."""

    def __init__(self, predictor: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.predictor = predictor.to(dtype)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(x.to(self.dtype)).float()


def deployable_predictor(model, precision: str = "fp32", transposed: bool = True) -> nn.Module:
    """The inference copy (:func:`semimoe.models.inference_copy`, as the eager
    runtime runs it; ``transposed`` for CPU targets) of ``model.predictor()`` with
    ``fusion="reference"`` in eval mode, optionally cast to fp16/bf16 (float32
    in and out)."""
    from .models.fold import inference_copy

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    p = inference_copy(model.predictor(), transposed=transposed)  # a copy: ``model`` stays as it is
    p.model.set_fusion("reference")
    if precision != "fp32":
        p = _CastPredictor(p, PRECISIONS[precision]).eval()
    return p


def _tile(tile) -> Tuple[int, int]:
    if isinstance(tile, int):
        return tile, tile
    th, tw = (int(t) for t in tile)
    return th, tw


def _check_tile(tile: Tuple[int, int], mult: int) -> None:
    if tile[0] % mult or tile[1] % mult:
        raise ValueError(f"tile {tile[0]}x{tile[1]} must be a multiple of the model's size multiple {mult}")


def _model_config(model) -> Dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(model.cfg)


def _random_input(b: int, h: int, w: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g)


# ----------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------
def verify_onnx(path: Union[str, Path], reference: nn.Module, inputs: Sequence[Tensor]) -> float:
    """Max abs difference between onnxruntime (CPU) and ``reference`` over ``inputs``."""
    from .deploy.runtimes import OrtRuntime

    be = OrtRuntime(path, device="cpu")
    diff = 0.0
    with torch.inference_mode():
        for x in inputs:
            ref = reference(x).float()
            got = be(x)
            if got.shape != ref.shape:
                raise AssertionError(f"onnxruntime output {tuple(got.shape)} != torch {tuple(ref.shape)}")
            diff = max(diff, float((got - ref).abs().max()))
    return diff


def _onnx_export(p: nn.Module, x: Tensor, path: Path, opset: int, dynamic_shapes) -> None:
    import contextlib
    import io
    import logging

    # The exporter prints its progress and logs one line per missing optional
    # package (torchvision); keep the CLI output to what matters.
    lg = logging.getLogger("torch.onnx")
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(p, (x,), str(path), dynamo=True, opset_version=opset, external_data=False,
                              input_names=[_meta.INPUT_NAME], output_names=[_meta.OUTPUT_NAME],
                              dynamic_shapes=dynamic_shapes, verbose=False)
    finally:
        lg.setLevel(level)


def export_onnx(model, path: Union[str, Path], *, spec: InputSpec,
                tile: Union[int, Sequence[int]] = 256, opset: int = DEFAULT_OPSET, dynamic_spatial: bool = True,
                precision: str = "fp32", verify: bool = True, atol: float = 1e-4,
                transposed: bool = True, log=print) -> Dict[str, Any]:
    """Export ``model.predictor()`` to ONNX; returns the metadata written.

    Args:
        model: a :class:`semimoe.models.SemiMoE` or
            :class:`semimoe.models.MILSegmenter`.
        path: output ``.onnx`` file (metadata goes to ``<path>.json`` too).
        spec: the model's :class:`~semimoe.data.scale.InputSpec` (from the checkpoint).
        tile: example (and, if not dynamic, fixed) spatial size.
        opset: ONNX opset (18: inside every TensorRT 10.x parser's range).
        dynamic_spatial: dynamic H and W (multiples of the size multiple);
            falls back to the fixed tile size if the graph cannot export so.
        precision: ``fp32`` | ``fp16`` | ``bf16`` (types inside the graph;
            input and output stay float32).
        verify: compare with onnxruntime; raises if the fp32 max abs difference
            exceeds ``atol`` (fp16/bf16: reported, checked at 5e-2 when
            onnxruntime has the kernels).
        transposed: each decoder upsample + convolution as one
            ``ConvTranspose`` (for CPU runtimes, where it was measured
            faster); False keeps Resize + Conv (the TensorRT export passes
            False).
    """
    import onnx

    from .deploy.trt_supported_ops import check_onnx_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mult = model.size_multiple
    th, tw = _tile(tile)
    _check_tile((th, tw), mult)
    p = deployable_predictor(model, precision, transposed=transposed)
    x = _random_input(2, th, tw)
    batch = torch.export.Dim("batch", min=1, max=4096)
    t0 = time.perf_counter()
    dyn_spatial = False
    if dynamic_spatial:
        hmax = max(2, 16384 // mult)
        shapes = {"x": {0: batch, 2: mult * torch.export.Dim("h", min=1, max=hmax),
                        3: mult * torch.export.Dim("w", min=1, max=hmax)}}
        try:
            _onnx_export(p, x, path, opset, shapes)
            dyn_spatial = True
        except Exception as exc:  # noqa: BLE001 - fall back to a fixed spatial size
            log(f"dynamic H/W export failed ({type(exc).__name__}: {str(exc)[:200]}); "
                f"exporting with a fixed {th}x{tw} tile")
    if not dyn_spatial:
        _onnx_export(p, x, path, opset, {"x": {0: batch}})
    secs = time.perf_counter() - t0

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    unsupported = check_onnx_model(m)
    ops = sorted({n.op_type for n in m.graph.node})
    meta = _meta.make_meta(artifact="onnx", model_config=_model_config(model), spec=spec,
                           tile=None if dyn_spatial else (th, tw), size_multiple=mult, precision=precision,
                           onnx_opset=opset, onnx_ops=ops, tensorrt_unsupported_ops=unsupported,
                           export_tile=[th, tw])
    if unsupported:
        log(f"warning: ONNX ops not in TensorRT's supported list: {unsupported}")
    if verify:
        ref = model.eval().predictor()
        sizes = [(3, th, tw)]
        if dyn_spatial:
            sizes.append((1, th + mult, max(mult, tw - mult)))
        inputs = [_random_input(*s, seed=i + 1) for i, s in enumerate(sizes)]
        try:
            diff = verify_onnx(path, ref, inputs)
        except Exception as exc:  # noqa: BLE001
            if precision == "fp32":
                raise
            meta["verified"] = {"onnxruntime": f"not run: {type(exc).__name__}: {str(exc)[:200]}"}
            log(f"onnxruntime could not run the {precision} graph here ({type(exc).__name__}); not verified")
        else:
            import onnxruntime

            tol = atol if precision == "fp32" else 5e-2
            meta["verified"] = {"onnxruntime": onnxruntime.__version__, "max_abs_diff": diff,
                                "atol": tol, "shapes": [list(s) for s in sizes]}
            if not diff <= tol:
                raise RuntimeError(f"ONNX verification failed: max abs diff {diff:.3g} > {tol:g} "
                                   f"(onnxruntime vs PyTorch)")
            log(f"verified with onnxruntime {onnxruntime.__version__}: max abs diff {diff:.2e} (<= {tol:g})")
    m.metadata_props.add(key=_meta.META_KEY, value=json.dumps(meta, sort_keys=True))
    onnx.save(m, str(path))
    _meta.write_sidecar(path, meta)
    log(f"wrote {path} (opset {opset}, {'dynamic' if dyn_spatial else 'fixed'} H/W, dynamic batch, "
        f"{precision}, {len(ops)} op types, export {secs:.1f}s)")
    return meta


# ----------------------------------------------------------------------------
# AOTInductor
# ----------------------------------------------------------------------------
def export_aoti(model, path: Union[str, Path], *, spec: InputSpec,
                tile: Union[int, Sequence[int]] = 256, max_batch: int = 64, device: str = "cpu",
                precision: str = "fp32", verify: bool = True, atol: float = 1e-4, log=print) -> Dict[str, Any]:
    """Compile ``model.predictor()`` ahead of time into an AOTInductor package.

    The package (``.pt2``) is native code for ``device`` (CPU: C++/OpenMP, needs
    a C++ compiler at export time only) for a fixed ``tile`` and a dynamic
    batch of 1..``max_batch``; load it with :class:`semimoe.deploy.AOTIRuntime`
    or ``torch._inductor.aoti_load_package``. Returns the metadata.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mult = model.size_multiple
    th, tw = _tile(tile)
    _check_tile((th, tw), mult)
    dev = torch.device(device)
    p = deployable_predictor(model, precision, transposed=dev.type == "cpu").to(dev)
    x = _random_input(2, th, tw).to(dev)
    meta = _meta.make_meta(artifact="aoti", model_config=_model_config(model), spec=spec, tile=(th, tw),
                           size_multiple=mult, precision=precision, batch=(1, min(8, max_batch), max_batch),
                           device=dev.type)
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad():
        ep = torch.export.export(p, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1,
                                                                                        max=max_batch)}})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(
                ep, package_path=str(path),
                # freezing: weights become constants (BatchNorm folded, CPU
                # weights pre-packed for oneDNN): ~1.4x faster on CPU.
                inductor_configs={"freezing": True,
                                  "aot_inductor.metadata": {_meta.META_KEY: json.dumps(meta, sort_keys=True)}})
    secs = time.perf_counter() - t0
    if verify:
        from .deploy.runtimes import AOTIRuntime

        be = AOTIRuntime(path, device=dev)
        ref = model.eval().predictor().to(dev)
        xv = _random_input(3, th, tw, seed=1).to(dev)
        with torch.inference_mode():
            diff = float((be(xv) - ref(xv).float()).abs().max())
        tol = atol if precision == "fp32" else 5e-2
        meta["verified"] = {"aoti_reload": True, "max_abs_diff": diff, "atol": tol}
        if not diff <= tol:
            raise RuntimeError(f"AOTInductor verification failed: max abs diff {diff:.3g} > {tol:g}")
        log(f"verified the reloaded package: max abs diff {diff:.2e} (<= {tol:g})")
    _meta.write_sidecar(path, meta)
    trust(path)  # native code written on this machine: trusted here (semimoe.deploy.trust)
    log(f"wrote {path} ({dev.type}, tile {th}x{tw}, batch 1..{max_batch}, {precision}, compile {secs:.1f}s)")
    return meta


# ----------------------------------------------------------------------------
# TensorRT
# ----------------------------------------------------------------------------
def export_tensorrt(model, path: Union[str, Path], *, spec: InputSpec,
                    tile: Union[int, Sequence[int]] = 256, batch: Sequence[int] = (1, 8, 16),
                    precision: str = "fp16", opset: int = DEFAULT_OPSET, workspace_gib: float = 4.0,
                    verify: bool = True, log=print) -> Dict[str, Any]:
    """ONNX export (fixed tile, dynamic batch, ``precision`` in the graph's
    types) to ``<path>.onnx``, then a TensorRT engine at ``path``.

    UNTESTED with a real TensorRT (see :mod:`semimoe.deploy.tensorrt`).
    Raises :class:`semimoe.deploy.tensorrt.TensorRTUnavailable` (before doing
    any work) when ``tensorrt`` is not installed.
    """
    from .deploy.tensorrt import build_engine, import_tensorrt

    import_tensorrt()
    path = Path(path)
    onnx_path = path.with_suffix(".onnx")
    meta = export_onnx(model, onnx_path, spec=spec, tile=tile, opset=opset, dynamic_spatial=False,
                       precision=precision, verify=verify, transposed=False, log=log)
    if meta.get("tensorrt_unsupported_ops"):
        raise RuntimeError(f"the ONNX graph has ops TensorRT's parser does not support: "
                           f"{meta['tensorrt_unsupported_ops']}")
    meta = build_engine(onnx_path, path, tile=_tile(tile), batch=batch, workspace_gib=workspace_gib, meta=meta)
    trust(path)  # native code written on this machine: trusted here (semimoe.deploy.trust)
    log(f"wrote {path} (TensorRT {meta['tensorrt']}, tile {meta['input']['tile']}, batch profile "
        f"{meta['input']['batch']}, {precision})")
    return meta


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------
def _parse_batch(s: str) -> Tuple[int, int, int]:
    parts = [int(v) for v in s.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("--batch takes MIN,OPT,MAX")
    return parts[0], parts[1], parts[2]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m semimoe.export",
        description="Export a Semi-MoE checkpoint's predictor (probabilities of gland and boundary) "
                    "to ONNX, an AOTInductor package or a TensorRT engine.")
    ap.add_argument("--checkpoint", required=True, help="checkpoint written by semimoe.train (.pt)")
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--output", help="output file (default: the checkpoint path with .onnx / .pt2 / .engine)")
    ap.add_argument("--tile", type=int, nargs="+", default=[256], metavar="N",
                    help="tile size H [W] (AOTInductor and TensorRT are built for it; default 256)")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    ap.add_argument("--precision", choices=tuple(PRECISIONS), default=None,
                    help="graph precision (default fp32; fp16 for tensorrt)")
    ap.add_argument("--static-spatial", action="store_true", help="ONNX: fixed H and W (the tile size)")
    ap.add_argument("--max-batch", type=int, default=64, help="AOTInductor: largest batch (default 64)")
    ap.add_argument("--batch", type=_parse_batch, default=(1, 8, 16), metavar="MIN,OPT,MAX",
                    help="TensorRT optimisation profile of the tile batch (default 1,8,16)")
    ap.add_argument("--workspace-gib", type=float, default=4.0, help="TensorRT builder workspace (GiB)")
    ap.add_argument("--device", default="cpu", help="AOTInductor target device: cpu or cuda (default cpu)")
    ap.add_argument("--no-verify", action="store_true", help="skip the parity check of the exported model")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; user errors become one ``error:`` line and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    fmt = args.format
    if len(args.tile) not in (1, 2):
        raise UsageError("--tile takes one or two sizes")
    for t in args.tile:
        check_range("--tile", t, lo=1)
    check_range("--max-batch", args.max_batch, lo=1)
    check_range("--opset", args.opset, lo=9)
    check_range("--workspace-gib", args.workspace_gib, lo=0.0, lo_open=True)
    tile = (args.tile[0], args.tile[-1])
    precision = args.precision or ("fp16" if fmt == "tensorrt" else "fp32")
    if fmt == "tensorrt":
        from .deploy.tensorrt import TensorRTUnavailable, import_tensorrt

        try:
            import_tensorrt()
        except TensorRTUnavailable as exc:
            print(f"error: --format tensorrt: {exc}", file=sys.stderr)
            return 3
    if fmt in ("onnx", "tensorrt"):
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as exc:
            print(f"error: ONNX export needs onnx and onnxscript ({exc}); "
                  "pip install onnx onnxscript onnxruntime (or pip install 'semimoe[deploy]')", file=sys.stderr)
            return 3
    from .models import load_checkpoint

    ckpt = Path(args.checkpoint)
    model, meta = load_checkpoint(ckpt, map_location="cpu")
    spec = InputSpec.from_meta(meta, str(ckpt))
    mult = model.size_multiple
    if tile[0] % mult or tile[1] % mult:
        raise UsageError(f"--tile {tile[0]}x{tile[1]} must be a multiple of the model's size multiple {mult}")
    out = Path(args.output) if args.output else ckpt.with_suffix(_SUFFIX[fmt])
    verify = not args.no_verify
    try:
        if fmt == "onnx":
            export_onnx(model, out, spec=spec, tile=tile, opset=args.opset, dynamic_spatial=not args.static_spatial,
                        precision=precision, verify=verify)
        elif fmt == "aoti":
            export_aoti(model, out, spec=spec, tile=tile, max_batch=args.max_batch, device=args.device,
                        precision=precision, verify=verify)
        else:
            export_tensorrt(model, out, spec=spec, tile=tile, batch=args.batch, precision=precision,
                            opset=args.opset, workspace_gib=args.workspace_gib, verify=verify)
    except SemimoeError:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear line, non-zero exit
        print(f"error: {fmt} export failed: {describe(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
