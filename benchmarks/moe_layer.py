"""Dropless MoE FFN forward+backward speed per grouped-matmul backend vs dense matmuls.

    PYTHONPATH=. python benchmarks/moe_layer.py [--check] [--tune --table-out t.json] [--jsonl out.jsonl]

For each case (experts E, top-k, embed D, expert ffn F, tokens T) and routing (balanced,
skewed = Zipf-weighted experts), times with random bf16 inputs:

- ``dropless``: the full engine (sort, expand, fused gate/up gmm, SwiGLU, down gmm,
  unsort, weighted combine), forward + backward w.r.t. x and the expert weights;
- ``experts``: the grouped matmuls alone on pre-sorted rows (no permutations);
- ``dense``: a dense SwiGLU on the same T*k rows with the same widths (same FLOPs), XLA/cuBLAS;
- ``matmul``: one 8192^3 bf16 matmul (the chip's rate).

TFLOP/s count the useful FLOPs 6 * T * k * 3 * D * F. ``--check`` compares the Pallas
backend's forward and gradients with fp32 ``lax.ragged_dot`` on uneven groups including
empty groups; ``--tune`` sweeps the Mosaic-GPU kernels' block sizes on the bench shapes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import H200_MATMUL, device_name, table, time_fn, write_jsonl  # noqa: E402

from jaxmoe.moe import gmm as G  # noqa: E402
from jaxmoe.moe.dispatch import dropless, expert_swiglu_grouped  # noqa: E402
from jaxmoe.moe.routers.base import Routing  # noqa: E402

CASES = {  # name: (E, k, D, F, T)
    "bench_moe_1b": (64, 8, 1024, 512, 16384),
    "deepseek_like": (64, 6, 2048, 1408, 8192),
    "fine_128x8": (128, 8, 2048, 768, 8192),
    "mixtral_like": (8, 2, 2048, 5632, 8192),
}


def make_routing(key, t, e, k, skew: float) -> Routing:
    """Top-k distinct experts per token; experts weighted ~ 1/(rank+1)^skew (0 = balanced)."""
    if skew == 0:
        ids = (jnp.arange(t)[:, None] * k + jnp.arange(k)[None]) % e  # exactly balanced
        ids = (ids + (jnp.arange(t)[:, None] // max(1, e // k))) % e
    else:
        logp = -skew * jnp.log(jnp.arange(1, e + 1, dtype=jnp.float32))
        g = jax.random.gumbel(key, (t, e))
        ids = jax.lax.top_k(logp[None] + g, k)[1]
    w = jax.random.uniform(jax.random.fold_in(key, 1), (t, k), minval=0.1, maxval=1.0)
    w = w / w.sum(-1, keepdims=True)
    return Routing(ids.astype(jnp.int32), w, jnp.full((t, e), 1.0 / e), jnp.zeros((t, e)), None)


def experts_params(key, e, d, f, dtype=jnp.float32):
    ks = jax.random.split(key, 3)
    s = 0.02
    return {"gate": s * jax.random.normal(ks[0], (e, d, f), dtype), "up": s * jax.random.normal(ks[1], (e, d, f), dtype),
            "down": s * jax.random.normal(ks[2], (e, f, d), dtype)}


def bench_case(name, e, k, d, f, t, skew, backends, iters):
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (t, d), jnp.bfloat16)
    dy = jax.random.normal(jax.random.fold_in(key, 2), (t, d), jnp.bfloat16)
    experts = experts_params(jax.random.fold_in(key, 3), e, d, f)
    routing = make_routing(jax.random.fold_in(key, 4), t, e, k, skew)
    counts = np.bincount(np.asarray(routing.expert_ids).ravel(), minlength=e)
    flops = 6.0 * t * k * 3 * d * f
    rows = []

    for b in backends:
        def loss(x, ex, b=b):
            y, _ = dropless(x, routing, ex, backend=b)
            return jnp.vdot(y.astype(jnp.float32), dy.astype(jnp.float32))

        f_full = jax.jit(jax.grad(loss, argnums=(0, 1)))
        sec = time_fn(f_full, x, experts, iters=iters)
        rows.append(dict(case=name, routing="skewed" if skew else "balanced", what="dropless", backend=b,
                         ms=sec * 1e3, tflops=flops / sec / 1e12))

        order = jnp.argsort(routing.expert_ids.reshape(-1), stable=True)
        xs = jnp.take(x, order // k, axis=0)
        gs = jnp.asarray(counts, jnp.int32)
        dys = jax.random.normal(key, (t * k, d), jnp.bfloat16)

        def loss_e(xs, ex, b=b):
            ys = expert_swiglu_grouped(xs, ex, gs, backend=b)
            return jnp.vdot(ys.astype(jnp.float32), dys.astype(jnp.float32))

        sec = time_fn(jax.jit(jax.grad(loss_e, argnums=(0, 1))), xs, experts, iters=iters)
        rows.append(dict(case=name, routing="skewed" if skew else "balanced", what="experts", backend=b,
                         ms=sec * 1e3, tflops=flops / sec / 1e12))

    # dense SwiGLU with the same FLOPs: T*k rows through one [D, 2F] and one [F, D] matmul
    wd = {"gate": experts["gate"][0], "up": experts["up"][0], "down": experts["down"][0]}
    xr = jax.random.normal(key, (t * k, d), jnp.bfloat16)
    dyr = jax.random.normal(jax.random.fold_in(key, 5), (t * k, d), jnp.bfloat16)

    def loss_d(xr, w):
        gu = xr @ jnp.concatenate([w["gate"], w["up"]], -1).astype(jnp.bfloat16)
        g, u = jnp.split(gu, 2, -1)
        y = (jax.nn.silu(g) * u) @ w["down"].astype(jnp.bfloat16)
        return jnp.vdot(y.astype(jnp.float32), dyr.astype(jnp.float32))

    sec = time_fn(jax.jit(jax.grad(loss_d, argnums=(0, 1))), xr, wd, iters=iters)
    rows.append(dict(case=name, routing="skewed" if skew else "balanced", what="dense", backend="xla",
                     ms=sec * 1e3, tflops=flops / sec / 1e12))
    dense = rows[-1]["tflops"]
    for r in rows:
        r["vs_dense"] = r["tflops"] / dense
        r["max_load"] = float(counts.max() / counts.mean())
        r["empty"] = int((counts == 0).sum())
    return rows


def matmul_rate() -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (8192, 8192), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (8192, 8192), jnp.bfloat16)
    sec = time_fn(jax.jit(lambda a, b: a @ b), a, b, iters=10)
    return 2 * 8192 ** 3 / sec


# ------------------------------------------------------------------------------- check


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


CHECK_SHAPES = [  # (M, K, N, group sizes; None = 64 Zipf-skewed groups)
    (4096, 512, 384, [1000, 0, 37, 0, 2000, 59, 1000, 0]),
    (1000, 200, 100, [0, 300, 1, 0, 555]),  # unaligned K/N, rows past the groups (M > sum)
    (16384, 1024, 1024, None),  # 64 skewed groups, several empty
    (8, 1024, 1024, [0, 3, 0, 0, 5] + [0] * 59),  # decode-sized (gather path)
]


def check(backend: str, shapes=None) -> list[dict]:
    """Forward, dx and dW of ``backend`` in bf16 vs fp32 ragged_dot on uneven groups."""
    rows = []
    for m, k, n, sizes in shapes or CHECK_SHAPES:
        key = jax.random.PRNGKey(m + k)
        if sizes is None:
            p = 1.0 / np.arange(1, 65) ** 1.5
            sizes = list(np.random.default_rng(0).multinomial(m, p / p.sum()))
        e = len(sizes)
        gs = jnp.asarray(sizes, jnp.int32)
        lhs = jax.random.normal(key, (m, k), jnp.bfloat16)
        rhs = (jax.random.normal(jax.random.fold_in(key, 1), (e, k, n), jnp.float32) / np.sqrt(k)).astype(jnp.bfloat16)
        dy = jax.random.normal(jax.random.fold_in(key, 2), (m, n), jnp.bfloat16)
        out, vjp = jax.vjp(lambda a, b: G.gmm(a, b, gs, backend=backend), lhs, rhs)
        dx, dw = vjp(dy)
        f32 = lambda a: a.astype(jnp.float32)
        hp = jax.lax.Precision.HIGHEST
        ref = jax.lax.ragged_dot(f32(lhs), f32(rhs), gs, precision=hp)
        rdx = jax.lax.ragged_dot(f32(dy), jnp.swapaxes(f32(rhs), 1, 2), gs, precision=hp)
        dn = jax.lax.RaggedDotDimensionNumbers(dot_dimension_numbers=(([0], [0]), ([], [])),
                                               lhs_ragged_dimensions=[0], rhs_group_dimensions=[])
        rdw = jax.lax.ragged_dot_general(f32(lhs), f32(dy), gs, dn, precision=hp)
        tail = float(jnp.abs(out[int(sum(sizes)):].astype(jnp.float32)).max()) if sum(sizes) < m else 0.0
        r = dict(M=m, K=k, N=n, groups=e, empty=sum(s == 0 for s in sizes), fwd=rel(out, ref), dx=rel(dx, rdx),
                 dw=rel(dw, rdw), tail_abs=tail, finite=bool(np.isfinite(np.asarray(dw, np.float32)).all()))
        r["ok"] = r["fwd"] < 1e-2 and r["dx"] < 1e-2 and r["dw"] < 1e-2 and tail == 0.0 and r["finite"]
        rows.append(r)
    return rows


# -------------------------------------------------------------------------------- tune

FWD_CANDIDATES = [(128, 128, 64, 4, 8), (128, 128, 64, 6, 16), (192, 128, 64, 4, 8), (128, 128, 128, 3, 8)]
DW_CANDIDATES = [(128, 128, 64, 4, 8), (128, 128, 128, 3, 8), (64, 128, 64, 4, 8)]
NAMES = ("block_m", "block_n", "block_k", "max_concurrent_steps", "grid_block_n")


def tune(m=131072, e=64, shapes=((1024, 1024), (512, 1024))) -> tuple[list[dict], dict]:
    """Time each candidate for fwd (K->N), dx (N->K) and dw (K, N) on balanced groups."""
    fwd_mod, tr_mod = G._mgpu_modules()
    gs = jnp.asarray([m // e] * e + [0], jnp.int32)  # + the padding group gmm appends
    rows, best = [], {}
    key = jax.random.PRNGKey(0)
    for k, n in shapes:
        lhs = jax.random.normal(key, (m, k), jnp.bfloat16)
        rhs = jax.random.normal(key, (e + 1, k, n), jnp.bfloat16)
        dy = jax.random.normal(key, (m, n), jnp.bfloat16)
        jobs = [("fwd", k, n, FWD_CANDIDATES, lambda c: functools.partial(fwd_mod.ragged_dot, group_sizes=gs, **c),
                 (lhs, rhs)),
                ("dx", n, k, FWD_CANDIDATES,
                 lambda c: functools.partial(fwd_mod.ragged_dot, group_sizes=gs, transpose_rhs=True, **c), (dy, rhs)),
                ("dw", k, n, DW_CANDIDATES, lambda c: functools.partial(tr_mod.transposed_ragged_dot, group_sizes=gs, **c),
                 (lhs, dy))]
        for kind, kk, nn, cands, make, args in jobs:
            out_n = nn if kind != "dw" else nn
            for cand in cands:
                cfg = dict(zip(NAMES, cand))
                if kind in ("fwd", "dx") and (kk % cfg["block_k"] or out_n % cfg["block_n"]):
                    continue
                if kind == "dw" and (kk % cfg["block_m"] or nn % cfg["block_n"]):
                    continue
                try:
                    sec = time_fn(jax.jit(make(cfg)), *args, warmup=1, iters=5, reps=3)
                except Exception as ex:  # shared memory overflow, unsupported tile, ...
                    print(f"tune {kind} K={kk} N={nn} {cand}: failed ({type(ex).__name__}: {str(ex)[:120]})",
                          flush=True)
                    continue
                tf = 2.0 * m * kk * nn / sec / 1e12
                print(f"tune {kind} K={kk} N={nn} {cand}: {sec * 1e3:.3f} ms {tf:.0f} TFLOP/s", flush=True)
                rows.append(dict(kind=kind, K=kk, N=nn, cfg=str(cand), ms=sec * 1e3, tflops=tf))
                keyname = f"{kind},{kk},{nn}"
                if keyname not in best or tf > best[keyname]["_tflops"]:
                    best[keyname] = dict(cfg, _tflops=tf)
    table_out = {kk: {a: b for a, b in v.items() if not a.startswith("_")} for kk, v in best.items()}
    return rows, table_out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="bench_moe_1b,deepseek_like,fine_128x8,mixtral_like")
    ap.add_argument("--backends", default="auto", help="comma list (auto -> the platform default)")
    ap.add_argument("--routings", default="balanced,skewed")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--table-out", default=None)
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args(argv)
    print(f"device: {device_name()}  jax {jax.__version__}", flush=True)
    backends = [G.resolve_backend(b) for b in args.backends.split(",")]
    if args.check:
        rows = check(backends[0])
        print(f"\ncorrectness of {backends[0]} (bf16) vs fp32 ragged_dot, relative error:")
        print(table(rows))
        write_jsonl(args.jsonl, [dict(r, kind="check") for r in rows])
    if args.tune:
        rows, best = tune()
        print("\nbest block sizes:", json.dumps(best))
        if args.table_out:
            with open(args.table_out, "w") as f:
                json.dump(best, f, indent=1)
        write_jsonl(args.jsonl, [dict(r, kind="tune") for r in rows])
    if args.no_bench:
        return 0
    rate = matmul_rate()
    print(f"\ndense bf16 matmul 8192^3: {rate / 1e12:.0f} TFLOP/s", flush=True)
    rows = []
    for name in args.cases.split(","):
        e, k, d, f, t = CASES[name]
        for routing in args.routings.split(","):
            skew = 0.0 if routing == "balanced" else 1.0
            try:
                part = bench_case(name, e, k, d, f, t, skew, backends, args.iters)
            except Exception as ex:
                print(f"{name} {routing}: failed ({type(ex).__name__}: {str(ex)[:300]})", flush=True)
                continue
            for r in part:
                r["vs_matmul"] = r["tflops"] * 1e12 / rate
            print(table(part), flush=True)
            rows += part
    print(f"\nMoE FFN fwd+bwd (useful FLOPs 6*T*k*3*D*F), {device_name()}, jax {jax.__version__}, "
          f"matmul {rate / 1e12:.0f} TFLOP/s (H200 matmul ref {H200_MATMUL / 1e12:.0f})")
    print(table(rows, ["case", "routing", "what", "backend", "ms", "tflops", "vs_dense", "vs_matmul", "max_load",
                       "empty"]))
    write_jsonl(args.jsonl, [dict(r, kind="moe_layer") for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
