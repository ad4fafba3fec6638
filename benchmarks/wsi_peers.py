"""Whole-slide segmentation with the peer libraries (TIAToolbox, MONAI), for
``benchmarks/bench_wsi.py``.

Runs INSIDE the peer environment and never imports semimoe: TIAToolbox pins
versions that semimoe's environment cannot share (see below). One run = one
peer on one slide; the last line printed is one JSON object::

    {"peer", "version", "tiles", "seconds", "tiles_per_s", "output", "notes", ...}

    python benchmarks/wsi_peers.py --peer tiatoolbox --slide slide.tif --onnx model.onnx \\
        --mpp 0.5 --tile 512 --overlap 0.25 --batch 8 --threads 2 --out /tmp/peers \\
        --mean 0.78 0.55 0.72 --std 0.13 0.17 0.12

The model is an ONNX file: one input (``image`` in semimoe's export; the
script takes whatever name the file declares) float32 (B, 3, T, T), normalised as
(pixel / 255 - mean) / std; output float32 (B, 3, T, T) probabilities
(background, gland, boundary). Every peer calls the same :class:`OrtModel`
(onnxruntime, CPU, ``--threads`` intra-op threads, session options as
``semimoe.deploy.OrtRuntime``'s: all graph optimisations, no spinning, a
batch run ``--ort-run-batch`` tiles per session run as ``semimoe.wsi`` does), which
normalises the raw pixels of each batch itself and counts the tiles it ran
(model calls x batch rows). So all contenders run the same model on the same
backend; what differs is each library's whole-slide loop: reading, tiling,
masking, blending and writing.

Peers (each the library's own whole-slide path, at equal settings where the
library allows):

* ``tiatoolbox``: ``SemanticSegmentor(model, batch_size=B, num_workers=0)
  .run([slide], patch_mode=False, ioconfig=IOSegmentorConfig(input/output
  resolution {"units": "mpp", "resolution": M}, patch_input_shape =
  patch_output_shape = (T, T), stride_shape = T - round(T * O)),
  auto_get_mask=True, output_type="zarr", return_probabilities=True)``.
  TIAToolbox's reader (``WSIReader.open``) reads each patch at M µm/px from
  the slide's metadata; its tissue mask (Otsu at 1.25x) drops background
  patches; overlapping outputs are averaged (TIAToolbox has no Gaussian
  blending); it writes ``<stem>.zarr`` with ``probabilities`` (H, W, 3)
  float32 and ``predictions`` (H, W) uint8 (the argmax: our model's
  ``postproc``).
* ``monai``: ``monai.data.WSIReader(backend=--reader).get_wsi_at_mpp(wsi, M)``
  reads the whole slide at M µm/px into memory (uint8, C, H, W), then
  ``sliding_window_inference(x, (T, T), B, model, overlap=O, mode="gaussian",
  sigma_scale=0.125)`` under ``torch.inference_mode`` on the float32 image
  (raw pixels; the model normalises). MONAI has no tissue masking: every
  tile is run. MONAI has no whole-slide writer for this path: the (3, H, W)
  float32 map is written with zarr (MONAI's own WSI merger, below, uses
  zarr too), chunks (3, 1024, 1024), zarr's default codecs.
* ``monai-patch`` (extra): MONAI's streaming whole-slide path,
  ``PatchInferer(WSISlidingWindowSplitter(T, overlap=O, reader="OpenSlide",
  level=L), ZarrAvgMerger, batch_size=B)``: reads tile by tile from the file,
  averages overlaps (no Gaussian), writes zarr. It reads pyramid levels
  only: M must equal a level's µm/px (else it is reported as not run).

Timing (``seconds``) covers the library's whole-slide call, reading, masking
and writing included; building the onnxruntime session and one warm-up batch
are outside it (they are the same for every peer). Peak RSS is measured by
the caller (bench_wsi.py), not here.

Threads: onnxruntime gets ``--threads``; torch (MONAI's blending, the data
loader's collation), OpenCV and the OpenMP/BLAS pools get the same number.
TIAToolbox's and MONAI's data loading run in the main process (no loader
workers) as MONAI's sliding window has no workers either.

The peer environment (recreate with exactly these commands; Python 3.11,
x86_64; pip takes torch/torchvision from the machine's local wheel store)::

    python3 -m venv /work/exp/peers-venv
    P=/work/exp/peers-venv/bin/pip
    $P install torch==2.14.1 torchvision==0.29.1
    # tiatoolbox 2.1.3 pins torch<2.13 and torchvision<0.28 (plain
    # `pip install tiatoolbox` downgrades to torch 2.12.1 + torchvision 0.27.1,
    # a multi-GB CUDA download); its other pins are kept, torch's are not:
    $P download --no-deps -d /tmp/tia tiatoolbox==2.1.3
    python3 - <<'EOF' > /tmp/tia-deps.txt
    import glob, zipfile
    z = zipfile.ZipFile(glob.glob("/tmp/tia/tiatoolbox-*.whl")[0])
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            req = line.split(":", 1)[1].strip()
            if not req.lower().startswith(("torch<", "torchvision<")):
                print(req)
    EOF
    $P install -r /tmp/tia-deps.txt monai==1.6.1 onnxruntime psutil
    $P install --no-deps tiatoolbox==2.1.3
    # pip check then reports only the two torch/torchvision pins.

That gave: tiatoolbox 2.1.3, monai 1.6.1, torch 2.14.1, onnxruntime 1.32.0,
openslide-python 1.4.3 + openslide-bin 4.0.1.1, tifffile 2026.2.24,
zarr 3.1.6, numpy 2.4.3 (7.3 GB in all, mostly torch's CUDA libraries).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PEERS = ("tiatoolbox", "monai", "monai-patch")
SIGMA_SCALE = 0.125  # MONAI's default; semimoe's bench_inference uses the same


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer", required=True, choices=PEERS)
    ap.add_argument("--slide", required=True, type=Path)
    ap.add_argument("--onnx", required=True, type=Path)
    ap.add_argument("--mpp", required=True, type=float, help="µm/px the model runs at")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=float, default=0.25, help="fraction of the tile, [0, 1)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ort-run-batch", type=int, default=0,
                    help="onnxruntime: tiles per session run, as semimoe.wsi's --ort-run-batch (0: the whole batch)")
    ap.add_argument("--out", required=True, type=Path, help="folder for the output (made if missing)")
    ap.add_argument("--mean", type=float, nargs=3, default=(0.5, 0.5, 0.5), metavar=("R", "G", "B"))
    ap.add_argument("--std", type=float, nargs=3, default=(0.25, 0.25, 0.25), metavar=("R", "G", "B"))
    ap.add_argument("--reader", choices=("openslide", "tifffile"), default="openslide",
                    help="MONAI WSIReader backend (monai peer; monai-patch always uses OpenSlide)")
    ap.add_argument("--no-mask", action="store_true",
                    help="TIAToolbox: run every tile (auto_get_mask=False), as MONAI does")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    if not 0 <= a.overlap < 1:
        ap.error("--overlap must be in [0, 1)")
    return a


def limit_threads(n: int) -> None:
    """Same thread count for every pool a peer may use. Must run before numpy,
    torch or OpenCV are imported for the OpenMP/BLAS variables to count."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


class OrtModel:
    """The shared model: onnxruntime on the CPU, counting the tiles it runs.

    ``__call__(x)``: x raw pixel values in [0, 255], (B, 3, T, T), any real
    dtype, numpy or torch -> float32 numpy (B, 3, T, T) probabilities.
    """

    def __init__(self, path: Path, mean, std, threads: int, run_batch: int = 0):
        import numpy as np
        import onnxruntime as ort

        # The options of semimoe.deploy.OrtRuntime, so that the backend is the same.
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        # (x / 255 - mean) / std == x * scale + shift
        std = np.asarray(std, np.float32)
        self.scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1)
        self.shift = (-np.asarray(mean, np.float32) / std).reshape(1, 3, 1, 1)
        self.run_batch = int(run_batch) or None  # tiles per session run (OrtRuntime's max_batch)
        self.calls = 0
        self.tiles = 0

    def __call__(self, x):
        import numpy as np

        if hasattr(x, "detach"):  # torch tensor
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32) * self.scale + self.shift
        step = self.run_batch or x.shape[0]
        y = np.concatenate([self.session.run(None, {self.input_name: x[i:i + step]})[0]
                            for i in range(0, x.shape[0], step)])
        self.calls += 1
        self.tiles += int(x.shape[0])
        return y

    def warm_up(self, batch: int, tile: int) -> None:
        import numpy as np

        self(np.full((batch, 3, tile, tile), 200, np.uint8))
        self.calls = self.tiles = 0


class TorchModel(OrtModel):
    """The same model as TorchScript run by PyTorch eager-mode CPU kernels
    (what a TIAToolbox or MONAI user runs), with the interface of :class:`OrtModel`."""

    def __init__(self, path: Path, mean, std, threads: int, run_batch: int = 0):  # noqa: D107
        import numpy as np
        import torch

        torch.set_num_threads(threads)
        self.module = torch.jit.load(str(path), map_location="cpu").eval()
        std = np.asarray(std, np.float32)
        self.scale = torch.from_numpy((1.0 / (255.0 * std)).reshape(1, 3, 1, 1))
        self.shift = torch.from_numpy((-np.asarray(mean, np.float32) / std).reshape(1, 3, 1, 1))
        self.calls = self.tiles = 0

    def __call__(self, x):
        import torch

        x = torch.as_tensor(x).float() * self.scale + self.shift
        with torch.inference_mode():
            y = self.module(x)
        self.calls += 1
        self.tiles += int(x.shape[0])
        return y.numpy()


def stride_of(tile: int, overlap: float) -> int:
    """Tile step in pixels, as MONAI computes it (int(T * (1 - O)), at least 1)."""
    return max(1, int(tile * (1 - overlap)))


# ---------------------------------------------------------------- TIAToolbox
def tia_model(ort_model: OrtModel):
    """Our OrtModel as a TIAToolbox ``ModelABC``: ``infer_batch`` gets the
    data loader's uint8 (B, T, T, 3) tensor and returns (B, T, T, 3) float32
    probabilities; ``postproc`` is the argmax (labels), as TIAToolbox's own
    segmentation models do."""
    import numpy as np
    import torch
    from tiatoolbox.models.models_abc import ModelABC

    class OnnxSegModel(ModelABC):
        def __init__(self):
            super().__init__()
            self.ort = ort_model

        def forward(self, x):  # (B, 3, T, T) -> (B, 3, T, T); TIAToolbox calls infer_batch
            return torch.from_numpy(self.ort(x))

        @staticmethod
        def infer_batch(model, batch_data, *, device="cpu"):
            x = batch_data.numpy() if isinstance(batch_data, torch.Tensor) else np.asarray(batch_data)
            y = model.ort(x.transpose(0, 3, 1, 2))
            return y.transpose(0, 2, 3, 1)

        @staticmethod
        def postproc(image):
            return np.argmax(image, axis=-1)

    return OnnxSegModel()


def run_tiatoolbox(a: argparse.Namespace, model: OrtModel) -> dict:
    import tiatoolbox
    from tiatoolbox.models.engine.io_config import IOSegmentorConfig
    from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor

    reader = tia_reader(a.slide)
    stride = stride_of(a.tile, a.overlap)
    res = [{"units": "mpp", "resolution": a.mpp}]
    ioconfig = IOSegmentorConfig(input_resolutions=res, output_resolutions=res,
                                 patch_input_shape=(a.tile, a.tile), patch_output_shape=(a.tile, a.tile),
                                 stride_shape=(stride, stride), save_resolution=res[0])
    seg = SemanticSegmentor(model=tia_model(model), batch_size=a.batch, num_workers=0, device="cpu",
                            verbose=a.verbose)
    save_dir = a.out / "tiatoolbox"
    t0 = time.perf_counter()
    out = seg.run([a.slide], patch_mode=False, ioconfig=ioconfig, save_dir=save_dir, overwrite=True,
                  output_type="zarr", auto_get_mask=not a.no_mask, return_probabilities=True,
                  device="cpu")
    secs = time.perf_counter() - t0
    path = Path(next(iter(out.values())))
    notes = [f"tissue mask {'off' if a.no_mask else 'on (auto_get_mask=True: Otsu)'}",
             "overlaps averaged (no Gaussian blending in TIAToolbox)",
             f"grid from (0, 0) step {stride}, edge tiles padded with white",
             f"reader: {reader}", "zarr: probabilities (H,W,3) f32 + predictions (H,W) u8"]
    return dict(peer="tiatoolbox", version=tiatoolbox.__version__, seconds=secs, output=str(path),
                shape=_zarr_shape(path, "probabilities"), notes="; ".join(notes))


def tia_reader(slide: Path) -> str:
    """Name of the reader TIAToolbox picks for ``slide``; exits with the reason
    when it cannot read the slide's µm/px.

    TIAToolbox 2.1.3 tries its TIFF reader first for .tif files, which takes
    SVS, OME-TIFF, BigTIFF and single-page tiled TIFF only; any other
    pyramidal TIFF (a classic, < 4 GB, multi-page TIFF, such as
    semimoe.wsi.synthetic writes below 2 GiB) falls back to a
    ``VirtualWSIReader`` -- a plain image, read whole, without µm/px -- before
    OpenSlide is tried, and ``run()`` then fails with "MPP is None"."""
    from tiatoolbox.wsicore.wsireader import WSIReader

    r = WSIReader.open(slide)
    if type(r).__name__ == "VirtualWSIReader" or r.info.mpp is None:
        raise SystemExit(f"TIAToolbox opens {slide} as {type(r).__name__} with mpp {r.info.mpp}: "
                         "it reads generic pyramidal TIFF only as BigTIFF (or SVS/OME-TIFF); "
                         "write the slide with bigtiff=True")
    return type(r).__name__


# ---------------------------------------------------------------- MONAI
def run_monai(a: argparse.Namespace, model: OrtModel) -> dict:
    import monai
    import numpy as np
    import torch
    import zarr
    from monai.data import WSIReader
    from monai.inferers import sliding_window_inference

    def predictor(x):
        return torch.from_numpy(model(x))

    path = a.out / "monai.zarr"
    t0 = time.perf_counter()
    reader = WSIReader(backend=a.reader)
    wsi = reader.read(str(a.slide))
    img = reader.get_wsi_at_mpp(wsi, a.mpp)  # uint8 (3, H, W), whole slide
    with torch.inference_mode():
        x = torch.from_numpy(img)[None].float()
        del img
        y = sliding_window_inference(x, (a.tile, a.tile), a.batch, predictor, overlap=a.overlap,
                                     mode="gaussian", sigma_scale=SIGMA_SCALE)
        del x
        y = y[0].numpy()
    arr = zarr.create_array(store=str(path), shape=y.shape, dtype=np.float32,
                            chunks=(3, 1024, 1024), overwrite=True)
    arr[...] = y
    secs = time.perf_counter() - t0
    notes = ["no tissue masking in MONAI: every tile run",
             f"gaussian blending sigma_scale {SIGMA_SCALE}",
             f"whole slide read into memory (WSIReader backend {a.reader}, get_wsi_at_mpp)",
             "grid clamped to the image edge (last tile flush with the border)",
             "zarr written by this script: probabilities (3,H,W) f32"]
    return dict(peer="monai", version=monai.__version__, seconds=secs, output=str(path),
                shape=list(y.shape), notes="; ".join(notes))


def run_monai_patch(a: argparse.Namespace, model: OrtModel) -> dict:
    import monai
    import torch
    from monai.data import WSIReader
    from monai.inferers import PatchInferer, WSISlidingWindowSplitter, ZarrAvgMerger

    reader = WSIReader(backend="openslide")
    wsi = reader.read(str(a.slide))
    levels = [reader.get_mpp(wsi, i) for i in range(reader.get_level_count(wsi))]
    level = next((i for i, m in enumerate(levels) if abs(m[0] - a.mpp) <= 0.01 * a.mpp), None)
    if level is None:
        raise SystemExit(f"monai-patch reads pyramid levels only; no level at {a.mpp} µm/px "
                         f"(levels: {[round(m[0], 4) for m in levels]})")

    def predictor(x):
        return torch.from_numpy(model(x))

    path = a.out / "monai-patch.zarr"
    inferer = PatchInferer(
        splitter=WSISlidingWindowSplitter(patch_size=a.tile, overlap=a.overlap, reader="OpenSlide", level=level),
        merger_cls=ZarrAvgMerger, batch_size=a.batch, store=str(path))
    t0 = time.perf_counter()
    with torch.inference_mode():
        y = inferer(str(a.slide), predictor)
    secs = time.perf_counter() - t0
    notes = ["no tissue masking in MONAI: every tile run", "overlaps averaged (ZarrAvgMerger, no Gaussian)",
             f"tiles read one by one from pyramid level {level} (OpenSlide)"]
    return dict(peer="monai-patch", version=monai.__version__, seconds=secs, output=str(path),
                shape=list(y.shape), notes="; ".join(notes))


def _zarr_shape(path: Path, key: str):
    import zarr

    try:
        return list(zarr.open_group(str(path), mode="r")[key].shape)
    except Exception as exc:  # noqa: BLE001 - informative only
        return f"unreadable: {type(exc).__name__}"


RUNNERS = {"tiatoolbox": run_tiatoolbox, "monai": run_monai, "monai-patch": run_monai_patch}


def main(argv=None) -> int:
    a = parse_args(argv)
    limit_threads(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    try:
        import cv2

        cv2.setNumThreads(a.threads)
    except ImportError:
        pass
    a.out.mkdir(parents=True, exist_ok=True)
    # an ONNX file runs on onnxruntime (semimoe's backend); a TorchScript file (.ts) on PyTorch
    model = (TorchModel if str(a.onnx).endswith(".ts") else OrtModel)(a.onnx, a.mean, a.std, a.threads,
                                                                      a.ort_run_batch)
    model.warm_up(a.batch, a.tile)
    row = RUNNERS[a.peer](a, model)
    row.update(tiles=model.tiles, model_calls=model.calls,
               tiles_per_s=model.tiles / row["seconds"] if row["seconds"] > 0 else None,
               tile=a.tile, overlap=a.overlap, stride=stride_of(a.tile, a.overlap), batch=a.batch,
               threads=a.threads, mpp=a.mpp, slide=str(a.slide))
    keys = ["peer", "version", "tiles", "seconds", "tiles_per_s", "output", "notes"]
    row = {**{k: row[k] for k in keys}, **{k: v for k, v in row.items() if k not in keys}}
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
