"""Metadata of exported artifacts.

Every artifact written by ``python -m semimoe.export`` carries a JSON document
(schema ``semimoe-deploy`` v2) with what a runner needs to use it correctly:

* ``norm``: ``{"mean": [3], "std": [3]}`` -- input normalisation of images in [0, 1];
* ``scale``: ``{"mpp", "source_mpp", "source_mpp_assumed"}`` -- the µm/px the
  model was trained at and the training images' own pixel size (schema v2;
  together with ``norm`` this is the model's
  :class:`~semimoe.data.scale.InputSpec`, read with ``InputSpec.from_meta``);
* ``input``: name, layout NCHW, dtype, ``tile`` (the spatial size, or None if
  dynamic), ``size_multiple`` (H and W must be multiples of it), ``batch``
  (``[min, opt, max]`` for engines with a batch profile);
* ``output``: name and channel meaning;
* ``model_config``, ``precision``, and the versions it was built with
  (``torch``, ``semimoe``, ``onnx_opset``, ``tensorrt``).

It is written next to the artifact as ``<artifact>.json`` and, where the format
has a place for it, inside too (ONNX ``metadata_props["semimoe"]``,
AOTInductor package metadata ``"semimoe"``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..errors import CheckpointError

SCHEMA = "semimoe-deploy"
SCHEMA_VERSION = 2
INPUT_NAME = "image"
OUTPUT_NAME = "prob"
OUTPUT_CHANNELS = ["seg_background", "seg_gland", "boundary"]
META_KEY = "semimoe"


def sidecar_path(artifact: os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    p = Path(artifact)
    return p.with_name(p.name + ".json")


def make_meta(*, artifact: str, model_config: Dict[str, Any], spec, tile: Optional[Sequence[int]],
              size_multiple: int, precision: str = "fp32", batch: Optional[Sequence[int]] = None,
              **extra: Any) -> Dict[str, Any]:
    """The metadata document of an artifact; ``spec``: the model's
    :class:`~semimoe.data.scale.InputSpec` (normalisation and scale)."""
    import torch

    from .. import __version__

    meta: Dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "artifact": artifact,
        "model_config": dict(model_config),
        **spec.to_meta(),
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": 3,
            "tile": [int(v) for v in tile] if tile is not None else None,
            "size_multiple": int(size_multiple),
            "batch": [int(v) for v in batch] if batch is not None else None,
        },
        "output": {"name": OUTPUT_NAME, "channels": OUTPUT_CHANNELS, "dtype": "float32"},
        "precision": precision,
        "torch": torch.__version__,
        "semimoe": __version__,
    }
    meta.update(extra)
    return meta


def write_sidecar(artifact: os.PathLike, meta: Dict[str, Any]) -> Path:
    from ..utils import atomic_write_text

    return atomic_write_text(sidecar_path(artifact), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_sidecar(artifact: os.PathLike, required: bool = False) -> Optional[Dict[str, Any]]:
    p = sidecar_path(artifact)
    if not p.exists():
        if required:
            raise CheckpointError(
                f"{p} not found: the metadata written next to {Path(artifact).name} by "
                "`python -m semimoe.export` (normalisation, tile size, versions) is needed to run it")
        return None
    return parse(p.read_text(), str(p))


def parse(text: str, where: str = "metadata") -> Dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise CheckpointError(f"{where}: not semimoe deployment metadata (schema {SCHEMA!r} expected)")
    if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
        raise CheckpointError(f"{where}: metadata schema v{meta.get('schema_version')} is newer than this "
                         f"semimoe understands (v{SCHEMA_VERSION}); upgrade semimoe")
    return meta
