"""AdamW with linear warmup + cosine decay and global-norm gradient clipping.

The global norm is computed without overflow (:func:`safe_global_norm`): a finite gradient
with a huge leaf (say 1e30, whose square overflows float32) gives its true norm, so clipping
scales it correctly instead of turning every update into zero. Only a norm that is itself
not representable, or a non-finite leaf, gives inf/NaN -- and the train step counts that as a
non-finite step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmoe.config import TrainConfig


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup to ``learning_rate``, cosine decay to ``min_lr_ratio * learning_rate``."""
    total = max(cfg.steps, cfg.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if cfg.warmup_steps else cfg.learning_rate,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=total,
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def decay_mask(params):
    """Weight decay on matrices only (not on norms, biases or 1-D vectors), and never on
    fixed ``centroids`` (Moirai-MoE gating: they get no gradient and must not shrink)."""
    def keep(path, p):
        return p.ndim >= 2 and not any(getattr(k, "key", None) == "centroids" for k in path)

    return jax.tree_util.tree_map_with_path(keep, params)


def leaf_max_abs(tree) -> jax.Array:
    """fp32 ``[num_leaves]``: the largest ``|x|`` of every floating leaf (0 for others);
    inf where a leaf holds inf, NaN where it holds NaN."""
    out = []
    for x in jax.tree.leaves(tree):
        if jnp.issubdtype(x.dtype, jnp.inexact) and x.size:
            out.append(jnp.max(jnp.abs(x)).astype(jnp.float32))
        else:
            out.append(jnp.float32(0.0))
    return jnp.stack(out) if out else jnp.zeros((0,), jnp.float32)


def safe_global_norm(tree, leaf_max: jax.Array | None = None) -> jax.Array:
    """``sqrt(sum of squares)`` over every leaf in float32, scaled by the largest ``|x|`` so
    that no square overflows: finite for every finite tree whose norm is below float32's
    maximum (3.4e38). Non-finite leaves give inf/NaN. ``leaf_max`` reuses
    :func:`leaf_max_abs` when the caller has it."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact) and x.size]
    if not leaves:
        return jnp.float32(0.0)
    if leaf_max is None:
        leaf_max = leaf_max_abs(tree)
    top = jnp.max(leaf_max)
    finite_top = jnp.isfinite(top)
    scale = jnp.where(finite_top & (top > 0), top, 1.0)
    # x / scale as two multiplications by 1/sqrt(scale): 1/scale itself is subnormal for
    # scale > 8.5e37 and flushed to zero on some backends
    r = jax.lax.rsqrt(scale)
    total = sum(jnp.sum(jnp.square((x.astype(jnp.float32) * r) * r)) for x in leaves)
    norm = scale * jnp.sqrt(total)
    return jnp.where(finite_top, norm, top)  # inf stays inf, NaN stays NaN


class ClipState(NamedTuple):
    pass


def clip_by_safe_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` with the overflow-free :func:`safe_global_norm`."""

    def init(params):
        del params
        return ClipState()

    def update(updates, state, params=None):
        del params
        norm = safe_global_norm(updates)
        factor = jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1.0), 1.0)
        return jax.tree.map(lambda g: (g * factor.astype(g.dtype)) if jnp.issubdtype(g.dtype, jnp.inexact) else g,
                            updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    tx = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                     weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.grad_clip > 0:
        tx = optax.chain(clip_by_safe_global_norm(cfg.grad_clip), tx)
    return tx
