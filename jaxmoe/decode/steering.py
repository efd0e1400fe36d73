"""MoTE expert steering: functional "expert imaging" and router masks.

1. :func:`profile_experts` records, on the prompt tokens of two contrasting prompt sets,
   how often each (layer, expert) is in a token's routed set, and ranks experts by the
   difference of the two frequencies (A minus B).
2. Interventions are router inputs of ``jaxmoe.models.lm.forward``: a switched-off expert
   is excluded from the top-k (the next best fills in; it receives exactly zero tokens), a
   forced-on expert is in every token's set. :func:`router_masks` turns ``"3:5,7:1"``
   (``layer:expert`` pairs, layers counted over the whole stack) into the
   ``[num_layers, num_experts]`` masks.

A profile is a plain dict (JSON-saveable, :func:`save_profile`)::

    layers [moe layers], num_experts, tokens_a, tokens_b,
    freq_a / freq_b / diff [moe layers][experts],
    ranking: [{layer, expert, freq_a, freq_b, diff}, ...] sorted by diff, largest first
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.routers import RouterInputs, get_router


# ------------------------------------------------------------------------------ masks


def parse_pairs(spec: str | None) -> list[tuple[int, int]]:
    """``"3:5,7:1"`` -> ``[(3, 5), (7, 1)]`` (empty/None -> [])."""
    if not spec:
        return []
    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise ValueError(f"expert {item!r} must look like LAYER:EXPERT, e.g. 3:5 (a list: 3:5,7:1).")
        out.append((int(parts[0]), int(parts[1])))
    return out


def router_masks(cfg: LMConfig, disable: str | Sequence[tuple[int, int]] | None = None,
                 force: str | Sequence[tuple[int, int]] | None = None, *, fill: bool = False):
    """``(expert_mask, force_mask)``: ``[num_layers, num_experts]`` bool numpy arrays (or
    None when nothing is disabled/forced, unless ``fill``: then neutral masks, so that
    calls with and without interventions share one compiled program). Raises ValueError for a layer that has no MoE,
    an expert out of range, an expert both disabled and forced, more forced experts in a
    layer than a token uses, or too few experts left enabled."""
    disable = parse_pairs(disable) if isinstance(disable, str) or disable is None else list(disable)
    force = parse_pairs(force) if isinstance(force, str) or force is None else list(force)
    n, num_layers = cfg.moe.num_experts, cfg.num_layers
    moe_layers = lm.moe_layer_indices(cfg)
    for layer, expert in disable + force:
        if layer not in moe_layers:
            raise ValueError(f"layer {layer} has no MoE; the MoE layers are {', '.join(map(str, moe_layers))}.")
        if not 0 <= expert < n:
            raise ValueError(f"expert {expert} does not exist; experts are numbered 0..{n - 1}.")
    both = set(disable) & set(force)
    if both:
        layer, expert = sorted(both)[0]
        raise ValueError(f"expert {layer}:{expert} is both disabled and forced.")
    fewest, most = get_router(cfg.moe.router).experts_used(cfg.moe)  # experts a token needs enabled / can use
    expert_mask = force_mask = None
    if disable:
        expert_mask = np.ones((num_layers, n), bool)
        for layer, expert in disable:
            expert_mask[layer, expert] = False
        low = np.nonzero(expert_mask.sum(1) < fewest)[0]
        if len(low):
            raise ValueError(f"layer {int(low[0])} keeps {int(expert_mask[low[0]].sum())} enabled experts but each "
                             f"token uses {fewest}.")
    if force:
        force_mask = np.zeros((num_layers, n), bool)
        for layer, expert in force:
            force_mask[layer, expert] = True
        high = np.nonzero(force_mask.sum(1) > most)[0]
        if len(high):
            raise ValueError(f"layer {int(high[0])} forces {int(force_mask[high[0]].sum())} experts but each token "
                             f"uses only {most}.")
    if fill:
        expert_mask = np.ones((num_layers, n), bool) if expert_mask is None else expert_mask
        force_mask = np.zeros((num_layers, n), bool) if force_mask is None else force_mask
    return expert_mask, force_mask


# --------------------------------------------------------------------------- profiling


@functools.partial(jax.jit, static_argnames=("cfg",))
def _assignments(params, tokens, cfg: LMConfig, expert_mask=None, force_mask=None):
    """Per MoE layer and token, which experts are in the token's set: ``[L, b*s, N]``."""
    _, aux = lm.apply(params, tokens, cfg, inputs=RouterInputs(expert_mask=expert_mask, force_mask=force_mask))
    oh = jax.nn.one_hot(aux["expert_ids"], cfg.moe.num_experts, dtype=jnp.float32)  # [L, T, K, N]
    return (oh * aux["expert_valid"][..., None]).max(2)


def _width(token_lists, cfg: LMConfig) -> int:
    """Padded prompt width: a power of two >= 16 (few compiled shapes), at most max_seq_len."""
    longest = max((len(t) for t in token_lists), default=0)
    if longest > cfg.max_seq_len:
        raise ValueError(f"a prompt has {longest} tokens, more than model.max_seq_len={cfg.max_seq_len}.")
    return min(cfg.max_seq_len, max(16, 1 << (longest - 1).bit_length()))


def expert_frequencies(params, cfg: LMConfig, token_lists: Sequence[Sequence[int]], *, batch_size: int = 16,
                       width: int | None = None, expert_mask=None, force_mask=None) -> tuple[np.ndarray, int]:
    """Fraction of prompt tokens whose routed set contains each expert: ``([moe layers,
    experts], number of tokens)``. Prompts are right-padded (the model is causal, so
    padding changes nothing before it) and only real tokens count."""
    token_lists = [list(t) for t in token_lists if len(t)]
    if not token_lists:
        raise ValueError("no prompt has any tokens.")
    width = width or _width(token_lists, cfg)
    shape = (cfg.num_layers, cfg.moe.num_experts)  # masks always given: one compiled program
    expert_mask = np.ones(shape, bool) if expert_mask is None else np.asarray(expert_mask, bool)
    force_mask = np.zeros(shape, bool) if force_mask is None else np.asarray(force_mask, bool)
    num_moe = len(lm.moe_layer_indices(cfg))
    counts = np.zeros((num_moe, cfg.moe.num_experts))
    total = 0
    for start in range(0, len(token_lists), batch_size):
        chunk = token_lists[start:start + batch_size]
        toks = np.zeros((batch_size, width), np.int32)
        real = np.zeros((batch_size, width), bool)
        for i, t in enumerate(chunk):
            toks[i, :len(t)] = t
            real[i, :len(t)] = True
        sets = np.asarray(_assignments(params, jnp.asarray(toks), cfg, expert_mask, force_mask))
        counts += (sets * real.reshape(1, -1, 1)).sum(1)
        total += int(real.sum())
    return counts / total, total


def profile_experts(params, cfg: LMConfig, prompts_a: Sequence[str], prompts_b: Sequence[str], tokenizer,
                    *, batch_size: int = 16) -> dict:
    """Activation frequency per (layer, expert) on two prompt sets, their difference and
    the experts ranked by it (A-specific first)."""
    if not prompts_a or not prompts_b:
        raise ValueError("both prompt sets need at least one prompt.")
    ta, tb = [tokenizer.encode(p) for p in prompts_a], [tokenizer.encode(p) for p in prompts_b]
    width = _width(ta + tb, cfg)
    fa, na = expert_frequencies(params, cfg, ta, batch_size=batch_size, width=width)
    fb, nb = expert_frequencies(params, cfg, tb, batch_size=batch_size, width=width)
    diff = fa - fb
    layers = lm.moe_layer_indices(cfg)
    ranking = [{"layer": layers[i], "expert": e, "freq_a": float(fa[i, e]), "freq_b": float(fb[i, e]),
                "diff": float(diff[i, e])} for i in range(len(layers)) for e in range(cfg.moe.num_experts)]
    ranking.sort(key=lambda r: (-r["diff"], r["layer"], r["expert"]))
    return {"layers": layers, "num_experts": cfg.moe.num_experts, "tokens_a": na, "tokens_b": nb,
            "freq_a": fa.tolist(), "freq_b": fb.tolist(), "diff": diff.tolist(), "ranking": ranking}


def top_experts(profile: dict, n: int = 3, toward: str = "a") -> str:
    """The ``n`` experts most specific to set ``a`` (or ``b``) as a ``"layer:expert,..."``
    string for ``--disable-experts`` / ``--force-experts``."""
    ranking = profile["ranking"] if toward == "a" else profile["ranking"][::-1]
    return ",".join(f"{r['layer']}:{r['expert']}" for r in ranking[:n])


def save_profile(profile: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(profile, indent=1))


def load_profile(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def plot_profile(profile: dict, path: str | Path, labels: tuple[str, str] = ("A", "B")) -> None:
    """Heatmaps of the two frequency maps and their difference (layers x experts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fa, fb, diff = (np.asarray(profile[k]) for k in ("freq_a", "freq_b", "diff"))
    fig, axes = plt.subplots(1, 3, figsize=(4 + 1.2 * fa.shape[1], 1.2 + 0.5 * fa.shape[0]), squeeze=False)
    lim = max(float(np.abs(diff).max()), 1e-6)
    panels = [(fa, f"frequency ({labels[0]})", "viridis", 0, 1), (fb, f"frequency ({labels[1]})", "viridis", 0, 1),
              (diff, f"{labels[0]} - {labels[1]}", "RdBu_r", -lim, lim)]
    for ax, (data, title, cmap, lo, hi) in zip(axes[0], panels):
        im = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        ax.set_title(title)
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(profile["layers"])), [str(layer) for layer in profile["layers"]])
        ax.set_xticks(range(data.shape[1]))
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
