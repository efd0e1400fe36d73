"""Decoder-only MoE language model (DeepSeekMoE / Mixtral / Qwen-MoE / OLMoE family).

Pre-norm blocks ``h += mixer(rmsnorm(h)); h += ffn(rmsnorm(h))`` with a final RMSNorm and
a tied or untied head. Mixers: causal GQA attention (``attn``) or, in hybrid stacks, a
state-space layer (``mamba``, ``diag_ssm``); FFNs: MoE or dense SwiGLU.

Params::

    embed:   {embedding [vocab, embed]}
    groups:  list over scan groups of list over unit positions of stacked block params
             (leading axis "layers"): {mixer_norm, mixer, ffn_norm, ffn}
    final_norm: {scale [embed]}
    lm_head: {kernel [embed, vocab]}      (absent when tie_embeddings)
    pregate: the router's pre-gating network (only routers with a pre-gating hook)

The router is a plug-in (``model.moe.router``, :mod:`jaxmoe.moe.routers`); this module
calls its hooks (pre-gating network, training objective, metrics) and never names one.
Router inputs (expert masks, rank selection, weight overrides, keys, pre-gate logits)
travel as one :class:`~jaxmoe.moe.routers.RouterInputs`.

Public API: :func:`init`, :func:`apply`, :func:`init_cache`, :func:`prefill`,
:func:`decode_step`, :func:`loss_fn`, :func:`param_axes`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

import jax
import jax.numpy as jnp

from jaxmoe.config import check
from jaxmoe.models import blocks, hybrid
from jaxmoe.models.base import TransformerConfig
from jaxmoe.models.stack import Group, LayerKind, compute_dtype, make_groups, scan_group, unbox_params
from jaxmoe.moe.layer import init_moe, moe
from jaxmoe.moe.routers import RouterInputs, get_router
from jaxmoe.nn import attention as attn_lib
from jaxmoe.nn.init import logical_axes, normal, param, split, stack_boxed
from jaxmoe.nn.layers import attend_embedding, embed, init_embedding, init_rmsnorm, init_swiglu, rmsnorm, swiglu
from jaxmoe.nn.rope import RopeScaling
from jaxmoe.parallel.sharding import constrain

if TYPE_CHECKING:
    from jaxmoe.config import Config

MIXER_KINDS = ("attn", "mamba", "diag_ssm")


@dataclasses.dataclass(frozen=True)
class LMConfig(TransformerConfig):
    """Decoder language model (``model.family: lm``): attention options (GQA, biases,
    QK-norm, MLA), the vocabulary and head, and hybrid SSM mixers."""

    data_kind: ClassVar[str] = "text"  # jaxmoe.data.pipelines: packed token sequences

    family: Literal["lm"] = "lm"
    vocab_size: int = 259
    qkv_bias: bool = False
    qk_norm: bool = False
    qk_norm_scope: Literal["head", "full"] = "head"  # RMSNorm per head (Qwen3) or over the whole q/k projection (OLMoE)
    attention_type: Literal["mha", "mla"] = "mha"  # mla: Multi-head Latent Attention (DeepSeek-V2/V3)
    q_lora_rank: int = 0  # MLA: low-rank query compression (0 -> plain query projection)
    kv_lora_rank: int = 64  # MLA: width of the cached key/value latent
    qk_nope_head_dim: int = 32  # MLA: per-head query/key dims without RoPE
    qk_rope_head_dim: int = 16  # MLA: per-head query dims (and shared key dims) with RoPE
    v_head_dim: int = 32  # MLA: per-head value dim
    tie_embeddings: bool = False
    layer_pattern: tuple[str, ...] = ()  # hybrid stacks, e.g. ("mamba", "attn"); empty -> all "attn"
    ssm_state_dim: int = 16  # hybrid SSM mixers: Mamba N / diagonal SSM state
    ssm_conv_dim: int = 4
    ssm_expand: int = 2
    rope_scaling: Optional[RopeScaling] = None  # YaRN context extension (jaxmoe.nn.rope), e.g. DeepSeek-V3

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        m = self
        if m.rope_scaling is not None:
            m.rope_scaling.validate()
        check(m.vocab_size > 0, f"model.vocab_size must be positive, got {m.vocab_size}.")
        if m.attention_type == "mla":
            check(m.kv_lora_rank > 0 and m.v_head_dim > 0 and m.qk_nope_head_dim >= 0 and m.q_lora_rank >= 0,
                  "model.kv_lora_rank and model.v_head_dim must be positive, model.qk_nope_head_dim and "
                  "model.q_lora_rank >= 0 (0 = plain query projection) for attention_type=mla.")
            check(m.qk_rope_head_dim > 0 and m.qk_rope_head_dim % 2 == 0,
                  f"model.qk_rope_head_dim={m.qk_rope_head_dim} must be positive and even for attention_type=mla.")
        for kind in m.layer_pattern:
            check(kind in MIXER_KINDS,
                  f"model.layer_pattern entry {kind!r} is not valid; choose from {', '.join(MIXER_KINDS)}.")


def layer_kinds(m: LMConfig) -> list[LayerKind]:
    """Per layer ``(mixer, ffn)``: mixer in {attn, mamba, diag_ssm}; ffn in {moe, dense}."""
    pattern = m.layer_pattern or ("attn",)
    out = []
    for i in range(m.num_layers):
        mixer = pattern[i % len(pattern)]
        is_moe = i >= m.moe.first_k_dense and (i + 1 - m.moe.first_k_dense) % m.moe.moe_every == 0
        out.append((mixer, "moe" if is_moe else "dense"))
    return out


def groups(cfg: LMConfig) -> list[Group]:
    return make_groups(layer_kinds(cfg), cfg.moe.first_k_dense, len(cfg.layer_pattern or ("attn",)), cfg.moe.moe_every)


def moe_layer_indices(cfg: LMConfig) -> list[int]:
    return [i for i, (_, ffn) in enumerate(layer_kinds(cfg)) if ffn == "moe"]


# ------------------------------------------------------------------------------ init


def _init_mixer(key, kind: str, cfg: LMConfig):
    if kind == "attn" and cfg.attention_type == "mla":
        from jaxmoe.nn import mla

        return mla.init_mla(key, cfg.embed_dim, cfg.num_heads, q_lora_rank=cfg.q_lora_rank,
                            kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
                            qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, std=cfg.init_std)
    if kind == "attn":
        return attn_lib.init_attention(key, cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_size,
                                       qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, std=cfg.init_std,
                                       qk_norm_full=cfg.qk_norm_scope == "full")
    return hybrid.init_ssm_mixer(key, kind, cfg)


def _init_block(key, kind, cfg: LMConfig):
    mixer, ffn = kind
    k = split(key, ["mixer", "ffn"])
    if ffn == "moe":
        ffn_params = init_moe(k["ffn"], cfg.embed_dim, cfg.moe, cfg.init_std)
    else:
        ffn_params = init_swiglu(k["ffn"], cfg.embed_dim, cfg.moe.dense_ffn_dim or 4 * cfg.embed_dim, cfg.init_std)
    return blocks.init_block(_init_mixer(k["mixer"], mixer, cfg), ffn_params, cfg.embed_dim)


def init_boxed(key, cfg: LMConfig) -> dict:
    """Params with their logical axes (``Boxed`` leaves)."""
    k = split(key, ["embed", "groups", "head"])
    p = {"embed": init_embedding(k["embed"], cfg.vocab_size, cfg.embed_dim, cfg.init_std)}
    gkeys = jax.random.split(k["groups"], max(1, len(groups(cfg))))
    p["groups"] = []
    for g, gk in zip(groups(cfg), gkeys):
        pos_keys = jax.random.split(gk, len(g.unit))
        p["groups"].append([
            stack_boxed(lambda kk, kind=kind: _init_block(kk, kind, cfg), pk, g.repeats)
            for kind, pk in zip(g.unit, pos_keys)
        ])
    p["final_norm"] = init_rmsnorm(cfg.embed_dim)
    router = get_router(cfg.moe.router)
    if router.has_pregate:  # the router's pre-gating network (own key: other params unchanged)
        p["pregate"] = router.init_pregate(jax.random.fold_in(key, 0x5EAD), cfg)
    if not cfg.tie_embeddings:
        p["lm_head"] = {"kernel": param(k["head"], (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"),
                                        normal(cfg.init_std))}
    return p


def init(key, cfg: LMConfig) -> dict:
    """Random fp32 params (nested dicts/lists of arrays)."""
    return unbox_params(init_boxed(key, cfg), cfg.param_dtype)


def param_axes(cfg: LMConfig) -> Any:
    """Logical axis names of every param (same tree structure as :func:`init`)."""
    return logical_axes(init_boxed, jax.random.PRNGKey(0), cfg)


# ----------------------------------------------------------------------------- cache


def init_cache(cfg: LMConfig, batch: int, max_len: int | None = None, dtype=None) -> dict:
    """Decode cache: ``{"index": int32, "groups": [[per-position stacked layer caches]]}``.

    Attention layers hold ``k, v [layers, batch, max_len, kv_heads, head_dim]`` (MLA layers:
    ``c_kv [layers, batch, max_len, kv_lora_rank]``, ``k_pe [.., qk_rope_head_dim]``); SSM
    layers hold their recurrent states.
    """
    max_len = max_len or cfg.max_seq_len
    dtype = dtype or compute_dtype(cfg)
    out = []
    for g in groups(cfg):
        row = []
        for mixer, _ in g.unit:
            if mixer == "attn" and cfg.attention_type == "mla":
                from jaxmoe.nn import mla

                one = mla.init_mla_cache(batch, max_len, cfg.kv_lora_rank, cfg.qk_rope_head_dim, dtype)
            elif mixer == "attn":
                one = attn_lib.init_kv_cache(batch, max_len, cfg.kv_heads, cfg.head_size, dtype)
            else:
                one = hybrid.init_ssm_state(mixer, cfg, batch)
            row.append(blocks.stack_layers(one, g.repeats))
        out.append(row)
    cache = {"index": jnp.zeros((), jnp.int32), "groups": out}
    router = get_router(cfg.moe.router)
    if router.has_pregate:  # the pre-gating network's own small cache
        cache["pregate"] = router.init_pregate_cache(cfg, batch, max_len, dtype)
    return cache


# --------------------------------------------------------------------------- forward


def _mixer(kind: str, cfg: LMConfig, positions, layer_cache, cache_index) -> blocks.Mixer:
    if kind == "attn" and cfg.attention_type == "mla":
        from jaxmoe.nn import mla

        return lambda p, x: mla.mla(p, x, positions, rope_theta=cfg.rope_theta, cache=layer_cache,
                                    cache_index=cache_index, impl=cfg.attention_impl, rope_scaling=cfg.rope_scaling)
    if kind == "attn":
        return blocks.attention_mixer(cfg, positions, layer_cache, cache_index, rope_scaling=cfg.rope_scaling)
    return lambda p, x: hybrid.ssm_mixer(p, x, kind, cfg, layer_cache)


def _block(p, h, kind, cfg: LMConfig, positions, layer_cache, cache_index, inputs: RouterInputs):
    mixer, ffn = kind
    if ffn == "moe":
        ffn_fn = lambda fp, x: moe(fp, x, cfg.moe, inputs=inputs)  # noqa: E731
    else:
        ffn_fn = lambda fp, x: (swiglu(fp, x), None)  # noqa: E731
    h, new_cache, aux = blocks.block(p, h, _mixer(mixer, cfg, positions, layer_cache, cache_index), ffn_fn,
                                     cfg.norm_eps)
    return constrain(h, ("batch", "seq", "embed")), new_cache, aux  # no-op without a multi-device mesh


def forward(params, tokens: jax.Array, cfg: LMConfig, *, cache: dict | None = None,
            inputs: RouterInputs | None = None, return_hidden: bool = False):
    """Core forward pass.

    Args:
      tokens: ``[batch, seq]`` int32.
      cache: optional decode cache (:func:`init_cache`); tokens are written at
        ``cache["index"]`` and the index advances by ``seq``.
      inputs: router inputs of the whole model (:class:`~jaxmoe.moe.routers.RouterInputs`):
        ``expert_mask`` / ``force_mask [num_layers, num_experts]`` bool (False in
        expert_mask disables an expert; True in force_mask forces it); ``rng`` (split into
        one key per layer, for random routers); ``rank_select`` (use only the expert
        ranked ``r`` in every MoE layer: contrastive decoding's weak routing); ``weight_override
        [num_layers, batch, seq, num_experts]`` router scores replacing the router's where
        ``override_mask [num_layers, batch, seq]`` is True (re-mixing); ``pregate_logits [batch,
        seq, num_experts]`` computed ahead by the router's pre-gating network (by default
        the pre-gate runs here, with its own cache in ``cache["pregate"]``; given logits
        leave that cache entry as it is); ``return_probs``: also return ``aux["probs"]
        [moe_layers, batch*seq, num_experts]``.
      return_hidden: also return ``aux["hidden"]`` (final normed hidden states).
    Returns ``(logits [batch, seq, vocab] fp32, aux, new_cache)``; aux has ``aux_loss``,
    ``balance_loss``, ``load [moe_layers, experts]``, ``dropped_frac``, ``expert_ids
    [moe_layers, batch*seq, k]`` (and ``hidden`` if requested).
    """
    dt = compute_dtype(cfg)
    b, s = tokens.shape
    index, positions = blocks.positions(cache, b, s)
    h = embed(params["embed"], tokens, dt)
    inputs = RouterInputs() if inputs is None else inputs
    router = get_router(cfg.moe.router)
    new_pregate = cache.get("pregate") if cache is not None else None
    if router.has_pregate and inputs.pregate_logits is None:  # the router's pre-gating hook
        pregate_logits, new_pregate = router.pregate(params["pregate"], tokens, cfg, cache=new_pregate, index=index)
        inputs = inputs.replace(pregate_logits=pregate_logits)
    stacked = inputs.stack(cfg.num_layers, b * s)  # per-layer fields [num_layers, ...], tokens flattened
    new_groups = []
    moe_aux = []  # (layer indices, stacked aux) per MoE unit position
    for gi, g in enumerate(groups(cfg)):
        gparams = params["groups"][gi]
        gcache = cache["groups"][gi] if cache is not None else [None] * len(g.unit)
        layer_inputs = [stacked.take_layers(g.layer_indices(j)) for j in range(len(g.unit))]

        def body(h, xs, g=g):
            lp, lc, li = xs
            new_c, auxes = [], []
            for j, kind in enumerate(g.unit):
                h, c, a = _block(lp[j], h, kind, cfg, positions, lc[j], index, li[j].join(stacked))
                new_c.append(c)
                auxes.append(a)
            return h, (new_c, auxes)

        h, (gc, gaux) = scan_group(body, h, (gparams, gcache, layer_inputs), cfg.remat)
        new_groups.append(gc)
        for j, (_, ffn) in enumerate(g.unit):
            if ffn == "moe":
                moe_aux.append((g.layer_indices(j), gaux[j]))
    h = rmsnorm(params["final_norm"], h, cfg.norm_eps)
    if cfg.tie_embeddings:
        logits = attend_embedding(params["embed"], h)
    else:
        logits = h @ params["lm_head"]["kernel"].astype(dt)
    aux = _collect_aux(moe_aux, cfg)
    if return_hidden:
        aux["hidden"] = h
    new_cache = None
    if cache is not None:
        new_cache = {"index": index + s, "groups": new_groups}
        if new_pregate is not None:
            new_cache["pregate"] = new_pregate
    return logits.astype(jnp.float32), aux, new_cache


def _collect_aux(moe_aux, cfg: LMConfig) -> dict:
    if not moe_aux:
        zero = jnp.float32(0.0)
        return {"aux_loss": zero, "balance_loss": zero, "dropped_frac": zero,
                "load": jnp.zeros((0, cfg.moe.num_experts)), "expert_ids": None}
    order = []
    for idx, a in moe_aux:
        for r, layer in enumerate(idx):
            order.append((layer, jax.tree.map(lambda v, r=r: v[r], a)))
    order.sort(key=lambda t: t[0])
    per_layer = [a for _, a in order]
    stack = lambda key: jnp.stack([a[key] for a in per_layer])
    out = {"aux_loss": stack("aux_loss").sum(), "load": stack("load"), "dropped_frac": stack("dropped_frac").mean(),
           "expert_ids": stack("expert_ids")}
    for key in ("balance_loss", "z_loss") + get_router(cfg.moe.router).loss_names:
        if key in per_layer[0]:
            out[key] = stack(key).mean()
    for key in ("expert_weights", "expert_valid", "active_experts", "probs"):  # per MoE layer
        if key in per_layer[0]:
            out[key] = stack(key)
    return out


def apply(params, tokens: jax.Array, cfg: LMConfig, *, inputs: RouterInputs | None = None,
          return_hidden: bool = False) -> tuple[jax.Array, dict]:
    """Full forward without a cache: ``tokens [batch, seq] -> (logits [batch, seq, vocab], aux)``."""
    logits, aux, _ = forward(params, tokens, cfg, inputs=inputs, return_hidden=return_hidden)
    return logits, aux


def prefill(params, tokens: jax.Array, cfg: LMConfig, cache: dict, *,
            inputs: RouterInputs | None = None) -> tuple[jax.Array, dict]:
    """Run a prompt ``[batch, seq]`` through the model, filling the cache.
    Returns ``(logits [batch, seq, vocab], cache)``."""
    logits, _, cache = forward(params, tokens, cfg, cache=cache, inputs=inputs)
    return logits, cache


def decode_step(params, token: jax.Array, cfg: LMConfig, cache: dict, *,
                inputs: RouterInputs | None = None) -> tuple[jax.Array, dict]:
    """One decoding step: ``token [batch]`` -> ``(logits [batch, vocab], cache)``."""
    logits, _, cache = forward(params, token[:, None], cfg, cache=cache, inputs=inputs)
    return logits[:, 0], cache


# ------------------------------------------------------------------------------- loss


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean next-token cross-entropy in fp32 over positions where ``mask`` is 1."""
    logits = logits.astype(jnp.float32)
    # logsumexp - target logit; the one-hot product fuses into one pass (no log-softmax or
    # scatter-shaped gradient materialised over the vocabulary)
    onehot = targets[..., None].astype(jnp.int32) == jnp.arange(logits.shape[-1], dtype=jnp.int32)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    if mask is None:
        return nll.mean()
    mask = mask.astype(jnp.float32)
    return (nll * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def loss_fn(params, batch: dict, cfg: LMConfig, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """``batch["tokens"] [batch, seq+1]`` -> ``(loss, metrics)``; loss = CE + router aux losses.

    ``rng``: the step's key in training (router jitter, stochastic routers); None in
    evaluation. A router with its own training objective (e.g. two stochastic passes with a
    consistency loss) replaces the single pass."""
    tokens = batch["tokens"]
    x, targets = tokens[:, :-1], tokens[:, 1:]
    mask = batch.get("mask")
    if mask is not None:
        mask = mask[:, 1:]
    router = get_router(cfg.moe.router)
    if router.objective is not None:
        def run(inputs, moe_cfg=None):  # one pass; moe_cfg: another MoE config (e.g. the inference draw)
            return apply(params, x, cfg if moe_cfg is None else dataclasses.replace(cfg, moe=moe_cfg), inputs=inputs)

        return router.objective(run, lambda logits: cross_entropy(logits, targets, mask), mask, cfg.moe, rng)
    inputs = None
    if cfg.moe.router_jitter and rng is not None:  # training: jitter the routers' inputs
        inputs = RouterInputs(jitter_rng=jax.random.fold_in(rng, 0x1177))
    logits, aux = apply(params, x, cfg, inputs=inputs)
    ce = cross_entropy(logits, targets, mask)
    loss = ce + aux["aux_loss"]
    metrics = {"ce": ce, "aux_loss": aux["aux_loss"], "dropped_frac": aux["dropped_frac"]}
    if aux["load"].shape[0]:
        metrics["load"] = aux["load"]
        if "balance_loss" in aux:  # balance_loss: none (e.g. auxiliary-loss-free balancing) has none
            metrics["balance_loss"] = aux["balance_loss"]
        metrics["max_load"] = (aux["load"].max(-1) * cfg.moe.num_experts).mean()
        for name in router.loss_names:  # the router's own losses
            metrics[name] = aux[name]
        if router.variable_experts:  # experts per token vary: report how many are active
            metrics["active_experts"] = aux["active_experts"].mean()
            metrics["active_experts_per_layer"] = aux["active_experts"]
    return loss, metrics


# ------------------------------------------------------------------ after a train step


def post_update(params_before, params_after, metrics: dict, cfg: LMConfig):
    """The routers' own updates after a train step (:meth:`Router.post_update`, e.g.
    DeepSeek-V3 auxiliary-loss-free balancing of the selection bias), from the step's
    ``metrics["load"] [moe_layers, experts]``: each MoE layer's router gets its params
    before the step and its load, and the leaves it returns replace ``params_after``'s.
    Returns ``params_after`` itself when the router updates nothing."""
    router = get_router(cfg.moe.router)
    if not router.updates_after_step(cfg.moe) or "load" not in metrics:
        return params_after
    row = {layer: i for i, layer in enumerate(moe_layer_indices(cfg))}
    out = jax.tree.map(lambda a: a, params_after)  # new containers, same arrays
    for gi, g in enumerate(groups(cfg)):
        for j, (_, ffn) in enumerate(g.unit):
            if ffn != "moe":
                continue
            load = metrics["load"][jnp.asarray([row[layer] for layer in g.layer_indices(j)])]  # [repeats, N]
            before = params_before["groups"][gi][j]["ffn"]["router"]
            new = jax.vmap(lambda p, l: router.post_update(p, {"load": l}, cfg.moe))(before, load)
            out["groups"][gi][j]["ffn"]["router"].update(new)
    return out
