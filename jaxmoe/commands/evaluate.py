"""``jaxmoe evaluate --checkpoint DIR --suite real``.

Forecasts the fixed held-out tail of every real series (``jaxmoe.data.real_series``) from
the end of its training part and prints MSE / MAE (z-normalised with the context's
statistics) and MASE (raw scale, against the in-sample seasonal naive error) per series
and averaged, for the model beside the seasonal-naive and ETS baselines.

``jaxmoe evaluate [--checkpoint DIR] --suite zero_shot`` or ``--data DIR`` (a folder of
CSV/Parquet files; column / season / horizon from ``--column`` / ``--season`` /
``--horizon`` or the folder's ``manifest.yaml``) runs the zero-shot protocol instead
(``jaxmoe.eval.zero_shot``): rolling origins, MASE / sMAPE / MSE (+ CRPS and 10-90%
coverage for probabilistic forecasts) beside seasonal naive, naive, ETS and AutoARIMA, the
geometric-mean relative score, ``--json`` and a ``--plot`` PNG panel.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="run directory of a time-series model (omit to score only the baselines)")
    p.add_argument("--suite", default="real",
                   help="'real' (every shipped series), one series name, or 'zero_shot' (held-out real series, "
                        "rolling origins)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="zero-shot evaluation on every CSV/Parquet file of this folder (see --column/--season)")
    p.add_argument("--column", default=None, help="with --data: the column to forecast in every file")
    p.add_argument("--season", type=int, default=None, help="with --data: season length of every file")
    p.add_argument("--origins", type=int, default=3, help="zero-shot: rolling origins per series (default 3)")
    p.add_argument("--plot", default=None, help="zero-shot: write a PNG panel of the forecasts here")
    p.add_argument("--context", type=int, default=None,
                   help="context length handed to every forecaster (default: the model's data.seq_len, else 512)")
    p.add_argument("--horizon", type=int, default=None, help="forecast length (default: each series' held-out tail)")
    p.add_argument("--baselines", default=None,
                   help="comma-separated baselines to print beside the model (default: seasonal_naive,ets; "
                        "zero-shot: seasonal_naive,naive,ets,auto_arima)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")


def _check_inputs(args) -> None:
    """--suite, --data, the output paths and the checkpoint's family, before any work."""
    from jaxmoe import validate
    from jaxmoe.data.real_series import REAL_SERIES
    from jaxmoe.errors import UserError

    if args.data is None and args.suite not in ("real", "zero_shot") and args.suite not in REAL_SERIES:
        raise UserError(f"unknown --suite {args.suite!r}; choose real, zero_shot or one series: "
                        f"{', '.join(REAL_SERIES)}.")
    if args.data is not None:
        validate.input_dir(args.data, "--data")
    for flag, path in (("--plot", args.plot), ("--json", args.json)):
        if path:
            validate.output_file(path, flag)
    if args.checkpoint:
        _, run_cfg = validate.run_config(args.checkpoint)
        validate.forecasting_model(run_cfg.model.family, "evaluate")


def run(args) -> int:
    from jaxmoe.errors import UserError
    from jaxmoe.eval.timeseries import BASELINES, evaluate_forecaster, format_table

    if args.horizon is not None and args.horizon <= 0:
        raise UserError(f"--horizon must be a positive number of steps, got {args.horizon}.")
    if args.context is not None and args.context <= 0:
        raise UserError(f"--context must be positive, got {args.context}.")
    _check_inputs(args)
    zero_shot = args.data is not None or args.suite == "zero_shot"
    if zero_shot:
        return run_zero_shot(args)
    baselines = tuple(b.strip() for b in (args.baselines or "seasonal_naive,ets").split(",") if b.strip())
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise UserError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}.")
    forecast_fn, name, context = None, None, args.context or 512
    if args.checkpoint:
        from jaxmoe.commands.forecast import load_forecaster

        cfg, forecaster = load_forecaster(args.checkpoint, args.step)
        name = cfg.model.family
        context = args.context or forecaster.context_length
        forecast_fn = forecaster.predict

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


def _load_model_forecaster(args):
    """(forecast_fn returning {"mean", "quantiles"}, model name, context) from --checkpoint."""
    from jaxmoe.commands.forecast import load_forecaster

    cfg, forecaster = load_forecaster(args.checkpoint, args.step)
    return forecaster.forecast, cfg.model.family, args.context or forecaster.context_length


def run_zero_shot(args) -> int:
    from jaxmoe.errors import UserError
    from jaxmoe.eval.zero_shot import (
        ZERO_SHOT_BASELINES,
        evaluate_zero_shot,
        format_zero_shot,
        load_folder,
        plot_zero_shot,
        to_json,
        zero_shot_suite,
    )

    if args.origins < 1:
        raise UserError(f"--origins must be at least 1, got {args.origins}.")
    if args.season is not None and args.season < 1:
        raise UserError(f"--season must be at least 1, got {args.season}.")
    if args.data is None and (args.column or args.season):
        raise UserError("--column and --season only apply to --data DIR.")
    baselines = tuple(b.strip() for b in (args.baselines or ",".join(ZERO_SHOT_BASELINES)).split(",") if b.strip())
    unknown = [b for b in baselines if b not in ZERO_SHOT_BASELINES]
    if unknown:
        raise UserError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(ZERO_SHOT_BASELINES)}.")
    if args.data is not None:
        series = load_folder(args.data, column=args.column, season=args.season, horizon=args.horizon)
        label = f"folder {args.data!r}"
    else:
        series = zero_shot_suite()
        if args.horizon:
            for s in series:
                s.horizon = args.horizon
        label = "suite 'zero_shot'"
    forecast_fn, name, context = None, "model", args.context or 512
    if args.checkpoint:
        forecast_fn, name, context = _load_model_forecaster(args)
    try:
        result = evaluate_zero_shot(forecast_fn, series, context_length=context, num_origins=args.origins,
                                    baselines=baselines, model_name=name, progress=True)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"{label}: {len(series)} series, {args.origins} rolling origins, context {context}; MASE vs in-sample "
          "seasonal naive of each context, relative = geometric mean of MASE / seasonal-naive MASE")
    print(format_zero_shot(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(to_json(result), indent=2))
        print(f"json: {args.json}")
    if args.plot:
        plot_zero_shot(result, args.plot)
        print(f"plot: {args.plot}")
    return 0
