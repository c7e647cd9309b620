"""Training loop, schedules, post-processing and adversarial training."""

from .config import TrainConfig
from .loop import TrainingDiverged, batch_indices, evaluate, fgsm_perturb, learning_rate, step_loss, train

__all__ = ["TrainConfig", "TrainingDiverged", "batch_indices", "evaluate", "fgsm_perturb", "learning_rate", "step_loss", "train"]
