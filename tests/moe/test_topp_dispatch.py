"""Top-p routing's unused slots cost no expert compute: the per-token cap bounds the buffers,
invalid (token, expert) pairs sort last and belong to no group, and chunks of sorted rows
past the valid ones are skipped."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.moe import dispatch, layer
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.routers import get_router
from jaxmoe.moe.routers.topp import TopPOptions, max_experts
from jaxmoe.nn.init import unbox

N, D, F, T = 8, 8, 6, 32


def _cfg(top_p=0.4, cap=None):
    return MoEConfig(num_experts=N, experts_per_token=2, expert_ffn_dim=F, router="topp",
                     router_options=TopPOptions(top_p=top_p, max_experts_per_token=cap))


def _setup(top_p=0.4, cap=None, router_std=1.0):
    cfg = _cfg(top_p, cap)
    params = unbox(layer.init_moe(jax.random.PRNGKey(0), D, cfg, std=0.5))
    params["router"]["kernel"] = router_std * jax.random.normal(jax.random.PRNGKey(3), (D, N))
    x = jax.random.normal(jax.random.PRNGKey(1), (T, D))
    routing = get_router("topp").route(params["router"], x, cfg)
    return cfg, params, x, routing


def test_default_cap_is_twice_experts_per_token():
    assert max_experts(_cfg()) == 4
    assert max_experts(_cfg(cap=0)) == N and max_experts(_cfg(cap=3)) == 3
    _, _, _, r = _setup()
    assert r.expert_ids.shape == (T, 4)  # buffers hold T * 4 rows, not T * num_experts


@pytest.mark.parametrize("top_p,cap", [(0.4, None), (0.4, 0), (0.9, 0), (0.9, None)])
def test_chunked_dropless_equals_dense_reference(top_p, cap):
    cfg, params, x, r = _setup(top_p, cap)
    chunk = T * cfg.experts_per_token
    y, stats = jax.jit(functools.partial(dispatch.dropless, chunk_rows=chunk))(x, r, params["experts"])
    y_dense, _ = dispatch.dense(x, r, params["experts"])
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_dense), rtol=1e-5, atol=1e-5)
    valid = int(np.asarray(r.valid).sum())
    k = r.expert_ids.shape[1]
    assert int(stats["buffer_rows"]) == T * k
    # every chunk that holds a valid row runs, none after: rows computed = ceil(valid / chunk) chunks
    assert int(stats["computed_rows"]) == min(-(-valid // chunk) * chunk, T * k)
    if valid <= chunk:
        assert int(stats["computed_rows"]) == chunk < T * k  # the unused slots cost nothing


def test_chunked_gradients_equal_dense():
    cfg, params, x, r = _setup(0.6, 0)
    chunk = T * cfg.experts_per_token
    loss = lambda fn: lambda e, x: (fn(x, r, e)[0] ** 2).sum()
    g1 = jax.grad(loss(functools.partial(dispatch.dropless, chunk_rows=chunk)), argnums=(0, 1))(params["experts"], x)
    g2 = jax.grad(loss(dispatch.dense), argnums=(0, 1))(params["experts"], x)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_grouped_matmul_sees_only_valid_rows(monkeypatch):
    """Every grouped-matmul call gets one chunk of T*k rows whose groups count only valid
    pairs; with p = 0.4 (1-2 experts a token) only the first chunk runs."""
    cfg, params, x, r = _setup(0.4, 0)
    seen = []
    inner = dispatch.expert_swiglu_grouped

    def spy(xs, experts, group_sizes, *a, **kw):
        seen.append(xs.shape[0])
        jax.debug.callback(lambda g: seen.append(("groups", int(g))), group_sizes.sum())
        return inner(xs, experts, group_sizes, *a, **kw)

    monkeypatch.setattr(dispatch, "expert_swiglu_grouped", spy)
    y, stats = dispatch.dropless(x, r, params["experts"], chunk_rows=T * 2)
    jax.effects_barrier()
    valid = int(np.asarray(r.valid).sum())
    assert valid <= T * 2
    rows = [s for s in seen if not isinstance(s, tuple)]
    assert rows and all(n == T * 2 for n in rows)  # no call sees the T * num_experts buffer
    groups = [s[1] for s in seen if isinstance(s, tuple)]
    assert groups == [valid]  # one chunk ran (the others were skipped), holding exactly the valid pairs
    assert int(stats["computed_rows"]) == T * 2 and int(stats["buffer_rows"]) == T * N


def test_layer_reports_computed_rows_and_matches_dense_engine():
    cfg, params, x, _ = _setup(0.4, None)
    xb = x.reshape(2, T // 2, D)
    y, aux = jax.jit(layer.moe, static_argnames="cfg")(params, xb, cfg)
    assert int(aux["computed_rows"]) <= T * 2
    y_ref, _ = layer.moe(params, xb, dataclasses.replace(cfg, dispatch="dense"))
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
