"""The MoE feed-forward layer: ``route -> dispatch -> expert compute -> combine`` + shared experts.

Params::

    router:  the router's params (learned routers: kernel [embed, experts] (+ selection_bias [experts]))
    experts: gate, up [experts, embed, expert_ffn]; down [experts, expert_ffn, embed]
    shared:  SwiGLU of width num_shared_experts * shared_ffn_dim       (optional)
    shared_gate: kernel [embed, 1]  (Qwen2-MoE sigmoid gate)           (optional)
    compressed: e_gate, e_up [experts, embed]; e_down [experts, expert_ffn]  (IA3 vectors of
                compressed experts, init ones; when num_compressed_experts > 0)

The router is a plug-in (``cfg.router`` names one of :mod:`jaxmoe.moe.routers`): it makes
its params, routes, and reports its own losses. Inference-time interventions (masks, rank
selection, weight overrides, ...) travel as one :class:`~jaxmoe.moe.routers.RouterInputs`;
the layer does not fork.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe import expert_parallel, losses
from jaxmoe.moe.dispatch import ENGINES
from jaxmoe.moe.gmm import resolve_backend
from jaxmoe.moe.routers import RouterInputs, Routing, get_router
from jaxmoe.nn.init import normal, ones, param, split
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
        "router": get_router(cfg.router).init(k["router"], embed_dim, cfg, std),
        "experts": init_experts(k["experts"], embed_dim, cfg.num_experts, cfg.expert_ffn_dim, std),
    }
    if cfg.num_shared_experts:
        p["shared"] = init_swiglu(k["shared"], embed_dim, shared_width(cfg), std)
        if cfg.shared_expert_gate:
            p["shared_gate"] = {"kernel": param(k["shared_gate"], (embed_dim, 1), ("embed", None), normal(std))}
    if cfg.num_compressed_experts:
        e, f = cfg.num_experts, cfg.expert_ffn_dim
        p["compressed"] = {"e_gate": param(key, (e, embed_dim), ("expert", "embed"), ones),
                           "e_up": param(key, (e, embed_dim), ("expert", "embed"), ones),
                           "e_down": param(key, (e, f), ("expert", "expert_mlp"), ones)}
    return p


def router_jitter(x: jax.Array, rng: jax.Array, eps: float) -> jax.Array:
    """Switch-Transformer / Mixtral router jitter: ``x [T, embed]`` times multiplicative
    uniform noise in ``[1 - eps, 1 + eps]`` (drawn per element). Only the router reads the
    jittered input; the experts compute on ``x`` itself."""
    noise = jax.random.uniform(rng, x.shape, jnp.float32, 1.0 - eps, 1.0 + eps)
    return (x.astype(jnp.float32) * noise).astype(x.dtype)


def compressed_split(routing: Routing, cfg: MoEConfig, compressed: dict):
    """Compressed experts: the first ``k - n`` routed experts are computed; the last ``n``
    ("auxiliary") are not. Their IA3 triples are averaged with their routing weights
    renormalised among themselves -> ``(main routing, (v_gate [T, D], v_up [T, D],
    v_down [T, F]))``."""
    n = cfg.num_compressed_experts
    k = routing.expert_ids.shape[1]
    aux_ids, aux_w = routing.expert_ids[:, k - n:], routing.weights[:, k - n:].astype(jnp.float32)
    aux_w = aux_w / jnp.maximum(aux_w.sum(-1, keepdims=True), 1e-20)
    mix = lambda table: jnp.einsum("tn,tnd->td", aux_w, jnp.take(table.astype(jnp.float32), aux_ids, axis=0))
    ia3 = (mix(compressed["e_gate"]), mix(compressed["e_up"]), mix(compressed["e_down"]))
    main = routing.replace(expert_ids=routing.expert_ids[:, :k - n], weights=routing.weights[:, :k - n],
                           valid=None if routing.valid is None else routing.valid[:, :k - n])
    return main, ia3


def with_compressed_vectors(params):
    """A copy of ``params`` (any model's tree) in which every MoE layer -- a mapping that
    holds ``experts`` -- without IA3 vectors gets them, all ones (``e_gate``/``e_up``
    ``[..., experts, embed]``, ``e_down [..., experts, expert_ffn]``; leading stacked-layer
    axes kept). With ones the compressed path starts as the plain layer restricted to each
    token's first ``k - n`` experts: fine-tune a pretrained model into compressed experts."""
    if isinstance(params, dict):
        out = {k: with_compressed_vectors(v) for k, v in params.items()}
        experts = params.get("experts")
        if isinstance(experts, dict) and "gate" in experts and "compressed" not in params:
            gate, down = experts["gate"], experts["down"]
            out["compressed"] = {"e_gate": jnp.ones(gate.shape[:-1], gate.dtype),
                                 "e_up": jnp.ones(gate.shape[:-1], gate.dtype),
                                 "e_down": jnp.ones(down.shape[:-1], down.dtype)}
        return out
    if isinstance(params, (list, tuple)):
        return type(params)(with_compressed_vectors(v) for v in params)
    return params


def aux_losses(routing: Routing, cfg: MoEConfig, batch_shape: tuple[int, int],
               num_groups: int | None = None) -> dict[str, jax.Array]:
    """Unweighted router losses and their weighted sum ``aux_loss``. ``num_groups``: expert-
    parallel device groups for the device-level balance loss (default: the active mesh's)."""
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
    groups = expert_parallel.expert_groups() if num_groups is None else num_groups
    if cfg.device_balance_coef and groups > 1:  # DeepSeekMoE device-level balance over expert-parallel groups
        dev = losses.device_balance_loss(routing.probs, routing.expert_ids, n, k, groups, routing.valid)
        out["device_balance_loss"] = dev
        total = total + cfg.device_balance_coef * dev
    for name, (value, coef) in get_router(cfg.router).losses(routing, cfg).items():  # the router's own losses
        out[name] = value
        total = total + coef * value
    out["aux_loss"] = total
    return out


def moe(params, x: jax.Array, cfg: MoEConfig, *, inputs: RouterInputs | None = None,
        routing: Routing | None = None, dispatch: str | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """MoE FFN on ``x [batch, seq, embed]``.

    Returns ``(y [batch, seq, embed], aux)`` where aux holds ``aux_loss`` (weighted sum of
    router losses), ``balance_loss``/``z_loss``/``dynamic_loss`` (unweighted), ``load
    [experts]`` (fraction of assignments per expert), ``dropped_frac``, ``expert_ids
    [batch*seq, k]``, ``expert_weights [batch*seq, k]``, ``expert_valid [batch*seq, k]``,
    ``active_experts`` (mean experts per token), for variable experts per token
    ``computed_rows`` (rows the grouped matmuls computed) and, if ``inputs.return_probs``, ``probs
    [batch*seq, experts]``.

    ``inputs``: this layer's router inputs (``expert_mask``/``force_mask [experts]``, ``rng``,
    ``rank_select``, ``weight_override [batch*seq, experts]`` with ``override_mask
    [batch*seq]``, ``pregate_logits [batch*seq, experts]``, ``return_probs``); an input the
    router does not take is a ValueError. ``jitter_rng`` (training) multiplies the router's
    input by uniform noise in ``[1 - router_jitter, 1 + router_jitter]``. ``routing`` bypasses the router (tests, routing
    computed outside the layer); ``dispatch`` overrides ``cfg.dispatch``.
    """
    b, s, d = x.shape
    xt = x.reshape(b * s, d)
    inputs = RouterInputs() if inputs is None else inputs
    if routing is None:
        x_route = xt
        if cfg.router_jitter and inputs.jitter_rng is not None:  # training only: the router sees jittered inputs
            x_route = router_jitter(xt, inputs.jitter_rng, cfg.router_jitter)
        routing = get_router(cfg.router).route_layer(params, x_route, cfg, inputs.replace(jitter_rng=None), (b, s))
    full_routing = routing
    ia3 = None
    if cfg.num_compressed_experts and inputs.rank_select is None:
        routing, ia3 = compressed_split(routing, cfg, params["compressed"])
    engine_name = dispatch or cfg.dispatch
    try:
        engine = ENGINES[engine_name]
    except KeyError:
        raise ValueError(f"dispatch engine {engine_name!r} is not available; choose one of {', '.join(ENGINES)}.") from None
    extra = {} if ia3 is None else {"ia3": ia3}
    if cfg.expert_activation != "silu":
        extra["activation"] = cfg.expert_activation
    if routing.valid is not None and routing.expert_ids.shape[1] > cfg.experts_per_token:
        # variable experts per token: the grouped matmuls run in chunks of T * experts_per_token
        # sorted rows, and a chunk past the valid assignments is skipped (costs nothing)
        extra["chunk_rows"] = b * s * cfg.experts_per_token
    ep_out = None
    if ia3 is None:  # expert parallelism under a multi-device mesh (jaxmoe.parallel.sharding.use_mesh)
        ep_out = expert_parallel.maybe_expert_parallel(x, routing, params["experts"], cfg, engine_name,
                                                       backend=resolve_backend(cfg.gmm_backend),
                                                       activation=cfg.expert_activation)
    if ep_out is not None:
        y, stats = ep_out
    else:
        y, stats = engine(xt, routing, params["experts"], backend=resolve_backend(cfg.gmm_backend),
                          capacity_factor=cfg.capacity_factor, **extra)
    if "shared" in params:
        ys = swiglu(params["shared"], xt)
        if "shared_gate" in params:
            gate = jax.nn.sigmoid(xt.astype(jnp.float32) @ params["shared_gate"]["kernel"].astype(jnp.float32))
            ys = (ys.astype(jnp.float32) * gate).astype(ys.dtype)
        y = y + ys
    aux = aux_losses(full_routing, cfg, (b, s))
    counts = losses.expert_counts(routing.expert_ids, cfg.num_experts, routing.valid)
    aux["load"] = counts / jnp.maximum(counts.sum(), 1.0)
    aux["dropped_frac"] = stats["dropped_frac"]
    if "computed_rows" in stats:  # rows the grouped matmuls computed (and the rows the buffer holds)
        aux["computed_rows"] = stats["computed_rows"]
    aux["expert_ids"] = routing.expert_ids
    valid = routing.valid if routing.valid is not None else jnp.ones(routing.expert_ids.shape, jnp.bool_)
    aux["expert_weights"] = routing.weights
    aux["expert_valid"] = valid
    aux["active_experts"] = valid.sum(-1).astype(jnp.float32).mean()
    if inputs.return_probs:
        aux["probs"] = full_routing.probs
    return y.reshape(b, s, d), aux
