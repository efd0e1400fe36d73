"""AdamW with linear warmup + cosine decay and global-norm gradient clipping."""

from __future__ import annotations

import jax
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


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    tx = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                     weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx
