"""Datasets: registry by name, IDX/torchvision loaders, the bundled real MNIST slice."""

from .base import DatasetInfo, ImageDataset
from .registry import DATASETS, data_roots, get_dataset_info, is_dataset, load_dataset, not_found
from .files import absolute_data_spec, is_file_spec, load_file_dataset
from .mnist import bundled_mnist
from .idx import read_idx, write_idx
from . import cifar, digits, imagenet  # noqa: F401  (register cifar10, cifar100, digits, imagenet)
from .cifar import RestrictedUnpickler, UnsafePickleError, read_cifar_batches, safe_unpickle
from .digits import digits_to_mnist_layout
from .fewshot import few_shot
from .imagenet import imagenet_preprocess
from .samples import FOOLBOX_DATASETS, foolbox_samples

__all__ = [
    "DATASETS", "DatasetInfo", "FOOLBOX_DATASETS", "ImageDataset", "RestrictedUnpickler",
    "UnsafePickleError", "absolute_data_spec", "bundled_mnist", "data_roots", "digits_to_mnist_layout", "few_shot",
    "foolbox_samples", "get_dataset_info", "imagenet_preprocess", "is_dataset", "is_file_spec", "load_dataset",
    "load_file_dataset", "not_found",
    "read_cifar_batches", "read_idx", "safe_unpickle", "write_idx",
]
