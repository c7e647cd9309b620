"""Datasets: registry by name, IDX/torchvision loaders, the bundled real MNIST slice."""

from .base import DatasetInfo, ImageDataset
from .registry import DATASETS, data_roots, get_dataset_info, load_dataset
from .mnist import bundled_mnist
from .idx import read_idx, write_idx

__all__ = [
    "DATASETS", "DatasetInfo", "ImageDataset", "bundled_mnist", "data_roots",
    "get_dataset_info", "load_dataset", "read_idx", "write_idx",
]
