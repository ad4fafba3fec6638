"""The one prediction path of semimoe.

:class:`Predictor` is what validation during training, ``semimoe.evaluate``,
``semimoe.infer`` and the exported models run, so that every number semimoe
reports describes what users deploy::

    image as stored (uint8 RGB, any size, p µm/px)
      -> resample by p / spec.mpp to the scale the model was trained at
         (semimoe.data.scale.resample_image, the function that built the
         training images)
      -> tiled inference with the runtime (grid -> runner -> merger)
      -> probabilities resampled back to the image's own H x W
      -> mask and instances (:func:`postprocess`)

The pixel size ``p`` of an image is passed as ``mpp``; without it the
training data's pixel size (``spec.source_mpp``) is assumed.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..data.scale import InputSpec, resample_image, resample_prob
from ..vml import start_vml
from .tiled import TilingConfig, resolve_tile, sliding_window

__all__ = ["Predictor", "Segmentation", "postprocess", "instances"]


class Segmentation(NamedTuple):
    """Result of :meth:`Predictor.segment` for one image of H x W pixels.

    prob: float32 (3, H, W) ndarray: channels 0-1 segmentation softmax
        (background, gland), channel 2 boundary probability.
    mask: bool (H, W): gland pixels (``prob[1] > threshold``).
    instances: int32 (H, W): gland instances 1..n, 0 background.
    """

    prob: np.ndarray
    mask: np.ndarray
    instances: np.ndarray


def postprocess(prob, threshold: float = 0.5, boundary_threshold: float = 0.5, split: bool = True,
                min_size: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Mask and instances from a (3, H, W) probability map.

    mask = ``prob[1] > threshold``; boundary = ``prob[2] > boundary_threshold``;
    then :func:`instances`. Returns ``(mask bool (H, W), instances int32 (H, W))``.
    """
    p = prob.detach().float().cpu().numpy() if isinstance(prob, Tensor) else np.asarray(prob, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"prob must be (C >= 2, H, W), got {p.shape}")
    boundary = p[2] > boundary_threshold if p.shape[0] >= 3 else None
    return instances(p[1] > threshold, boundary, split, min_size)


def instances(mask: np.ndarray, boundary: Optional[np.ndarray], split: bool = True,
              min_size: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """The instance rule of every prediction path, on a bool gland ``mask``
    and a bool predicted ``boundary`` (None: no boundary channel).

    Instances: connected components of the mask (8-connected), or with
    ``split=True`` the mask minus the boundary labelled 4-connected and grown
    back over the mask (:func:`semimoe.metrics.split_instances`), so that
    touching glands separated by a predicted boundary get distinct labels.
    ``min_size``: mask components smaller than this are removed first (from
    the mask too), and split cores smaller than this merge into their
    nearest neighbour. The result for a pixel depends only on its mask
    component (whole-slide inference relies on this).

    Returns ``(mask bool (H, W), instances int32 (H, W))``.
    """
    from ..metrics import label_components, split_instances

    if min_size > 0:  # drop small specks from the mask itself first
        mask = label_components(mask, min_size=min_size) > 0
    if split and boundary is not None:
        inst = split_instances(mask, boundary, min_size=min_size)
    else:
        inst = label_components(mask, min_size=min_size)
    return mask, inst.astype(np.int32, copy=False)


class Predictor:
    """A runtime with the input specification it was trained with and a tiling.

    Args:
        runtime: callable x (b, 3, th, tw) normalised float32 -> (b, 3, th, tw)
            probabilities (seg background, seg gland, boundary): a
            :mod:`semimoe.deploy.runtimes` runtime, a predictor ``nn.Module``
            (wrapped in :class:`~semimoe.deploy.runtimes.TorchRuntime`), or
            any function with the attributes :func:`sliding_window` reads.
        spec: :class:`~semimoe.data.scale.InputSpec` (normalisation, training
            µm/px, the training images' µm/px).
        tiling: :class:`TilingConfig` (default: the runtime's fixed tile, else
            256, overlap 0.25, Gaussian blending).
    """

    def __init__(self, runtime, spec: InputSpec, tiling: Optional[TilingConfig] = None):
        if isinstance(runtime, torch.nn.Module):
            from ..deploy.runtimes import TorchRuntime

            runtime = TorchRuntime(runtime)
        if not isinstance(spec, InputSpec):
            raise TypeError(f"spec must be an InputSpec, got {type(spec).__name__}")
        start_vml()  # the same numbers in every process (semimoe.vml)
        self.runtime = runtime
        self.spec = spec
        self.meta: dict = {}  # the model file's metadata, when opened with from_file
        self.tiling = tiling or TilingConfig(tile=getattr(runtime, "tile", None) or 256)
        self._said_mpp = False

    @classmethod
    def from_file(cls, path, runtime: str = "auto", device=None, tiling: Optional[TilingConfig] = None,
                  **runtime_kwargs) -> "Predictor":
        """Open a checkpoint (``.pt``), ONNX file, AOTInductor package (``.pt2``)
        or TensorRT engine with :func:`semimoe.deploy.load_runtime`."""
        from ..deploy.runtimes import load_runtime

        rt, meta = load_runtime(path, runtime=runtime, device=device, **runtime_kwargs)
        p = cls(rt, InputSpec.from_meta(meta, str(path)), tiling)
        p.meta = meta
        return p

    def set_tiling(self, tiling: TilingConfig) -> "Predictor":
        """Use ``tiling``, checked against the runtime (its fixed tile, the
        model's size multiple) now rather than at the first image."""
        if tiling.tile is not None or getattr(self.runtime, "tile", None) is not None:
            resolve_tile(tiling.tile, (1, 1), int(getattr(self.runtime, "size_multiple", 1) or 1),
                         getattr(self.runtime, "tile", None))
        self.tiling = tiling
        return self

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.runtime, "device", None) or "cpu")

    def factor(self, mpp: Optional[float] = None) -> float:
        """Resampling factor of an input of ``mpp`` µm/px (None: the training images' pixel size)."""
        return self.spec.factor(mpp)

    def _note_assumed_mpp(self, mpp: Optional[float]) -> None:
        if mpp is None and not self._said_mpp and abs(self.factor() - 1.0) > 1e-9:
            self._said_mpp = True
            warnings.warn(f"no pixel size given for the input (mpp): assuming the training images' "
                          f"{self.spec.source_mpp:.4g} µm/px, so images are resampled by "
                          f"{self.factor():.4g} to the model's {self.spec.mpp:.4g} µm/px", stacklevel=3)

    def probabilities(self, image: Union[np.ndarray, Tensor], mpp: Optional[float] = None,
                      progress: Optional[bool] = None) -> Tensor:
        """float32 (3, H, W) probabilities at the image's own resolution.

        ``image``: uint8 RGB (H, W, 3), or a batch (N, H, W, 3) of same-size
        images (-> (N, 3, H, W)), as stored; ``mpp``: its pixel size in µm.
        """
        self._note_assumed_mpp(mpp)
        x = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
        if x.dtype != torch.uint8 or x.dim() not in (3, 4) or x.shape[-1] != 3:
            raise ValueError(f"image must be uint8 RGB (H, W, 3) or (N, H, W, 3), got {x.dtype} "
                             f"{tuple(x.shape)}")
        batched = x.dim() == 4
        xs = list(x) if batched else [x]
        shape = tuple(xs[0].shape[:2])
        f = self.factor(mpp)
        small = torch.stack([resample_image(im.to(self.device), f) for im in xs])
        kw = dict(self.tiling.kwargs(), out_dtype=torch.float32)
        prob = sliding_window(self.runtime, small, mean=self.spec.mean, std=self.spec.std, progress=progress, **kw)
        prob = torch.stack([resample_prob(p, shape) for p in prob])
        return prob if batched else prob[0]

    def segment(self, image, mpp: Optional[float] = None, threshold: float = 0.5,
                boundary_threshold: float = 0.5, split: bool = True, min_size: int = 0,
                progress: Optional[bool] = None) -> Segmentation:
        """Probabilities, mask and instances of one uint8 (H, W, 3) image."""
        p = self.probabilities(image, mpp, progress=progress).cpu().numpy()
        mask, inst = postprocess(p, threshold, boundary_threshold, split, min_size)
        return Segmentation(p, mask, inst)

    __call__ = segment
