"""Synthetic series: determinism, validity and variety."""

import numpy as np
import pytest

from jaxmoe.data import synthetic
from jaxmoe.data.synthetic import SyntheticSource, synthetic_series


def test_deterministic_per_seed_and_index():
    a = synthetic_series(7, 123, 300)
    b = synthetic_series(7, 123, 300)
    assert a.dtype == np.float32 and a.shape == (300,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, synthetic_series(7, 124, 300))
    assert not np.array_equal(a, synthetic_series(8, 123, 300))


def test_unbounded_index_and_finite():
    for index in (0, 1, 10**6, 2**40, 2**63 + 5):
        x = synthetic_series(0, index, 257)
        assert x.shape == (257,) and np.isfinite(x).all()
    assert synthetic_series(0, 3, 1).shape == (1,)


def test_many_series_finite_and_varied():
    xs = [synthetic_series(1, i, 512) for i in range(96)]
    assert all(np.isfinite(x).all() for x in xs)

    # Scales and offsets vary over orders of magnitude.
    spreads = np.array([np.std(x) for x in xs])
    assert spreads.max() / max(spreads.min(), 1e-12) > 100

    # Almost no two series have the same shape (two plain linear trends may).
    z = np.stack([(x - x.mean()) / max(x.std(), 1e-9) for x in xs])
    corr = np.abs(z @ z.T / z.shape[1])
    np.fill_diagonal(corr, 0.0)
    assert (corr > 0.99).mean() < 0.005
    assert np.median(corr) < 0.3

    # Smooth and rough series both occur (lag-1 autocorrelation spans a wide range).
    lag1 = np.array([np.corrcoef(x[:-1], x[1:])[0, 1] for x in xs])
    assert lag1.min() < 0.5 and lag1.max() > 0.95

    # Dominant frequencies differ between series.
    dominant = {int(np.argmax(np.abs(np.fft.rfft(x - x.mean()))[1:])) for x in xs}
    assert len(dominant) >= 15

    # Some series are clearly periodic: autocorrelation at a common period near 1.
    def acf(x, lag):
        return np.corrcoef(x[:-lag], x[lag:])[0, 1]

    periodic = sum(max(acf(x, p) for p in (7, 12, 24, 52)) > 0.9 for x in xs)
    assert 5 <= periodic < len(xs)


def test_ar_coefficients_are_stable():
    rng = np.random.default_rng(0)
    for _ in range(200):
        order = int(rng.integers(1, 4))
        denominator = synthetic._ar_coefficients(rng, order)
        assert len(denominator) == order + 1 and denominator[0] == 1.0
        assert np.all(np.abs(np.roots(denominator)) < 1.0)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="non-negative"):
        synthetic_series(-1, 0, 10)
    with pytest.raises(ValueError, match="non-negative"):
        synthetic_series(0, -1, 10)
    with pytest.raises(ValueError, match="length"):
        synthetic_series(0, 0, 0)
    with pytest.raises(ValueError, match="size"):
        SyntheticSource(0, 10, 0)


def test_synthetic_source_random_access():
    source = SyntheticSource(seed=3, length=64, size=10)
    assert len(source) == 10
    np.testing.assert_array_equal(source[4], synthetic_series(3, 4, 64))
    np.testing.assert_array_equal(source[-1], synthetic_series(3, 9, 64))
    np.testing.assert_array_equal(source[np.int64(2)], synthetic_series(3, 2, 64))
    with pytest.raises(IndexError):
        source[10]


def test_synthetic_source_with_grain():
    grain = pytest.importorskip("grain")
    source = SyntheticSource(seed=3, length=32, size=6)
    ds = grain.MapDataset.source(source).batch(3)
    batches = list(ds)
    assert len(batches) == 2 and batches[0].shape == (3, 32)
    np.testing.assert_array_equal(batches[1][2], synthetic_series(3, 5, 32))
