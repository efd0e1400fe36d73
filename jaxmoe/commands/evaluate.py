"""``jaxmoe evaluate --checkpoint DIR --suite real``.

Forecasts the fixed held-out tail of every real series (``jaxmoe.data.real_series``) from
the end of its training part and prints MSE / MAE (z-normalised with the context's
statistics) and MASE (raw scale, against the in-sample seasonal naive error) per series
and averaged, for the model beside the seasonal-naive and ETS baselines.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="run directory of a time-series model (omit to score only the baselines)")
    p.add_argument("--suite", default="real", help="'real' (every shipped series) or one series name")
    p.add_argument("--context", type=int, default=None,
                   help="context length handed to every forecaster (default: the model's data.seq_len, else 512)")
    p.add_argument("--horizon", type=int, default=None, help="forecast length (default: each series' held-out tail)")
    p.add_argument("--baselines", default="seasonal_naive,ets", help="comma-separated baselines to print beside the model")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")


def run(args) -> int:
    from jaxmoe.errors import UserError
    from jaxmoe.eval.timeseries import BASELINES, evaluate_forecaster, format_table

    if args.horizon is not None and args.horizon <= 0:
        raise UserError(f"--horizon must be a positive number of steps, got {args.horizon}.")
    if args.context is not None and args.context <= 0:
        raise UserError(f"--context must be positive, got {args.context}.")
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise UserError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}.")
    forecast_fn, name, context = None, None, args.context or 512
    if args.checkpoint:
        from jaxmoe.commands.forecast import forecast_with_model
        from jaxmoe.train.checkpoint import load_params

        cfg, params = load_params(args.checkpoint, args.step)
        name = cfg.model.family
        context = args.context or cfg.data.seq_len

        def forecast_fn(batch, horizon):
            return forecast_with_model(params, cfg, batch, horizon)["mean"]

    try:
        rows = evaluate_forecaster(forecast_fn, suite=args.suite, context_length=context, horizon=args.horizon,
                                   baselines=baselines)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"suite {args.suite!r}, context {context}, horizon {args.horizon or 'held-out tail'}; "
          "MSE/MAE on z-normalised targets, MASE vs in-sample seasonal naive")
    print(format_table(rows, model_name=name))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0
