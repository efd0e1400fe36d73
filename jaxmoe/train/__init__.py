"""Training: optimizer, jitted step, loop, checkpoints, metrics.

``jaxmoe.train.train(config)`` runs a whole training job (see :mod:`jaxmoe.train.loop`).
"""

from jaxmoe.train.loop import TrainingError, train
from jaxmoe.train.state import abstract_train_state

__all__ = ["train", "abstract_train_state", "TrainingError"]
