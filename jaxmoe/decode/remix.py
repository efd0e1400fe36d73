"""C3PO: test-time re-mixing of routing weights (critical layers, core experts, collaborative pathways).

A *reference set* holds solved examples: their tokens, the routing weights (router scores
over all experts) of the **last prompt token** in each *critical* MoE layer, their loss and
an embedding. For a test prompt:

1. find its ``k`` nearest reference examples by embedding (Gaussian kernel
   ``K_i = exp(-|e_i - e|^2 / 2h^2)``, ``h`` = median neighbour distance unless given);
2. re-mix its own weights ``w`` of the critical layers, changing only its *core* experts
   (the ``core_experts`` largest weights per layer):

   - ``kernel``: ``w_hat = sum_i K_i w_i / sum_i K_i``, ``w <- a w + (1 - a) w_hat`` with
     ``a`` from a grid chosen to minimise the kernel-weighted loss of the neighbours when
     they run with ``w``;
   - ``ngd`` (neighbourhood gradient descent, the paper's best): ``steps`` normalised
     gradient steps on ``w`` minimising the kernel-weighted neighbours' loss (weights kept
     >= 0; the best iterate by that loss is returned).

3. run the test prompt with the re-mixed weights as a router input
   (``weight_override``/``override_mask`` of :func:`jaxmoe.models.lm.forward`): they replace
   the router scores of the last prompt token in the critical layers only; every other
   layer and token routes as usual.

Defaults follow the paper scaled to the model: the last ``round(5/16)`` of the MoE layers
are critical and ``round(20/64)`` of the experts (at least ``experts_per_token``) are core.

Examples are ``(prompt_ids, answer_ids)`` pairs; the loss of an example is the mean
cross-entropy of its answer tokens given the prompt.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.routers import RouterInputs, get_router, router_names

Example = tuple[Sequence[int], Sequence[int]]  # (prompt ids, answer ids)


@dataclasses.dataclass(frozen=True)
class RemixConfig:
    method: str = "ngd"  # "ngd" | "kernel"
    critical_layers: tuple[int, ...] | None = None  # layer indices of the whole stack; None -> the last 5/16 MoE layers
    core_experts: int | None = None  # None -> round(20/64 * num_experts), at least experts_per_token
    neighbours: int = 3
    bandwidth: float | None = None  # None -> median distance to the neighbours
    steps: int = 10
    lr: float = 0.05  # step length of a normalised gradient step
    alphas: tuple[float, ...] = tuple(i / 10 for i in range(11))
    embedding: str = "hidden"  # "hidden": mean final hidden state of the prompt; "tokens": mean token embedding


def default_critical_layers(cfg: LMConfig) -> tuple[int, ...]:
    layers = lm.moe_layer_indices(cfg)
    n = max(1, round(len(layers) * 5 / 16))
    return tuple(layers[-n:])


def default_core_experts(cfg: LMConfig) -> int:
    return max(cfg.moe.experts_per_token, round(cfg.moe.num_experts * 20 / 64))


def _check(cfg: LMConfig, rcfg: RemixConfig) -> tuple[tuple[int, ...], int]:
    if "weight_override" not in get_router(cfg.moe.router).inputs:
        able = [name for name in router_names() if "weight_override" in get_router(name).inputs]
        raise ValueError(f"C3PO re-mixes router scores; router {cfg.moe.router!r} has none (use {', '.join(able)}).")
    if rcfg.method not in ("ngd", "kernel"):
        raise ValueError(f"method {rcfg.method!r} is not valid; choose ngd or kernel.")
    if rcfg.embedding not in ("hidden", "tokens"):
        raise ValueError(f"embedding {rcfg.embedding!r} is not valid; choose hidden or tokens.")
    crit = tuple(rcfg.critical_layers) if rcfg.critical_layers else default_critical_layers(cfg)
    moe_layers = lm.moe_layer_indices(cfg)
    bad = [c for c in crit if c not in moe_layers]
    if bad:
        raise ValueError(f"critical layer {bad[0]} has no MoE; the MoE layers are {', '.join(map(str, moe_layers))}.")
    core = rcfg.core_experts or default_core_experts(cfg)
    if not 1 <= core <= cfg.moe.num_experts:
        raise ValueError(f"core_experts={core} must be between 1 and num_experts={cfg.moe.num_experts}.")
    return crit, core


# ----------------------------------------------------------------------------- batches


def pack(examples: Sequence[Example], width: int | None = None):
    """``(tokens [n, S], target_mask [n, S-1], pos [n])``: prompt+answer right-padded;
    ``target_mask`` marks the positions that predict answer tokens; ``pos`` is the last
    prompt token (whose routing C3PO re-mixes)."""
    if not examples:
        raise ValueError("no examples given.")
    lengths = [len(p) + len(a) for p, a in examples]
    need = max(lengths)
    width = width or max(2, -(-need // 16) * 16)
    if need > width:
        raise ValueError(f"an example has {need} tokens, more than the width {width}.")
    n = len(examples)
    tokens = np.zeros((n, width), np.int32)
    target = np.zeros((n, width - 1), np.float32)
    pos = np.zeros((n,), np.int32)
    for i, (p, a) in enumerate(examples):
        if not len(p):
            raise ValueError(f"example {i} has an empty prompt.")
        seq = list(p) + list(a)
        tokens[i, :len(seq)] = seq
        target[i, len(p) - 1:len(seq) - 1] = 1.0
        pos[i] = len(p) - 1
    return tokens, target, pos


def _override(cfg: LMConfig, crit: tuple[int, ...], weights: jax.Array, pos: jax.Array, seq: int):
    """Per-example critical-layer weights ``[n, Lc, N]`` at ``pos [n]`` -> the
    ``weight_override [layers, n, seq, N]`` and ``override_mask [layers, n, seq]`` inputs."""
    n, _, num_experts = weights.shape
    at = jax.nn.one_hot(pos, seq, dtype=jnp.bool_)  # [n, seq]
    rows = jnp.zeros((cfg.num_layers, n, num_experts), jnp.float32).at[jnp.asarray(crit)].set(
        weights.transpose(1, 0, 2).astype(jnp.float32))
    override = jnp.broadcast_to(rows[:, :, None, :], (cfg.num_layers, n, seq, num_experts))
    layer_on = jnp.zeros((cfg.num_layers,), jnp.bool_).at[jnp.asarray(crit)].set(True)
    return override, layer_on[:, None, None] & at[None]


@functools.partial(jax.jit, static_argnames=("cfg", "crit"))
def example_stats(params, cfg: LMConfig, tokens, target_mask, pos, weights=None, crit: tuple[int, ...] = ()):
    """Per-example answer loss ``[n]`` and whether teacher-forced greedy decoding gets every
    answer token right ``[n]``; with ``weights [n, Lc, N]`` the critical layers' routing
    scores of the last prompt token are replaced by them."""
    inputs = None
    if weights is not None:
        override, mask = _override(cfg, crit, weights, pos, tokens.shape[1] - 1)
        inputs = RouterInputs(weight_override=override, override_mask=mask)
    logits, _ = lm.apply(params, tokens[:, :-1], cfg, inputs=inputs)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    loss = (nll * target_mask).sum(1) / jnp.maximum(target_mask.sum(1), 1.0)
    right = (jnp.argmax(logits, -1) == tokens[:, 1:]) | (target_mask == 0)
    return loss, right.all(1)


def example_losses(params, cfg: LMConfig, tokens, target_mask, pos, weights=None, crit: tuple[int, ...] = ()):
    """Per-example answer loss ``[n]`` (see :func:`example_stats`)."""
    return example_stats(params, cfg, tokens, target_mask, pos, weights, crit)[0]


@functools.partial(jax.jit, static_argnames=("cfg", "crit", "embedding"))
def routing_and_embedding(params, cfg: LMConfig, tokens, pos, crit: tuple[int, ...], embedding: str = "hidden"):
    """Router scores of the last prompt token in the critical layers ``[n, Lc, N]`` and
    the prompt embedding ``[n, D]``."""
    _, aux = lm.apply(params, tokens, cfg, inputs=RouterInputs(return_probs=True), return_hidden=True)
    n, s = tokens.shape
    moe_layers = lm.moe_layer_indices(cfg)
    rows = jnp.asarray([moe_layers.index(c) for c in crit])
    probs = aux["probs"][rows].reshape(len(crit), n, s, -1)  # [Lc, n, s, N]
    w = jnp.take_along_axis(probs, pos[None, :, None, None], axis=2)[:, :, 0].transpose(1, 0, 2)
    prompt = (jnp.arange(s)[None, :] <= pos[:, None]).astype(jnp.float32)  # [n, s]
    if embedding == "hidden":
        feats = aux["hidden"].astype(jnp.float32)
    else:
        feats = jnp.take(params["embed"]["embedding"], tokens, axis=0).astype(jnp.float32)
    emb = (feats * prompt[..., None]).sum(1) / prompt.sum(1, keepdims=True)
    return w, emb


@dataclasses.dataclass
class ReferenceSet:
    """Solved examples with their critical-layer routing weights, losses and embeddings."""

    tokens: np.ndarray  # [n, S]
    target_mask: np.ndarray  # [n, S-1]
    pos: np.ndarray  # [n]
    weights: np.ndarray  # [n, Lc, N]
    losses: np.ndarray  # [n]
    embeddings: np.ndarray  # [n, D]
    solved: np.ndarray  # [n] bool: with its weights, teacher-forced greedy decoding gets the answer
    critical_layers: tuple[int, ...]

    def save(self, path) -> None:
        np.savez(path, **{f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)})

    @classmethod
    def load(cls, path) -> "ReferenceSet":
        d = np.load(path)
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls)}
        kw["critical_layers"] = tuple(int(c) for c in kw["critical_layers"])
        return cls(**kw)

    def subset(self, keep) -> "ReferenceSet":
        keep = np.asarray(keep)
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)
                                            if f.name != "critical_layers"})


def build_reference(params, cfg: LMConfig, examples: Sequence[Example], *, rcfg: RemixConfig = RemixConfig(),
                    weights: np.ndarray | None = None, width: int | None = None) -> ReferenceSet:
    """Reference set from ``examples``. ``weights [n, Lc, N]`` gives known-good routing
    weights of the critical layers (the model's own when None); losses and ``solved`` are
    computed with those weights. Keep only solved examples with ``ref.subset(ref.solved)``."""
    crit, _ = _check(cfg, rcfg)
    tokens, target, pos = pack(examples, width)
    w, emb = routing_and_embedding(params, cfg, jnp.asarray(tokens), jnp.asarray(pos), crit, rcfg.embedding)
    if weights is not None:
        weights = np.asarray(weights, np.float32)
        if weights.shape != tuple(w.shape):
            raise ValueError(f"weights must have shape {tuple(w.shape)} (examples, critical layers, experts), got "
                             f"{weights.shape}.")
        w = jnp.asarray(weights)
    losses, solved = example_stats(params, cfg, jnp.asarray(tokens), jnp.asarray(target), jnp.asarray(pos), w, crit)
    return ReferenceSet(tokens, target, pos, np.asarray(w), np.asarray(losses), np.asarray(emb), np.asarray(solved),
                        crit)


# ------------------------------------------------------------------------------ re-mix


@dataclasses.dataclass
class RemixResult:
    weights: np.ndarray  # [Lc, N] re-mixed critical-layer weights of the test prompt
    original: np.ndarray  # [Lc, N] its own weights
    neighbours: np.ndarray  # [k] reference indices
    kernel: np.ndarray  # [k] kernel weights
    neighbour_loss_before: float
    neighbour_loss_after: float
    alpha: float | None = None  # kernel method: the chosen mixing coefficient
    critical_layers: tuple[int, ...] = ()


def _core_mask(w: np.ndarray, core: int) -> np.ndarray:
    """``[Lc, N]`` True at the ``core`` largest weights of each layer."""
    idx = np.argsort(-w, axis=-1, kind="stable")[:, :core]
    mask = np.zeros_like(w, bool)
    np.put_along_axis(mask, idx, True, axis=-1)
    return mask


def _objective(w, params, cfg: LMConfig, tokens, target, pos, kernel, crit):
    """Kernel-weighted mean answer loss of the neighbours, all running with weights ``w``."""
    n = tokens.shape[0]
    losses = example_losses(params, cfg, tokens, target, pos, jnp.broadcast_to(w, (n,) + w.shape), crit)
    return (kernel * losses).sum() / kernel.sum()


# one compiled program serves both methods (kernel regression only reads the value)
_neighbour_grad = jax.jit(jax.value_and_grad(_objective), static_argnames=("cfg", "crit"))


def remix(params, cfg: LMConfig, reference: ReferenceSet, prompt: Sequence[int], *,
          rcfg: RemixConfig = RemixConfig()) -> RemixResult:
    """Re-mix the critical-layer routing weights of one test ``prompt`` (token ids)."""
    crit, core = _check(cfg, rcfg)
    if tuple(reference.critical_layers) != crit:
        raise ValueError(f"the reference set was built for critical layers {list(reference.critical_layers)}, "
                         f"not {list(crit)}.")
    if len(reference.losses) == 0:
        raise ValueError("the reference set is empty.")
    tokens, _, pos = pack([(prompt, [])])
    w0, emb = routing_and_embedding(params, cfg, jnp.asarray(tokens), jnp.asarray(pos), crit, rcfg.embedding)
    w0, emb = np.asarray(w0[0]), np.asarray(emb[0])
    dist = np.linalg.norm(reference.embeddings - emb[None], axis=-1)
    k = min(rcfg.neighbours, len(dist))
    nb = np.argsort(dist, kind="stable")[:k]
    h = rcfg.bandwidth or max(float(np.median(dist[nb])), 1e-6)
    kernel = np.exp(-dist[nb] ** 2 / (2 * h * h)).astype(np.float32)
    if kernel.sum() <= 0:
        kernel = np.ones_like(kernel)
    args = (params, cfg, jnp.asarray(reference.tokens[nb]), jnp.asarray(reference.target_mask[nb]),
            jnp.asarray(reference.pos[nb]), jnp.asarray(kernel), crit)
    objective = lambda w: float(_neighbour_grad(jnp.asarray(w, jnp.float32), *args)[0])
    core_mask = _core_mask(w0, core)
    before = objective(w0)
    alpha = None
    if rcfg.method == "kernel":
        w_hat = (kernel[:, None, None] * reference.weights[nb]).sum(0) / kernel.sum()
        best = (before, 1.0, w0)
        for a in rcfg.alphas:
            cand = np.where(core_mask, a * w0 + (1 - a) * w_hat, w0).astype(np.float32)
            val = objective(cand)
            if val < best[0]:
                best = (val, float(a), cand)
        after, alpha, w = best
    else:
        w = jnp.asarray(w0, jnp.float32)
        mask = jnp.asarray(core_mask)
        best = (before, w0)
        for _ in range(rcfg.steps):
            val, g = _neighbour_grad(w, *args)
            if float(val) < best[0]:
                best = (float(val), np.asarray(w))
            g = jnp.where(mask, g, 0.0)
            w = jnp.maximum(w - rcfg.lr * g / (jnp.linalg.norm(g) + 1e-12), 0.0)
        val = objective(w)
        if val < best[0]:
            best = (val, np.asarray(w))
        after, w = best
    return RemixResult(np.asarray(w, np.float32), w0, nb, kernel, before, float(after), alpha, crit)


def answer_losses(params, cfg: LMConfig, examples: Sequence[Example],
                  results: Sequence[RemixResult] | None = None) -> np.ndarray:
    """Answer loss ``[n]`` of each example, with its re-mixed weights (``results[i]``)
    or, without ``results``, with the model's own routing."""
    tokens, target, pos = pack(examples)
    w, crit = None, ()
    if results is not None:
        if len(results) != len(examples):
            raise ValueError(f"got {len(results)} re-mix results for {len(examples)} examples.")
        w = jnp.asarray(np.stack([r.weights for r in results]))
        crit = tuple(results[0].critical_layers)
    return np.asarray(example_losses(params, cfg, jnp.asarray(tokens), jnp.asarray(target), jnp.asarray(pos), w, crit))


def generate_remixed(params, cfg: LMConfig, prompt: Sequence[int], max_new_tokens: int,
                     result: RemixResult | None = None) -> list[int]:
    """Greedy continuation of ``prompt`` whose last prompt token routes with the re-mixed
    weights (the rest routes as usual)."""
    if len(prompt) + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"model.max_seq_len={cfg.max_seq_len}.")
    return [int(t) for t in _greedy(params, cfg, jnp.asarray([list(prompt)], jnp.int32), max_new_tokens,
                                    None if result is None else jnp.asarray(result.weights[None]),
                                    () if result is None else tuple(result.critical_layers))[0]]


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "crit"))
def _greedy(params, cfg: LMConfig, prompt, max_new_tokens: int, weights, crit):
    b, plen = prompt.shape
    cache = lm.init_cache(cfg, b, plen + max_new_tokens)
    inputs = None
    if weights is not None:
        override, mask = _override(cfg, crit, weights, jnp.full((b,), plen - 1), plen)
        inputs = RouterInputs(weight_override=override, override_mask=mask)
    logits, cache = lm.prefill(params, prompt, cfg, cache, inputs=inputs)
    first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)

    def step(carry, _):
        tok, cache = carry
        logits, cache = lm.decode_step(params, tok, cfg, cache)
        return (jnp.argmax(logits, -1).astype(jnp.int32), cache), tok

    (last, _), toks = jax.lax.scan(step, (first, cache), None, length=max_new_tokens - 1)
    return jnp.concatenate([toks.T, last[:, None]], axis=1)
