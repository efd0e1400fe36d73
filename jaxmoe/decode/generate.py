"""Jitted text generation with the KV cache: greedy, temperature, top-k and top-p sampling.

The whole loop runs inside one jitted function: ``prefill`` the prompt, then
``lax.scan`` over ``decode_step``. Sequences that produced ``eos_id`` keep emitting it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxmoe.data.tokenizers import check_token_ids
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.routers import RouterInputs, get_router


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 -> greedy
    top_k: int = 0  # 0 -> off
    top_p: float = 1.0  # 1 -> off


def sample_logits(logits: jax.Array, rng: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """``logits [batch, vocab]`` -> token ids ``[batch]``."""
    if sampling.temperature <= 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        cutoff_idx = jnp.sum(cum - probs < sampling.top_p, axis=-1, keepdims=True) - 1
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "sampling", "eos_id"))
def generate_tokens(params, prompt: jax.Array, cfg: LMConfig, max_new_tokens: int, rng: jax.Array,
                    sampling: SamplingConfig = SamplingConfig(), eos_id: int = -1,
                    expert_mask: jax.Array | None = None, force_mask: jax.Array | None = None) -> jax.Array:
    """``prompt [batch, prompt_len]`` -> new tokens ``[batch, max_new_tokens]``."""
    b, plen = prompt.shape
    cache = lm.init_cache(cfg, b, plen + max_new_tokens)
    router = get_router(cfg.moe.router)
    moe_cfg = router.decode_config(cfg.moe)  # the router's decoding behaviour (e.g. a random draw per token)
    if moe_cfg is not cfg.moe:
        cfg = dataclasses.replace(cfg, moe=moe_cfg)

    def inputs_at(i):  # the router inputs of decoding step i
        return RouterInputs(expert_mask=expert_mask, force_mask=force_mask, rng=router.decode_rng(rng, i, cfg.moe))

    logits, cache = lm.prefill(params, prompt, cfg, cache, inputs=inputs_at(0))
    first = sample_logits(logits[:, -1], jax.random.fold_in(rng, 0), sampling)

    def step(carry, i):
        tok, cache, done = carry
        logits, cache = lm.decode_step(params, tok, cfg, cache, inputs=inputs_at(i))
        nxt = sample_logits(logits, jax.random.fold_in(rng, i), sampling)
        done = done | (tok == eos_id)
        nxt = jnp.where(done, eos_id if eos_id >= 0 else nxt, nxt)
        return (nxt, cache, done), tok

    init = (first, cache, jnp.zeros((b,), jnp.bool_))
    (last, _, _), toks = jax.lax.scan(step, init, jnp.arange(1, max_new_tokens))
    out = jnp.concatenate([toks.T, last[:, None]], axis=1) if max_new_tokens > 1 else first[:, None]
    return out


def generate_text(params, cfg: LMConfig, tokenizer, prompt: str, max_new_tokens: int = 64, *,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                  expert_mask=None, force_mask=None) -> str:
    """Encode ``prompt``, generate, decode the new tokens (stopping at eos)."""
    ids = tokenizer.encode(prompt) or [tokenizer.bos_id]
    check_token_ids(ids, cfg.vocab_size, "the prompt")  # ids past the embedding would give NaN logits
    if len(ids) + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"model.max_seq_len={cfg.max_seq_len}.")
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    out = generate_tokens(params, jnp.asarray([ids], jnp.int32), cfg, max_new_tokens, jax.random.PRNGKey(seed),
                          sampling, tokenizer.eos_id, expert_mask, force_mask)
    new = [int(t) for t in out[0]]
    if tokenizer.eos_id in new:
        new = new[: new.index(tokenizer.eos_id)]
    return tokenizer.decode(new)
