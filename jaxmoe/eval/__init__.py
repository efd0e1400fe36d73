"""Evaluation: forecast metrics, classical baselines and the real-series suite."""

from jaxmoe.eval.timeseries import (
    BASELINES,
    ets_forecast,
    evaluate_forecaster,
    format_table,
    holdout_split,
    mae,
    mase,
    mase_scale,
    mse,
    naive,
    seasonal_naive,
)

__all__ = [
    "BASELINES",
    "ets_forecast",
    "evaluate_forecaster",
    "format_table",
    "holdout_split",
    "mae",
    "mase",
    "mase_scale",
    "mse",
    "naive",
    "seasonal_naive",
]
