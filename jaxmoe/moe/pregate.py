"""Read-ME pre-gating router: a small causal network over token ids, decoupled from the backbone.

It reads only the token ids (its own embedding, ``readme_layers`` blocks of causal
attention + SwiGLU MLP with RMSNorm, a final norm and a head to ``num_experts`` logits)
and decides every token's experts *before* the backbone runs; every MoE layer then uses
the same choice (``router: readme`` routes by top-k over these logits). Because the
decision needs nothing but the ids, a serving loop knows the experts of a whole batch up
front (:func:`readme_lookahead`, :func:`group_by_expert`) and can group requests by
expert and prefetch expert weights. In decoding the pre-gate keeps its own small KV cache
(``cache["pregate"]`` of :func:`jaxmoe.models.lm.init_cache`).

Params::

    embed:  {embedding [vocab, readme_dim]}
    blocks: stacked over readme_layers: {attn_norm, attn (q/k/v/o), mlp_norm, mlp (SwiGLU 4x)}
    final_norm: {scale [readme_dim]}
    head:   {kernel [readme_dim, num_experts]}
"""

from __future__ import annotations

from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.config import ModelConfig
from jaxmoe.moe.router import topk_route
from jaxmoe.nn import attention as attn_lib
from jaxmoe.nn.init import normal, param, split, stack_boxed
from jaxmoe.nn.layers import embed, init_embedding, init_rmsnorm, init_swiglu, rmsnorm, swiglu


def _dims(cfg: ModelConfig) -> tuple[int, int, int]:
    d, h = cfg.moe.readme_dim, cfg.moe.readme_heads
    return d, h, d // h


def init_pregate(key, cfg: ModelConfig) -> dict:
    """Boxed params of the pre-gating router network."""
    d, h, hd = _dims(cfg)
    k = split(key, ["embed", "blocks", "head"])

    def block(kk):
        kb = split(kk, ["attn", "mlp"])
        return {"attn_norm": init_rmsnorm(d),
                "attn": attn_lib.init_attention(kb["attn"], d, h, h, hd, std=cfg.init_std),
                "mlp_norm": init_rmsnorm(d), "mlp": init_swiglu(kb["mlp"], d, 4 * d, cfg.init_std)}

    return {"embed": init_embedding(k["embed"], cfg.vocab_size, d, cfg.init_std),
            "blocks": stack_boxed(block, k["blocks"], cfg.moe.readme_layers, "layers"),
            "final_norm": init_rmsnorm(d),
            "head": {"kernel": param(k["head"], (d, cfg.moe.num_experts), ("embed", None), normal(cfg.init_std))}}


def init_pregate_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> dict:
    """``{"k","v": [readme_layers, batch, max_len, readme_heads, head_dim]}``."""
    _, h, hd = _dims(cfg)
    one = attn_lib.init_kv_cache(batch, max_len, h, hd, dtype)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (cfg.moe.readme_layers,) + a.shape), one)


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
    ids = topk_route({}, None, cfg.moe, logits=logits.reshape(b * s, n)).expert_ids.reshape(b, s, -1)
    return ids[..., 0] if ids.shape[-1] == 1 else ids


def readme_lookahead(params, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Expert ids ``[batch, seq]`` of a whole batch, computed from the token ids alone
    before the backbone runs (``params`` are the full LM params)."""
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
