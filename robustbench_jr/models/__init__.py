"""Architectures, the pixel-space wrapper and checkpoints."""

from .architectures import ARCHITECTURES, ArchInfo, LeNetPrime, build_model
from .checkpoint import (
    bundled_names, bundled_path, folder_options, is_pretrained_spec, load_checkpoint, load_model, load_state_into, make_model,
    read_card, resolve_checkpoint, save_checkpoint, settle_model,
)
from .formats import ExportedNet, sniff
from .pixel import CUSTOM, NORMALIZATIONS, PixelSpaceModel, normalization_stats
from .sources import ArchSpec, absolute_spec, build_network, is_arch_spec, parse_arch, weights_dir

__all__ = [
    "ARCHITECTURES", "ArchInfo", "ArchSpec", "CUSTOM", "ExportedNet", "LeNetPrime", "NORMALIZATIONS",
    "PixelSpaceModel", "absolute_spec", "build_model", "build_network", "bundled_names", "bundled_path", "folder_options",
    "is_arch_spec", "is_pretrained_spec", "load_checkpoint", "load_model", "load_state_into", "make_model",
    "normalization_stats", "parse_arch", "read_card", "resolve_checkpoint", "save_checkpoint", "settle_model",
    "sniff", "weights_dir",
]
