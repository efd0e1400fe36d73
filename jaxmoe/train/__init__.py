"""Training: optimizer, jitted step, loop, checkpoints, metrics.

``jaxmoe.train.train(config)`` runs a whole training job (see :mod:`jaxmoe.train.loop`).
"""

from jaxmoe.train.loop import TrainingError, abstract_train_state, train

__all__ = ["train", "abstract_train_state", "TrainingError"]
