"""Real-data demos of the state-space models on CPU, against trivial baselines.

* LSSL classifier on scikit-learn digits read pixel by pixel (64-step sequences, fixed seeded
  75/25 split): test accuracy vs the majority training class.
* S-Mamba and SpaceTime on statsmodels macrodata (12 quarterly variates, z-normalised with
  training statistics, chronological split, the last 20% of quarters are test targets;
  16 quarters -> 4 ahead): test MSE (z units) vs the last observed value.

Settings come from ``configs/lssl_digits.yaml``, ``configs/s_mamba_macro.yaml`` and
``configs/spacetime_macro.yaml`` (``--set model.embed_dim=64`` etc. override all three where
the key applies); ``--seeds`` repeats each with several seeds (data split fixed, init and
batch order vary). Prints a table and appends JSONL rows to ``--jsonl``.

    python benchmarks/ssm_demos.py                                  # config step counts
    python benchmarks/ssm_demos.py --steps 100 --models lssl        # quick look
    python benchmarks/ssm_demos.py --seeds 0,1,2 --jsonl runs/ssm_demos.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import stopwatch, table, write_jsonl  # noqa: E402

from jaxmoe.config import load_config  # noqa: E402
from jaxmoe.demos.ssm import run_forecaster, run_lssl_digits  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMOS = {
    "lssl": ("configs/lssl_digits.yaml", "digits (pixel seq.)", "accuracy", "majority class"),
    "s_mamba": ("configs/s_mamba_macro.yaml", "macrodata 16->4", "MSE", "last value"),
    "spacetime": ("configs/spacetime_macro.yaml", "macrodata 16->4", "MSE", "last value"),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lssl,s_mamba,spacetime", help="comma list of " + ", ".join(DEMOS))
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: each config's train.steps)")
    ap.add_argument("--seeds", default="0", help="comma list of train.seed values")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to every demo (repeatable)")
    ap.add_argument("--jsonl", default=None, help="append one JSON row per run here")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in DEMOS]
    if unknown:
        ap.error(f"unknown demo(s) {unknown}; choose from {', '.join(DEMOS)}")
    rows = []
    for name in models:
        path, data, metric, baseline = DEMOS[name]
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            overrides = [f"train.seed={seed}", *args.set]
            if args.steps is not None:
                overrides.append(f"train.steps={args.steps}")
            cfg = load_config(os.path.join(ROOT, path), overrides)
            clock = stopwatch()
            if name == "lssl":
                r = run_lssl_digits(cfg)
                value, base = r["accuracy"], r["baseline_accuracy"]
            else:
                r = run_forecaster(cfg)
                value, base = r["mse"], r["baseline_mse"]
            row = {"model": cfg.model.family, "data": data, "metric": metric, "value": value,
                   "baseline": baseline, "baseline_value": base, "seed": seed, "steps": r["steps"],
                   "batch": cfg.train.batch_size, "params": r["params"], "test_n": r.get("test_examples",
                                                                                       r.get("test_windows")),
                   "seconds": clock()}
            rows.append(row)
            write_jsonl(args.jsonl, [{**row, **{k: v for k, v in r.items() if k not in row}}])
            print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows, ["model", "data", "metric", "value", "baseline", "baseline_value", "seed", "steps", "batch",
                       "params", "test_n", "seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
