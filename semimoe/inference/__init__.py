"""Inference: the one prediction path (:class:`Predictor`) and the tiled
inference it runs on (grid -> runner -> merger).

* :mod:`.grid` -- :func:`tile_starts`, :class:`TileGrid` (where tiles sit,
  padding), :class:`TileReader` (tiles into a normalised batch);
* :mod:`.runner` -- :class:`TileRunner` (runtime calls, flips, fixed batch);
* :mod:`.merger` -- :func:`blend_weights`, :class:`BandMerger`
  (``aggregate`` / ``finalize`` with bounded memory);
* :mod:`.tiled` -- :class:`TilingConfig` and :func:`sliding_window`, which
  composes the three;
* :mod:`.predictor` -- :class:`Predictor` (scale -> tiles -> native
  resolution -> instances), :func:`postprocess`, :class:`Segmentation`.
"""
from .grid import TileGrid, TileReader, pad_index, tile_starts
from .merger import BandMerger, blend_weights
from .predictor import Predictor, Segmentation, postprocess
from .runner import TileRunner
from .tiled import TilingConfig, sliding_window

__all__ = [
    "Predictor", "Segmentation", "postprocess", "TilingConfig", "sliding_window", "tile_starts",
    "pad_index", "TileGrid", "TileReader", "TileRunner", "BandMerger", "blend_weights",
]
