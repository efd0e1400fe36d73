"""``jaxmoe train --config FILE [section.key=value ...] [--resume]``."""

from __future__ import annotations

import json


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 model.moe.num_experts=16")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")


def run(args) -> int:
    from jaxmoe.config import load_config
    from jaxmoe.train import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume=args.resume)
    if summary.get("interrupted"):
        print(summary["message"])
        return 0
    short = {k: summary[k] for k in ("steps", "tokens", "time_sec", "first_loss", "final_loss", "best_eval_loss",
                                     "skipped_steps", "checkpoint") if k in summary}
    print("training finished: " + json.dumps(short))
    print(f"metrics: {summary['run_dir']}/metrics.jsonl, plots: {summary['run_dir']}/loss.png")
    return 0
