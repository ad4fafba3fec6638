"""Tiled inference on whole CRAG-sized images: semimoe's backends vs MONAI's
``sliding_window_inference``, side by side in one run.

    python benchmarks/bench_inference.py                      # 1512x1516, cpu-demo model
    python benchmarks/bench_inference.py --size 775 522 --repeats 3
    python -m pytest benchmarks/bench_inference.py --benchmark-only   # small smoke configuration

Every method takes the same uint8 RGB image and returns the float32
(3, H, W) probability map; the time covers normalisation, tiling, the model,
blending and the result (for MONAI: normalising the full image, then
``sliding_window_inference``). Equal settings for all: the same model object
and weights, tile, overlap, Gaussian blending with the same sigma scale, tile
batch size, float32, the same threads. semimoe uses ``align=1`` here, i.e.
MONAI's tile grid, so the outputs can be compared: each method's output is
checked against MONAI's (max abs difference) on the warm-up image before it
is timed.

Rows:
* ``monai``: ``sliding_window_inference(x, tile, batch, model, overlap,
  mode="gaussian", sigma_scale)`` with the model as it is (NCHW, eager), under
  ``torch.inference_mode`` -- the baseline. The model is
  ``model.predictor()``, heads first (:class:`semimoe.models.SemiMoEPredictor`).
* ``monai-released``: the same loop with the prediction computed as the
  released code computes it: the model's full forward (stacked features
  fused per task, every head) with every op on its reference backend (each
  decoder upsample materialised before its 3x3 convolution). The distance
  between the two MONAI rows is what semimoe's model code (heads-first
  predictor, upsampling as transposed convolutions, fused ops) gives every user, MONAI's
  included; the distance from ``monai`` to semimoe's rows is the runtime
  and the tiler.
* ``semimoe torch, NCHW eager``: semimoe's tiler with the same eager model.
* ``semimoe torch`` (default: eager, channels-last), ``semimoe torch.compile``
  (Inductor, static shapes, freezing), ``semimoe onnxruntime``,
  ``semimoe AOTInductor`` (with freezing), ``semimoe TensorRT`` (GPU with
  TensorRT only): semimoe's tiler with each backend (export time is
  reported, not timed).
* ``MONAI + semimoe's <backend>``: MONAI's loop calling the *same* backend
  object as the semimoe row below it. Each pair differs only in the tiling
  loop (gathering, blending, accumulation); the distance to the baseline is
  the backend.

Timing: one warm-up image per method (compilation included, reported as
"first call"), then ``--repeats`` rounds; each round times every method once
on the next image, methods interleaved so that load changes on a shared
machine hit all of them alike; the median per-image time is reported.
MONAI is optional (``pip install monai``; it is not a semimoe dependency):
without it the MONAI rows are skipped and ratios are not computed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from semimoe._backend import forced  # noqa: E402
from semimoe.data import make_sample  # noqa: E402
from semimoe.data.scale import InputSpec  # noqa: E402
from semimoe.inference import sliding_window  # noqa: E402
from semimoe.models import ModelConfig, build_model  # noqa: E402

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # keep the module importable; its tests then skip
    @pytest.fixture
    def benchmark():
        pytest.skip("pytest-benchmark is not installed")


@dataclasses.dataclass(frozen=True)
class Config:
    size: tuple = (1512, 1516)      # H, W: a whole CRAG image
    tile: int = 256
    overlap: float = 0.25
    sigma_scale: float = 0.125
    batch: int = 8
    preset: str = "cpu-demo"
    width: Optional[int] = None     # override the preset's base_width
    repeats: int = 2
    device: str = "cpu"
    methods: tuple = ("monai", "monai-released", "torch-nchw", "monai+torch", "torch", "monai+compile", "compile",
                      "monai+onnxruntime", "onnxruntime", "aoti", "tensorrt")
    loop_only: bool = True          # also time both tiling loops with a trivial model

    def __str__(self):
        return (f"{self.size[0]}x{self.size[1]} image, tile {self.tile}, overlap {self.overlap}, gaussian "
                f"sigma_scale {self.sigma_scale}, batch {self.batch}, model {self.preset}"
                f"{'' if self.width is None else f' width {self.width}'}, float32, {self.device}")


LABELS = {
    "monai": "MONAI sliding_window_inference, model as is (baseline)",
    "monai-released": "MONAI, the model computed as the released code does (full forward, reference ops)",
    "monai+torch": "MONAI + semimoe's torch backend (channels-last, inference copy)",
    "monai+compile": "MONAI + semimoe's torch.compile backend",
    "monai+onnxruntime": "MONAI + semimoe's onnxruntime backend",
    "torch-nchw": "semimoe torch, NCHW eager",
    "torch": "semimoe torch (default: channels-last eager, inference copy)",
    "compile": "semimoe torch.compile (freezing)",
    "onnxruntime": "semimoe onnxruntime",
    "aoti": "semimoe AOTInductor",
    "tensorrt": "semimoe TensorRT",
    "loop-monai": "tiling loop only (sigmoid as the model): MONAI",
    "loop-semimoe": "tiling loop only (sigmoid as the model): semimoe",
}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class _ReleasedForward(torch.nn.Module):
    """The prediction computed as the released code computes it: the model's
    full forward (every expert head, the stacked features fused per task,
    every task head) with every op on its reference backend (each decoder
    upsample materialised before its 3x3 convolution), then the predictor's
    softmaxes. The "monai-released" row."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with forced("reference"):
            out = self.model(x)
        return torch.cat([torch.softmax(out.seg.float(), 1), torch.softmax(out.bnd.float(), 1)[:, 1:2]], 1)


def build_methods(cfg: Config, model, norm, workdir: Path, log=print) -> Dict[str, Callable]:
    """name -> fn(uint8 (H, W, 3) tensor) -> float32 (3, H, W); or a str saying why not.

    The backends (eager channels-last, compiled, onnxruntime) are built once
    and shared by semimoe's row and the "MONAI + same backend" row, so that
    the pair differs only in the tiling loop."""
    from semimoe.deploy import TorchRuntime

    dev = torch.device(cfg.device)
    pred = model.predictor().eval().to(dev)
    mean = torch.tensor(norm["mean"], device=dev)[:, None, None]
    std = torch.tensor(norm["std"], device=dev)[:, None, None]
    spec = InputSpec(norm["mean"], norm["std"], 1.0, 1.0)
    kw = dict(tile=cfg.tile, overlap=cfg.overlap, blend="gaussian", sigma_scale=cfg.sigma_scale,
              batch_size=cfg.batch, align=1, mean=norm["mean"], std=norm["std"])
    out: Dict[str, Callable] = {}
    backends: Dict[str, object] = {}

    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        sliding_window_inference = None

    def monai_fn(predictor):
        def run(img):
            x = (img.to(dev).permute(2, 0, 1).float() / 255.0 - mean) / std
            with torch.inference_mode():
                return sliding_window_inference(x[None], (cfg.tile, cfg.tile), cfg.batch, predictor,
                                                overlap=cfg.overlap, mode="gaussian",
                                                sigma_scale=cfg.sigma_scale)[0]
        return run

    import copy

    def backend(kind: str):
        if kind in backends:
            return backends[kind]
        if kind in ("torch-nchw", "torch", "compile"):
            be = TorchRuntime(copy.deepcopy(pred), device=dev, channels_last=kind != "torch-nchw",
                              compile=kind == "compile", inference_copy=kind != "torch-nchw")
        elif kind == "onnxruntime":
            from semimoe.deploy import OrtRuntime
            from semimoe.export import export_onnx

            p = workdir / "model.onnx"
            t0 = time.perf_counter()
            export_onnx(model, p, spec=spec, tile=cfg.tile, dynamic_spatial=False, log=lambda *a: None)
            log(f"  onnx export {time.perf_counter() - t0:.1f}s")
            be = OrtRuntime(p, device=dev, threads=torch.get_num_threads())  # the same threads as torch
        elif kind == "aoti":
            from semimoe.deploy import AOTIRuntime
            from semimoe.export import export_aoti

            p = workdir / "model.pt2"
            t0 = time.perf_counter()
            export_aoti(model, p, spec=spec, tile=cfg.tile, max_batch=cfg.batch, device=dev.type,
                        log=lambda *a: None)
            log(f"  aoti compile {time.perf_counter() - t0:.1f}s")
            be = AOTIRuntime(p, device=dev)
        elif kind == "tensorrt":
            if dev.type != "cuda":
                raise RuntimeError("TensorRT needs a CUDA device")
            import tensorrt  # noqa: F401

            from semimoe.deploy.tensorrt import TensorRTRuntime
            from semimoe.export import export_tensorrt

            p = workdir / "model.engine"
            export_tensorrt(model, p, spec=spec, tile=cfg.tile, batch=(1, cfg.batch, cfg.batch),
                            precision="fp32", log=lambda *a: None)
            be = TensorRTRuntime(p, device=dev)
        else:
            raise ValueError(f"unknown backend {kind!r}")
        backends[kind] = be
        return be

    for name in cfg.methods:
        try:
            if name.startswith("monai"):
                if sliding_window_inference is None:
                    out[name] = "monai is not installed (pip install monai)"
                    continue
                if name == "monai-released":
                    out[name] = monai_fn(_ReleasedForward(model).eval())
                    continue
                out[name] = monai_fn(pred if name == "monai" else backend(name.split("+", 1)[1]))
            else:
                out[name] = (lambda img, be=backend(name): sliding_window(be, img, **kw))
        except ImportError as exc:
            out[name] = f"not installed: {exc.name or exc}"
        except Exception as exc:  # noqa: BLE001 - report the row as not run
            out[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
    return out


def run_benchmark(cfg: Config, log=print) -> List[dict]:
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset(cfg.preset, **({} if cfg.width is None else
                                                           {"base_width": cfg.width}))).eval()
    with torch.no_grad():  # untrained weights; make the zero-initialised spatial gate output non-trivial
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d) and not mod.weight.abs().sum():
                mod.weight.normal_(0, 0.1)
    from semimoe.data import mean_std

    m, s = mean_std()
    norm = {"mean": list(m), "std": list(s)}
    H, W = cfg.size
    n_img = cfg.repeats + 1
    log(f"generating {n_img} synthetic {H}x{W} images...")
    imgs = [torch.from_numpy(make_sample(100 + i, (H, W))[0]) for i in range(n_img)]
    rows: Dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log("preparing methods...")
        methods = build_methods(cfg, model, norm, Path(tmp), log=log) if cfg.methods else {}
        ref = None
        for name, fn in methods.items():
            row = rows.setdefault(name, {"method": name, "label": LABELS[name], "times": []})
            if isinstance(fn, str):
                row["skipped"] = fn
                log(f"  {name}: skipped ({fn})")
                continue
            t0 = time.perf_counter()
            y = fn(imgs[0])
            _sync(cfg.device)
            row["first_call_s"] = time.perf_counter() - t0
            y = y.float().cpu()
            if ref is None and name.startswith("monai"):
                ref = y
            if ref is not None:
                row["max_abs_diff_vs_monai"] = float((y - ref).abs().max())
            log(f"  {name}: warm-up {row['first_call_s']:.1f}s"
                + (f", max |diff| vs MONAI {row['max_abs_diff_vs_monai']:.1e}" if ref is not None else ""))
            if ref is not None and not row["max_abs_diff_vs_monai"] <= 1e-3:
                row["skipped"] = f"disagrees with MONAI (max abs diff {row['max_abs_diff_vs_monai']:.3g})"
        for r in range(cfg.repeats):
            for name, fn in methods.items():
                if isinstance(fn, str) or "skipped" in rows[name]:
                    continue
                img = imgs[1 + r]
                _sync(cfg.device)
                t0 = time.perf_counter()
                fn(img)
                _sync(cfg.device)
                rows[name]["times"].append(time.perf_counter() - t0)
            log(f"  round {r + 1}/{cfg.repeats}: " + ", ".join(
                f"{k} {v['times'][-1]:.1f}s" for k, v in rows.items() if v["times"]))
    if cfg.loop_only:
        _loop_rows(cfg, norm, imgs, rows, log)
    def median_of(name):
        t = rows.get(name, {}).get("times")
        return statistics.median(t) if t else None

    for name, row in rows.items():
        if row["times"]:
            row["s_per_image"] = statistics.median(row["times"])
            row["images_per_s"] = 1.0 / row["s_per_image"]
            base_t = median_of("loop-monai" if name.startswith("loop") else "monai")
            if base_t:
                row["speedup_vs_monai"] = base_t / row["s_per_image"]
            released_t = None if name.startswith("loop") else median_of("monai-released")
            if released_t:
                row["speedup_vs_monai_released"] = released_t / row["s_per_image"]
    return list(rows.values())


def _loop_rows(cfg: Config, norm, imgs, rows: Dict[str, dict], log=print) -> None:
    """The tiling loops alone: a per-pixel sigmoid as the "model", so that
    gathering, normalisation, blending and stitching dominate."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return
    dev = torch.device(cfg.device)
    mean = torch.tensor(norm["mean"], device=dev)[:, None, None]
    std = torch.tensor(norm["std"], device=dev)[:, None, None]

    def monai(img):
        x = (img.to(dev).permute(2, 0, 1).float() / 255.0 - mean) / std
        with torch.inference_mode():
            return sliding_window_inference(x[None], (cfg.tile, cfg.tile), cfg.batch, torch.sigmoid,
                                            overlap=cfg.overlap, mode="gaussian", sigma_scale=cfg.sigma_scale)[0]

    def ours(img):
        return sliding_window(torch.sigmoid, img, tile=cfg.tile, overlap=cfg.overlap, blend="gaussian",
                              sigma_scale=cfg.sigma_scale, batch_size=cfg.batch, align=1, mean=norm["mean"],
                              std=norm["std"], device=dev)

    ref = monai(imgs[0]).cpu()
    fns = {"loop-monai": monai, "loop-semimoe": ours}
    for name, fn in fns.items():
        y = fn(imgs[0]).cpu()
        rows[name] = {"method": name, "label": LABELS[name], "times": [], "first_call_s": float("nan"),
                      "max_abs_diff_vs_monai": float((y - ref).abs().max())}
    for r in range(5 * max(1, cfg.repeats)):
        for name, fn in fns.items():
            img = imgs[r % len(imgs)]
            _sync(dev)
            t0 = time.perf_counter()
            fn(img)
            _sync(dev)
            rows[name]["times"].append(time.perf_counter() - t0)
    log("  tiling loop only: " + ", ".join(f"{k} {statistics.median(rows[k]['times']) * 1e3:.0f} ms" for k in fns))


def format_table(cfg: Config, rows: List[dict]) -> str:
    lines = [f"Settings: {cfg}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"{platform.processor() or platform.machine()}.", "",
             "| method | images/s | s/image | vs MONAI | vs MONAI, released computation | first call (s) "
             "| max abs diff vs MONAI |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "s_per_image" not in r:
            lines.append(f"| {r['label']} | skipped: {r.get('skipped', 'not run')} | | | | | |")
            continue
        sp = f"{r['speedup_vs_monai']:.2f}x" if "speedup_vs_monai" in r else "n/a"
        sr = f"{r['speedup_vs_monai_released']:.2f}x" if "speedup_vs_monai_released" in r else "n/a"
        d = f"{r['max_abs_diff_vs_monai']:.1e}" if "max_abs_diff_vs_monai" in r else "n/a"
        fc = "" if r["first_call_s"] != r["first_call_s"] else f"{r['first_call_s']:.1f}"
        lines.append(f"| {r['label']} | {r['images_per_s']:.4g} | {r['s_per_image']:.3g} | {sp} | {sr} | {fc} | {d} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=list(Config.size), metavar=("H", "W"))
    ap.add_argument("--tile", type=int, default=Config.tile)
    ap.add_argument("--overlap", type=float, default=Config.overlap)
    ap.add_argument("--batch", type=int, default=Config.batch)
    ap.add_argument("--preset", default=Config.preset)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=Config.repeats)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", nargs="+", default=list(Config.methods),
                    choices=[k for k in LABELS if not k.startswith("loop")])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--loop-only", action="store_true",
                    help="only the tiling loops with a trivial model (MONAI vs semimoe)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.loop_only:
        a.methods = []
    cfg = Config(size=tuple(a.size), tile=a.tile, overlap=a.overlap, batch=a.batch, preset=a.preset,
                 width=a.width, repeats=a.repeats, device=a.device, methods=tuple(a.methods))
    rows = run_benchmark(cfg)
    print()
    print(format_table(cfg, rows))
    if a.json:
        Path(a.json).write_text(json.dumps({"config": str(cfg), "rows": rows}, indent=2))
    return 0


# ---------------------------------------------------------------- pytest entry
SMOKE = Config(size=(384, 400), tile=128, batch=4, width=4, repeats=1,
               methods=("monai", "torch-nchw", "monai+torch", "torch", "monai+onnxruntime", "onnxruntime"))


def test_inference_vs_monai_smoke(benchmark):
    """Small configuration for ``pytest benchmarks/ --benchmark-only``: checks
    agreement with MONAI and prints the table; the timed function is semimoe's
    default torch path."""
    pytest.importorskip("monai", reason="MONAI is not installed (pip install monai; benchmark-only peer)")
    rows = run_benchmark(SMOKE, log=lambda *a: None)
    print("\n" + format_table(SMOKE, rows))
    for r in rows:
        if "max_abs_diff_vs_monai" in r:
            assert r["max_abs_diff_vs_monai"] <= 1e-3, r
    from semimoe.deploy import TorchRuntime

    model = build_model(ModelConfig.preset(SMOKE.preset, base_width=SMOKE.width)).eval()
    be = TorchRuntime(model.predictor())
    img = torch.from_numpy(make_sample(0, SMOKE.size)[0])
    benchmark.pedantic(lambda: sliding_window(be, img, tile=SMOKE.tile, batch_size=SMOKE.batch,
                                              mean=[0.5] * 3, std=[0.2] * 3), rounds=2, iterations=1)


if __name__ == "__main__":
    sys.exit(main())
