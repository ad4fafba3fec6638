"""Data: training targets and the synthetic H&E-like gland dataset."""
from .synthetic import (  # noqa: F401
    SYNTHETIC_MEAN,
    SYNTHETIC_STD,
    SyntheticGlands,
    compute_mean_std,
    make_sample,
    mean_std,
)
from .targets import Targets, make_targets  # noqa: F401

__all__ = ["Targets", "make_targets", "SyntheticGlands", "make_sample", "mean_std",
           "compute_mean_std", "SYNTHETIC_MEAN", "SYNTHETIC_STD"]
