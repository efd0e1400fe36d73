"""Shared helpers of the benchmark scripts (timing, tables, JSONL, FLOP counts)."""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np

H200_PEAK = 989e12  # dense bf16, datasheet
H200_MATMUL = 800e12  # measured bf16 matmul rate on the H200 (dense bf16 GEMM)


# ----------------------------------------------------------------------- timing
# Every benchmark times through these helpers: a call (time_fn, time_call), a loop of
# stateful steps (time_steps) or a whole run (stopwatch). Device work is synchronised with
# jax.block_until_ready before a clock is read.


def stopwatch():
    """A function returning the seconds since ``stopwatch()`` was called (wall clock of a
    whole run: training, an evaluation, a compile)."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def time_call(fn, *args, warmup: int = 1, repeats: int = 5) -> tuple[float, float]:
    """``(median seconds of one call, seconds of the first call: compile + run)`` of
    ``fn(*args)``: the first call, ``warmup - 1`` more untimed calls, then ``repeats``
    timed calls, each synchronised."""
    clock = stopwatch()
    jax.block_until_ready(fn(*args))
    first = clock()
    for _ in range(max(warmup - 1, 0)):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        clock = stopwatch()
        jax.block_until_ready(fn(*args))
        times.append(clock())
    return statistics.median(times), first


def time_steps(step, carry, batches, *, warmup: int, steps: int, advance=lambda out: out[0], watch=None):
    """Seconds per step of a stateful loop ``out = step(carry, batch); carry = advance(out)``:
    ``warmup`` untimed steps on ``batches[0..warmup)``, then ``steps`` timed steps on
    ``batches[warmup..)`` (indices wrap around ``len(batches)``), synchronised before and
    after. ``watch(out)`` picks device values of every timed step (losses, grad norms),
    read back after the timing. Returns ``(carry, seconds per step, watched, last out)``."""
    batch = lambda i: batches[i % len(batches)]
    out = None
    for i in range(warmup):
        out = step(carry, batch(i))
        carry = advance(out)
    jax.block_until_ready((carry, out))
    watched = []
    clock = stopwatch()
    for i in range(steps):
        out = step(carry, batch(warmup + i))
        carry = advance(out)
        if watch is not None:
            watched.append(watch(out))
    jax.block_until_ready(out)
    sec = clock() / steps
    return carry, sec, jax.device_get(watched), out


def time_fn(fn, *args, warmup: int = 2, iters: int = 10, reps: int = 3) -> float:
    """Median seconds per call of ``fn(*args)`` (device-synchronised; ``reps`` repetitions
    of ``iters`` back-to-back calls each)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        clock = stopwatch()
        out = None
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append(clock() / iters)
    return statistics.median(times)


# ----------------------------------------------------------------------- tables, files, devices


def table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    cols = cols or list(rows[0])
    fmt = lambda v: ("-" if v is None else f"{v:,.3g}" if isinstance(v, float) and abs(v) < 1000
                     else (f"{v:,.0f}" if isinstance(v, float) and np.isfinite(v) else str(v)))
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


def lm_flops_per_token(cfg, params=None) -> tuple[float, float]:
    """(training FLOPs per token, active params excluding the input embedding) for the LM:
    6 x active params (jaxmoe.models.param_counts: experts counted k/E) + 6 x layers x seq x
    embed (causal attention). ``params`` is not needed (the counts come from the config)."""
    from jaxmoe.models import param_counts

    del params
    m = cfg.model
    counts = param_counts(cfg)
    active = float(counts["active"] - counts["embedding"])
    return 6 * active + 6 * m.num_layers * cfg.data.seq_len * m.embed_dim, active


# ----------------------------------------------------------------------- learning guards


def header() -> str:
    """One line for the top of a benchmark's output: date, jax version, device."""
    import datetime

    return (f"{datetime.datetime.now().isoformat(timespec='seconds')}  jax {jax.__version__}  "
            f"device {device_name()}")


def as_float(v) -> float:
    """A metric value as a float: JSON stores non-finite floats as "inf"/"nan" strings;
    anything unreadable (missing, None, text) is NaN."""
    if v is None:
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def finite(v) -> bool:
    return bool(np.isfinite(as_float(v)))


def learning_guard(losses, grad_norms=None, *, expect_fall: bool = True) -> tuple[bool, str]:
    """``(ok, message)`` for the losses (and grad norms) of the timed steps of a throughput
    benchmark: not ok when a loss or grad norm is not finite, or (``expect_fall``) when
    the last loss is not below the first. The message is one line."""
    losses = [as_float(x) for x in losses]
    norms = [as_float(x) for x in (grad_norms or [])]
    if not losses:
        return False, "NOT REPORTED: no loss recorded"
    bad = [i for i, g in enumerate(norms) if not np.isfinite(g)]
    if bad:
        return False, f"NOT REPORTED: grad norm not finite (timed step {bad[0] + 1}: {norms[bad[0]]})"
    bad = [i for i, x in enumerate(losses) if not np.isfinite(x)]
    if bad:
        return False, f"NOT REPORTED: loss not finite (timed step {bad[0] + 1}: {losses[bad[0]]})"
    first, last = losses[0], losses[-1]
    if expect_fall and not last < first:
        return False, f"NOT REPORTED: loss did not fall ({first:.4g}->{last:.4g})"
    return True, f"loss {first:.4g}->{last:.4g}" + (f", grad norm {norms[0]:.3g}->{norms[-1]:.3g}" if norms else "")


def short_warmup(cfg, untimed: int, timed: int):
    """``cfg`` with ``train.warmup_steps`` cut to ``untimed`` when the config's warmup would
    keep the learning rate near zero for all ``untimed + timed`` benchmark steps (so the
    timed steps can show the loss falling; the schedule does not change the step's cost).
    Returns ``(cfg, note)``; note is "" when nothing changed."""
    import dataclasses

    w = cfg.train.warmup_steps
    if w <= untimed + timed:
        return cfg, ""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, warmup_steps=max(1, untimed)))
    return cfg, (f"train.warmup_steps {w} -> {cfg.train.warmup_steps} (so the {timed} timed steps run at a real "
                 "learning rate)")


def text_batches(cfg, count: int, *, repeat: bool = False, seed: int = 0) -> list[dict]:
    """``count`` batches ``{"tokens": int32 [batch, seq_len + 1]}`` of the config's own text
    (``data.path`` or the built-in corpus, ``data.tokenizer``), distinct sequences in a
    seeded order (wrapping around when the corpus is short), or ``repeat``: one batch
    ``count`` times. Host arrays; no grain needed."""
    from jaxmoe.data.text import default_documents, pack_tokens, read_documents, tokenize_documents
    from jaxmoe.data.tokenizers import load_tokenizer

    b, s = cfg.train.batch_size, cfg.data.seq_len
    tok = load_tokenizer(cfg.data.tokenizer)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but model.vocab_size is {cfg.model.vocab_size}.")
    d = cfg.data
    docs = default_documents() if d.path is None else read_documents(d.path, text_field=d.text_field)
    seqs = pack_tokens(tokenize_documents(docs, tok), s)
    if len(seqs) == 0:
        raise ValueError(f"the corpus holds fewer than {s + 1} tokens; lower data.seq_len.")
    order = np.random.default_rng(seed).permutation(len(seqs))
    need = b * (1 if repeat else count)
    idx = np.resize(order, need)  # wraps around when the corpus is short
    batches = [{"tokens": np.asarray(seqs[idx[i * b:(i + 1) * b]], np.int32)} for i in range(need // b)]
    return batches * count if repeat else batches


def series_batches(batch: int, seq: int, count: int, *, repeat: bool = False, seed: int = 0) -> list[dict]:
    """``count`` time-series batches ``{"values", "mask": float32 [batch, seq + 1]}`` of
    distinct synthetic series (``jaxmoe.data.synthetic``: seasonal, trend, bumps, AR), or
    ``repeat``: one batch ``count`` times. Host arrays; no grain needed."""
    from jaxmoe.data.synthetic import synthetic_series

    n = 1 if repeat else count
    out = []
    for i in range(n):
        v = np.stack([synthetic_series(seed, i * batch + j, seq + 1) for j in range(batch)]).astype(np.float32)
        out.append({"values": v, "mask": np.ones_like(v)})
    return out * count if repeat else out
