"""Real time series that ship inside statsmodels (no download), and user CSV/Parquet files.

Univariate series (`REAL_SERIES`):

| name               | points | frequency | season | holdout horizon |
|--------------------|-------:|-----------|-------:|----------------:|
| co2                |   2284 | weekly    |     52 |             104 |
| sunspots           |    309 | yearly    |     11 |              22 |
| elnino             |    732 | monthly   |     12 |              24 |
| nile               |    100 | yearly    |      1 |              10 |
| macrodata_realgdp  |    203 | quarterly |      4 |               8 |
| macrodata_realcons |    203 | quarterly |      4 |               8 |
| macrodata_realinv  |    203 | quarterly |      4 |               8 |
| macrodata_cpi      |    203 | quarterly |      4 |               8 |
| macrodata_unemp    |    203 | quarterly |      4 |               8 |
| elec_equip         |    257 | monthly   |     12 |              24 |

- co2 (Mauna Loa, weekly) has 59 missing weeks; they stay NaN (consumers mask them).
- sunspots are yearly; the ~11-year solar cycle is used as the season length.
- elnino is a year x month table of sea-surface temperatures, flattened row by row.
- Holdout horizon rule: two seasons (2 x season_length) for seasonal series, 10% of the
  length for non-seasonal ones (nile), never more than a quarter of the series, so every
  series keeps at least 75% of its points (>= 90 points) as training context. The last
  `horizon` points are the fixed evaluation tail; training pipelines (`"real"` source)
  only ever see `load_real_train(name)`, the part before it.

`load_multivariate("macrodata")` gives the 12 economic columns as `[time, variates]`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import numpy as np

__all__ = [
    "SeriesError",
    "RealSeriesInfo",
    "default_horizon",
    "REAL_SERIES",
    "MACRODATA_SERIES_COLUMNS",
    "MULTIVARIATE_COLUMNS",
    "load_real_series",
    "load_real_train",
    "load_all_real",
    "load_multivariate",
    "read_csv_series",
    "read_parquet_series",
]


from jaxmoe.errors import SeriesError  # noqa: E402,F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class RealSeriesInfo:
    """Static facts about one shipped series.

    Attributes:
      name: key in `REAL_SERIES`.
      season_length: seasonal period in steps (1 = no seasonality).
      frequency: "weekly", "monthly", "quarterly" or "yearly".
      length: number of points (NaNs included).
      horizon: default held-out tail length for evaluation.
      description: one line about the data.
    """

    name: str
    season_length: int
    frequency: str
    length: int
    horizon: int
    description: str = ""


def default_horizon(length: int, season_length: int) -> int:
    """Held-out tail length: 2 seasons (10% of the length if non-seasonal), at most length // 4."""
    horizon = 2 * season_length if season_length > 1 else int(round(0.1 * length))
    return max(1, min(horizon, length // 4))


def _info(name: str, season_length: int, frequency: str, length: int, description: str):
    return RealSeriesInfo(
        name=name,
        season_length=season_length,
        frequency=frequency,
        length=length,
        horizon=default_horizon(length, season_length),
        description=description,
    )


MACRODATA_SERIES_COLUMNS = ("realgdp", "realcons", "realinv", "cpi", "unemp")

MULTIVARIATE_COLUMNS: dict[str, tuple[str, ...]] = {
    "macrodata": (
        "realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi",
        "m1", "tbilrate", "unemp", "pop", "infl", "realint",
    ),
}

REAL_SERIES: dict[str, RealSeriesInfo] = {
    info.name: info
    for info in [
        _info("co2", 52, "weekly", 2284, "Mauna Loa atmospheric CO2 (ppm), 1958-2001; 59 weeks missing"),
        _info("sunspots", 11, "yearly", 309, "yearly sunspot activity, 1700-2008"),
        _info("elnino", 12, "monthly", 732, "monthly sea-surface temperature, 1950-2010"),
        _info("nile", 1, "yearly", 100, "yearly Nile flow at Aswan, 1871-1970"),
        *[
            _info(f"macrodata_{column}", 4, "quarterly", 203, f"US macro data: {column}, 1959Q1-2009Q3")
            for column in MACRODATA_SERIES_COLUMNS
        ],
        _info("elec_equip", 12, "monthly", 257, "euro-area electrical equipment orders index, 1995-2016"),
    ]
}


@functools.lru_cache(maxsize=None)
def _cached_frame(module_name: str):
    import importlib

    module = importlib.import_module(f"statsmodels.datasets.{module_name}")
    return module.load_pandas().data


def _dataset_frame(module_name: str):
    """A private copy of a statsmodels dataset's frame (parsed once per process)."""
    return _cached_frame(module_name).copy()


def load_real_series(name: str) -> np.ndarray:
    """One shipped series as float32 `[time]` (co2 keeps its NaNs).

    Raises SeriesError for an unknown name.
    """
    if name not in REAL_SERIES:
        raise SeriesError(
            f"Unknown real series {name!r}; choose one of: {', '.join(REAL_SERIES)}."
        )
    if name == "co2":
        values = _dataset_frame("co2")["co2"].to_numpy()
    elif name == "sunspots":
        values = _dataset_frame("sunspots")["SUNACTIVITY"].to_numpy()
    elif name == "elnino":
        frame = _dataset_frame("elnino").drop(columns=["YEAR"])
        values = frame.to_numpy().reshape(-1)  # row-major: year by year, Jan..Dec
    elif name == "nile":
        values = _dataset_frame("nile")["volume"].to_numpy()
    elif name.startswith("macrodata_"):
        values = _dataset_frame("macrodata")[name[len("macrodata_"):]].to_numpy()
    elif name == "elec_equip":
        values = _dataset_frame("elec_equip").iloc[:, 0].to_numpy()
    else:  # pragma: no cover - REAL_SERIES and this switch are kept in sync
        raise SeriesError(f"No loader for real series {name!r}.")
    return np.asarray(values, dtype=np.float32)


def load_real_train(name: str) -> np.ndarray:
    """The training part of a shipped series: everything before its held-out tail."""
    series = load_real_series(name)
    return series[: len(series) - REAL_SERIES[name].horizon]


def load_all_real() -> dict[str, np.ndarray]:
    """Every series in `REAL_SERIES`, full length, as float32 arrays."""
    return {name: load_real_series(name) for name in REAL_SERIES}


def load_multivariate(name: str, columns: Sequence[str] | None = None) -> np.ndarray:
    """A multivariate shipped dataset as float32 `[time, variates]`.

    Only "macrodata" is available (203 quarters x 12 columns by default; see
    `MULTIVARIATE_COLUMNS`). `columns` picks a subset in the given order.
    """
    if name not in MULTIVARIATE_COLUMNS:
        raise SeriesError(
            f"Unknown multivariate dataset {name!r}; choose one of: {', '.join(MULTIVARIATE_COLUMNS)}."
        )
    available = MULTIVARIATE_COLUMNS[name]
    columns = tuple(available if columns is None else columns)
    missing = [c for c in columns if c not in available]
    if missing or not columns:
        raise SeriesError(
            f"Dataset {name!r} has no column(s) {', '.join(map(repr, missing)) or '(none given)'}; "
            f"available columns: {', '.join(available)}."
        )
    frame = _dataset_frame(name)
    return frame[list(columns)].to_numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------
# User files.


def _column_to_series(frame, column: str, path: str, kind: str) -> np.ndarray:
    import pandas as pd

    if column not in frame.columns:
        available = ", ".join(str(c) for c in frame.columns) or "(none)"
        raise SeriesError(
            f"Column {column!r} is not in {kind} file {path!r}; available columns: {available}."
        )
    data = frame[column]
    if isinstance(data, pd.DataFrame):
        raise SeriesError(f"Column name {column!r} appears more than once in {kind} file {path!r}; rename the duplicates.")
    if len(data) == 0:
        raise SeriesError(f"Column {column!r} in {kind} file {path!r} is empty (no rows).")
    if pd.api.types.is_bool_dtype(data.dtype):
        raise SeriesError(
            f"Column {column!r} in {kind} file {path!r} holds booleans, not numbers; choose a numeric column."
        )
    if not pd.api.types.is_numeric_dtype(data.dtype):
        numeric = pd.to_numeric(data, errors="coerce")
        bad = (numeric.isna() & data.notna()).to_numpy()
        if bad.any() or not pd.api.types.is_numeric_dtype(numeric.dtype):
            position = int(np.flatnonzero(bad)[0]) if bad.any() else 0
            raise SeriesError(
                f"Column {column!r} in {kind} file {path!r} is not numeric (row {position} holds "
                f"{data.iloc[position]!r}); choose a numeric column or clean the file."
            )
        data = numeric
    values = data.to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32)
    if not np.isfinite(values).any():
        raise SeriesError(f"Column {column!r} in {kind} file {path!r} has no finite values.")
    return values


def _check_file(path, kind: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SeriesError(f"{kind} file {path!r} does not exist; check the path.")
    if os.path.isdir(path):
        raise SeriesError(f"{kind} path {path!r} is a directory, not a file.")
    return path


def read_csv_series(path, column: str) -> np.ndarray:
    """One numeric column of a CSV file as float32 `[time]`; empty cells become NaN.

    Raises SeriesError (a ValueError) with one sentence for: a missing file, an unreadable
    or empty file, a missing column (listing the available ones), a non-numeric column,
    and a column with no finite values.
    """
    import pandas as pd

    path = _check_file(path, "CSV")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise SeriesError(f"CSV file {path!r} is empty.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SeriesError(f"CSV file {path!r} could not be parsed ({first_line}).") from None
    return _column_to_series(frame, str(column), path, "CSV")


def read_parquet_series(path, column: str) -> np.ndarray:
    """One numeric column of a Parquet file as float32 `[time]`; nulls become NaN.

    Same errors as `read_csv_series`; needs pyarrow.
    """
    path = _check_file(path, "Parquet")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SeriesError("Reading Parquet files needs pyarrow; install it with `pip install pyarrow`.") from None
    try:
        schema_names = list(pq.read_schema(path).names)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet files
        raise SeriesError(f"Parquet file {path!r} could not be read ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}).") from None
    column = str(column)
    if column not in schema_names:
        available = ", ".join(schema_names) or "(none)"
        raise SeriesError(
            f"Column {column!r} is not in Parquet file {path!r}; available columns: {available}."
        )
    frame = pq.read_table(path, columns=[column]).to_pandas()
    return _column_to_series(frame, column, path, "Parquet")
