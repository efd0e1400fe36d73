"""Dynamic top-p routing: the smallest prefix of sorted router probs whose mass exceeds p."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.models import lm
from jaxmoe.moe import layer, losses
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.routers import get_router
from jaxmoe.moe.routers.topp import TopPOptions
from jaxmoe.nn.init import unbox
from routing_helpers import fast_init, tiny_cfg

N, D = 4, 8


def _router_for(probs):
    """Router params + inputs whose softmax is exactly ``probs [T, N]`` (one-hot inputs)."""
    t = probs.shape[0]
    x = np.eye(t, dtype=np.float32)
    return {"kernel": jnp.asarray(np.log(probs), jnp.float32)}, jnp.asarray(x)


def _reference_sets(probs, p):
    """Brute force: for each token, the smallest set of top experts whose mass exceeds p."""
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")
        chosen, mass = [], 0.0
        for e in order:
            chosen.append(int(e))
            mass += row[e]
            if mass > p:
                break
        out.append(set(chosen))
    return out


route = jax.jit(get_router("topp").route, static_argnames="cfg")


def _cfg(top_p, **kw):
    return MoEConfig(num_experts=N, router="topp", router_options=TopPOptions(top_p=top_p, **kw))


def _sets(r):
    ids, valid = np.asarray(r.expert_ids), np.asarray(r.valid)
    return [set(ids[t][valid[t]].tolist()) for t in range(ids.shape[0])]


def test_hand_example_smallest_prefix_exceeding_p():
    probs = np.array([[0.10, 0.50, 0.25, 0.15]], np.float32)  # sorted: 1 (.5), 2 (.75), 3 (.9), 0 (1.0)
    params, x = _router_for(probs)
    expected = {0.3: {1}, 0.6: {1, 2}, 0.8: {1, 2, 3}, 0.95: {0, 1, 2, 3}}
    for p, want in expected.items():
        r = route(params, x, _cfg(p))
        assert _sets(r) == [want], p
        # weights are the raw probabilities of the kept experts (not renormalised)
        ids, valid, w = np.asarray(r.expert_ids[0]), np.asarray(r.valid[0]), np.asarray(r.weights[0])
        np.testing.assert_allclose(w[valid], probs[0][ids[valid]], rtol=1e-6)


def test_random_probs_match_brute_force_and_extremes():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(N) * 0.7, size=64).astype(np.float32)
    params, x = _router_for(probs)
    for p in (0.2, 0.4, 0.7, 0.9):
        r = route(params, x, _cfg(p))
        assert _sets(r) == _reference_sets(probs, p)
    r = route(params, x, _cfg(1.0))
    assert np.asarray(r.valid).all()  # p -> 1 activates every expert
    r = route(params, x, _cfg(1e-6))
    assert (np.asarray(r.valid).sum(-1) == 1).all()  # a tiny p activates exactly one (the top one)
    np.testing.assert_array_equal(np.asarray(r.expert_ids)[:, 0], probs.argmax(-1))
    r = route(params, x, _cfg(1.0, max_experts_per_token=2))
    assert r.expert_ids.shape == (64, 2) and np.asarray(r.valid).all()


def test_masks_under_top_p():
    probs = np.array([[0.10, 0.50, 0.25, 0.15]] * 3, np.float32)
    params, x = _router_for(probs)
    cfg = _cfg(0.6)
    off = jnp.asarray([True, False, True, True])
    assert _sets(route(params, x, cfg, expert_mask=off)) == [{2, 3, 0}] * 3  # 1 off: .25+.15+.10 never > .6
    force = jnp.asarray([True, False, False, False])
    assert _sets(route(params, x, cfg, force_mask=force)) == [{0, 1, 2}] * 3


@functools.partial(jax.jit, static_argnames=("cfg", "dispatch"))
def _moe(params, x, cfg, dispatch=None):
    return layer.moe(params, x, cfg, dispatch=dispatch)


def _swiglu(e, x, experts):
    g = x @ experts["gate"][e]
    return ((g / (1 + np.exp(-g))) * (x @ experts["up"][e])) @ experts["down"][e]


def test_outputs_equal_dense_reference():
    cfg = tiny_cfg(router="topp", router_options=TopPOptions(top_p=0.5), num_experts=N, expert_ffn_dim=8).moe
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32),
                          jax.eval_shape(lambda: unbox(layer.init_moe(jax.random.PRNGKey(0), D, cfg))))
    x = rng.standard_normal((2, 5, D)).astype(np.float32)
    y, aux = _moe(params, jnp.asarray(x), cfg)
    y_dense, _ = _moe(params, jnp.asarray(x), cfg, dispatch="dense")
    # numpy reference: the same top-p sets and raw-probability weights
    xt = x.reshape(-1, D).astype(np.float64)
    logits = xt @ params["router"]["kernel"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    sets = _reference_sets(probs, 0.5)
    ex = {k: np.asarray(v, np.float64) for k, v in params["experts"].items()}
    ref = np.stack([sum(probs[t, e] * _swiglu(e, xt[t], ex) for e in sets[t]) for t in range(len(xt))])
    np.testing.assert_allclose(np.asarray(y).reshape(-1, D), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(y_dense), np.asarray(y), rtol=1e-5, atol=1e-6)
    # variable experts per token, and the metric counts them
    counts = np.array([len(s) for s in sets])
    assert counts.min() >= 1 and counts.max() > counts.min()
    np.testing.assert_allclose(float(aux["active_experts"]), counts.mean(), rtol=1e-6)
    # dynamic (entropy) loss = mean_t -sum_i P log P, added with its coefficient
    ent = -(probs * np.log(probs)).sum(-1).mean()
    np.testing.assert_allclose(float(aux["dynamic_loss"]), ent, rtol=1e-5)
    np.testing.assert_allclose(float(aux["aux_loss"]),
                               cfg.balance_coef * float(aux["balance_loss"])
                               + cfg.router_options.dynamic_loss_coef * ent, rtol=1e-5)
    np.testing.assert_allclose(float(losses.routing_entropy(jnp.asarray(probs))), ent, rtol=1e-5)


def test_lm_reports_active_experts_per_layer():
    cfg = tiny_cfg(router="topp", router_options=TopPOptions(top_p=0.5))
    params = fast_init(cfg, std=0.5)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 9)), jnp.int32)
    loss, metrics = jax.jit(lm.loss_fn, static_argnames="cfg")(params, {"tokens": tokens}, cfg)
    per_layer = np.asarray(metrics["active_experts_per_layer"])
    assert per_layer.shape == (2,) and ((per_layer >= 1) & (per_layer <= 4)).all()
    np.testing.assert_allclose(float(metrics["active_experts"]), per_layer.mean(), rtol=1e-6)
    assert np.isfinite(float(loss)) and float(metrics["dynamic_loss"]) > 0


def test_config_validation():
    from jaxmoe.config import ConfigError, load_config

    cfg = load_config("configs/lm_tiny_topp.yaml")
    assert cfg.model.moe.router == "topp" and cfg.model.moe.router_options.top_p == 0.4
    with pytest.raises(ConfigError, match="max_experts_per_token"):
        load_config("configs/lm_tiny_topp.yaml", ["model.moe.router_options.max_experts_per_token=9"])
    with pytest.raises(ConfigError, match="top_p"):
        load_config("configs/lm_tiny_topp.yaml", ["model.moe.router_options.top_p=0"])
    with pytest.raises(ConfigError, match="router"):
        load_config("configs/lm_tiny_topp.yaml", ["model.moe.router=nope"])
