"""Array helpers shared by the time-series families (pure ``jax.numpy``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def align_to_first_observation(values: jax.Array, mask: jax.Array, context: int, multiple: int = 1):
    """Shift every row left so that its first observed point among the first ``context``
    positions lands at position 0 (rounded down to a multiple of ``multiple``, e.g. a patch);
    the positions freed at the end get mask 0 and value 0.

    ``values, mask [batch, seq(, C)]``. Windows then always start with data and end with
    padding, the layout of the official Time-MoE pipeline: under causal attention no observed
    position ever attends to a padded one, and padded positions carry no loss, so no gradient
    reaches them. (Leading padding is harmful: padded inputs are exactly 0, the residual stream
    there stays exactly 0 through every layer, each RMSNorm multiplies the gradient flowing
    into it by ``1/sqrt(eps)``, and that gradient -- only the value bias collects it, every
    weight gradient being multiplied by a zero activation -- grows geometrically with depth.)
    """
    s = values.shape[1]
    observed = mask[:, :context]
    observed = observed.reshape(observed.shape[0], observed.shape[1], -1).max(-1) > 0
    first = jnp.argmax(observed, axis=1).astype(jnp.int32)  # 0 when nothing is observed
    first = (first // multiple) * multiple
    idx = jnp.arange(s, dtype=jnp.int32)[None, :] + first[:, None]
    inside = idx < s
    idx = jnp.minimum(idx, s - 1)

    def take(a):
        i = idx.reshape(idx.shape + (1,) * (a.ndim - 2))
        out = jnp.take_along_axis(a, jnp.broadcast_to(i, idx.shape + a.shape[2:]), axis=1)
        return jnp.where(inside.reshape(i.shape), out, 0)

    return take(values), take(mask)
