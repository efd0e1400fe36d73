"""THOR stochastic experts: random expert per layer and pass, two-pass consistency loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.decode.generate import generate_tokens
from jaxmoe.models import lm
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.routers import RouterInputs, get_router, thor
from jaxmoe.moe.routers.thor import ThorOptions
from routing_helpers import fast_init, tiny_cfg


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_consistency_loss_is_symmetric_kl_on_hand_example():
    l1 = np.array([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]], np.float32)
    l2 = np.array([[[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]], np.float32)
    p1, p2 = _softmax(l1.astype(np.float64)), _softmax(l2.astype(np.float64))
    kl = lambda a, b: (a * np.log(a / b)).sum(-1)
    per_token = 0.5 * (kl(p1, p2) + kl(p2, p1))  # == 1/2 sum (p1 - p2)(log p1 - log p2)
    np.testing.assert_allclose(per_token, 0.5 * ((p1 - p2) * (np.log(p1) - np.log(p2))).sum(-1))
    assert per_token[0, 1] == 0 and per_token[0, 0] > 0.5
    got = thor.consistency_loss(jnp.asarray(l1), jnp.asarray(l2))
    np.testing.assert_allclose(float(got), per_token.mean(), rtol=1e-6)
    # pad tokens do not count
    got = thor.consistency_loss(jnp.asarray(l1), jnp.asarray(l2), jnp.asarray([[1, 0]]))
    np.testing.assert_allclose(float(got), per_token[0, 0], rtol=1e-6)
    assert float(thor.consistency_loss(jnp.asarray(l1), jnp.asarray(l1))) == 0.0


route = jax.jit(thor.route, static_argnames=("cfg", "batch_shape"))


def _cfg(**options):
    return MoEConfig(num_experts=8, experts_per_token=1, router="thor", router_options=ThorOptions(**options))


def test_draw_granularity():
    x = jnp.zeros((4 * 6, 8))
    key = jax.random.PRNGKey(3)
    ids = lambda draw: np.asarray(route({}, x, _cfg(draw=draw), rng=key, batch_shape=(4, 6)).expert_ids)
    assert len(np.unique(ids("batch"))) == 1  # one expert for the whole pass
    seq = ids("sequence").reshape(4, 6)
    assert (seq == seq[:, :1]).all() and len(np.unique(seq[:, 0])) > 1  # constant within a row, differs across rows
    assert len(np.unique(ids("token"))) > 1
    r = route({}, x, _cfg(), rng=key, batch_shape=(4, 6))
    assert np.asarray(r.weights).tolist() == [[1.0]] * 24
    # disabled experts are never drawn; a forced expert always is
    mask = jnp.asarray([i == 5 for i in range(8)])
    cfg = _cfg(draw="token")
    for k in range(5):
        assert (np.asarray(route({}, x, cfg, rng=jax.random.PRNGKey(k), batch_shape=(4, 6),
                                 expert_mask=~mask).expert_ids) != 5).all()
    assert (np.asarray(route({}, x, cfg, rng=key, batch_shape=(4, 6), force_mask=mask).expert_ids) == 5).all()


@pytest.fixture(scope="module")
def model():
    cfg = tiny_cfg(router="thor", experts_per_token=1, balance_loss="none",
                   router_options=ThorOptions(consistency_coef=1.0))
    return cfg, fast_init(cfg, std=0.3)


def test_two_passes_differ_when_draws_differ(model):
    cfg, params = model
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 7)), jnp.int32)
    apply = jax.jit(lm.apply, static_argnames="cfg")
    runs = [apply(params, tokens, cfg, inputs=RouterInputs(rng=jax.random.PRNGKey(k))) for k in range(6)]
    draws = [tuple(np.asarray(a["expert_ids"])[:, 0, 0]) for _, a in runs]
    assert len(set(draws)) > 1
    for (la, _), da in zip(runs, draws):
        for (lb, _), db in zip(runs, draws):
            if da == db:  # same experts in every layer: identical outputs
                np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
            else:
                assert np.abs(np.asarray(la) - np.asarray(lb)).max() > 1e-4


def test_two_pass_loss(model):
    cfg, params = model
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 32, (2, 8)), jnp.int32)
    loss_fn = jax.jit(lm.loss_fn, static_argnames="cfg")
    apply = jax.jit(lm.apply, static_argnames="cfg")
    draws = lambda rng: [np.asarray(apply(params, tokens[:, :-1], cfg, inputs=RouterInputs(rng=r))[1]["expert_ids"])
                         for r in thor.pass_rngs(rng)]
    differ = lambda d: (d[0] != d[1]).any()
    rng = next(jax.random.PRNGKey(k) for k in range(20) if differ(draws(jax.random.PRNGKey(k))))
    loss, m = loss_fn(params, {"tokens": tokens}, cfg, rng)
    np.testing.assert_allclose(float(loss), float(m["ce_1"] + m["ce_2"] + m["consistency"]), rtol=1e-6)
    assert float(m["consistency"]) > 0  # the two passes met different experts
    # draws that agree give zero consistency loss: a model with one expert always agrees
    one = tiny_cfg(router="thor", num_experts=1, experts_per_token=1, balance_loss="none")
    _, m1 = loss_fn(fast_init(one, std=0.3), {"tokens": tokens}, one, rng)
    assert float(m1["consistency"]) == 0.0
    np.testing.assert_allclose(float(m1["ce_1"]), float(m1["ce_2"]), rtol=0)


def test_single_pass_ce_beside_the_two_pass_loss_and_as_eval_loss(model):
    """``ce`` is one stochastic pass (comparable with other routers); evaluation (rng=None,
    the trainer's eval_loss) is one pass with the inference draw, not the two-pass sum."""
    cfg, params = model
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 32, (2, 8)), jnp.int32)
    loss_fn = jax.jit(lm.loss_fn, static_argnames="cfg")
    loss, m = loss_fn(params, {"tokens": tokens}, cfg, jax.random.PRNGKey(5))
    assert float(m["ce"]) == float(m["ce_1"]) and float(m["loss_two_pass"]) == float(loss)
    np.testing.assert_allclose(float(m["ce_two_pass_mean"]), 0.5 * float(m["ce_1"] + m["ce_2"]), rtol=1e-6)
    assert float(loss) > 1.9 * float(m["ce"])  # the training loss counts two passes
    ev, em = loss_fn(params, {"tokens": tokens}, cfg, None)
    inf = dataclasses.replace(cfg, moe=get_router("thor").decode_config(cfg.moe))
    logits, _ = jax.jit(lm.apply, static_argnames="cfg")(params, tokens[:, :-1], inf,
                                                         inputs=RouterInputs(rng=jax.random.PRNGKey(0)))
    single = float(lm.cross_entropy(logits, tokens[:, 1:]))
    np.testing.assert_allclose(float(ev), single, rtol=1e-6)
    assert float(em["ce"]) == float(ev) and "ce_2" not in em
    assert abs(float(ev) - float(m["ce"])) < 0.5 * float(m["ce"])  # same scale as a training pass's CE


def test_random_inference_per_sequence(model):
    cfg, params = model
    seq_moe = dataclasses.replace(cfg.moe, router_options=ThorOptions(inference="sequence"))
    seq_cfg = dataclasses.replace(cfg, moe=seq_moe)
    prompt = jnp.asarray(np.random.default_rng(2).integers(0, 32, (3, 4)), jnp.int32)
    out = generate_tokens(params, prompt, seq_cfg, 5, jax.random.PRNGKey(0))
    # per-sequence draws: cached decoding equals a full forward that uses the same draws
    inf = dataclasses.replace(seq_cfg, moe=get_router("thor").decode_config(seq_cfg.moe))
    assert inf.moe.router_options.draw == "sequence"
    key = jax.random.fold_in(jax.random.PRNGKey(0), 0x7402)
    assert (get_router("thor").decode_rng(jax.random.PRNGKey(0), 3, inf.moe) == key).all()  # one key per sequence
    full = jnp.concatenate([prompt, out[:, :-1]], axis=1)
    logits, _ = jax.jit(lm.apply, static_argnames="cfg")(params, full, inf, inputs=RouterInputs(rng=key))
    np.testing.assert_array_equal(np.asarray(jnp.argmax(logits[:, 3:], -1)), np.asarray(out))
