"""Windowing, masking, mixing and resumable iteration of time-series pipelines."""

import numpy as np
import pytest

from jaxmoe.data.real_series import REAL_SERIES, SeriesError, load_real_train
from jaxmoe.data.timeseries import (
    WeightedSelectionMap,
    WindowSource,
    build_timeseries_pipeline,
    clean_series,
    constant_segment_mask,
    constant_segments,
    window_starts,
)



def test_module_imports_without_grain():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['grain'] = None\n"
        "import jaxmoe.data.timeseries as t\n"
        "print(len(t.WindowSource([[1.0, 2.0, 3.0]], context_length=2, stride=1, min_length=2)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


grain = pytest.importorskip("grain")


def _all_windows(source):
    return [source[i] for i in range(len(source))]


# --- helpers ------------------------------------------------------------------------------


def test_clean_series_masks_nonfinite():
    values, mask = clean_series([1.0, np.nan, np.inf, -np.inf, 2.0, 1e300])
    np.testing.assert_array_equal(values, [1.0, 0.0, 0.0, 0.0, 2.0, 0.0])
    np.testing.assert_array_equal(mask, [1, 0, 0, 0, 1, 0])
    assert values.dtype == np.float32 and mask.dtype == np.float32


def test_window_starts():
    np.testing.assert_array_equal(window_starts(100, 32, 32), [0, 32, 64, 68])
    np.testing.assert_array_equal(window_starts(96, 32, 32), [0, 32, 64])
    np.testing.assert_array_equal(window_starts(40, 32, 4), [0, 4, 8])
    np.testing.assert_array_equal(window_starts(10, 32, 32), [0])  # one right-padded window


def test_constant_segments():
    x = [1, 2, 2, 2, 3, 3, np.nan, 3, 3, 3, 3, 4]
    assert constant_segments(x, 3) == [(1, 4), (7, 11)]
    assert constant_segments(x, 2) == [(1, 4), (4, 6), (7, 11)]
    assert constant_segments(x, 5) == []
    mask = constant_segment_mask(x, 4)
    np.testing.assert_array_equal(np.flatnonzero(mask), [7, 8, 9, 10])
    assert constant_segments([1.0, 1.05, 1.1], 3, atol=0.06) == [(0, 3)]
    with pytest.raises(ValueError):
        constant_segments(x, 1)


# --- window source ------------------------------------------------------------------------


def test_windows_cover_series_with_stride():
    series = np.arange(100, dtype=np.float32)
    source = WindowSource([series], context_length=31, stride=32)
    windows = _all_windows(source)
    assert len(windows) == 4
    for window, start in zip(windows, [0, 32, 64, 68]):
        assert window["values"].shape == (32,) and window["values"].dtype == np.float32
        np.testing.assert_array_equal(window["values"], series[start : start + 32])
        np.testing.assert_array_equal(window["mask"], np.ones(32))


def test_nan_and_inf_are_masked_and_zeroed():
    series = np.arange(1.0, 41.0)
    series[[3, 17, 30]] = np.nan
    series[20] = np.inf
    series[25] = -np.inf
    source = WindowSource([series], context_length=9, stride=10)
    values = np.concatenate([w["values"] for w in _all_windows(source)])
    mask = np.concatenate([w["mask"] for w in _all_windows(source)])
    bad = ~np.isfinite(series)
    np.testing.assert_array_equal(mask, (~bad).astype(np.float32))
    np.testing.assert_array_equal(values[bad], 0.0)
    np.testing.assert_array_equal(values[~bad], series[~bad])


def test_short_series_right_padded_and_too_short_dropped():
    short = np.arange(1.0, 11.0)
    source = WindowSource([short, np.ones(5)], context_length=31, stride=32, min_length=8)
    assert len(source) == 1 and source.num_dropped_series == 1
    window = source[0]
    np.testing.assert_array_equal(window["mask"], [1] * 10 + [0] * 22)
    np.testing.assert_array_equal(window["values"], list(short) + [0] * 22)


def test_windows_with_fewer_than_two_observations_are_dropped():
    series = np.full(64, np.nan)
    series[40] = 1.0
    source = WindowSource([series, np.arange(64.0)], context_length=31, stride=32)
    assert len(source) == 2  # only the fully observed series' windows remain
    assert all(w["mask"].sum() == 32 for w in _all_windows(source))


def test_mask_constant_runs():
    series = np.concatenate([np.arange(1.0, 11.0), np.zeros(12), np.arange(1.0, 11.0)])
    source = WindowSource([series], context_length=31, stride=32, mask_constant_runs=8)
    window = source[0]
    np.testing.assert_array_equal(window["mask"][10:22], 0.0)
    assert window["mask"][:10].all() and window["mask"][22:].all()
    plain = WindowSource([series], context_length=31, stride=32)
    assert plain[0]["mask"].all()


# --- mixing ----------------------------------------------------------------------------


def test_selection_map_is_a_bijection_with_exact_block_counts():
    selection = WeightedSelectionMap([10**9] * 3, [0.5, 0.3, 0.2], seed=1, block=100)
    picks = [selection[i] for i in range(1000)]
    sources = np.array([s for s, _ in picks])
    for s, expected in enumerate([50, 30, 20]):
        # Exact counts per block, and each source's indices are 0..k-1 without gaps.
        assert (sources[:100] == s).sum() == expected
        assert sorted(j for src, j in picks if src == s) == list(range(10 * expected))
    # Random order inside blocks, different from block to block.
    assert not np.array_equal(sources[:100], sources[100:200])


def test_selection_map_length_stops_when_a_source_runs_out():
    lengths = [7, 10**6]
    selection = WeightedSelectionMap(lengths, [0.5, 0.5], seed=0, block=10)
    picks = [selection[i] for i in range(len(selection))]
    assert max(j for s, j in picks if s == 0) == 6
    # One more element would need an 8th element of source 0.
    assert selection._block(len(selection) // 10)[0][len(selection) % 10] == 0
    with pytest.raises(IndexError):
        selection[len(selection)]


def _marked_sources(n_series=6):
    rng = np.random.default_rng(0)
    a = [1e6 + rng.random(80) for _ in range(n_series)]
    b = [-1e6 - rng.random(80) for _ in range(n_series)]
    return a, b


def test_mixing_weights_respected():
    a, b = _marked_sources()
    pipeline = build_timeseries_pipeline(
        sources=[(a, 0.5), (b, 0.3), ("synthetic", 0.2)],
        context_length=15, stride=16, batch_size=16, seed=0,
    )
    it = pipeline.iterator()
    counts = np.zeros(3)
    per_batch_a = []
    for _ in range(150):
        values = next(it)["values"]
        first = values[:, -1]
        from_a, from_b = first > 5e5, first < -5e5
        counts += [from_a.sum(), from_b.sum(), (~from_a & ~from_b).sum()]
        per_batch_a.append(from_a.sum())
    fractions = counts / counts.sum()
    np.testing.assert_allclose(fractions, [0.5, 0.3, 0.2], atol=0.03)
    assert len(set(per_batch_a)) > 1  # sources are shuffled across batches, not a fixed pattern
    assert [s.weight for s in pipeline.sources] == pytest.approx([0.5, 0.3, 0.2])


def test_unshuffled_mix_interleaves_evenly():
    a, b = _marked_sources()
    pipeline = build_timeseries_pipeline(
        sources=[(a, 3.0), (b, 1.0)], context_length=15, stride=16, batch_size=4, seed=0, shuffle=False,
    )
    it = pipeline.iterator()
    for _ in range(10):
        first = next(it)["values"][:, -1]
        assert (first > 0).sum() == 3


# --- pipeline ----------------------------------------------------------------------------


def test_batches_shapes_and_keys():
    pipeline = build_timeseries_pipeline(
        sources=[("synthetic", 1.0)], context_length=63, batch_size=4, seed=0,
    )
    batch = next(pipeline.iterator())
    assert set(batch) == {"values", "mask"}
    for key in ("values", "mask"):
        assert batch[key].shape == (4, 64) and batch[key].dtype == np.float32
    assert np.isfinite(batch["values"]).all() and batch["mask"].all()


def test_one_epoch_visits_every_window_once():
    series = [np.arange(i * 1000.0, i * 1000.0 + 64) for i in range(6)]  # 6 x 4 windows of 16
    pipeline = build_timeseries_pipeline(
        sources=[(series, 1.0)], context_length=15, stride=16, batch_size=4, seed=5, num_epochs=2,
    )
    assert len(pipeline) == 12
    firsts = [tuple(b["values"][:, 0]) for b in pipeline.iterator()]
    epoch1 = np.concatenate(firsts[:6])
    epoch2 = np.concatenate(firsts[6:])
    expected = sorted(i * 1000.0 + s for i in range(6) for s in (0, 16, 32, 48))
    assert sorted(epoch1) == expected and sorted(epoch2) == expected
    assert not np.array_equal(epoch1, epoch2)  # reshuffled each epoch
    assert not np.array_equal(epoch1, expected)  # shuffled at all


def test_same_seed_same_batches_and_other_seed_differs():
    def first_batches(seed):
        pipeline = build_timeseries_pipeline(
            sources=[("synthetic:1000", 1.0), ("real", 1.0)], context_length=32, batch_size=8, seed=seed,
        )
        it = pipeline.iterator()
        return [next(it)["values"] for _ in range(3)]

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("num_threads", [0, 4])
def test_exact_resume_with_get_state_set_state(num_threads):
    def build():
        return build_timeseries_pipeline(
            sources=[("synthetic", 0.6), ("real", 0.4)], context_length=48, stride=24,
            batch_size=8, seed=11, num_threads=num_threads,
        )

    it = build().iterator()
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]

    resumed = build().iterator()
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["values"], want["values"])
        np.testing.assert_array_equal(got["mask"], want["mask"])


def test_real_source_excludes_held_out_tail():
    train = load_real_train("nile")
    assert len(train) == 90
    pipeline = build_timeseries_pipeline(
        sources=[("real:nile", 1.0)], context_length=9, stride=10, batch_size=1,
        seed=0, shuffle=False, num_epochs=1,
    )
    values = np.concatenate([b["values"][0] for b in pipeline.iterator()])
    np.testing.assert_array_equal(values, train)

    pipeline = build_timeseries_pipeline(sources=[("real", 1.0)], context_length=64, batch_size=2, seed=0)
    assert pipeline.sources[0].num_series == len(REAL_SERIES)


def test_real_source_masks_co2_gaps():
    pipeline = build_timeseries_pipeline(
        sources=[("real:co2", 1.0)], context_length=63, stride=64, batch_size=4,
        seed=0, shuffle=False, num_epochs=1,
    )
    batch = next(pipeline.iterator())
    co2 = load_real_train("co2")[: 4 * 64].reshape(4, 64)
    np.testing.assert_array_equal(batch["mask"], np.isfinite(co2).astype(np.float32))
    assert batch["mask"].sum() < batch["mask"].size
    np.testing.assert_array_equal(batch["values"][batch["mask"] == 0], 0.0)


def test_csv_source_with_colon_in_path(tmp_path):
    folder = tmp_path / "runs:2026"
    folder.mkdir()
    path = folder / "load.csv"
    path.write_text("t,load\n" + "\n".join(f"{i},{'' if i % 7 == 3 else i * 0.5}" for i in range(40)))
    pipeline = build_timeseries_pipeline(
        sources=[(f"csv:{path}:load", 1.0)], context_length=19, stride=20, batch_size=2,
        seed=0, shuffle=False, num_epochs=1,
    )
    batch = next(pipeline.iterator())
    expected_mask = np.array([0.0 if i % 7 == 3 else 1.0 for i in range(40)]).reshape(2, 20)
    np.testing.assert_array_equal(batch["mask"], expected_mask)
    np.testing.assert_allclose(batch["values"], np.arange(40).reshape(2, 20) * 0.5 * expected_mask)


def test_parquet_source(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "x.parquet"
    pd.DataFrame({"y": np.arange(50.0)}).to_parquet(path)
    pipeline = build_timeseries_pipeline(
        sources=[(f"parquet:{path}:y", 1.0)], context_length=24, stride=25, batch_size=2,
        seed=0, shuffle=False, num_epochs=1,
    )
    np.testing.assert_array_equal(next(pipeline.iterator())["values"], np.arange(50.0).reshape(2, 25))


def test_pipeline_errors(tmp_path):
    kwargs = dict(context_length=16, batch_size=2, seed=0)
    with pytest.raises(SeriesError, match="Unknown source"):
        build_timeseries_pipeline(sources=[("ett", 1.0)], **kwargs)
    with pytest.raises(SeriesError, match="weights must be positive"):
        build_timeseries_pipeline(sources=[("synthetic", 0.0)], **kwargs)
    with pytest.raises(SeriesError, match="1-D"):
        build_timeseries_pipeline(sources=[(np.zeros((10, 3)), 1.0)], **kwargs)
    with pytest.raises(SeriesError, match="no windows"):
        build_timeseries_pipeline(sources=[([np.ones(3)], 1.0)], **kwargs)
    with pytest.raises(SeriesError, match="does not exist"):
        build_timeseries_pipeline(sources=[(f"csv:{tmp_path}/none.csv:x", 1.0)], **kwargs)
    with pytest.raises(SeriesError, match="CSV|PATH:COLUMN"):
        build_timeseries_pipeline(sources=[("csv:only_path", 1.0)], **kwargs)
    with pytest.raises(SeriesError, match="unknown real series"):
        build_timeseries_pipeline(sources=[("real:airline", 1.0)], **kwargs)
    with pytest.raises(SeriesError, match="no full batch"):
        build_timeseries_pipeline(sources=[([np.arange(20.0)], 1.0)], context_length=16,
                                  batch_size=4, seed=0, num_epochs=1)
    with pytest.raises(ValueError, match="context_length"):
        build_timeseries_pipeline(sources=[("synthetic", 1.0)], context_length=0, batch_size=2)
