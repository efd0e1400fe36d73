"""Decode throughput (jitted prefill + lax.scan decode) vs the HBM roofline.

    PYTHONPATH=. python benchmarks/decode.py --config configs/bench_moe_1b.yaml [--batches 1,8,32]

Params are cast to the compute dtype once (bf16). Decode time per step = (time of
``generate_tokens`` with N new tokens - time with 1 new token) / (N - 1), so the prefill
is excluded. The roofline per step is the bytes that must be read once per token step:
the active weights (every non-expert matrix, the lm head, and the distinct experts the
batch touches: E * (1 - (1 - k/E)^B) per MoE layer, expected under uniform routing) plus
the KV cache up to the mean position, divided by the copy bandwidth measured here
(``x * 1.0001`` on a 2 GiB array, bytes read + written).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import device_name, table, time_fn, write_jsonl  # noqa: E402

from jaxmoe.config import load_config  # noqa: E402
from jaxmoe.decode.generate import generate_tokens  # noqa: E402
from jaxmoe.models import lm  # noqa: E402
from jaxmoe.moe.gmm import resolve_backend  # noqa: E402


def copy_bandwidth() -> float:
    x = jax.random.normal(jax.random.PRNGKey(0), (2 ** 29,), jnp.float32)  # 2 GiB
    sec = time_fn(jax.jit(lambda x: x * 1.0001), x, iters=10)
    return 2 * x.size * 4 / sec


def step_bytes(cfg, params, batch: int, mean_pos: float) -> float:
    m = cfg.model
    e, k = m.moe.num_experts, m.moe.experts_per_token
    touched = e * (1 - (1 - k / e) ** batch)
    total = 0.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
        nbytes = leaf.size * leaf.dtype.itemsize
        if keys and keys[0] == "embed":
            nbytes = batch * m.embed_dim * leaf.dtype.itemsize  # one row per sequence
        elif "experts" in keys:
            nbytes *= touched / e
        total += nbytes
    kv = 2 * m.num_layers * batch * mean_pos * m.kv_heads * m.head_size * 2  # bf16 K and V
    return total + kv


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/bench_moe_1b.yaml")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=257)
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    m = cfg.model
    print(f"device: {device_name()}  jax {jax.__version__}", flush=True)
    dt = lm.compute_dtype(m)
    params = jax.jit(lambda key: jax.tree.map(lambda a: a.astype(dt), lm.init(key, m)))(jax.random.PRNGKey(0))
    bw = copy_bandwidth()
    print(f"copy bandwidth: {bw / 1e12:.2f} TB/s", flush=True)
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        prompt = jax.random.randint(jax.random.PRNGKey(b), (b, args.prompt), 0, m.vocab_size, jnp.int32)
        rng = jax.random.PRNGKey(0)
        t_one = time_fn(lambda: generate_tokens(params, prompt, m, 1, rng), warmup=1, iters=3, reps=3)
        t_all = time_fn(lambda: generate_tokens(params, prompt, m, args.new, rng), warmup=1, iters=2, reps=3)
        per_step = (t_all - t_one) / (args.new - 1)
        mean_pos = args.prompt + args.new / 2
        floor = step_bytes(cfg, params, b, mean_pos) / bw
        rows.append(dict(batch=b, step_ms=per_step * 1e3, tokens_per_s=b / per_step, roofline_ms=floor * 1e3,
                         x_roofline=per_step / floor, prefill_ms=t_one * 1e3,
                         gmm=resolve_backend(m.moe.gmm_backend)))
        print(table(rows[-1:]), flush=True)
    print(f"\ndecode, {args.config}, bf16 weights, prompt {args.prompt}, {args.new} new tokens, {device_name()}, "
          f"jax {jax.__version__}, copy bandwidth {bw / 1e12:.2f} TB/s")
    print(table(rows))
    write_jsonl(args.jsonl, [dict(r, kind="decode", copy_tb_s=bw / 1e12) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
