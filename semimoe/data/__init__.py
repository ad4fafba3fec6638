"""Data: training targets (and, as they land, datasets and the synthetic generator)."""
from .targets import Targets, make_targets  # noqa: F401

__all__ = ["Targets", "make_targets"]
