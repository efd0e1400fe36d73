"""Jitted scoring and greedy generation for language-model evaluation, under every
inference-time method.

Both run on right-padded batches whose widths are bucketed (powers of two from 16), so
a whole evaluation compiles a handful of programs. The model is causal, so padding after
a row's last real token changes nothing before it; eval always uses the dropless dispatch,
so padding tokens never take a real token's expert capacity either.

A :class:`Setup` holds what a method changes, as inputs of one compiled program:

- ``cfg``: the model config (experts per token, top-p threshold, THOR's inference draw);
- ``expert_mask`` / ``force_mask [layers, experts]``: MoTE's switched-off / forced experts;
- ``weak_rank`` + ``beta``/``alpha``/temperatures: SCMoE self-contrast. Likelihoods use the
  contrastive distribution ``log_softmax((1 + beta) z_s - beta z_w)`` over the whole
  vocabulary (the plausibility cutoff is a decoding rule: it would give implausible
  reference tokens an infinite loss); generation uses SCMoE's decoding rule with the cutoff;
- ``crit`` + per-row ``weights [batch, critical layers, experts]`` at ``pos [batch]``: C3PO
  re-mixed routing weights replacing the router scores of one token per row (the last
  context/prompt token) in the critical layers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.decode import contrastive
from jaxmoe.decode.remix import _override
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.routers import RouterInputs, get_router

MIN_WIDTH = 16


@dataclasses.dataclass(frozen=True)
class Setup:
    """A method as inputs of the compiled scoring/generation programs (see the module
    docstring). ``numbers``: SCMoE's ``(beta, alpha, strong_temperature, weak_temperature)``."""

    cfg: LMConfig
    expert_mask: Optional[np.ndarray] = None
    force_mask: Optional[np.ndarray] = None
    weak_rank: Optional[int] = None
    numbers: tuple[float, float, float, float] = (0.0, 0.1, 1.0, 1.0)
    crit: tuple[int, ...] = ()


def bucket(n: int, cap: int) -> int:
    """The smallest power of two >= ``n`` (at least 16), at most ``cap``."""
    return min(cap, max(MIN_WIDTH, 1 << max(0, int(n) - 1).bit_length()))


def _base_inputs(expert_mask, force_mask) -> RouterInputs:
    return RouterInputs(expert_mask=expert_mask, force_mask=force_mask)


def _with_remix(inputs: RouterInputs, cfg: LMConfig, crit, weights, pos, seq: int) -> RouterInputs:
    if weights is None:
        return inputs
    override, mask = _override(cfg, crit, weights, pos, seq)
    return inputs.replace(weight_override=override, override_mask=mask)


@functools.partial(jax.jit, static_argnames=("cfg", "weak_rank", "crit"))
def _logprobs(params, tokens, targets, cfg, expert_mask, force_mask, weak_rank, numbers, crit, weights, pos):
    inputs = _with_remix(_base_inputs(expert_mask, force_mask), cfg, crit, weights, pos, tokens.shape[1])
    logits, _ = lm.apply(params, tokens, cfg, inputs=inputs)
    if weak_rank is None:
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        weak, _ = lm.apply(params, tokens, cfg, inputs=inputs.replace(rank_select=weak_rank))
        beta, _, t_s, t_w = numbers
        logp = jax.nn.log_softmax((1.0 + beta) * logits / t_s - beta * weak / t_w, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def token_logprobs(params, setup: Setup, tokens: np.ndarray, targets: np.ndarray,
                   weights: np.ndarray | None = None, pos: np.ndarray | None = None) -> np.ndarray:
    """``log p(targets | tokens)`` per position ``[batch, seq]`` under ``setup``; ``weights
    [batch, critical layers, experts]`` at ``pos [batch]``: re-mixed routing weights."""
    out = _logprobs(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(targets, jnp.int32), setup.cfg,
                    _opt(setup.expert_mask, jnp.bool_), _opt(setup.force_mask, jnp.bool_), setup.weak_rank,
                    tuple(jnp.float32(v) for v in setup.numbers), setup.crit if weights is not None else (),
                    _opt(weights, jnp.float32), _opt(pos, jnp.int32))
    return np.asarray(out)


def _opt(x, dtype):
    return None if x is None else jnp.asarray(x, dtype)


# --------------------------------------------------------------------------- generation


@functools.partial(jax.jit, static_argnames=("cfg", "prefill_len", "steps", "weak_rank", "crit"))
def _ragged_greedy(params, buf, lengths, cfg, prefill_len: int, steps: int, expert_mask, force_mask, weak_rank,
                   numbers, crit, weights):
    b = buf.shape[0]
    router = get_router(cfg.moe.router)
    key = jax.random.PRNGKey(0)
    base = _base_inputs(expert_mask, force_mask)
    strong = lm.init_cache(cfg, b, prefill_len + steps)
    weak = lm.init_cache(cfg, b, prefill_len + steps) if weak_rank is not None else None
    sc = contrastive.SCMoEConfig(beta=numbers[0], alpha=numbers[1], strong_temperature=numbers[2],
                                 weak_temperature=numbers[3])
    if prefill_len:  # every row's prompt is longer: no row's last prompt token is in here
        prefill_inputs = base.replace(rng=router.decode_rng(key, 0, cfg.moe))
        _, strong = lm.prefill(params, buf[:, :prefill_len], cfg, strong, inputs=prefill_inputs)
        if weak is not None:
            _, weak = lm.prefill(params, buf[:, :prefill_len], cfg, weak,
                                 inputs=prefill_inputs.replace(rank_select=weak_rank))

    def step(carry, t):
        buf, strong, weak = carry
        q = prefill_len + t  # the position every row reads now
        tok = jax.lax.dynamic_index_in_dim(buf, q, axis=1, keepdims=False)
        inputs = base.replace(rng=router.decode_rng(key, t + 1, cfg.moe))
        if weights is not None:  # re-mixed routing at each row's last prompt token
            inputs = _with_remix(inputs, cfg, crit, weights, jnp.where(q == lengths - 1, 0, -1), 1)
        logits, strong = lm.decode_step(params, tok, cfg, strong, inputs=inputs)
        if weak is not None:
            weak_logits, weak = lm.decode_step(params, tok, cfg, weak, inputs=inputs.replace(rank_select=weak_rank))
            logits = contrastive.scmoe_scores(logits, weak_logits, sc)
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        cur = jax.lax.dynamic_index_in_dim(buf, q + 1, axis=1, keepdims=False)
        nxt = jnp.where(q + 1 < lengths, cur, nxt)  # still inside the prompt: keep the prompt token
        buf = jax.lax.dynamic_update_index_in_dim(buf, nxt, q + 1, axis=1)
        return (buf, strong, weak), None

    (buf, _, _), _ = jax.lax.scan(step, (buf, strong, weak), jnp.arange(steps))
    return buf


def greedy_generate(params, setup: Setup, prompts: list[list[int]], max_new_tokens: int,
                    weights: np.ndarray | None = None) -> list[list[int]]:
    """Greedy continuations (``max_new_tokens`` ids each) of one batch of ``prompts`` of
    different lengths, under ``setup`` (SCMoE's decoding rule when it contrasts).

    The batch is prefilled up to the shortest prompt (rounded down to a multiple of 16),
    then every row steps in lockstep: a row still inside its prompt is fed its prompt token
    (so each row's positions and results are exactly those of decoding it alone), after it
    its own greedy choices. ``weights [batch, critical layers, experts]`` re-mix the routing
    of each row's last prompt token."""
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if lengths.min() < 1:
        raise ValueError("a prompt has no tokens.")
    prefill_len = ((int(lengths.min()) - 1) // MIN_WIDTH) * MIN_WIDTH
    need = int(lengths.max()) + max_new_tokens - 1 - prefill_len
    steps = -(-need // MIN_WIDTH) * MIN_WIDTH
    buf = np.zeros((len(prompts), prefill_len + steps + 1), np.int32)
    for i, p in enumerate(prompts):
        buf[i, :len(p)] = p
    out = np.asarray(_ragged_greedy(params, jnp.asarray(buf), jnp.asarray(lengths), setup.cfg, prefill_len, steps,
                                    _opt(setup.expert_mask, jnp.bool_), _opt(setup.force_mask, jnp.bool_),
                                    setup.weak_rank, tuple(jnp.float32(v) for v in setup.numbers),
                                    setup.crit if weights is not None else (), _opt(weights, jnp.float32)))
    return [out[i, n:n + max_new_tokens].tolist() for i, n in enumerate(lengths)]
