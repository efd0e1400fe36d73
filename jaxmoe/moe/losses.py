"""Router auxiliary losses (pure functions of routing tensors).

Notation: T tokens, N routed experts, K experts per token, ``probs [T, N]`` router
probabilities, ``counts [N]`` number of (valid) top-k assignments per expert.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def expert_counts(expert_ids: jax.Array, num_experts: int, valid: jax.Array | None = None) -> jax.Array:
    """``expert_ids [..., K]`` -> assignments per expert ``[num_experts]`` (fp32)."""
    oh = jax.nn.one_hot(expert_ids, num_experts, dtype=jnp.float32)
    if valid is not None:
        oh = oh * valid[..., None].astype(jnp.float32)
    return oh.reshape(-1, num_experts).sum(0)


def expert_balance_loss(probs: jax.Array, expert_ids: jax.Array, num_experts: int, k: int,
                        valid: jax.Array | None = None) -> jax.Array:
    """DeepSeekMoE expert-level balance loss (without its coefficient alpha1).

    ``f_i = N / (K T) * count_i``, ``P_i = mean_t probs[t, i]``, ``L = sum_i f_i P_i``.
    probs ``[T, N]``, expert_ids ``[T, K]``. Equals 1 for perfectly uniform routing.
    """
    t = probs.shape[0]
    f = num_experts / (k * t) * expert_counts(expert_ids, num_experts, valid)
    p = probs.astype(jnp.float32).mean(0)
    return jnp.sum(f * p)


def sequence_balance_loss(probs: jax.Array, expert_ids: jax.Array, num_experts: int, k: int,
                          valid: jax.Array | None = None) -> jax.Array:
    """Sequence-wise variant: f and P per sequence (``probs [B, S, N]``), averaged over B."""
    if valid is None:
        fn = lambda p, e: expert_balance_loss(p, e, num_experts, k)
        return jax.vmap(fn)(probs, expert_ids).mean()
    fn = lambda p, e, v: expert_balance_loss(p, e, num_experts, k, v)
    return jax.vmap(fn)(probs, expert_ids, valid).mean()


def switch_balance_loss(probs: jax.Array, expert_ids: jax.Array, num_experts: int,
                        valid: jax.Array | None = None) -> jax.Array:
    """Switch / Mixtral / Time-MoE form: ``N * sum_i (count_i / T) * P_i`` (not divided by K)."""
    t = probs.shape[0]
    frac = expert_counts(expert_ids, num_experts, valid) / t
    return num_experts * jnp.sum(frac * probs.astype(jnp.float32).mean(0))


def device_balance_loss(probs: jax.Array, expert_ids: jax.Array, num_experts: int, k: int,
                        num_devices: int, valid: jax.Array | None = None) -> jax.Array:
    """DeepSeekMoE device-level balance loss (without alpha2).

    Experts are split into ``num_devices`` contiguous groups (expert-parallel shards):
    ``f'_d = mean_{i in d} f_i``, ``P'_d = sum_{i in d} P_i``, ``L = sum_d f'_d P'_d``.
    """
    if num_experts % num_devices:
        raise ValueError(f"num_devices={num_devices} must divide num_experts={num_experts}.")
    t = probs.shape[0]
    f = num_experts / (k * t) * expert_counts(expert_ids, num_experts, valid)
    p = probs.astype(jnp.float32).mean(0)
    fd = f.reshape(num_devices, -1).mean(1)
    pd = p.reshape(num_devices, -1).sum(1)
    return jnp.sum(fd * pd)


def router_z_loss(logits: jax.Array) -> jax.Array:
    """``mean_t logsumexp(logits_t)^2`` (ST-MoE)."""
    z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(z * z)


def routing_entropy(probs: jax.Array) -> jax.Array:
    """``mean_t -sum_i P_i log P_i`` (the top-p router's dynamic loss)."""
    p = probs.astype(jnp.float32)
    return jnp.mean(-jnp.sum(p * jnp.log(jnp.clip(p, 1e-20)), axis=-1))
