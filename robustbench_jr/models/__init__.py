"""Architectures, the pixel-space wrapper and checkpoints."""

from .architectures import ARCHITECTURES, ArchInfo, LeNetPrime, build_model
from .checkpoint import (
    bundled_names, bundled_path, load_checkpoint, load_model, load_state_into, make_model, read_card,
    resolve_checkpoint, save_checkpoint,
)
from .pixel import NORMALIZATIONS, PixelSpaceModel, normalization_stats

__all__ = [
    "ARCHITECTURES", "ArchInfo", "LeNetPrime", "NORMALIZATIONS", "PixelSpaceModel", "build_model",
    "bundled_names", "bundled_path", "load_checkpoint", "load_model", "load_state_into", "make_model",
    "normalization_stats", "read_card", "resolve_checkpoint", "save_checkpoint",
]
