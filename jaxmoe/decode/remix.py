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
   - ``mode`` (mode finding): mean-shift iterations from ``w`` towards the densest region of
     the reference pathways, ``w_bar = sum_{i in N(w)} K(w_i, w) w_i / sum K(w_i, w)`` with
     ``N(w)`` the ``neighbours`` reference pathways nearest to ``w`` in *pathway* space and a
     Gaussian ``K`` (bandwidth = half the median distance from ``w`` to them), until it
     converges; then ``w <- a w + (1 - a) mode`` with ``a`` chosen as for ``kernel`` (the
     input-space neighbours' loss);
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
cross-entropy of its answer tokens given the prompt. Neighbourhoods use the model's pooled
hidden states (``embedding="hidden"``: the mean final hidden state of the prompt), the mean
token embedding (``"tokens"``) or embeddings the caller supplies (``embeddings=`` of
:func:`build_reference` and :func:`remix`, e.g. from a sentence encoder). The paper's
reference pathways are those of *solved* examples: ``build_reference(..., solved_only=True)``
keeps the examples the model answers with its own routing.
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
    method: str = "ngd"  # "ngd" | "kernel" | "mode"
    critical_layers: tuple[int, ...] | None = None  # layer indices of the whole stack; None -> the last 5/16 MoE layers
    core_experts: int | None = None  # None -> round(20/64 * num_experts), at least experts_per_token
    neighbours: int = 3
    bandwidth: float | None = None  # None -> median distance to the neighbours
    steps: int = 10
    lr: float = 0.05  # step length of a normalised gradient step
    alphas: tuple[float, ...] = tuple(i / 10 for i in range(11))
    embedding: str = "hidden"  # "hidden": mean final hidden state of the prompt; "tokens": mean token embedding
    mode_steps: int = 20  # mode finding: mean-shift iterations


METHODS = ("ngd", "kernel", "mode")


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
    if rcfg.method not in METHODS:
        raise ValueError(f"method {rcfg.method!r} is not valid; choose one of {', '.join(METHODS)}.")
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


def _check_embeddings(embeddings, n: int, what: str) -> np.ndarray:
    e = np.asarray(embeddings, np.float32)
    if e.ndim != 2 or e.shape[0] != n:
        raise ValueError(f"the embeddings of {what} must have shape ({n}, dim), got {e.shape}.")
    if not np.isfinite(e).all():
        raise ValueError(f"the embeddings of {what} hold NaN or inf.")
    return e


def load_embeddings(path, n_reference: int, n_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """``(reference [n_reference, dim], inputs [n_inputs, dim])`` from an ``.npy`` holding
    the reference rows then the input rows, or an ``.npz`` with arrays ``reference`` and
    ``inputs`` (e.g. sentence-encoder embeddings). ValueError (one sentence) otherwise."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"embeddings file '{path}' does not exist.")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one error
        raise ValueError(f"cannot read embeddings from {path}: {e}.") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        if not {"reference", "inputs"} <= set(data.files):
            raise ValueError(f"{path} must hold arrays 'reference' and 'inputs', it holds {', '.join(data.files)}.")
        ref, inp = np.asarray(data["reference"]), np.asarray(data["inputs"])
    else:
        if data.ndim != 2 or data.shape[0] != n_reference + n_inputs:
            raise ValueError(f"{path} must have shape ({n_reference} reference + {n_inputs} inputs = "
                             f"{n_reference + n_inputs}, dim), got {data.shape}.")
        ref, inp = data[:n_reference], data[n_reference:]
    if ref.ndim != 2 or inp.ndim != 2 or len(ref) != n_reference or inp.shape != (n_inputs, ref.shape[1]):
        raise ValueError(f"{path}: the embeddings must be ({n_reference}, dim) for the reference set and "
                         f"({n_inputs}, dim) for the inputs, got {ref.shape} and {inp.shape}.")
    return ref.astype(np.float32), inp.astype(np.float32)


def build_reference(params, cfg: LMConfig, examples: Sequence[Example], *, rcfg: RemixConfig = RemixConfig(),
                    weights: np.ndarray | None = None, width: int | None = None,
                    embeddings: np.ndarray | None = None, solved: np.ndarray | None = None,
                    solved_only: bool = False) -> ReferenceSet:
    """Reference set from ``examples``. ``weights [n, Lc, N]`` gives known-good routing
    weights of the critical layers (the model's own when None); losses and ``solved`` are
    computed with those weights (``solved``: teacher-forced greedy decoding gets the answer,
    unless the caller gives its own verdict ``solved [n]``, e.g. the right choice of a
    multiple-choice question). ``embeddings [n, dim]`` replace the model's (use the same
    kind for the test inputs). ``solved_only`` keeps only the solved examples (their
    pathways are the paper's reference pathways); ValueError if none is solved."""
    crit, _ = _check(cfg, rcfg)
    tokens, target, pos = pack(examples, width)
    w, emb = routing_and_embedding(params, cfg, jnp.asarray(tokens), jnp.asarray(pos), crit, rcfg.embedding)
    if weights is not None:
        weights = np.asarray(weights, np.float32)
        if weights.shape != tuple(w.shape):
            raise ValueError(f"weights must have shape {tuple(w.shape)} (examples, critical layers, experts), got "
                             f"{weights.shape}.")
        w = jnp.asarray(weights)
    if embeddings is not None:
        emb = _check_embeddings(embeddings, len(examples), "the reference set")
    losses, right = example_stats(params, cfg, jnp.asarray(tokens), jnp.asarray(target), jnp.asarray(pos), w, crit)
    if solved is not None:
        right = np.asarray(solved, bool).reshape(len(examples))
    ref = ReferenceSet(tokens, target, pos, np.asarray(w), np.asarray(losses), np.asarray(emb), np.asarray(right),
                       crit)
    if solved_only:
        if not ref.solved.any():
            raise ValueError(f"the model solves none of the {len(examples)} reference examples, so there are no "
                             "solved pathways; use all of them (the model's own pathways) instead.")
        ref = ref.subset(ref.solved)
    return ref


# ------------------------------------------------------------------------------ re-mix


@dataclasses.dataclass
class RemixResult:
    weights: np.ndarray  # [Lc, N] re-mixed critical-layer weights of the test prompt
    original: np.ndarray  # [Lc, N] its own weights
    neighbours: np.ndarray  # [k] reference indices
    kernel: np.ndarray  # [k] kernel weights
    neighbour_loss_before: float
    neighbour_loss_after: float
    alpha: float | None = None  # kernel and mode methods: the chosen mixing coefficient
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


def mode_of_pathways(w0: np.ndarray, pathways: np.ndarray, kernel: np.ndarray | None = None, steps: int = 20,
                     bandwidth: float | None = None, neighbours: int | None = None) -> np.ndarray:
    """Mode finding (mean shift) from ``w0 [Lc, N]`` over the reference ``pathways [n, Lc,
    N]``: ``m <- sum_{i in N(m)} c_i G(|p_i - m|) p_i / sum_{i in N(m)} c_i G(|p_i - m|)``,
    where ``N(m)`` is the ``neighbours`` pathways nearest to ``m`` in pathway space
    (re-found at every step; all of them when None), ``G`` a Gaussian kernel of
    ``bandwidth`` (default: half the median distance from ``w0`` to its neighbourhood,
    narrow enough that a dense group of pathways wins over a lone one instead of being
    averaged with it) and ``c_i`` optional weights per pathway (``kernel [n]``, default 1)."""
    p = pathways.reshape(len(pathways), -1).astype(np.float64)
    c0 = np.ones(len(p)) if kernel is None else np.asarray(kernel, np.float64)
    k = len(p) if not neighbours else min(int(neighbours), len(p))
    m = w0.reshape(-1).astype(np.float64)
    d0 = np.sort(np.linalg.norm(p - m[None], axis=-1))[:k]
    h = bandwidth or max(0.5 * float(np.median(d0)), 1e-6)
    for _ in range(steps):
        d = np.linalg.norm(p - m[None], axis=-1)
        near = np.argsort(d, kind="stable")[:k]
        c = np.zeros(len(p))
        c[near] = c0[near] * np.exp(-0.5 * (d[near] / h) ** 2)
        if c.sum() <= 1e-300:  # far from every pathway: the nearest one is the mode
            c = (d == d.min()).astype(np.float64)
        new = (c[:, None] * p).sum(0) / c.sum()
        if np.linalg.norm(new - m) < 1e-7:
            m = new
            break
        m = new
    return m.reshape(w0.shape).astype(np.float32)


def remix(params, cfg: LMConfig, reference: ReferenceSet, prompt: Sequence[int], *,
          rcfg: RemixConfig = RemixConfig(), embedding: np.ndarray | None = None) -> RemixResult:
    """Re-mix the critical-layer routing weights of one test ``prompt`` (token ids).
    ``embedding [dim]`` replaces the prompt's own (same kind as the reference set's)."""
    crit, core = _check(cfg, rcfg)
    if tuple(reference.critical_layers) != crit:
        raise ValueError(f"the reference set was built for critical layers {list(reference.critical_layers)}, "
                         f"not {list(crit)}.")
    if len(reference.losses) == 0:
        raise ValueError("the reference set is empty.")
    tokens, _, pos = pack([(prompt, [])])
    w0, emb = routing_and_embedding(params, cfg, jnp.asarray(tokens), jnp.asarray(pos), crit, rcfg.embedding)
    w0, emb = np.asarray(w0[0]), np.asarray(emb[0])
    if embedding is not None:
        emb = _check_embeddings(np.reshape(embedding, (1, -1)), 1, "the test input")[0]
    if emb.shape[-1] != reference.embeddings.shape[-1]:
        raise ValueError(f"the test input's embedding has {emb.shape[-1]} dimensions, the reference set's "
                         f"{reference.embeddings.shape[-1]}; use embeddings of one kind for both.")
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
    if rcfg.method in ("kernel", "mode"):
        if rcfg.method == "kernel":
            w_hat = (kernel[:, None, None] * reference.weights[nb]).sum(0) / kernel.sum()
        else:
            # the paper's mode finding: the neighbourhood is in pathway space (the reference
            # pathways nearest to the current one), not in input space
            w_hat = mode_of_pathways(w0, reference.weights, None, rcfg.mode_steps, neighbours=rcfg.neighbours)
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
