"""Compressed experts: the last n of the top-k experts are replaced by IA3 vectors on the others."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.config import ConfigError, load_config
from jaxmoe.moe import layer
from jaxmoe.moe.config import MoEConfig
from jaxmoe.nn.init import unbox

D, F, N = 8, 6, 4


def _params(cfg, seed=0, std=0.5):
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: unbox(layer.init_moe(jax.random.PRNGKey(0), D, cfg)))
    return jax.tree.map(lambda s: (std * rng.standard_normal(s.shape)).astype(np.float32), shapes)


@functools.partial(jax.jit, static_argnames=("cfg", "dispatch"))
def _moe(params, x, cfg, dispatch=None, routing=None):
    return layer.moe(params, x, cfg, dispatch=dispatch, routing=routing)


CFG = MoEConfig(num_experts=N, experts_per_token=3, expert_ffn_dim=F, num_compressed_experts=1,
                num_shared_experts=1, shared_ffn_dim=4)
PLAIN = dataclasses.replace(CFG, num_compressed_experts=0)
X = jnp.asarray(np.random.default_rng(9).standard_normal((2, 5, D)), jnp.float32)


def test_init_ones_and_shapes():
    p = jax.jit(lambda k: unbox(layer.init_moe(k, D, CFG)))(jax.random.key(0, impl="rbg"))  # rbg: cheap to compile
    assert p["compressed"]["e_gate"].shape == (N, D) and p["compressed"]["e_down"].shape == (N, F)
    assert all((np.asarray(v) == 1).all() for v in p["compressed"].values())
    assert "compressed" not in jax.eval_shape(lambda: unbox(layer.init_moe(jax.random.PRNGKey(0), D, PLAIN)))


def test_zero_compressed_ignores_leftover_ia3_vectors():
    """n = 0 runs the plain path: IA3 vectors left in the params (random here) change nothing.
    (The compressed path itself is checked by hand below.)"""
    params = _params(CFG)
    plain = {k: v for k, v in params.items() if k != "compressed"}
    y0, a0 = _moe(params, X, PLAIN)
    y1, a1 = _moe(plain, X, PLAIN)
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(y1))
    np.testing.assert_array_equal(np.asarray(a0["expert_ids"]), np.asarray(a1["expert_ids"]))


def test_compressed_path_matches_hand_computation():
    """k = 3, n = 1 with a shared expert: for each token the two best experts are computed
    with the third one's IA3 vectors (its renormalised weight is 1) and weighted by their raw
    router probabilities; the third expert itself is never computed; the shared expert adds
    its plain SwiGLU."""
    params = _params(CFG, seed=3)
    params["compressed"] = jax.tree.map(lambda v: 1.0 + 0.5 * v, params["compressed"])
    y, aux = _moe(params, X, CFG)
    assert aux["expert_ids"].shape == (10, 2)  # only k - n experts reach the dispatch
    xt = np.asarray(X, np.float64).reshape(-1, D)
    p64 = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    silu = lambda z: z / (1 + np.exp(-z))
    logits = xt @ p64["router"]["kernel"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ex, cp, sh = p64["experts"], p64["compressed"], p64["shared"]
    for t in range(len(xt)):
        first, second, third = np.argsort(-probs[t], kind="stable")[:3]
        vg, vu, vd = cp["e_gate"][third], cp["e_up"][third], cp["e_down"][third]
        want = 0.0
        for e in (first, second):
            h = silu((xt[t] * vg) @ ex["gate"][e]) * ((xt[t] * vu) @ ex["up"][e]) * vd
            want = want + probs[t, e] * (h @ ex["down"][e])
        want = want + (silu(xt[t] @ sh["gate"]) * (xt[t] @ sh["up"])) @ sh["down"]
        np.testing.assert_allclose(np.asarray(y).reshape(-1, D)[t], want, rtol=2e-5, atol=1e-6)
        assert set(np.asarray(aux["expert_ids"])[t].tolist()) == {first, second}
    # and it is not the plain top-3 layer
    y_plain, _ = _moe({k: v for k, v in params.items() if k != "compressed"}, X,
                      dataclasses.replace(CFG, num_compressed_experts=0))
    assert np.abs(np.asarray(y_plain) - np.asarray(y)).max() > 1e-3


def test_ones_vectors_equal_plain_layer_on_the_computed_experts():
    params = _params(CFG)
    params["compressed"] = jax.tree.map(jnp.ones_like, params["compressed"])
    y, aux = _moe(params, X, CFG)
    assert aux["expert_ids"].shape == (10, 2)  # only k - n = 2 experts are computed
    _, full = _moe(params, X, PLAIN)
    # plain layer fed the same routing truncated to its first two experts
    from jaxmoe.moe.routers import route

    r = route(params["router"], X.reshape(10, D), CFG)
    r2 = r.replace(expert_ids=r.expert_ids[:, :2], weights=r.weights[:, :2])
    y_ref, _ = _moe(params, X, PLAIN, routing=r2)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(full["expert_ids"])[:, :2], np.asarray(aux["expert_ids"]))


def test_matches_numpy_reference_in_every_engine():
    cfg = dataclasses.replace(CFG, experts_per_token=4, num_compressed_experts=2, num_shared_experts=0)
    params = _params(cfg, seed=1)
    params["compressed"] = jax.tree.map(lambda v: 1.0 + 0.3 * v, params["compressed"])
    xt = np.asarray(X, np.float64).reshape(-1, D)
    logits = xt @ params["router"]["kernel"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ex = {k: np.asarray(v, np.float64) for k, v in params["experts"].items()}
    cp = {k: np.asarray(v, np.float64) for k, v in params["compressed"].items()}
    ref = []
    for t in range(len(xt)):
        order = np.argsort(-probs[t], kind="stable")
        main, aux = order[:2], order[2:]
        a = probs[t, aux] / probs[t, aux].sum()
        vg, vu, vd = (sum(a[j] * cp[name][e] for j, e in enumerate(aux)) for name in ("e_gate", "e_up", "e_down"))
        out = 0.0
        for e in main:
            g = (xt[t] * vg) @ ex["gate"][e]
            h = (g / (1 + np.exp(-g))) * ((xt[t] * vu) @ ex["up"][e]) * vd
            out = out + probs[t, e] * (h @ ex["down"][e])
        ref.append(out)
    ref = np.stack(ref)
    for engine in ("dropless", "dense", "capacity"):
        c = dataclasses.replace(cfg, capacity_factor=8.0) if engine == "capacity" else cfg  # nothing dropped
        y, _ = _moe(params, X, c, dispatch=engine)
        np.testing.assert_allclose(np.asarray(y).reshape(-1, D), ref, rtol=2e-5, atol=1e-6, err_msg=engine)


def test_ia3_vectors_get_gradients():
    params = _params(CFG)
    g = jax.jit(jax.grad(lambda p: (_moe(p, X, CFG)[0] ** 2).sum()))(params)
    assert all(float(jnp.abs(v).max()) > 0 for v in g["compressed"].values())


def test_config_validation():
    cfg = load_config("configs/lm_tiny_compressed.yaml")
    assert cfg.model.moe.num_compressed_experts == 1 and cfg.model.moe.experts_per_token == 3
    with pytest.raises(ConfigError, match="num_compressed_experts"):
        load_config("configs/lm_tiny_compressed.yaml", ["model.moe.num_compressed_experts=3"])


CPU_OVERRIDES = ["model.vocab_size=259", "model.embed_dim=32", "model.num_layers=2", "model.num_heads=2",
                 "model.num_kv_heads=2", "model.max_seq_len=64", "model.moe.num_experts=16",
                 "model.moe.expert_ffn_dim=16", "model.dtype=float32", "model.remat=none", "data.seq_len=16",
                 "train.batch_size=2", "mesh.expert=1"]


def test_olmoe_compressed_config_is_olmoe_shaped_with_half_the_active_experts_compressed():
    full = load_config("configs/olmoe_compressed.yaml")
    base = load_config("configs/olmoe_1b_7b.yaml")
    m = full.model
    assert (m.embed_dim, m.num_layers, m.moe.num_experts, m.moe.experts_per_token, m.moe.expert_ffn_dim) == \
        (2048, 16, 64, 8, 1024)
    assert m.qk_norm and m.qk_norm_scope == "full" and not m.moe.norm_topk and m.moe.num_shared_experts == 0
    assert m.moe.num_compressed_experts == m.moe.experts_per_token // 2
    assert dataclasses.replace(m, moe=dataclasses.replace(m.moe, num_compressed_experts=0)) == base.model


def test_olmoe_compressed_fine_tunes_from_plain_params_on_cpu():
    """The documented recipe: plain (imported) params + IA3 ones -> the compressed model's
    params; a few train steps on CPU with the tiny overrides."""
    import optax

    from jaxmoe.models import lm
    from jaxmoe.train.step import make_train_step
    from jaxmoe.train.state import TrainState
    from routing_helpers import fast_init

    cfg = load_config("configs/olmoe_compressed.yaml", CPU_OVERRIDES)
    plain_cfg = dataclasses.replace(cfg.model, moe=dataclasses.replace(cfg.model.moe, num_compressed_experts=0))
    plain = fast_init(plain_cfg)
    params = layer.with_compressed_vectors(plain)
    want = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), cfg.model))
    assert jax.tree.structure(params) == jax.tree.structure(want)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)))
    tx = optax.adam(1e-3)
    step = jax.jit(make_train_step(lambda p, b, r: lm.loss_fn(p, b, cfg.model, r), tx))
    state = TrainState.create(params, tx, 0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 259, (2, 17)), jnp.int32)
    for _ in range(3):
        state, metrics = step(state, {"tokens": tokens})
        assert np.isfinite(float(metrics["loss"]))
    moved = state.params["groups"][0][0]["ffn"]["compressed"]["e_gate"]
    assert float(jnp.abs(moved - 1.0).max()) > 0  # the IA3 vectors train
