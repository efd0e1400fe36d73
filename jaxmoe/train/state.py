"""The training state pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of completed updates
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2] raw PRNG key data
    skipped: jax.Array  # int32 scalar: consecutive skipped (non-finite) steps

    @classmethod
    def create(cls, params, tx, seed: int) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   rng=jax.random.PRNGKey(seed + 1), skipped=jnp.zeros((), jnp.int32))


def abstract_train_state(cfg, task=None, tx=None):
    """Shapes/dtypes of the train state of ``cfg`` (``jax.eval_shape``, nothing allocated)."""
    from jaxmoe.train.optimizer import make_optimizer
    from jaxmoe.train.tasks import make_task

    task = task or make_task(cfg, with_data=False)
    tx = tx or make_optimizer(cfg.train)
    return jax.eval_shape(lambda: TrainState.create(task.init(jax.random.PRNGKey(cfg.train.seed)), tx, cfg.train.seed))
