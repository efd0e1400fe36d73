"""Read-ME pre-gating router (``router: readme``): a small causal network over token ids,
decoupled from the backbone.

The pre-gate reads only the token ids (its own embedding, ``layers`` blocks of causal
attention + SwiGLU MLP with RMSNorm, a final norm and a head to ``num_experts`` logits) and
decides every token's experts *before* the layer stack runs (the router's pre-gating hook);
every MoE layer then routes by top-k over these logits, so there are no per-layer router
params. Because the decision needs nothing but the ids, a serving loop knows the experts of
a whole batch up front (:func:`lookahead`, :func:`group_by_expert`) and can group requests
by expert and prefetch expert weights. In decoding the pre-gate keeps its own small KV cache
(``cache["pregate"]`` of the model cache).

Params (``params["pregate"]`` of the model)::

    embed:  {embedding [vocab, dim]}
    blocks: stacked over layers: {attn_norm, attn (q/k/v/o), mlp_norm, mlp (SwiGLU 4x)}
    final_norm: {scale [dim]}
    head:   {kernel [dim, num_experts]}
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.config import check
from jaxmoe.moe.routers import topk
from jaxmoe.moe.routers.base import Router, RouterOptions, Routing
from jaxmoe.nn import attention as attn_lib
from jaxmoe.nn.init import normal, param, split, stack_boxed
from jaxmoe.nn.layers import embed, init_embedding, init_rmsnorm, init_swiglu, rmsnorm, swiglu

if TYPE_CHECKING:
    from jaxmoe.config import ModelConfig
    from jaxmoe.moe.config import MoEConfig


@dataclasses.dataclass(frozen=True)
class ReadMeOptions(RouterOptions):
    """The pre-gating network: width ``dim``, ``layers`` blocks, ``heads`` attention heads."""

    dim: int = 64
    layers: int = 2
    heads: int = 4

    def validate(self, moe: MoEConfig) -> None:
        check(self.dim > 0 and self.layers >= 1 and self.heads >= 1 and self.dim % self.heads == 0
              and (self.dim // self.heads) % 2 == 0,
              f"model.moe.router_options.heads={self.heads} (router readme) must divide "
              f"model.moe.router_options.dim={self.dim} into an even head size, with layers >= 1.")
        check(not moe.selection_bias and moe.num_groups == 1,
              "model.moe.router=readme shares one expert choice across layers; it cannot use selection_bias "
              "or num_groups > 1.")


def route(params, x: jax.Array, cfg: MoEConfig, *, pregate_logits=None, expert_mask=None, force_mask=None,
          rank_select: int | None = None, weight_override=None, override_mask=None) -> Routing:
    """Top-k over the pre-gate's logits ``pregate_logits [T, N]`` (shared by every layer)."""
    if pregate_logits is None:
        raise ValueError("the readme router needs pregate_logits from the pre-gating network; "
                         "run the model through jaxmoe.models.lm.forward.")
    return topk.route(params, x, cfg, logits=pregate_logits.astype(jnp.float32), expert_mask=expert_mask,
                      force_mask=force_mask, rank_select=rank_select, weight_override=weight_override,
                      override_mask=override_mask)


def _dims(cfg: ModelConfig) -> tuple[int, int, int]:
    opts: ReadMeOptions = cfg.moe.router_options
    return opts.dim, opts.heads, opts.dim // opts.heads


def init_pregate(key, cfg: ModelConfig) -> dict:
    """Boxed params of the pre-gating network (``cfg``: the model config)."""
    d, h, hd = _dims(cfg)
    k = split(key, ["embed", "blocks", "head"])

    def block(kk):
        kb = split(kk, ["attn", "mlp"])
        return {"attn_norm": init_rmsnorm(d),
                "attn": attn_lib.init_attention(kb["attn"], d, h, h, hd, std=cfg.init_std),
                "mlp_norm": init_rmsnorm(d), "mlp": init_swiglu(kb["mlp"], d, 4 * d, cfg.init_std)}

    return {"embed": init_embedding(k["embed"], cfg.vocab_size, d, cfg.init_std),
            "blocks": stack_boxed(block, k["blocks"], cfg.moe.router_options.layers, "layers"),
            "final_norm": init_rmsnorm(d),
            "head": {"kernel": param(k["head"], (d, cfg.moe.num_experts), ("embed", None), normal(cfg.init_std))}}


def init_pregate_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> dict:
    """``{"k","v": [layers, batch, max_len, heads, head_dim]}``."""
    _, h, hd = _dims(cfg)
    one = attn_lib.init_kv_cache(batch, max_len, h, hd, dtype)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (cfg.moe.router_options.layers,) + a.shape), one)


def pregate_forward(params, tokens: jax.Array, cfg: ModelConfig, *, cache: dict | None = None,
                    index: jax.Array | int = 0) -> tuple[jax.Array, dict | None]:
    """``tokens [batch, seq]`` -> ``(router logits [batch, seq, num_experts] fp32, new cache)``.

    With a cache, the tokens sit at positions ``index .. index+seq-1`` (as in the backbone)."""
    b, s = tokens.shape
    index = jnp.asarray(index, jnp.int32)
    positions = jnp.broadcast_to(index + jnp.arange(s, dtype=jnp.int32), (b, s))
    dt = jnp.dtype(cfg.dtype)
    h = embed(params["embed"], tokens, dt)

    def body(h, xs):
        p, c = xs
        y, nc = attn_lib.attention(p["attn"], rmsnorm(p["attn_norm"], h, cfg.norm_eps), positions,
                                   rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps, cache=c, cache_index=index,
                                   impl="xla")
        h = h + y
        h = h + swiglu(p["mlp"], rmsnorm(p["mlp_norm"], h, cfg.norm_eps))
        return h, nc

    h, new_cache = jax.lax.scan(body, h, (params["blocks"], cache))
    h = rmsnorm(params["final_norm"], h, cfg.norm_eps)
    logits = h.astype(jnp.float32) @ params["head"]["kernel"].astype(jnp.float32)
    return logits, new_cache


def ids_from_logits(logits: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The experts the MoE layers pick from pre-gate logits ``[batch, seq, N]`` (the same
    top-k as the ``readme`` router): ``[batch, seq]`` when ``experts_per_token`` is 1,
    else ``[batch, seq, k]``."""
    b, s, n = logits.shape
    ids = topk.route({}, None, cfg.moe, logits=logits.reshape(b * s, n)).expert_ids.reshape(b, s, -1)
    return ids[..., 0] if ids.shape[-1] == 1 else ids


def lookahead(params, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Expert ids ``[batch, seq]`` of a whole batch, computed from the token ids alone
    before the backbone runs (``params`` are the full model params)."""
    if "pregate" not in params:
        raise ValueError("these params have no Read-ME pre-gate; the model needs model.moe.router=readme.")
    logits, _ = pregate_forward(params["pregate"], tokens, cfg)
    return ids_from_logits(logits, cfg)


def group_by_expert(ids) -> dict[int, list[tuple[int, int]]]:
    """Serving helper: ``ids [batch, seq]`` -> ``{expert: [(row, position), ...]}``, i.e.
    which requests need which expert, so they can be batched and the weights prefetched."""
    ids = np.asarray(ids)
    ids = ids[..., None] if ids.ndim == 2 else ids
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for (r, t, _), e in np.ndenumerate(ids):
        if (r, t) not in out[int(e)][-1:]:
            out[int(e)].append((r, t))
    return dict(sorted(out.items()))


class ReadMeRouter(Router):
    name = "readme"
    Options = ReadMeOptions
    learned_kernel = False
    ranked = True
    has_pregate = True
    route = staticmethod(route)

    def init_pregate(self, key, model_cfg):
        return init_pregate(key, model_cfg)

    def init_pregate_cache(self, model_cfg, batch, max_len, dtype):
        return init_pregate_cache(model_cfg, batch, max_len, dtype)

    def pregate(self, params, tokens, model_cfg, *, cache=None, index=0):
        return pregate_forward(params, tokens, model_cfg, cache=cache, index=index)


ROUTER = ReadMeRouter()
