"""``jaxmoe forecast --checkpoint DIR --csv FILE --column NAME --horizon 96 --plot out.png``.

Forecasts the steps after the last row of one CSV (or Parquet) column with a trained
time-series model (any family with a forecaster, :func:`jaxmoe.decode.forecast.get_forecaster`).
Missing cells (NaN) are masked, never fed to the model. Writes a plot of the context and the
forecast (plus a quantile band when the forecaster gives quantiles), and optionally JSON and
CSV files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MIN_OBSERVED = 8  # fewer observed points than this: "too short to forecast"


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory written by `jaxmoe train` (or `jaxmoe import`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV file holding the series")
    src.add_argument("--parquet", help="Parquet file holding the series")
    p.add_argument("--column", required=True, help="column of the file to forecast")
    p.add_argument("--horizon", type=int, required=True, help="number of future steps")
    p.add_argument("--context", type=int, default=None,
                   help="points of history to use (default: the model's training context, data.seq_len)")
    p.add_argument("--plot", default=None, help="write a PNG plot of context + forecast here")
    p.add_argument("--json", default=None, help="write the forecast as JSON here")
    p.add_argument("--out-csv", default=None, help="write the forecast as CSV here")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")


def load_series(args) -> np.ndarray:
    from jaxmoe.data.real_series import read_csv_series, read_parquet_series

    if args.csv is not None:
        return read_csv_series(args.csv, args.column)
    return read_parquet_series(args.parquet, args.column)


def load_forecaster(checkpoint, step=None):
    """``(cfg, forecaster)`` of a run directory; a run of a family that does not forecast is
    refused in one line (before its params are read)."""
    from jaxmoe.checkpoint import load_params, load_run_config, resolve_run_dir
    from jaxmoe.decode.forecast import forecaster_class, get_forecaster

    forecaster_class(load_run_config(resolve_run_dir(checkpoint)).model.family)
    cfg, params = load_params(checkpoint, step)
    return cfg, get_forecaster(cfg, params)


def plot_forecast(path, history: np.ndarray, mean: np.ndarray, quantiles: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, h = len(history), len(mean)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(np.arange(n), history, color="black", lw=1.0, label="context")
    future = np.arange(n, n + h)
    if quantiles:
        qs = sorted(quantiles)
        lo, hi = qs[0], qs[-1]
        ax.fill_between(future, quantiles[lo], quantiles[hi], color="tab:blue", alpha=0.25,
                        label=f"{lo:g}-{hi:g} quantiles")
    ax.plot(future, mean, color="tab:blue", lw=1.5, label="forecast")
    ax.axvline(n - 0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _check_paths(args) -> None:
    """Input and output paths, and that the checkpoint is a forecasting model, before any work."""
    from jaxmoe import validate

    if args.csv is not None:
        validate.input_file(args.csv, "--csv file")
    if args.parquet is not None:
        validate.input_file(args.parquet, "--parquet file", text=False)
    for flag, path in (("--plot", args.plot), ("--json", args.json), ("--out-csv", args.out_csv)):
        if path:
            validate.output_file(path, flag)
    _, run_cfg = validate.run_config(args.checkpoint)
    validate.forecasting_model(run_cfg.model.family, "forecast")


def run(args) -> int:
    from jaxmoe.errors import UserError
    from jaxmoe.data.real_series import SeriesError

    if args.horizon is None or args.horizon <= 0:
        raise UserError(f"--horizon must be a positive number of steps, got {args.horizon}.")
    if args.context is not None and args.context < MIN_OBSERVED:
        raise UserError(f"--context must be at least {MIN_OBSERVED} points, got {args.context}.")
    _check_paths(args)
    series = load_series(args)
    cfg, forecaster = load_forecaster(args.checkpoint, args.step)
    n_ctx = args.context or forecaster.context_length
    context = series[-n_ctx:].astype(np.float64)
    observed = int(np.isfinite(context).sum())
    if observed < MIN_OBSERVED:
        raise SeriesError(f"column {args.column!r} has only {observed} observed values in its last {len(context)} rows; "
                          f"forecasting needs at least {MIN_OBSERVED}.")
    out = forecaster.forecast(context[None], args.horizon)
    mean = np.asarray(out["mean"], dtype=np.float64)[0]
    quantiles = {q: np.asarray(v, dtype=np.float64)[0] for q, v in out["quantiles"].items()}
    if not np.isfinite(mean).all():
        raise UserError("the model produced non-finite forecasts; check the checkpoint.")
    start = len(series)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "column": args.column, "horizon": args.horizon, "context_length": len(context),
            "observed_context": observed, "first_step": start, "forecast": mean.tolist(),
            "quantiles": {str(q): v.tolist() for q, v in quantiles.items()},
        }, indent=2))
    if args.out_csv:
        import pandas as pd

        frame = {"step": np.arange(start, start + args.horizon), "forecast": mean}
        for q, v in quantiles.items():
            frame[f"q{q:g}"] = v
        Path(args.out_csv).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(frame).to_csv(args.out_csv, index=False)
    if args.plot:
        plot_forecast(args.plot, context, mean, quantiles,
                      f"{args.column}: {args.horizon}-step forecast ({cfg.model.family})")
    shown = ", ".join(f"{v:.4g}" for v in mean[:8]) + (", ..." if len(mean) > 8 else "")
    print(f"forecast of {args.column!r} for steps {start}..{start + args.horizon - 1} "
          f"from {len(context)} context points ({observed} observed): [{shown}]")
    for label, path in (("plot", args.plot), ("json", args.json), ("csv", args.out_csv)):
        if path:
            print(f"{label}: {path}")
    return 0
