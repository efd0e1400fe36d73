"""DeepSeek-V3 auxiliary-loss-free balancing (the router's post-update hook) and router jitter."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmoe.config import Config, ConfigError
from jaxmoe.models import lm
from jaxmoe.moe import layer
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.routers import RouterInputs, get_router
from jaxmoe.train.step import make_train_step
from jaxmoe.train.state import TrainState
from jaxmoe.train.tasks import make_task
from routing_helpers import fast_init, tiny_cfg

RATE = 0.01
SKEW = np.array([0.3, 0.15, 0.0, 0.0], np.float32)  # experts 0 and 1 win most tokens at first


def _skewed():
    """Two MoE layers whose (random, spread-out) routers are skewed by a selection bias."""
    cfg = tiny_cfg(selection_bias=True, bias_update_rate=RATE, balance_loss="none")
    params = fast_init(cfg, std=0.02)
    rng = np.random.default_rng(1)
    for g in params["groups"]:
        for unit in g:
            router = unit["ffn"]["router"]
            router["selection_bias"] = np.broadcast_to(SKEW, router["selection_bias"].shape).copy()
            router["kernel"] = rng.standard_normal(router["kernel"].shape).astype(np.float32)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 17)), jnp.int32)
    return cfg, params, {"tokens": tokens}


def test_router_hook_is_the_published_sign_update():
    cfg = MoEConfig(num_experts=4, selection_bias=True, bias_update_rate=0.1)
    router = get_router("topk")
    assert router.updates_after_step(cfg)
    assert not router.updates_after_step(dataclasses.replace(cfg, bias_update_rate=0.0))
    bias = jnp.asarray([0.2, 0.0, -0.1, 0.0])
    new = router.post_update({"kernel": jnp.zeros((3, 4)), "selection_bias": bias},
                             {"load": jnp.asarray([0.5, 0.25, 0.0, 0.25])}, cfg)
    assert set(new) == {"selection_bias"}  # the kernel is the optimizer's
    np.testing.assert_allclose(np.asarray(new["selection_bias"]), [0.1, 0.0, 0.0, 0.0], atol=1e-7)


def test_skewed_router_load_evens_out_over_train_steps():
    cfg, params, batch = _skewed()
    tx = optax.sgd(0.0)  # only the hook moves anything: the bias gets no gradient anyway
    step = jax.jit(make_train_step(lambda p, b, r: lm.loss_fn(p, b, cfg, r), tx,
                                   post_update=lambda before, after, m: lm.post_update(before, after, m, cfg)))
    state = TrainState.create(params, tx, 0)
    max_load = []
    for _ in range(40):
        state, m = step(state, batch)
        max_load.append(float(m["max_load"]))
    assert max_load[0] > 1.7  # the busiest expert takes 1.7x the mean load or more
    assert max(max_load[-10:]) < 1.35, max_load
    bias = np.asarray(state.params["groups"][0][0]["ffn"]["router"]["selection_bias"])
    assert bias[:, 0].max() < SKEW[0] and bias[:, 2].min() > SKEW[2]  # overloaded down, underloaded up
    # every step moves each bias by exactly +-rate (or 0 at the mean)
    steps = np.abs(bias - SKEW) / RATE
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)


def test_bias_gets_no_gradient_and_no_weight_decay():
    cfg, params, batch = _skewed()
    grads = jax.jit(jax.grad(lambda p: lm.loss_fn(p, batch, cfg, jax.random.PRNGKey(0))[0]))(params)
    assert float(jnp.abs(grads["groups"][0][0]["ffn"]["router"]["selection_bias"]).max()) == 0.0
    tx = optax.adamw(1e-2, weight_decay=0.5)  # decay would shrink the bias; the hook's value replaces it
    step = jax.jit(make_train_step(lambda p, b, r: lm.loss_fn(p, b, cfg, r), tx,
                                   post_update=lambda before, after, m: lm.post_update(before, after, m, cfg)))
    state, m = step(TrainState.create(params, tx, 0), batch)
    bias = np.asarray(state.params["groups"][0][0]["ffn"]["router"]["selection_bias"])
    load = np.asarray(m["load"])  # [moe layers, experts]
    expected = SKEW + RATE * np.sign(load.mean(-1, keepdims=True) - load)
    np.testing.assert_allclose(bias, expected, atol=1e-6)


def test_task_wires_the_hook_and_it_is_a_no_op_without_the_rate():
    cfg = Config(model=tiny_cfg(selection_bias=True, bias_update_rate=RATE))
    task = make_task(cfg, with_data=False)
    assert task.post_update is not None
    off = tiny_cfg(selection_bias=True)
    p = fast_init(off)
    assert lm.post_update(p, p, {"load": jnp.ones((2, 4))}, off) is p
    with pytest.raises(ConfigError, match="selection_bias"):
        tiny_cfg(bias_update_rate=0.1).moe.validate(2)


# ------------------------------------------------------------------------- router jitter


def test_router_jitter_noise_on_the_router_input_only_in_training():
    cfg = MoEConfig(num_experts=4, experts_per_token=2, expert_ffn_dim=8, router_jitter=0.3)
    key = jax.random.PRNGKey(0)
    from jaxmoe.nn.init import unbox

    params = unbox(layer.init_moe(key, 8, cfg, std=0.5))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 8))
    y_plain, a_plain = layer.moe(params, x, cfg)
    y_same, _ = layer.moe(params, x, dataclasses.replace(cfg, router_jitter=0.0))
    np.testing.assert_array_equal(np.asarray(y_plain), np.asarray(y_same))  # no key: no jitter (evaluation)
    rng = jax.random.PRNGKey(7)
    y_j, a_j = layer.moe(params, x, cfg, inputs=RouterInputs(jitter_rng=rng))
    assert not np.allclose(np.asarray(a_j["expert_weights"]), np.asarray(a_plain["expert_weights"]))
    # the same as routing the jittered input, with the experts computing on the clean input
    xt = x.reshape(-1, 8)
    routing = get_router("topk").route(params["router"], layer.router_jitter(xt, rng, 0.3), cfg)
    y_ref, _ = layer.moe(params, x, cfg, routing=routing)
    np.testing.assert_allclose(np.asarray(y_j), np.asarray(y_ref), rtol=1e-6, atol=1e-6)
    noise = np.asarray(layer.router_jitter(jnp.ones((1000, 4)), rng, 0.3))
    assert 0.7 <= noise.min() and noise.max() <= 1.3 and abs(noise.mean() - 1.0) < 0.02


def test_lm_loss_jitters_only_with_a_key():
    cfg = tiny_cfg(router_jitter=0.5)
    params = fast_init(cfg, std=0.3)
    batch = {"tokens": jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 9)), jnp.int32)}
    loss_fn = jax.jit(lm.loss_fn, static_argnames="cfg")
    plain = float(loss_fn(params, batch, dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, router_jitter=0.0)),
                          None)[0])
    assert float(loss_fn(params, batch, cfg, None)[0]) == plain  # evaluation: no jitter
    a, b = (float(loss_fn(params, batch, cfg, jax.random.PRNGKey(s))[0]) for s in (1, 2))
    assert a != plain and a != b
    with pytest.raises(ConfigError, match="router_jitter"):
        tiny_cfg(router_jitter=1.5).moe.validate(2)
