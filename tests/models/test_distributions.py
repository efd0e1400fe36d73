"""Mixture distribution head: component log-probs against scipy.stats, support handling,
the mixture log-prob against a hand logsumexp, and sampling moments (seeded, large n)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from jaxmoe.models import distributions as d


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@jax.jit
def _all_log_probs(x, xi, xp, df, loc, scale, r, logits):
    return {
        "t": d.student_t_log_prob(x[None, :], df[:, None], loc[:, None], scale[:, None]),
        "normal": d.normal_log_prob(x[None, :], loc[:, None], scale[:, None]),
        "nb": d.negative_binomial_log_prob(xi[None, :], r[:, None], logits[:, None]),
        "lognormal": d.log_normal_log_prob(xp[None, :], loc[:, None], scale[:, None]),
    }


def test_component_log_probs_match_scipy():
    x = np.linspace(-6.0, 6.0, 25).astype(np.float32)
    xi = np.arange(0, 40, 3).astype(np.float32)  # integer counts for the negative binomial
    xp = np.geomspace(1e-3, 50.0, 20).astype(np.float32)  # log-normal support
    df = np.array([2.1, 3.0, 7.5, 30.0], np.float32)
    loc = np.array([-1.0, 0.0, 0.3, 2.0], np.float32)
    scale = np.array([0.05, 0.5, 1.0, 3.0], np.float32)
    r = np.array([0.3, 1.0, 4.0, 25.0], np.float32)
    logits = np.array([-2.0, -0.3, 0.5, 1.5], np.float32)
    out = jax.device_get(_all_log_probs(x, xi, xp, df, loc, scale, r, logits))
    c = (slice(None), None)
    np.testing.assert_allclose(out["t"], stats.t.logpdf(x[None], df[c], loc[c], scale[c]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["normal"], stats.norm.logpdf(x[None], loc[c], scale[c]), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out["nb"], stats.nbinom.logpmf(xi[None], r[c], _sigmoid(-logits)[c]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["lognormal"], stats.lognorm.logpdf(xp[None], s=scale[c], scale=np.exp(loc)[c]),
                               rtol=1e-4, atol=1e-3)


def test_support_outside_is_minus_inf_with_finite_gradients():
    x = jnp.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    nb = d.component_log_prob("negative_binomial", {"total_count": 2.0, "logits": 0.1}, x)
    ln = d.component_log_prob("log_normal", {"loc": 0.0, "scale": 1.0}, x)
    assert np.all(np.isneginf(np.asarray(nb)[:2])) and np.all(np.isfinite(np.asarray(nb)[2:]))
    assert np.all(np.isneginf(np.asarray(ln)[:3])) and np.all(np.isfinite(np.asarray(ln)[3:]))

    raw = jax.random.normal(jax.random.PRNGKey(1), (5, d.num_raw_params(d.MOIRAI_COMPONENTS)))
    f = lambda raw: d.mixture_log_prob(d.domain_map(raw, d.MOIRAI_COMPONENTS), x).sum()
    val, grad = jax.jit(jax.value_and_grad(f))(raw)
    assert np.isfinite(float(val))
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.abs(np.asarray(grad)).sum() > 0


def _scipy_component(name, args, x):
    """numpy/scipy log density of one component, -inf outside its support."""
    a = {k: np.asarray(v, np.float64) for k, v in args.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "student_t":
            return stats.t.logpdf(x, a["df"], a["loc"], a["scale"])
        if name == "normal":
            return stats.norm.logpdf(x, a["loc"], a["scale"])
        if name == "normal_fixed":
            return stats.norm.logpdf(x, a["loc"], d.NORMAL_FIXED_SCALE)
        if name == "negative_binomial":
            r, lg = a["total_count"], a["logits"]
            xs = np.where(x >= 0, x, 0.0)
            lp = (special.gammaln(xs + r) - special.gammaln(xs + 1) - special.gammaln(r)
                  + r * np.log(_sigmoid(-lg)) + xs * np.log(_sigmoid(lg)))
            return np.where(x >= 0, lp, -np.inf)
        if name == "log_normal":
            xs = np.where(x > 0, x, 1.0)
            return np.where(x > 0, stats.lognorm.logpdf(xs, s=a["scale"], scale=np.exp(a["loc"])), -np.inf)
    raise AssertionError(name)


@pytest.mark.parametrize("components", [d.MOIRAI_COMPONENTS, ("normal", "log_normal", "student_t")])
def test_mixture_log_prob_equals_hand_logsumexp(components):
    n = 12
    raw = jax.random.normal(jax.random.PRNGKey(7), (n, d.num_raw_params(components))) * 1.5
    params = d.domain_map(raw, components)
    # negative, zero, integer and non-integer positive values, near the locations
    x = np.array([-3.0, -0.7, 0.0, 0.0, 0.3, 1.0, 2.0, 2.5, 4.0, 0.001, -0.001, 7.0], np.float32)
    got = np.asarray(jax.jit(d.mixture_log_prob)(params, x))
    p = jax.device_get(params)
    log_w = np.asarray(p["weights_logits"], np.float64)
    log_w = log_w - special.logsumexp(log_w, axis=-1, keepdims=True)
    names = d.components_of(p)
    assert names == tuple(sorted(components))  # weights_logits columns follow sorted names
    comps = np.stack([_scipy_component(c, p[c], x.astype(np.float64)) for c in names], axis=-1)
    want = special.logsumexp(log_w + comps, axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the weights are NOT renormalised over the in-support components: at x < 0 the density
    # is the full-support components' weighted density alone
    neg = x < 0
    full = [i for i, c in enumerate(names) if c in ("student_t", "normal", "normal_fixed")]
    np.testing.assert_allclose(got[neg], special.logsumexp(log_w[neg][:, full] + comps[neg][:, full], axis=-1),
                               rtol=1e-4, atol=1e-4)


def test_domain_map_constraints_and_layout():
    comps = d.MOIRAI_COMPONENTS
    assert d.num_raw_params(comps) == 4 + 3 + 1 + 2 + 2
    raw = 20.0 * jax.random.normal(jax.random.PRNGKey(0), (64, d.num_raw_params(comps)))
    p = d.domain_map(raw, comps)
    assert float(p["student_t"]["df"].min()) >= 2.0  # 2 + softplus: mean always finite
    assert float(p["student_t"]["scale"].min()) > 0.0
    assert float(p["negative_binomial"]["total_count"].min()) > 0.0
    assert float(p["log_normal"]["scale"].min()) > 0.0
    # raw layout: weight logits in config order, then each component's args in config order;
    # weights_logits columns in sorted name order (log_normal, negative_binomial, normal_fixed, student_t)
    np.testing.assert_array_equal(np.asarray(p["weights_logits"]), np.asarray(raw[:, [3, 2, 1, 0]]))
    np.testing.assert_array_equal(np.asarray(p["student_t"]["loc"]), np.asarray(raw[:, 5]))
    np.testing.assert_array_equal(np.asarray(p["normal_fixed"]["loc"]), np.asarray(raw[:, 7]))
    np.testing.assert_array_equal(np.asarray(p["log_normal"]["loc"]), np.asarray(raw[:, 10]))
    with pytest.raises(ValueError, match="need 12"):
        d.domain_map(raw[:, :5], comps)
    with pytest.raises(ValueError, match="distinct names"):
        d.num_raw_params(("student_t", "laplace"))


N = 100_000


@jax.jit
def _draw_all(key):
    ks = jax.random.split(key, 8)
    gam_alpha = jnp.array([0.3, 1.0, 5.0])
    pois_rate = jnp.array([0.5, 3.0, 9.9, 10.0, 57.0, 2.5e4])
    return {
        "gamma": d.gamma_sample(ks[0], jnp.broadcast_to(gam_alpha, (N, 3)), (N, 3)),
        "poisson": d.poisson_sample(ks[1], jnp.broadcast_to(pois_rate, (N, 6)), (N, 6)),
        "t": d.component_sample("student_t", ks[2], {"df": 6.0, "loc": 1.5, "scale": 2.0}, (N,)),
        "normal_fixed": d.component_sample("normal_fixed", ks[3], {"loc": -0.4}, (N,)),
        "nb": d.component_sample("negative_binomial", ks[4], {"total_count": jnp.array([3.0, 0.4]),
                                                               "logits": jnp.array([0.5, 2.0])}, (N, 2)),
        "lognormal": d.component_sample("log_normal", ks[5], {"loc": 0.2, "scale": 0.5}, (N,)),
        "mixture": d.mixture_sample(ks[6], {"weights_logits": jnp.log(jnp.array([0.2, 0.5, 0.3])),
                                            "normal": {"loc": jnp.array(0.0), "scale": jnp.array(0.1)},
                                            "normal_fixed": {"loc": jnp.array(10.0)},
                                            "log_normal": {"loc": jnp.array(3.0), "scale": jnp.array(0.01)}}, (N,)),
    }


def _check_moments(samples, mean, var, k=6.0, var_rtol=0.05):
    s = np.asarray(samples, np.float64)
    assert np.all(np.isfinite(s))
    se = np.sqrt(var / len(s))
    assert abs(s.mean() - mean) < k * se + 1e-9, (s.mean(), mean, se)
    np.testing.assert_allclose(s.var(), var, rtol=var_rtol)


def test_sampling_moments():
    out = jax.device_get(_draw_all(jax.random.PRNGKey(2024)))
    for i, a in enumerate([0.3, 1.0, 5.0]):
        _check_moments(out["gamma"][:, i], a, a, var_rtol=0.08)
    for i, lam in enumerate([0.5, 3.0, 9.9, 10.0, 57.0, 2.5e4]):
        col = out["poisson"][:, i]
        np.testing.assert_array_equal(col, np.round(col))  # integers
        _check_moments(col, lam, lam)
    _check_moments(out["t"], 1.5, 4.0 * 6.0 / 4.0, var_rtol=0.1)  # scale^2 df / (df - 2); heavy tails
    assert abs(np.median(out["t"]) - 1.5) < 0.03
    _check_moments(out["normal_fixed"], -0.4, d.NORMAL_FIXED_SCALE ** 2)
    for i, (r, lg) in enumerate([(3.0, 0.5), (0.4, 2.0)]):
        col = out["nb"][:, i]
        assert col.min() >= 0 and np.all(col == np.round(col))
        m = r * np.exp(lg)
        _check_moments(col, m, m / _sigmoid(-lg), var_rtol=0.1)
    _check_moments(out["lognormal"], np.exp(0.2 + 0.125), (np.exp(0.25) - 1) * np.exp(0.4 + 0.25))
    mix = out["mixture"]
    # weights_logits follow sorted names: log_normal 0.2, normal 0.5, normal_fixed 0.3
    frac = [np.mean(mix > 15.0), np.mean(np.abs(mix) < 1.0), np.mean(np.abs(mix - 10.0) < 0.1)]
    np.testing.assert_allclose(frac, [0.2, 0.5, 0.3], atol=0.006)
    mean = 0.2 * np.exp(3.0 + 0.5e-4) + 0.3 * 10.0
    np.testing.assert_allclose(float(d.mixture_mean({"weights_logits": jnp.log(jnp.array([0.2, 0.5, 0.3])),
                                                     "normal": {"loc": 0.0, "scale": 0.1},
                                                     "normal_fixed": {"loc": 10.0},
                                                     "log_normal": {"loc": 3.0, "scale": 0.01}})), mean, rtol=1e-5)
    assert abs(mix.mean() - mean) < 0.1
