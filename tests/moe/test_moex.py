"""MoE-X: ReLU experts (an equivalent wide sparse MLP) and sparsity-aware routing."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.config import ConfigError, load_config
from jaxmoe.moe import layer
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.routers import route
from jaxmoe.moe.routers.moex import MoEXOptions, expected_active_fraction
from jaxmoe.nn.init import unbox

D, F, N = 16, 8, 4


def _params(cfg, seed=0, std=0.5):
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: unbox(layer.init_moe(jax.random.PRNGKey(0), D, cfg)))
    return jax.tree.map(lambda s: (std * rng.standard_normal(s.shape)).astype(np.float32), shapes)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _moe(params, x, cfg):
    return layer.moe(params, x, cfg)


def test_moe_layer_is_an_equivalent_wide_sparse_mlp():
    cfg = MoEConfig(num_experts=N, experts_per_token=2, expert_ffn_dim=F, router="moex", expert_activation="relu")
    params = _params(cfg)
    x = np.random.default_rng(1).standard_normal((3, 7, D)).astype(np.float32)
    y, aux = _moe(params, jnp.asarray(x), cfg)
    # the wide MLP: all experts' units side by side, each unit gated by its expert's routing weight
    ex = {k: np.asarray(v, np.float64) for k, v in params["experts"].items()}
    g_wide = np.concatenate(list(ex["gate"]), axis=1)  # [D, N*F]
    u_wide = np.concatenate(list(ex["up"]), axis=1)
    d_wide = np.concatenate(list(ex["down"]), axis=0)  # [N*F, D]
    xt = x.reshape(-1, D).astype(np.float64)
    gate = np.zeros((len(xt), N))
    np.put_along_axis(gate, np.asarray(aux["expert_ids"]), np.asarray(aux["expert_weights"], np.float64), axis=1)
    hidden = np.maximum(xt @ g_wide, 0) * (xt @ u_wide) * np.repeat(gate, F, axis=1)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, D), hidden @ d_wide, rtol=1e-5, atol=1e-6)
    # sparse: the unchosen experts' units are off, and ReLU switches off about half of the rest
    active = (hidden != 0).mean()
    assert active < 0.5 * 2 / N + 0.1


def _experts_with_means(means, rng, d=32, f=256):
    """Gate weights whose unit columns have entries ~ N(mean_e + small jitter, 1)."""
    return np.stack([rng.normal(m + 0.05 * rng.standard_normal(f), 1.0, size=(d, f)) for m in means]).astype(np.float32)


def test_sparsity_estimate_tracks_actual_activity():
    rng = np.random.default_rng(2)
    gate = _experts_with_means([-0.3, -0.1, 0.0, 0.15], rng)
    x = (0.4 + rng.standard_normal((64, 32))).astype(np.float32)  # inputs with a nonzero mean
    est = np.asarray(expected_active_fraction(jnp.asarray(gate), jnp.asarray(x)))  # [T, E]
    actual = (np.einsum("td,edf->tef", x, gate) > 0).mean(-1)
    assert np.abs(est - actual).mean() < 0.05
    assert np.corrcoef(est.ravel(), actual.ravel())[0, 1] > 0.9


def test_routing_prefers_the_sparsest_experts():
    rng = np.random.default_rng(3)
    gate = _experts_with_means([0.2, -0.25, 0.05, 0.1], rng)
    x = (rng.standard_normal((64, 32)) + rng.choice([-0.6, 0.6], size=(64, 1))).astype(np.float32)
    cfg = MoEConfig(num_experts=4, experts_per_token=1, expert_ffn_dim=256, router="moex", expert_activation="relu",
                    router_options=MoEXOptions(sparsity_coef=5.0))
    params = {"kernel": jnp.zeros((32, 4))}  # no learned preference: only sparsity decides
    r = route(params, jnp.asarray(x), cfg, experts={"gate": jnp.asarray(gate)})
    actual = (np.einsum("td,edf->tef", x, gate) > 0).mean(-1)
    chosen = np.asarray(r.expert_ids[:, 0])
    assert (chosen == actual.argmin(-1)).mean() > 0.9  # the sparsest expert for this token
    assert len(np.unique(chosen)) > 1  # which one depends on the token (sign of its mean here)
    # a topk router with the same (zero) kernel would not care
    plain = route(params, jnp.asarray(x), MoEConfig(num_experts=4, experts_per_token=1))
    assert len(np.unique(np.asarray(plain.expert_ids))) == 1


def test_config():
    cfg = load_config("configs/lm_tiny_moex.yaml")
    assert cfg.model.moe.router == "moex" and cfg.model.moe.expert_activation == "relu"
    assert cfg.model.moe.router_options == MoEXOptions(sparsity_coef=1.0)
    with pytest.raises(ConfigError, match="expert_activation"):
        load_config("configs/lm_tiny_moex.yaml", ["model.moe.expert_activation=gelu"])
