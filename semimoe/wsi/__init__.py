"""Whole-slide inference: ``python -m semimoe.wsi`` (docs in :mod:`semimoe.wsi.cli`).

* :mod:`.reader` -- :func:`open_slide`: OpenSlide, then tifffile, then plain images; µm/px and bounds;
* :mod:`.plan` -- :class:`Canvas`: the region of interest at the model's µm/px, tiles read at global positions;
* :mod:`.tissue` -- tissue detection on a thumbnail, or a user's mask;
* :mod:`.engine` -- streamed tiled inference in stripes (reader threads -> runner -> merger -> disk), resumable;
* :mod:`.raster` -- the probability raster on disk;
* :mod:`.instances` -- glands counted once across seams (block ownership);
* :mod:`.outputs` -- pyramidal TIFF, QuPath GeoJSON, overlay;
* :mod:`.pipeline` -- :func:`run_slide`: one slide end to end;
* :mod:`.synthetic` -- synthetic slides for the demo, tests and benchmark.
"""
from .pipeline import WSIConfig, run_slide
from .plan import Canvas, make_canvas
from .reader import Slide, open_slide

__all__ = ["open_slide", "Slide", "Canvas", "make_canvas", "WSIConfig", "run_slide"]
