"""Training loop, schedules, post-processing and adversarial training."""

from .config import TrainConfig, build_train_config
from .finetune import finetune
from .loop import TrainingDiverged, batch_indices, evaluate, fgsm_perturb, learning_rate, step_loss, train

__all__ = ["TrainConfig", "TrainingDiverged", "batch_indices", "build_train_config", "evaluate", "fgsm_perturb",
           "finetune", "learning_rate", "step_loss", "train"]
