"""Shared helpers of the benchmark scripts (timing, tables, JSONL, FLOP counts)."""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np

H200_PEAK = 989e12  # dense bf16, datasheet
H200_MATMUL = 800e12  # measured bf16 matmul rate (shared/specs/perf.md)


def time_fn(fn, *args, warmup: int = 2, iters: int = 10, reps: int = 3) -> float:
    """Median seconds per call of ``fn(*args)`` (device-synchronised; ``reps`` repetitions
    of ``iters`` back-to-back calls each)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = None
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    cols = cols or list(rows[0])
    fmt = lambda v: f"{v:,.3g}" if isinstance(v, float) and abs(v) < 1000 else (f"{v:,.0f}" if isinstance(v, float) else str(v))
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])


def write_jsonl(path: str | None, rows: list[dict]) -> None:
    if not path:
        return
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")


def peak_memory_gb() -> float:
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2 ** 30
    except Exception:
        return float("nan")


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.device_kind} ({d.platform})"


def lm_flops_per_token(cfg, params) -> tuple[float, float]:
    """(training FLOPs per token, active params excluding the input embedding) for the LM:
    6 x active params (experts counted k/E) + 6 x layers x seq x embed (causal attention)."""
    m = cfg.model
    active = 0.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
        if keys and keys[0] == "embed":
            continue
        n = float(np.prod(leaf.shape))
        if "experts" in keys:
            n *= m.moe.experts_per_token / m.moe.num_experts
        active += n
    return 6 * active + 6 * m.num_layers * cfg.data.seq_len * m.embed_dim, active
