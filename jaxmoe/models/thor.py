"""THOR (stochastic experts) training loss and decoding helpers for the LM.

With ``model.moe.router: thor`` every MoE layer sends the tokens of a forward pass to one
uniformly random expert (:func:`jaxmoe.moe.router.thor_route`). Training runs two passes
with independent draws and adds a consistency regulariser::

    loss = CE_1 + CE_2 + alpha * CR
    CR   = mean over non-pad tokens of 1/2 * sum_v (p1 - p2) (log p1 - log p2)

(the symmetric KL of the two output distributions). The spec writes CR as a *sum* over
tokens next to summed cross-entropies (fairseq's convention); here both CE and CR are
token means, which keeps their ratio. alpha is ``model.moe.thor_consistency_coef``.

Decoding draws per token or per sequence (``model.moe.thor_inference``):
:func:`inference_config` switches the draw and :func:`step_rng` gives the key of a step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxmoe.config import ModelConfig


def consistency_loss(logits1: jax.Array, logits2: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Symmetric KL ``1/2 sum_v (p1 - p2)(log p1 - log p2)`` per token, averaged over the
    tokens where ``mask`` is 1. ``logits [..., vocab]``; ``mask [...]``."""
    lp1 = jax.nn.log_softmax(logits1.astype(jnp.float32), axis=-1)
    lp2 = jax.nn.log_softmax(logits2.astype(jnp.float32), axis=-1)
    per_token = 0.5 * jnp.sum((jnp.exp(lp1) - jnp.exp(lp2)) * (lp1 - lp2), axis=-1)
    if mask is None:
        return per_token.mean()
    mask = mask.astype(jnp.float32)
    return (per_token * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def pass_rngs(rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The keys of the two training passes (independent draws)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    r1, r2 = jax.random.split(rng)
    return r1, r2


def loss_fn(params, batch: dict, cfg: ModelConfig, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Two stochastic passes: ``CE_1 + CE_2 + alpha * CR`` (+ router aux losses, if any)."""
    from jaxmoe.models import lm

    tokens = batch["tokens"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = batch.get("mask")
    if mask is not None:
        mask = mask[:, 1:]
    r1, r2 = pass_rngs(rng)
    logits1, aux1 = lm.apply(params, inputs, cfg, rng=r1)
    logits2, aux2 = lm.apply(params, inputs, cfg, rng=r2)
    ce1 = lm.cross_entropy(logits1, targets, mask)
    ce2 = lm.cross_entropy(logits2, targets, mask)
    cr = consistency_loss(logits1, logits2, mask)
    aux_loss = aux1["aux_loss"] + aux2["aux_loss"]
    loss = ce1 + ce2 + cfg.moe.thor_consistency_coef * cr + aux_loss
    metrics = {"ce": 0.5 * (ce1 + ce2), "ce_1": ce1, "ce_2": ce2, "consistency": cr, "aux_loss": aux_loss,
               "dropped_frac": aux1["dropped_frac"]}
    if aux1["load"].shape[0]:
        metrics["load"] = aux1["load"]
    return loss, metrics


def inference_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with THOR's draw set to ``thor_inference`` (per token or per sequence)."""
    if cfg.moe.router != "thor" or cfg.moe.thor_draw == cfg.moe.thor_inference:
        return cfg
    return dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, thor_draw=cfg.moe.thor_inference))


def step_rng(rng: jax.Array, step, cfg: ModelConfig) -> jax.Array:
    """Router key of decoding step ``step``: per-sequence draws reuse one key (every step
    of a row meets the same experts); per-token draws fold the step in."""
    if cfg.moe.thor_draw == "sequence":
        return rng
    return jax.random.fold_in(rng, step)
