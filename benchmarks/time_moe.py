"""Time-MoE throughput: training tokens/s and forecasting series/s (TimeMoE-50M size).

    PYTHONPATH=. python benchmarks/time_moe.py [--config configs/time_moe_50m.yaml] [--set k=v ...]

Training: the jitted, donated train step (AdamW, the config's precision and remat) on random
windows of batch 32 x 1024 points. Forecasting: :func:`jaxmoe.decode.forecast.forecast`
end to end (host arrays in and out, KV-cache autoregression in one jit) for 256 series of
context 512 and horizon 96, and the batch-1 latency. Targets (shared/specs/perf.md):
>= 270k training tokens/s, >= 1,700 series/s, batch-1 <= 30 ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import device_name, peak_memory_gb, table, write_jsonl  # noqa: E402

from jaxmoe.config import load_config  # noqa: E402
from jaxmoe.decode.forecast import forecast  # noqa: E402
from jaxmoe.models import time_moe as tm  # noqa: E402
from jaxmoe.moe.gmm import resolve_backend  # noqa: E402
from jaxmoe.train.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402
from jaxmoe.train.state import TrainState  # noqa: E402
from jaxmoe.train.step import make_train_step  # noqa: E402


def train_speed(cfg, batch: int, seq: int, steps: int) -> dict:
    m = cfg.model
    params = jax.jit(lambda k: tm.init(k, m))(jax.random.PRNGKey(0))
    tx = make_optimizer(cfg.train)
    state = jax.jit(lambda p: TrainState.create(p, tx, 0))(params)
    step = jax.jit(make_train_step(lambda p, b, r: tm.loss_fn(p, b, m, r), tx, learning_rate_schedule(cfg.train)),
                   donate_argnums=(0,))
    key = jax.random.PRNGKey(1)
    t = jnp.arange(seq + 1, dtype=jnp.float32)
    batches = [{"values": jnp.sin(t / (5.0 + i))[None] * jax.random.uniform(jax.random.fold_in(key, i), (batch, 1))
                + 0.1 * jax.random.normal(jax.random.fold_in(key, 10 + i), (batch, seq + 1))} for i in range(2)]
    t0 = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    for i in range(3):
        state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for i in range(steps):
        state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready(metrics)
    sec = (time.perf_counter() - t0) / steps
    return dict(what=f"train {batch}x{seq}", ms=sec * 1e3, rate=batch * seq / sec, unit="tokens/s",
                loss=float(metrics["loss"]), compile_s=compile_s, peak_gb=peak_memory_gb(), remat=m.remat), state.params


def forecast_speed(params, cfg, series: int, context: int, horizon: int, reps: int = 5) -> dict:
    rng = np.random.default_rng(0)
    t = np.arange(context)
    ctx = (np.sin(t[None] / rng.uniform(3, 30, (series, 1))) * rng.uniform(0.5, 5, (series, 1))
           + rng.normal(0, 0.1, (series, context)) + rng.uniform(-10, 10, (series, 1)))
    out = forecast(params, cfg, ctx, horizon)  # compile
    assert out.shape == (series, horizon) and np.isfinite(out).all()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        forecast(params, cfg, ctx, horizon)
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    return dict(what=f"forecast {series} x {context} -> {horizon}", ms=sec * 1e3, rate=series / sec, unit="series/s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/time_moe_50m.yaml")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    print(f"device: {device_name()}  jax {jax.__version__}  gmm {resolve_backend(cfg.model.moe.gmm_backend)}", flush=True)
    row, params = train_speed(cfg, args.batch, args.seq, args.steps)
    rows = [row]
    print(table(rows), flush=True)
    fparams = jax.tree.map(lambda a: a.astype(tm.compute_dtype(cfg.model)), params)
    rows.append(forecast_speed(fparams, cfg.model, 256, 512, 96))
    rows.append(forecast_speed(fparams, cfg.model, 1, 512, 96))
    print(f"\nTime-MoE {args.config} {' '.join(args.set)}, {device_name()}, jax {jax.__version__}")
    print(table(rows, ["what", "ms", "rate", "unit", "loss", "compile_s", "peak_gb", "remat"]))
    write_jsonl(args.jsonl, [dict(r, kind="time_moe") for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
