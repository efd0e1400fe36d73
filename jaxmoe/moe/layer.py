"""The MoE feed-forward layer: ``route -> dispatch -> expert compute -> combine`` + shared experts.

Params::

    router:  kernel [embed, experts] (+ selection_bias [experts])
    experts: gate, up [experts, embed, expert_ffn]; down [experts, expert_ffn, embed]
    shared:  SwiGLU of width num_shared_experts * shared_ffn_dim       (optional)
    shared_gate: kernel [embed, 1]  (Qwen2-MoE sigmoid gate)           (optional)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxmoe.config import MoEConfig
from jaxmoe.moe import losses
from jaxmoe.moe.dispatch import ENGINES
from jaxmoe.moe.gmm import resolve_backend
from jaxmoe.moe.router import Routing, init_router, route
from jaxmoe.nn.init import normal, param, split
from jaxmoe.nn.layers import init_swiglu, swiglu


def shared_width(cfg: MoEConfig) -> int:
    return cfg.num_shared_experts * (cfg.shared_ffn_dim or cfg.expert_ffn_dim)


def init_experts(key, embed_dim: int, num_experts: int, ffn_dim: int, std: float = 0.02) -> dict:
    k = split(key, ["gate", "up", "down"])
    return {
        "gate": param(k["gate"], (num_experts, embed_dim, ffn_dim), ("expert", "embed", "expert_mlp"), normal(std)),
        "up": param(k["up"], (num_experts, embed_dim, ffn_dim), ("expert", "embed", "expert_mlp"), normal(std)),
        "down": param(k["down"], (num_experts, ffn_dim, embed_dim), ("expert", "expert_mlp", "embed"), normal(std)),
    }


def init_moe(key, embed_dim: int, cfg: MoEConfig, std: float = 0.02) -> dict:
    k = split(key, ["router", "experts", "shared", "shared_gate"])
    p = {
        "router": init_router(k["router"], embed_dim, cfg, std),
        "experts": init_experts(k["experts"], embed_dim, cfg.num_experts, cfg.expert_ffn_dim, std),
    }
    if cfg.num_shared_experts:
        p["shared"] = init_swiglu(k["shared"], embed_dim, shared_width(cfg), std)
        if cfg.shared_expert_gate:
            p["shared_gate"] = {"kernel": param(k["shared_gate"], (embed_dim, 1), ("embed", None), normal(std))}
    return p


def aux_losses(routing: Routing, cfg: MoEConfig, batch_shape: tuple[int, int]) -> dict[str, jax.Array]:
    """Unweighted router losses and their weighted sum ``aux_loss``."""
    n, k = cfg.num_experts, routing.expert_ids.shape[-1]
    out: dict[str, jax.Array] = {}
    total = jnp.float32(0.0)
    if cfg.balance_loss == "expert":
        if cfg.seq_aux:
            b, s = batch_shape
            valid = None if routing.valid is None else routing.valid.reshape(b, s, -1)
            bal = losses.sequence_balance_loss(routing.probs.reshape(b, s, n), routing.expert_ids.reshape(b, s, -1),
                                               n, k, valid)
        else:
            bal = losses.expert_balance_loss(routing.probs, routing.expert_ids, n, k, routing.valid)
        out["balance_loss"] = bal
        total = total + cfg.balance_coef * bal
    elif cfg.balance_loss == "switch":
        bal = losses.switch_balance_loss(routing.probs, routing.expert_ids, n, routing.valid)
        out["balance_loss"] = bal
        total = total + cfg.balance_coef * bal
    if cfg.z_loss_coef:
        z = losses.router_z_loss(routing.logits)
        out["z_loss"] = z
        total = total + cfg.z_loss_coef * z
    out["aux_loss"] = total
    return out


def moe(params, x: jax.Array, cfg: MoEConfig, *, expert_mask: jax.Array | None = None,
        force_mask: jax.Array | None = None, routing: Routing | None = None,
        dispatch: str | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """MoE FFN on ``x [batch, seq, embed]``.

    Returns ``(y [batch, seq, embed], aux)`` where aux holds ``aux_loss`` (weighted sum of
    router losses), ``balance_loss``/``z_loss`` (unweighted), ``load [experts]`` (fraction
    of assignments per expert), ``dropped_frac`` and ``expert_ids [batch*seq, k]``.
    ``routing`` may be given to bypass the router (tests, pre-gated routers).
    """
    b, s, d = x.shape
    xt = x.reshape(b * s, d)
    if routing is None:
        routing = route(params["router"], xt, cfg, expert_mask=expert_mask, force_mask=force_mask)
    engine_name = dispatch or cfg.dispatch
    try:
        engine = ENGINES[engine_name]
    except KeyError:
        raise ValueError(f"dispatch engine {engine_name!r} is not available; choose one of {', '.join(ENGINES)}.") from None
    y, stats = engine(xt, routing, params["experts"], backend=resolve_backend(cfg.gmm_backend),
                      capacity_factor=cfg.capacity_factor)
    if "shared" in params:
        ys = swiglu(params["shared"], xt)
        if "shared_gate" in params:
            gate = jax.nn.sigmoid(xt.astype(jnp.float32) @ params["shared_gate"]["kernel"].astype(jnp.float32))
            ys = (ys.astype(jnp.float32) * gate).astype(ys.dtype)
        y = y + ys
    aux = aux_losses(routing, cfg, (b, s))
    counts = losses.expert_counts(routing.expert_ids, cfg.num_experts, routing.valid)
    aux["load"] = counts / jnp.maximum(counts.sum(), 1.0)
    aux["dropped_frac"] = stats["dropped_frac"]
    aux["expert_ids"] = routing.expert_ids
    return y.reshape(b, s, d), aux
