"""Real series shipped in statsmodels and user CSV / Parquet files."""

import numpy as np
import pandas as pd
import pytest

from jaxmoe.data.real_series import (
    MULTIVARIATE_COLUMNS,
    REAL_SERIES,
    SeriesError,
    load_all_real,
    load_multivariate,
    load_real_series,
    load_real_train,
    read_csv_series,
    read_parquet_series,
)

EXPECTED_LENGTHS = {
    "co2": 2284,
    "sunspots": 309,
    "elnino": 732,
    "nile": 100,
    "macrodata_realgdp": 203,
    "macrodata_realcons": 203,
    "macrodata_realinv": 203,
    "macrodata_cpi": 203,
    "macrodata_unemp": 203,
    "elec_equip": 257,
}


def test_every_series_loads_with_expected_length():
    series = load_all_real()
    assert set(series) == set(REAL_SERIES) == set(EXPECTED_LENGTHS)
    for name, values in series.items():
        info = REAL_SERIES[name]
        assert info.name == name
        assert values.dtype == np.float32 and values.ndim == 1
        assert len(values) == EXPECTED_LENGTHS[name] == info.length
        if name == "co2":
            assert np.isnan(values).sum() == 59
            assert np.isfinite(values[~np.isnan(values)]).all()
        else:
            assert np.isfinite(values).all(), name


def test_known_values():
    assert load_real_series("nile")[0] == 1120.0
    assert load_real_series("sunspots")[0] == 5.0
    elnino = load_real_series("elnino")
    # Row-major flattening: Jan 1950, Feb 1950, ..., Jan 1951.
    np.testing.assert_allclose(elnino[[0, 1, 12]], [23.11, 24.20, 24.19], rtol=1e-6)
    np.testing.assert_allclose(load_real_series("macrodata_realgdp")[0], 2710.349, rtol=1e-6)
    np.testing.assert_allclose(load_real_series("co2")[0], 316.1, rtol=1e-6)
    np.testing.assert_allclose(load_real_series("elec_equip")[0], 66.19, rtol=1e-6)


def test_season_lengths_frequencies_and_horizons():
    for name, info in REAL_SERIES.items():
        assert info.frequency in {"weekly", "monthly", "quarterly", "yearly"}
        assert 1 <= info.horizon <= info.length // 4
        if info.season_length > 1:
            assert info.horizon == 2 * info.season_length
        train = load_real_train(name)
        assert len(train) == info.length - info.horizon
        np.testing.assert_array_equal(train, load_real_series(name)[: len(train)])
    assert REAL_SERIES["co2"].season_length == 52
    assert REAL_SERIES["elnino"].season_length == 12
    assert REAL_SERIES["macrodata_cpi"].season_length == 4
    assert REAL_SERIES["nile"].horizon == 10


def test_returned_arrays_are_private_copies():
    a = load_real_series("nile")
    a[:] = 0
    assert load_real_series("nile")[0] == 1120.0


def test_unknown_series_lists_choices():
    with pytest.raises(SeriesError, match="nile"):
        load_real_series("airline")
    assert issubclass(SeriesError, ValueError)


def test_multivariate_macrodata():
    data = load_multivariate("macrodata")
    assert data.shape == (203, len(MULTIVARIATE_COLUMNS["macrodata"])) and data.dtype == np.float32
    assert np.isfinite(data).all()
    column = MULTIVARIATE_COLUMNS["macrodata"].index("realgdp")
    np.testing.assert_array_equal(data[:, column], load_real_series("macrodata_realgdp"))
    subset = load_multivariate("macrodata", columns=["cpi", "unemp"])
    assert subset.shape == (203, 2)
    np.testing.assert_array_equal(subset[:, 1], load_real_series("macrodata_unemp"))
    with pytest.raises(SeriesError, match="available columns"):
        load_multivariate("macrodata", columns=["gdp"])
    with pytest.raises(SeriesError, match="macrodata"):
        load_multivariate("co2")


# --- user files ---------------------------------------------------------------------------


def test_csv_with_nans(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("date,load,label\n1,1.5,a\n2,,b\n3,3.5,c\n4,NaN,d\n5,-2,e\n")
    values = read_csv_series(path, "load")
    assert values.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(values), [False, True, False, True, False])
    np.testing.assert_allclose(values[[0, 2, 4]], [1.5, 3.5, -2.0])
    np.testing.assert_array_equal(read_csv_series(str(path), "date"), [1, 2, 3, 4, 5])


def test_csv_numbers_stored_as_text(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('x\n"1"\n" 2.5"\n\n4\n')
    np.testing.assert_allclose(read_csv_series(path, "x"), [1.0, 2.5, 4.0])


def test_csv_errors(tmp_path):
    with pytest.raises(SeriesError, match="does not exist"):
        read_csv_series(tmp_path / "missing.csv", "x")
    with pytest.raises(SeriesError, match="directory"):
        read_csv_series(tmp_path, "x")

    path = tmp_path / "data.csv"
    path.write_text("a,b,name\n1,2,x\n3,4,y\n")
    with pytest.raises(SeriesError, match="available columns: a, b, name") as info:
        read_csv_series(path, "c")
    assert "'c'" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SeriesError, match="not numeric.*'x'"):
        read_csv_series(path, "name")

    mixed = tmp_path / "mixed.csv"
    mixed.write_text("v\n1\n2\noops\n4\n")
    with pytest.raises(SeriesError, match="row 2 holds 'oops'"):
        read_csv_series(mixed, "v")

    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b\n")
    with pytest.raises(SeriesError, match="empty"):
        read_csv_series(header_only, "a")

    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(SeriesError, match="empty"):
        read_csv_series(blank, "a")

    all_missing = tmp_path / "all_missing.csv"
    all_missing.write_text("a,b\n,1\n,2\n")
    with pytest.raises(SeriesError, match="no finite values"):
        read_csv_series(all_missing, "a")


def test_parquet_roundtrip_and_errors(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "data.parquet"
    pd.DataFrame({"y": [1.0, np.nan, 3.0], "name": ["a", "b", "c"], "n": [1, 2, 3]}).to_parquet(path)
    values = read_parquet_series(path, "y")
    assert values.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(values), [False, True, False])
    np.testing.assert_array_equal(read_parquet_series(path, "n"), [1, 2, 3])
    with pytest.raises(SeriesError, match="available columns: y, name, n"):
        read_parquet_series(path, "z")
    with pytest.raises(SeriesError, match="not numeric"):
        read_parquet_series(path, "name")
    with pytest.raises(SeriesError, match="does not exist"):
        read_parquet_series(tmp_path / "nope.parquet", "y")
    bogus = tmp_path / "bogus.parquet"
    bogus.write_text("not parquet at all")
    with pytest.raises(SeriesError, match="could not be read"):
        read_parquet_series(bogus, "y")
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"y": pd.Series([], dtype="float64")}).to_parquet(empty)
    with pytest.raises(SeriesError, match="empty"):
        read_parquet_series(empty, "y")
