"""K-means of token representations: the centroids of fixed-centroid gating
(:func:`jaxmoe.moe.routers.centroid.centroid_routing`; Moirai-MoE clusters the FFN inputs
of a pretrained model, one set of centroids per layer)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def kmeans(x: jax.Array, k: int, key: jax.Array, iters: int = 25) -> jax.Array:
    """Lloyd's k-means on ``x [n, d]`` (fp32) -> centroids ``[k, d]`` (k-means++-free: k
    distinct random points as the start; an empty cluster keeps its centroid)."""
    x = jnp.asarray(x, jnp.float32)
    c = x[jax.random.choice(key, x.shape[0], (k,), replace=x.shape[0] < k)]

    def step(c, _):
        d2 = jnp.sum(x * x, -1, keepdims=True) - 2.0 * x @ c.T + jnp.sum(c * c, -1)[None]
        onehot = jax.nn.one_hot(jnp.argmin(d2, -1), k, dtype=jnp.float32)
        count = onehot.sum(0)[:, None]
        return jnp.where(count > 0, onehot.T @ x / jnp.maximum(count, 1.0), c), None

    return jax.lax.scan(step, c, None, length=iters)[0]
