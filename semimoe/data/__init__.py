"""Data: the image reader, scale, datasets (synthetic, GlaS, CRAG, folder), splits, augmentation
and training targets."""
from .augment import Augment  # noqa: F401
from .datasets import (  # noqa: F401
    CRAG_MEAN,
    CRAG_STD,
    GLAS_MEAN,
    GLAS_STD,
    DataConfig,
    DataError,
    GlandDataset,
    ImageSet,
    Sample,
    build_datasets,
    build_split_set,
    build_test_dataset,
    load_split,
    make_split,
)
from .io import image_size, read_image, read_mask  # noqa: F401
from .scale import InputSpec, resample_image, resample_mask  # noqa: F401
from .synthetic import (  # noqa: F401
    SYNTHETIC_MEAN,
    SYNTHETIC_STD,
    SyntheticGlands,
    compute_mean_std,
    make_sample,
    mean_std,
)
from .targets import Targets, make_targets  # noqa: F401

__all__ = [
    "Targets", "make_targets",
    "SyntheticGlands", "make_sample", "mean_std", "compute_mean_std", "SYNTHETIC_MEAN",
    "SYNTHETIC_STD",
    "Augment", "DataConfig", "DataError", "GlandDataset", "ImageSet", "Sample", "build_datasets",
    "build_split_set", "build_test_dataset", "image_size", "InputSpec", "resample_image", "resample_mask",
    "load_split", "make_split", "read_image", "read_mask", "GLAS_MEAN", "GLAS_STD", "CRAG_MEAN",
    "CRAG_STD",
]
