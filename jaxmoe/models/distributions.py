"""Mixture distribution head (Moirai style): log-probabilities and sampling in fp32.

A model emits, per predicted point, an unconstrained vector of ``num_raw_params(components)``
numbers; :func:`domain_map` turns it into the parameters of a mixture whose components are
chosen from :data:`COMPONENTS`:

| name                  | parameters (after the domain map)                            | support |
|-----------------------|--------------------------------------------------------------|---------|
| ``student_t``         | df = 2 + softplus(r), loc = r, scale = max(softplus(r), eps) | real    |
| ``normal``            | loc = r, scale = max(softplus(r), eps)                       | real    |
| ``normal_fixed``      | loc = r, scale = ``NORMAL_FIXED_SCALE`` (1e-3, not learned)  | real    |
| ``negative_binomial`` | total_count = max(softplus(r), eps), logits = r              | x >= 0  |
| ``log_normal``        | loc = r, scale = max(softplus(r), eps) (of log x)            | x > 0   |

(``eps`` is the float32 machine epsilon, as in uni2ts.) Mixture weights are ``softmax(w)``
over one raw logit per component. Moirai's mixture is ``student_t, normal_fixed,
negative_binomial, log_normal`` (:data:`MOIRAI_COMPONENTS`).

**Values outside a component's support** (Moirai's handling, uni2ts ``Mixture.log_prob``):
that component's density is 0 there (log-prob ``-inf``), so the mixture density is the sum
over the components whose support holds the value, with the *unrenormalised* mixture
weights: ``log p(x) = logsumexp_c [log w_c + log p_c(x)]`` over ``c`` with ``x`` in
``support(c)``. The component's log-prob is evaluated at a safe in-support value before being
replaced by ``-inf`` (the "double where"), so gradients stay finite. Student-t and normal
components have full support, so the mixture log-prob is finite when one is present (the
config requires one).

**Negative binomial on real values**: the pmf is extended to non-negative reals through the
gamma function (as uni2ts / torch do): ``log p(x) = lgamma(x + r) - lgamma(x + 1) - lgamma(r)
+ r log sigmoid(-logits) + x log sigmoid(logits)`` -- at integers it is the NB pmf of
``scipy.stats.nbinom(n=r, p=sigmoid(-logits))``, mean ``r exp(logits)``. Samples are integers
(a gamma-Poisson draw, as in torch).

**Log-normal**: ``log p(x) = log N(log x; loc, scale) - log x`` for ``x > 0``; samples are
``exp(loc + scale * n)`` with the exponent clipped at ``LOG_NORMAL_MAX_LOG`` (60) so a sample
never overflows float32.

**Sampling** draws every random number of a call from *one* ``jax.random.uniform`` block
(normals by the inverse CDF, as ``jax.random.normal`` does), because each threefry call and
each of ``jax.random.gamma``/``poisson``'s per-element while loops costs seconds of XLA
compile time on CPU. Gamma (Marsaglia-Tsang, with the ``U**(1/a)`` boost for ``a < 1``) and
large-rate Poisson (Hoermann's PTRS, numpy's algorithm) run ``SAMPLER_ROUNDS`` vectorised
rejection rounds and keep the first accepted candidate; the fallback when every round
rejects (probability < 0.05**6 resp. 0.12**6 per draw) is the mode-like value named in each
sampler. Small-rate Poisson (rate < 10) is exact inversion over 48 terms.

Parameters are pytrees: ``{"weights_logits": [..., C], "<component>": {"<arg>": [...]}}``
with every leaf of the same batch shape ``[...]`` (``weights_logits`` has one more axis).
``weights_logits[..., i]`` belongs to the ``i``-th component in **sorted name order**
(:func:`components_of`), whatever the order of the raw layout: ``jax`` pytrees sort dict keys,
so that is the only order a params dict keeps through ``jit``.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

NORMAL_FIXED_SCALE = 1e-3
LOG_NORMAL_MAX_LOG = 60.0
POISSON_MAX_RATE = 1e7  # negative-binomial sampling: Poisson rates are clipped here
EPS = float(jnp.finfo(jnp.float32).eps)
SAMPLER_ROUNDS = 6
POISSON_SMALL = 10.0  # below: inversion over POISSON_TERMS terms; above: PTRS rejection
POISSON_TERMS = 48
_LOG_2PI = math.log(2.0 * math.pi)
_TINY = 1e-30

# arguments of each component, in the order of their raw parameters
COMPONENTS: dict[str, tuple[str, ...]] = {
    "student_t": ("df", "loc", "scale"),
    "normal": ("loc", "scale"),
    "normal_fixed": ("loc",),
    "negative_binomial": ("total_count", "logits"),
    "log_normal": ("loc", "scale"),
}
MOIRAI_COMPONENTS = ("student_t", "normal_fixed", "negative_binomial", "log_normal")


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _positive(r: jax.Array) -> jax.Array:
    return jnp.maximum(jax.nn.softplus(r), EPS)


def check_components(components: Sequence[str]) -> tuple[str, ...]:
    components = tuple(components)
    bad = [c for c in components if c not in COMPONENTS]
    if bad or not components or len(set(components)) != len(components):
        raise ValueError(f"mixture components {list(components)} must be distinct names from {', '.join(COMPONENTS)}.")
    return components


def num_raw_params(components: Sequence[str]) -> int:
    """Raw numbers per point: one weight logit per component plus each component's arguments."""
    components = check_components(components)
    return len(components) + sum(len(COMPONENTS[c]) for c in components)


# ------------------------------------------------------- samplers driven by uniforms
# Each ``*_from_uniforms(u, ...)`` takes ``u [slots, *shape]`` uniforms in [0, 1).

_GAMMA_SLOTS = 2 * SAMPLER_ROUNDS + 1
_POISSON_SLOTS = 2 * SAMPLER_ROUNDS + 1


def _normal_from_uniform(u: jax.Array) -> jax.Array:
    """Standard normal by the inverse CDF of ``u`` in [0, 1) (clipped away from 0)."""
    lo = jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0))
    return math.sqrt(2.0) * jax.lax.erf_inv(jnp.maximum(2.0 * u - 1.0, lo))


def _first_accepted(accept: jax.Array, cand: jax.Array, fallback: jax.Array) -> jax.Array:
    """``accept, cand [rounds, ...]`` -> the first accepted candidate, else ``fallback``."""
    idx = jnp.argmax(accept, axis=0)
    first = jnp.take_along_axis(cand, idx[None], axis=0)[0]
    return jnp.where(accept.any(0), first, fallback)


def _gamma_from_uniforms(u: jax.Array, alpha: jax.Array) -> jax.Array:
    """Gamma(alpha, 1), Marsaglia-Tsang; ``u [2 * ROUNDS + 1, ...]``. Fallback ``alpha' - 1/3``."""
    r = SAMPLER_ROUNDS
    a = jnp.where(alpha < 1.0, alpha + 1.0, alpha)
    d = a - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    x = _normal_from_uniform(u[:r])
    v = (1.0 + c * x) ** 3
    vpos = jnp.maximum(v, _TINY)
    accept = (v > 0) & (jnp.log(jnp.maximum(u[r:2 * r], _TINY)) < 0.5 * x * x + d - d * vpos + d * jnp.log(vpos))
    g = _first_accepted(accept, d * vpos, d)
    boost = jnp.exp(jnp.log(jnp.maximum(u[2 * r], _TINY)) / jnp.maximum(alpha, _TINY))
    return jnp.where(alpha < 1.0, g * boost, g)


def _poisson_from_uniforms(u: jax.Array, rate: jax.Array) -> jax.Array:
    """Poisson(rate) as float32; ``u [2 * ROUNDS + 1, ...]``. rate < 10: inversion (the tail
    beyond 48 terms has probability < 1e-15); else PTRS, fallback ``round(rate)``."""
    r = SAMPLER_ROUNDS
    lam = jnp.clip(rate, 0.0, POISSON_MAX_RATE)
    # small rates: inversion, k = #{j : U > F(j)}
    small_lam = jnp.minimum(lam, POISSON_SMALL)
    j = jnp.arange(POISSON_TERMS, dtype=jnp.float32).reshape((-1,) + (1,) * lam.ndim)
    logpmf = -small_lam + j * jnp.log(jnp.maximum(small_lam, _TINY)) - gammaln(j + 1.0)
    cdf = jnp.cumsum(jnp.exp(logpmf), axis=0)
    small = jnp.sum((u[2 * r][None] > cdf).astype(jnp.float32), axis=0)
    # large rates: PTRS (Hoermann 1993)
    big = jnp.maximum(lam, POISSON_SMALL)
    slam, loglam = jnp.sqrt(big), jnp.log(big)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    uu = u[:r] - 0.5
    vv = jnp.maximum(u[r:2 * r], _TINY)
    us = 0.5 - jnp.abs(uu)
    k = jnp.floor((2.0 * a / jnp.maximum(us, _TINY) + b) * uu + big + 0.43)
    quick = (us >= 0.07) & (vv <= vr)
    bad = (k < 0) | ((us < 0.013) & (vv > us))
    ok = (jnp.log(vv) + jnp.log(invalpha) - jnp.log(a / jnp.maximum(us * us, _TINY) + b)
          <= -big + k * loglam - gammaln(jnp.maximum(k, 0.0) + 1.0))
    large = _first_accepted(quick | (~bad & ok), k, jnp.round(big))
    return jnp.where(lam < POISSON_SMALL, small, large)


def _slots(name: str) -> int:
    """Uniforms per draw of component ``name``."""
    return {"student_t": 1 + _GAMMA_SLOTS, "normal": 1, "normal_fixed": 1,
            "negative_binomial": _GAMMA_SLOTS + _POISSON_SLOTS, "log_normal": 1}[name]


def _component_from_uniforms(name: str, u: jax.Array, args: dict) -> jax.Array:
    shape = u.shape[1:]
    bc = lambda a: jnp.broadcast_to(_f32(a), shape)
    if name == "student_t":
        half_df = 0.5 * bc(args["df"])
        chi2_over_df = _gamma_from_uniforms(u[1:], half_df) / half_df  # chi2(df) / df
        t = _normal_from_uniform(u[0]) * jax.lax.rsqrt(jnp.maximum(chi2_over_df, _TINY))
        return bc(args["loc"]) + bc(args["scale"]) * t
    if name == "normal":
        return bc(args["loc"]) + bc(args["scale"]) * _normal_from_uniform(u[0])
    if name == "normal_fixed":
        return bc(args["loc"]) + NORMAL_FIXED_SCALE * _normal_from_uniform(u[0])
    if name == "negative_binomial":
        g = _gamma_from_uniforms(u[:_GAMMA_SLOTS], jnp.maximum(bc(args["total_count"]), 1e-6))
        return _poisson_from_uniforms(u[_GAMMA_SLOTS:], g * jnp.exp(jnp.minimum(bc(args["logits"]), 30.0)))
    if name == "log_normal":
        z = bc(args["loc"]) + bc(args["scale"]) * _normal_from_uniform(u[0])
        return jnp.exp(jnp.minimum(z, LOG_NORMAL_MAX_LOG))
    raise ValueError(f"unknown mixture component {name!r}; choose from {', '.join(COMPONENTS)}.")


def _uniforms(key, slots: int, shape) -> jax.Array:
    return jax.random.uniform(key, (slots,) + tuple(shape), jnp.float32)


def gamma_sample(key, alpha, shape) -> jax.Array:
    """Gamma(alpha, 1) draws of ``shape`` (float32)."""
    return _gamma_from_uniforms(_uniforms(key, _GAMMA_SLOTS, shape), jnp.broadcast_to(_f32(alpha), shape))


def poisson_sample(key, rate, shape) -> jax.Array:
    """Poisson(rate) draws of ``shape`` (float32 integers; rate clipped to 1e7)."""
    return _poisson_from_uniforms(_uniforms(key, _POISSON_SLOTS, shape), jnp.broadcast_to(_f32(rate), shape))


def component_sample(name: str, key, args: dict, shape=None) -> jax.Array:
    """Draws of one component, ``shape`` defaulting to the broadcast shape of its args."""
    if shape is None:
        shape = jnp.broadcast_shapes(*(jnp.shape(args[a]) for a in COMPONENTS[name]))
    return _component_from_uniforms(name, _uniforms(key, _slots(name), shape), args)


# ------------------------------------------------------------------------ components


def student_t_log_prob(x, df, loc, scale):
    """Student-t log density (``scipy.stats.t.logpdf(x, df, loc, scale)``)."""
    x, df, loc, scale = map(_f32, (x, df, loc, scale))
    z = (x - loc) / scale
    return (gammaln(0.5 * (df + 1.0)) - gammaln(0.5 * df) - 0.5 * jnp.log(df * math.pi) - jnp.log(scale)
            - 0.5 * (df + 1.0) * jnp.log1p(z * z / df))


def normal_log_prob(x, loc, scale):
    """Normal log density (``scipy.stats.norm.logpdf(x, loc, scale)``)."""
    x, loc, scale = map(_f32, (x, loc, scale))
    z = (x - loc) / scale
    return -0.5 * z * z - jnp.log(scale) - 0.5 * _LOG_2PI


def negative_binomial_log_prob(x, total_count, logits):
    """Negative binomial log pmf, extended to real ``x >= 0`` with lgamma.

    At integer ``k`` equals ``scipy.stats.nbinom.logpmf(k, total_count, sigmoid(-logits))``.
    Only meaningful for ``x >= 0`` (see :func:`in_support`).
    """
    x, r, logits = map(_f32, (x, total_count, logits))
    return (gammaln(x + r) - gammaln(x + 1.0) - gammaln(r)
            + r * jax.nn.log_sigmoid(-logits) + x * jax.nn.log_sigmoid(logits))


def log_normal_log_prob(x, loc, scale):
    """Log-normal log density for ``x > 0`` (``scipy.stats.lognorm.logpdf(x, s=scale,
    scale=exp(loc))``)."""
    x, loc, scale = map(_f32, (x, loc, scale))
    logx = jnp.log(x)
    return normal_log_prob(logx, loc, scale) - logx


def in_support(name: str, x: jax.Array) -> jax.Array:
    """Boolean mask: ``x`` lies in the support of component ``name``."""
    x = _f32(x)
    if name == "negative_binomial":
        return x >= 0.0
    if name == "log_normal":
        return x > 0.0
    return jnp.ones(x.shape, jnp.bool_)


_SAFE_VALUE = {"negative_binomial": 0.0, "log_normal": 1.0}


def component_log_prob(name: str, args: dict, x: jax.Array) -> jax.Array:
    """Log density of one component; ``-inf`` outside its support (with finite gradients)."""
    x = _f32(x)
    if name == "student_t":
        return student_t_log_prob(x, args["df"], args["loc"], args["scale"])
    if name == "normal":
        return normal_log_prob(x, args["loc"], args["scale"])
    if name == "normal_fixed":
        return normal_log_prob(x, args["loc"], NORMAL_FIXED_SCALE)
    if name not in _SAFE_VALUE:
        raise ValueError(f"unknown mixture component {name!r}; choose from {', '.join(COMPONENTS)}.")
    ok = in_support(name, x)
    safe = jnp.where(ok, x, _SAFE_VALUE[name])
    if name == "negative_binomial":
        lp = negative_binomial_log_prob(safe, args["total_count"], args["logits"])
    else:
        lp = log_normal_log_prob(safe, args["loc"], args["scale"])
    return jnp.where(ok, lp, -jnp.inf)


def component_mean(name: str, args: dict) -> jax.Array:
    """Mean of one component (Student-t: ``loc``, finite since df > 2)."""
    if name in ("student_t", "normal", "normal_fixed"):
        return _f32(args["loc"])
    if name == "negative_binomial":
        return _f32(args["total_count"]) * jnp.exp(_f32(args["logits"]))
    if name == "log_normal":
        loc, scale = _f32(args["loc"]), _f32(args["scale"])
        return jnp.exp(jnp.minimum(loc + 0.5 * scale * scale, LOG_NORMAL_MAX_LOG))
    raise ValueError(f"unknown mixture component {name!r}; choose from {', '.join(COMPONENTS)}.")


# --------------------------------------------------------------------------- mixture


def domain_map(raw: jax.Array, components: Sequence[str]) -> dict:
    """``raw [..., num_raw_params]`` -> mixture params (layout: weight logits first, then each
    component's arguments in :data:`COMPONENTS` order). Computed in float32."""
    components = check_components(components)
    raw = _f32(raw)
    if raw.shape[-1] != num_raw_params(components):
        raise ValueError(f"raw parameters have {raw.shape[-1]} entries per point; components "
                         f"{list(components)} need {num_raw_params(components)}.")
    c = len(components)
    order = [components.index(name) for name in sorted(components)]
    out = {"weights_logits": raw[..., jnp.asarray(order)]}
    i = c
    for name in components:
        args = {}
        for arg in COMPONENTS[name]:
            r = raw[..., i]
            i += 1
            if arg == "df":
                args[arg] = 2.0 + jax.nn.softplus(r)
            elif arg in ("scale", "total_count"):
                args[arg] = _positive(r)
            else:
                args[arg] = r
        out[name] = args
    return out


def components_of(params: dict) -> tuple[str, ...]:
    """Component names of a mixture params dict, in the order of ``weights_logits``: sorted
    by name (pytree flattening sorts dict keys, so no other order survives ``jax.jit``)."""
    return tuple(sorted(k for k in params if k != "weights_logits"))


def mixture_log_prob(params: dict, x: jax.Array) -> jax.Array:
    """``log sum_c softmax(w)_c p_c(x)`` (components outside their support contribute 0).

    ``params`` from :func:`domain_map` (batch shape ``[...]``); ``x [...]`` -> ``[...]`` fp32.
    """
    log_w = jax.nn.log_softmax(_f32(params["weights_logits"]), axis=-1)
    lps = jnp.stack([component_log_prob(name, params[name], x) for name in components_of(params)], axis=-1)
    return jax.nn.logsumexp(log_w + lps, axis=-1)


def mixture_sample(key, params: dict, sample_shape: tuple[int, ...] = ()) -> jax.Array:
    """Draws of shape ``sample_shape + batch_shape``: a component per draw from the mixture
    weights (inverse CDF of one uniform), then a value from that component. All uniforms come
    from one ``jax.random.uniform`` call."""
    logits = _f32(params["weights_logits"])
    shape = tuple(sample_shape) + logits.shape[:-1]
    names = components_of(params)
    slots = [_slots(n) for n in names]
    u = _uniforms(key, 1 + sum(slots), shape)
    cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)
    choice = jnp.sum((u[0][..., None] >= cdf[..., :-1]).astype(jnp.int32), axis=-1)
    draws, start = [], 1
    for name, n in zip(names, slots):
        draws.append(_component_from_uniforms(name, u[start:start + n], params[name]))
        start += n
    return jnp.take_along_axis(jnp.stack(draws, axis=-1), choice[..., None], axis=-1)[..., 0]


def mixture_mean(params: dict) -> jax.Array:
    """``sum_c softmax(w)_c mean_c`` (fp32, batch shape)."""
    w = jax.nn.softmax(_f32(params["weights_logits"]), axis=-1)
    means = jnp.stack([component_mean(name, params[name]) for name in components_of(params)], axis=-1)
    return jnp.sum(w * means, axis=-1)
