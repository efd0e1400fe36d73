"""AdamW with float32 vs bfloat16 moments: the same run twice, loss curves side by side.

    PYTHONPATH=. python benchmarks/optimizer_state.py [--config configs/lm_tiny.yaml] [--steps 300]
        [--set k=v ...] [--jsonl out.jsonl]

Trains the config through the real trainer with `train.optimizer_state_dtype=float32` and
`=bfloat16` (same seed, data and schedule) and prints the loss at a few steps, the final
evaluation loss and the optimizer-state bytes of each. On a GPU the bfloat16 state halves the
optimizer's memory and its share of the step's memory traffic; this script checks that it
trains the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, table, write_jsonl  # noqa: E402


def run(config: str, steps: int, dtype: str, extra: list[str], out: str) -> dict:
    import jaxmoe
    from jaxmoe.train import train
    from jaxmoe.train.metrics import read_jsonl
    from jaxmoe.train.optimizer import make_optimizer
    from jaxmoe.train.state import abstract_train_state

    cfg = jaxmoe.load_config(config, [f"train.steps={steps}", f"train.optimizer_state_dtype={dtype}",
                                      f"train.output_dir={out}", "train.progress=false", "train.log_every=1",
                                      "train.checkpoint_every=0", *extra])
    summary = train(cfg)
    losses = {r["step"]: r["loss"] for r in read_jsonl(os.path.join(out, "metrics.jsonl")) if "loss" in r}
    state = abstract_train_state(cfg, tx=make_optimizer(cfg.train))
    opt_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.opt_state))
    picks = [s for s in (10, steps // 4, steps // 2, steps) if s in losses]
    row = {"state dtype": dtype, **{f"loss@{s}": losses[s] for s in picks},
           "mean last 20": float(np.mean([losses[s] for s in sorted(losses)[-20:]])),
           "eval": summary.get("best_eval_loss"), "optimizer MB": opt_bytes / 2 ** 20,
           "skipped": summary["skipped_steps"]}
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/lm_tiny.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args(argv)
    print(header())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "bfloat16"):
            rows.append(run(args.config, args.steps, dtype, args.set, os.path.join(tmp, dtype)))
    print(f"\n{args.config}, {args.steps} steps, AdamW moments in float32 vs bfloat16 (same seed and data):")
    print(table(rows))
    write_jsonl(args.jsonl, [dict(r, kind="optimizer_state", config=args.config) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
