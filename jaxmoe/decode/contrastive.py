"""SCMoE self-contrast decoding ("Unchosen Experts Can Contribute Too").

Each step runs the same model twice with two routings and separate KV caches:

- strong: the normal top-k routing;
- weak: only the expert ranked ``weak_rank`` (0 = top-1; the paper's example uses 2),
  its weight renormalised (the ``rank_select`` router input).

With ``z_s = strong_logits / T_s`` and ``z_w = weak_logits / T_w``::

    cutoff = log(alpha) + max(z_s)
    score  = (1 + beta) * z_s - beta * z_w,   -inf where z_s < cutoff

and the next token is ``argmax(score)`` (or a sample from ``softmax(score / temperature)``).
With ``beta = 0`` this is plain greedy decoding. Prefill and the ``lax.scan`` decode loop
run inside one jitted function; beta, alpha and the temperatures are traced (changing them
does not recompile), ``weak_rank`` and greedy-vs-sampling are static.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.routers import RouterInputs, get_router, router_names


def rank_routers() -> list[str]:
    """The routers that take the ``rank_select`` input (a ranked choice of experts)."""
    return [name for name in router_names() if "rank_select" in get_router(name).inputs]


@dataclasses.dataclass(frozen=True)
class SCMoEConfig:
    beta: float = 0.5
    alpha: float = 0.1
    weak_rank: int = 2
    strong_temperature: float = 1.0
    weak_temperature: float = 1.0
    temperature: float = 0.0  # 0 -> argmax of the score, else sample softmax(score / temperature)


def check(cfg: LMConfig, sc: SCMoEConfig) -> None:
    """Raise ValueError (one sentence) when SCMoE cannot run on this model/settings."""
    if "rank_select" not in get_router(cfg.moe.router).inputs:
        raise ValueError(f"SCMoE needs a ranked router ({', '.join(rank_routers())}); this model uses "
                         f"router {cfg.moe.router!r}.")
    if not 0 <= sc.weak_rank < cfg.moe.num_experts:
        raise ValueError(f"--weak-rank={sc.weak_rank} must be between 0 and num_experts-1={cfg.moe.num_experts - 1}.")
    if not 0.0 < sc.alpha <= 1.0:
        raise ValueError(f"--alpha={sc.alpha} must be in (0, 1].")
    if sc.beta < 0:
        raise ValueError(f"--beta={sc.beta} must be >= 0.")
    if sc.strong_temperature <= 0 or sc.weak_temperature <= 0:
        raise ValueError("the strong and weak temperatures must be positive.")


def scmoe_scores(strong_logits: jax.Array, weak_logits: jax.Array, sc: SCMoEConfig) -> jax.Array:
    """``[batch, vocab]`` logits of the two routings -> contrastive scores (``-inf`` below
    the plausibility cutoff ``log(alpha) + max(z_s)``). ``sc``'s numbers may be traced."""
    z_s = strong_logits.astype(jnp.float32) / sc.strong_temperature
    z_w = weak_logits.astype(jnp.float32) / sc.weak_temperature
    cutoff = jnp.log(jnp.float32(sc.alpha)) + z_s.max(-1, keepdims=True)
    score = (1.0 + sc.beta) * z_s - sc.beta * z_w
    return jnp.where(z_s < cutoff, -jnp.inf, score)


def _pick(score: jax.Array, rng: jax.Array, sc: SCMoEConfig, sample: bool) -> jax.Array:
    if not sample:
        return jnp.argmax(score, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, score / sc.temperature, axis=-1).astype(jnp.int32)


def contrastive_generate(params, prompt: jax.Array, cfg: LMConfig, max_new_tokens: int, rng: jax.Array,
                         sc: SCMoEConfig = SCMoEConfig(), eos_id: int = -1, expert_mask: jax.Array | None = None,
                         force_mask: jax.Array | None = None) -> jax.Array:
    """``prompt [batch, prompt_len]`` -> new tokens ``[batch, max_new_tokens]`` (SCMoE)."""
    check(cfg, sc)
    numbers = tuple(jnp.float32(v) for v in (sc.beta, sc.alpha, sc.strong_temperature, sc.weak_temperature,
                                              max(sc.temperature, 1e-6)))
    return _generate(params, prompt, cfg, max_new_tokens, rng, numbers, sc.weak_rank, sc.temperature > 0.0, eos_id,
                     expert_mask, force_mask)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "weak_rank", "sample", "eos_id"))
def _generate(params, prompt, cfg: LMConfig, max_new_tokens: int, rng, numbers, weak_rank: int, sample: bool,
              eos_id: int, expert_mask, force_mask):
    sc = SCMoEConfig(beta=numbers[0], alpha=numbers[1], weak_rank=weak_rank, strong_temperature=numbers[2],
                     weak_temperature=numbers[3], temperature=numbers[4])  # traced numbers
    b, plen = prompt.shape
    strong_inputs = RouterInputs(expert_mask=expert_mask, force_mask=force_mask)
    weak_inputs = strong_inputs.replace(rank_select=sc.weak_rank)
    strong = lm.init_cache(cfg, b, plen + max_new_tokens)
    weak = lm.init_cache(cfg, b, plen + max_new_tokens)
    ls, strong = lm.prefill(params, prompt, cfg, strong, inputs=strong_inputs)
    lw, weak = lm.prefill(params, prompt, cfg, weak, inputs=weak_inputs)
    first = _pick(scmoe_scores(ls[:, -1], lw[:, -1], sc), jax.random.fold_in(rng, 0), sc, sample)

    def step(carry, i):
        tok, strong, weak, done = carry
        ls, strong = lm.decode_step(params, tok, cfg, strong, inputs=strong_inputs)
        lw, weak = lm.decode_step(params, tok, cfg, weak, inputs=weak_inputs)
        nxt = _pick(scmoe_scores(ls, lw, sc), jax.random.fold_in(rng, i), sc, sample)
        done = done | (tok == eos_id)
        nxt = jnp.where(done, eos_id if eos_id >= 0 else nxt, nxt)
        return (nxt, strong, weak, done), tok

    init = (first, strong, weak, jnp.zeros((b,), jnp.bool_))
    (last, _, _, _), toks = jax.lax.scan(step, init, jnp.arange(1, max_new_tokens))
    return jnp.concatenate([toks.T, last[:, None]], axis=1) if max_new_tokens > 1 else first[:, None]


def contrastive_text(params, cfg: LMConfig, tokenizer, prompt: str, max_new_tokens: int = 64, *,
                     sc: SCMoEConfig = SCMoEConfig(), seed: int = 0, expert_mask=None, force_mask=None) -> str:
    """Encode ``prompt``, decode with SCMoE, return the new text (stopping at eos)."""
    check(cfg, sc)
    ids = tokenizer.encode(prompt) or [tokenizer.bos_id]
    if len(ids) + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"model.max_seq_len={cfg.max_seq_len}.")
    out = contrastive_generate(params, jnp.asarray([ids], jnp.int32), cfg, max_new_tokens, jax.random.PRNGKey(seed),
                               sc, tokenizer.eos_id, expert_mask, force_mask)
    new = [int(t) for t in out[0]]
    if tokenizer.eos_id in new:
        new = new[: new.index(tokenizer.eos_id)]
    return tokenizer.decode(new)
