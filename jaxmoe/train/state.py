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
