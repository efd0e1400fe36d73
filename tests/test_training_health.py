"""Clipping and guards that cannot hide a gradient blow-up, and the training-health signals.

A finite but huge gradient leaf must be clipped correctly (a naive float32 global norm
overflows to inf and clipping then multiplies every update by 0); a norm that does not fit
float32 counts as a non-finite step, named by its worst leaf.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmoe.config import TrainConfig
from jaxmoe.train.guards import HealthMonitor, load_entropy
from jaxmoe.train.metrics import read_jsonl
from jaxmoe.train.optimizer import clip_by_safe_global_norm, make_optimizer, safe_global_norm
from jaxmoe.train.state import TrainState
from jaxmoe.train.step import make_train_step


def test_safe_global_norm_does_not_overflow():
    tree = {"a": jnp.full((4,), 1e30, jnp.float32), "b": jnp.ones((3, 2), jnp.float32)}
    assert not math.isfinite(float(optax.tree.norm(tree)))  # the naive norm overflows
    np.testing.assert_allclose(float(safe_global_norm(tree)), 2e30, rtol=1e-6)
    small = {"a": jnp.arange(5.0), "b": {"c": jnp.full((2, 2), -3.0)}}
    np.testing.assert_allclose(float(safe_global_norm(small)), float(optax.tree.norm(small)), rtol=1e-6)
    assert float(safe_global_norm({"a": jnp.zeros(3)})) == 0.0
    assert math.isinf(float(safe_global_norm({"a": jnp.array([1.0, jnp.inf])})))
    assert math.isnan(float(safe_global_norm({"a": jnp.array([1.0, jnp.nan])})))
    assert math.isinf(float(safe_global_norm({"a": jnp.full((4,), 3e38, jnp.float32)})))  # norm 6e38 > max


def test_clipping_a_huge_finite_leaf_is_correct_not_zero():
    grads = {"huge": jnp.full((4,), 1e30, jnp.float32), "small": jnp.ones((3,), jnp.float32)}
    naive, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    assert float(jnp.abs(naive["huge"]).max()) == 0.0  # what used to happen: every update zeroed
    clipped, _ = clip_by_safe_global_norm(1.0).update(grads, None)
    np.testing.assert_allclose(float(safe_global_norm(clipped)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(clipped["huge"]), 0.5, rtol=1e-5)
    small = {"x": jnp.array([0.3, 0.4])}  # norm 0.5 < 1: unchanged
    out, _ = clip_by_safe_global_norm(1.0).update(small, None)
    np.testing.assert_array_equal(np.asarray(out["x"]), np.asarray(small["x"]))


def _one_step(scale):
    """A train step whose gradient for leaf "w" is ``scale`` per element."""
    params = {"v": jnp.ones((3,), jnp.float32), "w": jnp.ones((4,), jnp.float32)}
    tx = make_optimizer(TrainConfig(learning_rate=0.1, warmup_steps=0, grad_clip=1.0, weight_decay=0.0))

    def loss_fn(p, batch, rng):
        return jnp.sum(p["w"]) * batch["scale"] + jnp.sum(p["v"] ** 2), {}

    step = jax.jit(make_train_step(loss_fn, tx))
    state = TrainState.create(params, tx, 0)
    new, metrics = step(state, {"scale": jnp.float32(scale)})
    return state, new, jax.device_get(metrics)


def test_train_step_huge_finite_gradient_is_applied_not_zeroed():
    _, new, m = _one_step(1e30)
    assert int(m["skipped"]) == 0
    np.testing.assert_allclose(float(m["grad_norm"]), 2e30, rtol=1e-5)
    assert m["worst_leaf"] == 1  # flatten order: v, w
    assert math.isinf(float(m["worst_leaf_norm"]))  # its own sum of squares overflows; the global norm does not
    moved = np.abs(np.asarray(new.params["w"]) - 1.0)
    assert (moved > 1e-3).all(), "the update of the huge leaf must not be zeroed"
    assert float(m["update_ratio"]) > 0


def test_train_step_norm_overflow_is_a_skipped_step():
    state, new, m = _one_step(3e38)  # 4 elements of 3e38: the norm (6e38) does not fit float32
    assert int(m["skipped"]) == 1 and int(new.skipped) == 1
    assert math.isinf(float(m["grad_norm"]))
    assert m["worst_leaf"] == 1
    np.testing.assert_array_equal(np.asarray(new.params["w"]), np.asarray(state.params["w"]))


def test_describe_names_the_worst_leaf():
    from jaxmoe.train.guards import describe_nonfinite

    params = {"v": np.zeros(3), "w": np.zeros(4)}
    msg = describe_nonfinite(0.5, 1, params, {}, grad_norm=math.inf, leaf_norm=math.inf)
    assert "gradient norm is inf" in msg and "largest in w" in msg
    msg = describe_nonfinite(0.5, 0, params, {}, grad_norm=math.nan, leaf_norm=math.nan)
    assert "gradient of v is not finite" in msg


def test_load_entropy():
    assert load_entropy(np.array([[0.25, 0.25, 0.25, 0.25]])) == [1.0]
    assert load_entropy(np.array([[1.0, 0.0, 0.0, 0.0]])) == [0.0]
    e = load_entropy(np.array([[0.5, 0.5, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]]))
    np.testing.assert_allclose(e[0], 0.5)
    assert 0 < e[1] < 1


def test_health_monitor_warns_once_on_flat_loss_and_frozen_load():
    hm = HealthMonitor(warmup=5, window=20)
    out = []
    for step in range(1, 60):
        out += hm.update(step, 1.0 + 0.001 * ((-1) ** step), np.full((2, 4), 0.25))
    assert sum("loss has not moved" in m for m in out) == 1
    assert sum("router load has not moved" in m for m in out) == 1
    hm = HealthMonitor(warmup=5, window=20)
    out = []
    for step in range(1, 60):
        load = np.array([[0.25 + 0.002 * step, 0.25 - 0.002 * step, 0.25, 0.25]])
        out += hm.update(step, 2.0 - 0.02 * step, load)
    assert out == []  # a falling loss and a moving load: no warning
    assert HealthMonitor(warmup=0, window=0).update(10, 1.0, np.ones((1, 2))) == []


def test_train_records_health_metrics(tmp_path):
    from jaxmoe.config import load_config
    from jaxmoe.train import train

    cfg = load_config("configs/lm_tiny.yaml", [
        "model.embed_dim=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.moe.num_experts=4", "model.moe.expert_ffn_dim=16", "model.moe.dense_ffn_dim=32",
        "model.moe.shared_ffn_dim=16", "data.seq_len=32", "train.batch_size=8", "train.log_every=1",
        "train.warmup_steps=1", "train.progress=false", "train.eval_batches=1", "train.steps=8",
        f"train.output_dir={tmp_path / 'run'}"])
    summary = train(cfg)
    recs = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert all({"grad_norm", "update_ratio", "load_entropy", "worst_grad_leaf", "worst_grad_norm"} <= set(r)
               for r in recs)
    assert all(len(r["load_entropy"]) >= 1 for r in recs)
    assert summary["skipped_steps"] == 0
    assert summary["max_grad_norm"] == max(r["grad_norm"] for r in recs) > 0


def test_low_precision_adam_matches_optax_in_float32_and_tracks_it_in_bfloat16():
    from jaxmoe.train.optimizer import scale_by_adam_low_precision

    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
    ref, ours, low = optax.scale_by_adam(0.9, 0.95, 1e-8), scale_by_adam_low_precision(0.9, 0.95, 1e-8, jnp.float32), \
        scale_by_adam_low_precision(0.9, 0.95, 1e-8, jnp.bfloat16)
    s_ref, s_ours, s_low = ref.init(params), ours.init(params), low.init(params)
    assert jax.tree.leaves(s_low.mu)[0].dtype == jnp.bfloat16
    for _ in range(5):
        g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        u_ref, s_ref = ref.update(g, s_ref)
        u_ours, s_ours = ours.update(g, s_ours)
        u_low, s_low = low.update(g, s_low)
        for x, y in zip(jax.tree.leaves(u_ref), jax.tree.leaves(u_ours)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
        for x, y in zip(jax.tree.leaves(u_ref), jax.tree.leaves(u_low)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0.05, atol=0.02)
    tx = make_optimizer(TrainConfig(optimizer_state_dtype="bfloat16"))
    state = tx.init(params)
    assert any(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(state))
