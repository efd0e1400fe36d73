"""Time-MoE throughput: training tokens/s and forecasting series/s (TimeMoE-50M size).

    PYTHONPATH=. python benchmarks/time_moe.py [--config configs/time_moe_50m.yaml] [--set k=v ...]

Training: the jitted, donated train step (AdamW, the config's precision and remat) on
windows of batch 32 x 1024 points: distinct synthetic series every step (``--data varying``,
default; seasonal/trend/bump/AR series from jaxmoe.data.synthetic, built without grain and
put on the device before timing) or one batch repeated (``--data repeat``). Learning guard:
the loss and grad norm of the timed steps are read back after the timing; when the loss did
not fall from the first to the last timed step or a grad norm is not finite, the training
throughput is NOT REPORTED (``"learned": false`` in the JSONL) and the script exits 1. A
config warmup longer than the benchmark (time_moe_50m: 1000 steps) is cut to the untimed
steps so the timed steps run at the real learning rate (printed; the cost is the same).

Forecasting: :func:`jaxmoe.decode.forecast.forecast` end to end (host arrays in and out,
KV-cache autoregression in one jit) for 256 series of context 512 and horizon 96, and the
batch-1 latency. Targets:
>= 270k training tokens/s, >= 1,700 series/s, batch-1 <= 30 ms.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (as_float, device_name, header, learning_guard, peak_memory_gb, series_batches,  # noqa: E402
                     short_warmup, stopwatch, table, time_call, time_steps, write_jsonl)

from jaxmoe.config import load_config  # noqa: E402
from jaxmoe.decode.forecast import forecast  # noqa: E402
from jaxmoe.models import time_moe as tm  # noqa: E402
from jaxmoe.moe.gmm import resolve_backend  # noqa: E402
from jaxmoe.train.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402
from jaxmoe.train.state import TrainState  # noqa: E402
from jaxmoe.train.step import make_train_step  # noqa: E402


WARMUP = 3  # untimed steps before the timed ones


def train_speed(cfg, batch: int, seq: int, steps: int, data: str = "varying") -> dict:
    m = cfg.model
    params = jax.jit(lambda k: tm.init(k, m))(jax.random.PRNGKey(0))
    tx = make_optimizer(cfg.train)
    state = jax.jit(lambda p: TrainState.create(p, tx, 0))(params)
    step = jax.jit(make_train_step(lambda p, b, r: tm.loss_fn(p, b, m, r), tx, learning_rate_schedule(cfg.train)),
                   donate_argnums=(0,))
    batches = [jax.device_put(x) for x in series_batches(batch, seq, WARMUP + steps, repeat=data == "repeat")]
    jax.block_until_ready(batches)  # on the device before any timing
    clock = stopwatch()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = clock()
    state, sec, watched, _ = time_steps(compiled, state, batches, warmup=WARMUP, steps=steps,
                                        watch=lambda out: (out[1]["loss"], out[1]["grad_norm"]))
    losses, norms = [as_float(w[0]) for w in watched], [as_float(w[1]) for w in watched]
    ok, message = learning_guard(losses, norms)
    row = dict(what=f"train {batch}x{seq}", ms=sec * 1e3, rate=batch * seq / sec, unit="tokens/s",
               loss_first=losses[0], loss_last=losses[-1], gnorm_first=norms[0], gnorm_last=norms[-1],
               compile_s=compile_s, peak_gb=peak_memory_gb(), remat=m.remat, data=data, learned=ok, check=message)
    if not ok:
        row["ms"] = row["rate"] = None
    return row, state.params


def forecast_speed(params, cfg, series: int, context: int, horizon: int, reps: int = 5) -> dict:
    rng = np.random.default_rng(0)
    t = np.arange(context)
    ctx = (np.sin(t[None] / rng.uniform(3, 30, (series, 1))) * rng.uniform(0.5, 5, (series, 1))
           + rng.normal(0, 0.1, (series, context)) + rng.uniform(-10, 10, (series, 1)))
    out = forecast(params, cfg, ctx, horizon)  # compile
    assert out.shape == (series, horizon) and np.isfinite(out).all()
    sec, _ = time_call(forecast, params, cfg, ctx, horizon, warmup=1, repeats=reps)
    return dict(what=f"forecast {series} x {context} -> {horizon}", ms=sec * 1e3, rate=series / sec, unit="series/s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/time_moe_50m.yaml")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--data", choices=["varying", "repeat"], default="varying",
                    help="varying: distinct synthetic series every step; repeat: one batch every step")
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the loss of the first and last timed step are compared).")
    cfg = load_config(args.config, args.set)
    cfg, note = short_warmup(cfg, WARMUP, args.steps)
    print(header() + f"  gmm {resolve_backend(cfg.model.moe.gmm_backend)}", flush=True)
    what = ("one batch of synthetic series repeated every step" if args.data == "repeat" else
            f"{WARMUP + args.steps} batches of distinct synthetic series")
    print(f"training batches: {what}" + (f"; {note}" if note else ""), flush=True)
    row, params = train_speed(cfg, args.batch, args.seq, args.steps, args.data)
    rows = [row]
    cols = ["what", "ms", "rate", "unit", "loss_first", "loss_last", "gnorm_first", "gnorm_last", "compile_s",
            "peak_gb", "remat", "learned"]
    print(table(rows, cols), flush=True)
    print(f"train: {row['check']} over {args.steps} timed steps on "
          f"{'a repeated batch' if args.data == 'repeat' else 'varying batches'}", flush=True)
    fparams = jax.tree.map(lambda a: a.astype(tm.compute_dtype(cfg.model)), params)
    rows.append(forecast_speed(fparams, cfg.model, 256, 512, 96))
    rows.append(forecast_speed(fparams, cfg.model, 1, 512, 96))
    print(f"\nTime-MoE {args.config} {' '.join(args.set)}, {device_name()}, jax {jax.__version__}")
    print(table(rows, cols))
    if not row["learned"]:
        print(f"train: {row['check']}")
    write_jsonl(args.jsonl, [dict(r, kind="time_moe") for r in rows])
    return 0 if row["learned"] else 1


if __name__ == "__main__":
    sys.exit(main())
