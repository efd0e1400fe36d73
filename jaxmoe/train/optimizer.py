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


def _float_leaves(tree) -> list:
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact) and x.size]


def leaf_sumsq(tree) -> jax.Array:
    """fp32 ``[num_leaves]``: the sum of squares of every leaf (0 for non-float leaves); inf
    where it overflows float32 or the leaf holds inf, NaN where it holds NaN."""
    out = [jnp.sum(jnp.square(x.astype(jnp.float32))) if jnp.issubdtype(x.dtype, jnp.inexact) and x.size
           else jnp.float32(0.0) for x in jax.tree.leaves(tree)]
    return jnp.stack(out) if out else jnp.zeros((0,), jnp.float32)


def _scaled_norm(leaves: list) -> jax.Array:
    """Two passes: the largest ``|x|``, then the sum of squares of ``x / max``: no square
    overflows. ``x / max`` is two multiplications by ``1/sqrt(max)`` (``1/max`` itself is
    subnormal for max > 8.5e37 and flushed to zero on some backends)."""
    top = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in leaves]))
    finite_top = jnp.isfinite(top)
    scale = jnp.where(finite_top & (top > 0), top, 1.0)
    r = jax.lax.rsqrt(scale)
    total = sum(jnp.sum(jnp.square((x.astype(jnp.float32) * r) * r)) for x in leaves)
    return jnp.where(finite_top, scale * jnp.sqrt(total), top)  # inf stays inf, NaN stays NaN


def safe_global_norm(tree, sumsq: jax.Array | None = None) -> jax.Array:
    """``sqrt(sum of squares)`` over every leaf in float32, finite for every finite tree whose
    norm is below float32's maximum (3.4e38). One pass in the common case; only when the plain
    sum of squares is not finite (a huge leaf, or a NaN/inf) a second, scaled computation
    decides between a true norm and inf/NaN. ``sumsq`` reuses :func:`leaf_sumsq`."""
    leaves = _float_leaves(tree)
    if not leaves:
        return jnp.float32(0.0)
    if sumsq is None:
        sumsq = leaf_sumsq(tree)
    total = jnp.sum(sumsq)
    return jax.lax.cond(jnp.isfinite(total), lambda ls: jnp.sqrt(total), _scaled_norm, leaves)


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


class AdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam_low_precision(b1: float, b2: float, eps: float, state_dtype=jnp.bfloat16) -> optax.GradientTransformation:
    """Adam's scaling with both moments *stored* in ``state_dtype`` (computed in float32 and
    rounded once per step): with bfloat16 the optimizer state takes half the memory and
    half the traffic of float32 moments. Same update formula as ``optax.scale_by_adam``."""

    def init(params):
        zeros = lambda p: jnp.zeros(p.shape, state_dtype)
        return AdamState(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        c1 = 1.0 - jnp.asarray(b1, jnp.float32) ** count
        c2 = 1.0 - jnp.asarray(b2, jnp.float32) ** count

        def one(g, m, v):
            g32 = g.astype(jnp.float32)
            m32 = b1 * m.astype(jnp.float32) + (1.0 - b1) * g32
            v32 = b2 * v.astype(jnp.float32) + (1.0 - b2) * g32 * g32
            u = (m32 / c1) / (jnp.sqrt(v32 / c2) + eps)
            return u.astype(g.dtype), m32.astype(state_dtype), v32.astype(state_dtype)

        out = jax.tree.map(one, updates, state.mu, state.nu)
        is_triple = lambda x: isinstance(x, tuple) and len(x) == 3
        pick = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=is_triple)
        return pick(0), AdamState(count, pick(1), pick(2))

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    if cfg.optimizer_state_dtype == "float32":
        tx = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                         weight_decay=cfg.weight_decay, mask=decay_mask)
    else:
        tx = optax.chain(scale_by_adam_low_precision(cfg.b1, cfg.b2, cfg.eps, jnp.dtype(cfg.optimizer_state_dtype)),
                         optax.add_decayed_weights(cfg.weight_decay, decay_mask),
                         optax.scale_by_learning_rate(learning_rate_schedule(cfg)))
    if cfg.grad_clip > 0:
        tx = optax.chain(clip_by_safe_global_norm(cfg.grad_clip), tx)
    return tx
