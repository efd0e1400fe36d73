"""Moirai-MoE style family: shapes, causality, centroid gating, the masked NLL loss,
KV-cached sampling == full recompute, scaling invariance and monotone quantiles, training."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmoe.config import Config, ConfigError, load_config
from jaxmoe.decode.forecast import DEFAULT_QUANTILES, get_forecaster
from jaxmoe.decode.forecast.moirai_moe import forecast_moirai
from jaxmoe.models import distributions as dist
from jaxmoe.models import get_model, param_counts
from jaxmoe.models import moirai_moe as mm
from jaxmoe.moe.kmeans import kmeans
from jaxmoe.nn.attention import rope_part
from jaxmoe.train.optimizer import decay_mask

P = 4  # patch size of the tiny configs


def tiny_cfg(*extra):
    return load_config(None, ["model.family=moirai_moe", "model.embed_dim=16", "model.num_layers=2",
                              "model.num_heads=2", "model.moe.num_experts=4", "model.moe.experts_per_token=2",
                              "model.moe.expert_ffn_dim=16", f"model.patch_size={P}", "data.seq_len=16",
                              *extra]).model


def fast_init(cfg, seed=0):
    """Params like ``mm.init`` (normal(0, init_std) kernels, zero biases, unit norm scales)
    drawn with numpy from ``jax.eval_shape(mm.init)``: compiling the real init (one threefry
    per leaf) costs ~9 s of CPU, more than all the model code under test."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name == "scale":
            return jnp.ones(s.shape, s.dtype)
        if name == "bias":
            return jnp.zeros(s.shape, s.dtype)
        std = 1.0 if name == "centroids" else cfg.init_std
        return jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, jax.eval_shape(lambda: mm.init(jax.random.PRNGKey(0), cfg)))


CFG = tiny_cfg()
PARAMS = fast_init(CFG)
_apply = jax.jit(mm.apply, static_argnums=2)
_loss = jax.jit(mm.loss_fn, static_argnums=2)


def test_registry_param_shapes_and_axes():
    assert get_model("moirai_moe") is mm
    r = dist.num_raw_params(CFG.mixture_components)
    assert r == 12
    p = PARAMS
    chex.assert_shape(p["embed"]["in"]["kernel"], (2 * P, 16))
    chex.assert_shape(p["embed"]["res"]["kernel"], (2 * P, 16))
    chex.assert_shape(p["embed"]["feat"]["kernel"], (16, 16))
    chex.assert_shape(p["layers"]["mixer"]["q"]["kernel"], (2, 16, 2, 8))
    chex.assert_shape(p["layers"]["mixer"]["q_norm"]["scale"], (2, 8))
    assert "bias" not in p["layers"]["mixer"]["q"] and "bias" not in p["layers"]["mixer"]["o"]
    chex.assert_shape(p["layers"]["ffn"]["router"]["kernel"], (2, 16, 4))
    chex.assert_shape(p["layers"]["ffn"]["experts"]["gate"], (2, 4, 16, 16))
    assert "shared" not in p["layers"]["ffn"]
    chex.assert_shape(p["head"]["kernel"], (16, P * r))
    axes = mm.param_axes(CFG)
    assert axes["layers"]["ffn"]["experts"]["gate"] == ("layers", "expert", "embed", "expert_mlp")
    assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.structure(p)
    counts = param_counts(CFG)
    assert counts["total"] - counts["active"] == 2 * 2 * 3 * 16 * 16  # 2 idle experts x 2 layers


def test_apply_shapes_finite_and_causal():
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, P))
    ones = jnp.ones(x.shape)
    out, aux = _apply(PARAMS, x, CFG, ones)
    for name in dist.components_of(out):
        for leaf in out[name].values():
            chex.assert_shape(leaf, (3, 4, P))
    chex.assert_shape(out["weights_logits"], (3, 4, P, 4))
    chex.assert_tree_all_finite(out)
    chex.assert_shape(aux["load"], (2, 4))
    assert np.isfinite(float(aux["aux_loss"])) and float(aux["aux_loss"]) > 0
    # causal over patch tokens: changing token 3 leaves tokens 0..2 unchanged
    out2, _ = _apply(PARAMS, x.at[:, 2].set(9.0), CFG, ones)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(out2)):
        np.testing.assert_allclose(np.asarray(a)[:, :2], np.asarray(b)[:, :2], rtol=1e-5, atol=1e-6)
        assert not np.allclose(np.asarray(a)[:, 2:], np.asarray(b)[:, 2:])


def test_partial_rope_rotates_half_the_head():
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 3, 2, 8))
    pos = jnp.arange(3)[None] + 5
    y = jax.jit(rope_part, static_argnums=(2, 3, 4))(x, pos, 10000.0, None, mm.rope_dims(8))
    np.testing.assert_array_equal(np.asarray(y[..., 4:]), np.asarray(x[..., 4:]))
    assert not np.allclose(np.asarray(y[..., :4]), np.asarray(x[..., :4]))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(y), axis=-1), np.linalg.norm(np.asarray(x), axis=-1),
                               rtol=1e-5)
    assert mm.rope_dims(64) == 32 and mm.rope_dims(6) == 2


def test_centroid_gating():
    x = jax.random.normal(jax.random.PRNGKey(3), (10, 16))
    c = jax.random.normal(jax.random.PRNGKey(4), (4, 16))
    d = np.linalg.norm(np.asarray(x)[:, None] - np.asarray(c)[None], axis=-1)
    route = jax.jit(mm.centroid_routing, static_argnums=(2, 3))
    far, near = route(x, c, 2, False), route(x, c, 2, True)
    np.testing.assert_array_equal(np.sort(np.asarray(far.expert_ids), -1), np.sort(np.argsort(-d, -1)[:, :2], -1))
    np.testing.assert_array_equal(np.sort(np.asarray(near.expert_ids), -1), np.sort(np.argsort(d, -1)[:, :2], -1))
    top = np.take_along_axis(d, np.asarray(far.expert_ids), -1)
    want = np.exp(top) / np.exp(top).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(far.weights), want, rtol=1e-5)

    cfg = tiny_cfg("model.moirai_gating=centroid")
    shapes = jax.eval_shape(lambda: mm.init(jax.random.PRNGKey(0), cfg))
    assert "router" not in shapes["layers"]["ffn"]
    assert shapes["layers"]["ffn"]["centroids"].shape == (2, 4, 16)
    assert mm.param_axes(cfg)["layers"]["ffn"]["centroids"] == ("layers", "expert", "embed")
    p = fast_init(cfg, seed=1)
    layer0 = jax.tree.map(lambda a: a[0], p["layers"])
    h = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 16))
    pos = jnp.broadcast_to(jnp.arange(3), (2, 3))

    def block_out(lp):
        y, _, stats = mm._block(lp, h, cfg, mm.moe_config(cfg), pos, None, None)
        return jnp.sum(y ** 2), stats["expert_ids"]

    grads, ids = jax.jit(jax.grad(block_out, has_aux=True))(layer0)
    assert float(jnp.abs(grads["ffn"]["centroids"]).max()) == 0.0  # fixed: no gradient
    assert float(jnp.abs(grads["ffn"]["experts"]["gate"]).max()) > 0.0
    chex.assert_shape(ids, (6, 2))
    mask = decay_mask(p)  # ... and no weight decay
    assert not mask["layers"]["ffn"]["centroids"] and mask["layers"]["ffn"]["experts"]["gate"]
    values = jax.random.normal(jax.random.PRNGKey(6), (2, 20))
    p2 = mm.set_centroids(p, cfg, values, None, jax.random.PRNGKey(6), iters=5)
    chex.assert_shape(p2["layers"]["ffn"]["centroids"], (2, 4, 16))
    chex.assert_tree_all_finite(p2)
    assert not np.allclose(np.asarray(p2["layers"]["ffn"]["centroids"]), np.asarray(p["layers"]["ffn"]["centroids"]))
    # k-means recovers well separated clusters
    pts = jnp.concatenate([jnp.full((5, 2), -10.0), jnp.full((5, 2), 10.0)]) + 0.01 * jax.random.normal(
        jax.random.PRNGKey(8), (10, 2))
    cents = np.sort(np.asarray(kmeans(pts, 2, jax.random.PRNGKey(9), iters=5))[:, 0])
    np.testing.assert_allclose(cents, [-10.0, 10.0], atol=0.05)


def _window_batch(seed=0, b=3, w=20):
    rng = np.random.default_rng(seed)
    t = np.arange(w)
    values = (5.0 + 3.0 * np.sin(2 * np.pi * t / 7.0)[None] + rng.normal(0, 0.3, (b, w))).astype(np.float32)
    mask = np.ones((b, w), np.float32)
    mask[0, [1, 6, 13, 17]] = 0.0  # missing inputs and targets
    mask[1, :5] = 0.0  # left padding
    mask[2, 16:] = 0.0  # a whole target patch missing
    values[mask == 0] = 0.0
    return values, mask


def test_prepare_batch_matches_numpy():
    values, mask = _window_batch()
    inputs, in_mask, targets, t_mask = jax.device_get(jax.jit(mm.prepare_batch, static_argnums=2)(values, mask, P))
    chex.assert_shape([inputs, in_mask, targets, t_mask], (3, 4, P))
    for i in range(3):
        # whole patches of leading padding move to the end (row 1: 5 missing -> shift by 4)
        shift = (int(np.argmax(mask[i, :16] > 0)) // P) * P
        v = np.concatenate([values[i, shift:], np.zeros(shift, np.float32)])
        mk = np.concatenate([mask[i, shift:], np.zeros(shift, np.float32)])
        obs = v[:16][mk[:16] > 0]
        z = np.where(mk > 0, (v - obs.mean()) / obs.std(), 0.0).reshape(5, P)
        np.testing.assert_allclose(inputs[i], z[:4], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(targets[i], z[1:], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(t_mask[i], mk.reshape(5, P)[1:])
        np.testing.assert_array_equal(in_mask[i], mk.reshape(5, P)[:4])
    assert in_mask[1, 0, 0] == 0 and in_mask[1, 0, 1:].all() and not t_mask[1, -1].any()


def test_loss_ignores_masked_points():
    values, mask = _window_batch()
    loss, metrics = _loss(PARAMS, {"values": values, "mask": mask}, CFG)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), float(metrics["nll"] + metrics["aux_loss"]), rtol=1e-6)
    changed = values.copy()
    changed[mask == 0] = np.random.default_rng(1).normal(0, 100.0, int((mask == 0).sum()))
    loss2, _ = _loss(PARAMS, {"values": changed, "mask": mask}, CFG)
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
    nan_values = values.copy()
    nan_values[mask == 0] = np.nan  # NaNs with mask 0: never propagate
    loss3, _ = _loss(PARAMS, {"values": nan_values, "mask": mask}, CFG)
    np.testing.assert_allclose(float(loss3), float(loss), rtol=1e-6)
    # an observed point does count
    moved = values.copy()
    moved[0, 10] += 3.0
    loss4, _ = _loss(PARAMS, {"values": moved, "mask": mask}, CFG)
    assert abs(float(loss4) - float(loss)) > 1e-4


def test_loss_is_masked_mean_nll_by_hand():
    values, mask = _window_batch(seed=3)
    inputs, in_mask, targets, t_mask = mm.prepare_batch(values, mask, P)
    out, aux = _apply(PARAMS, inputs, CFG, in_mask)
    lp = np.asarray(jax.jit(dist.mixture_log_prob)(out, targets))
    m = np.asarray(t_mask)
    want = -(lp * m).sum() / m.sum() + float(aux["aux_loss"])
    loss, _ = _loss(PARAMS, {"values": values, "mask": mask}, CFG)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def _context():
    rng = np.random.default_rng(0)
    t = np.arange(22)
    ctx = np.stack([10.0 + 2.0 * np.sin(2 * np.pi * t / 6.0), 0.5 * t + rng.normal(0, 0.5, 22)])
    ctx[0, :3] = np.nan  # missing start
    ctx[1, 9] = np.nan  # missing inside
    return ctx


def _forecast(context, **kw):
    return forecast_moirai(PARAMS, CFG, context, 10, num_samples=100, rng=jax.random.PRNGKey(7), **kw)


def test_cached_sampling_equals_full_recompute():
    ctx = _context()
    cached = _forecast(ctx)
    full = _forecast(ctx, use_cache=False)
    chex.assert_shape(cached["samples"], (2, 100, 10))
    np.testing.assert_allclose(np.asarray(cached["samples"]), np.asarray(full["samples"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(cached["quantiles"]), np.asarray(full["quantiles"]), rtol=1e-4, atol=1e-4)


def test_forecast_shapes_quantiles_and_scaling_invariance():
    ctx = _context()
    out = _forecast(ctx)
    levels = out["quantile_levels"]
    assert levels == DEFAULT_QUANTILES
    chex.assert_shape(out["quantiles"], (9, 2, 10))
    chex.assert_shape([out["mean"], out["median"]], (2, 10))
    chex.assert_tree_all_finite({k: out[k] for k in ("mean", "median", "quantiles", "samples")})
    q = np.asarray(out["quantiles"])
    assert np.all(np.diff(q, axis=0) >= 0)  # monotone in the level
    np.testing.assert_allclose(q[levels.index(0.5)], np.asarray(out["median"]), rtol=1e-6)
    assert np.std(np.asarray(out["samples"]), axis=1).min() > 0  # the paths differ
    for c in (8.0, 0.25):  # powers of two: scaling is exact in floating point
        scaled = _forecast(ctx * c)
        np.testing.assert_allclose(np.asarray(scaled["quantiles"]), c * q, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(scaled["mean"]), c * np.asarray(out["mean"]), rtol=1e-5, atol=1e-6)
    again = _forecast(ctx)  # same rng -> same paths
    np.testing.assert_array_equal(np.asarray(again["samples"]), np.asarray(out["samples"]))
    hook = get_forecaster(CFG, PARAMS, rng=jax.random.PRNGKey(7)).quantiles(ctx, 10)
    np.testing.assert_allclose(hook[0.9], q[-1], rtol=1e-6)
    # `jaxmoe forecast` / `evaluate` take the median as the point forecast of a sampled model
    cli = get_forecaster(Config(model=CFG), PARAMS).forecast(ctx, 10)
    default_rng = forecast_moirai(PARAMS, CFG, ctx, 10)  # rng None -> PRNGKey(0), as the CLI
    np.testing.assert_allclose(cli["mean"], np.asarray(default_rng["median"]), rtol=1e-6)
    assert not np.allclose(cli["mean"], np.asarray(default_rng["mean"]))
    assert sorted(cli["quantiles"]) == list(levels)


def test_forecast_errors():
    with pytest.raises(ValueError, match="positive integer"):
        forecast_moirai(PARAMS, CFG, np.ones((1, 8)), 0)
    with pytest.raises(ValueError, match="no observed"):
        forecast_moirai(PARAMS, CFG, np.array([[1.0, 2.0], [np.nan, np.nan]]), 3)


def test_config_validation():
    with pytest.raises(ConfigError, match="multiple of model.patch_size"):
        tiny_cfg("data.seq_len=18")
    with pytest.raises(ConfigError, match="mixture_components"):
        tiny_cfg("model.mixture_components=[log_normal, negative_binomial]")
    with pytest.raises(ConfigError, match="mixture_components"):
        tiny_cfg("model.mixture_components=[student_t, laplace]")
    cfg = load_config("configs/moirai_moe_small.yaml").model
    assert (cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.patch_size) == (384, 6, 6, 16)
    assert (cfg.moe.num_experts, cfg.moe.experts_per_token) == (32, 2)


def test_loss_decreases_on_a_tiny_batch():
    t = np.arange(24)
    rng = np.random.default_rng(0)
    phase = rng.uniform(0, 2 * np.pi, (8, 1))
    values = (np.sin(2 * np.pi * t / 8.0 + phase) + 0.05 * rng.normal(size=(8, 24))).astype(np.float32)
    batch = {"values": values, "mask": np.ones_like(values)}
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        (loss, _), grads = jax.value_and_grad(mm.loss_fn, has_aux=True)(params, batch, CFG)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state = PARAMS, tx.init(PARAMS)
    losses = []
    for _ in range(15):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.5, losses
