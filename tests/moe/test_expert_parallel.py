"""Expert parallelism (shard_map + all-to-all) equals the single-device MoE layer.

8 fake CPU devices (tests/conftest.py). Each mesh shape compiles one function that runs the
layer with dropless dispatch and with capacity dispatch (tokens dropped), so the test
checks outputs and the dropped-token accounting against the unsharded engines.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.config import MeshConfig
from jaxmoe.moe import expert_parallel as ep_lib
from jaxmoe.moe import losses
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.dispatch import dense
from jaxmoe.moe.layer import init_moe, moe
from jaxmoe.moe.routers.topk import route as topk_route
from jaxmoe.nn.init import unbox
from jaxmoe.parallel.mesh import build_mesh
from jaxmoe.parallel.sharding import use_mesh

D, E, K, F = 16, 8, 2, 8
BATCH, SEQ = 8, 8
BASE = MoEConfig(num_experts=E, experts_per_token=K, expert_ffn_dim=F, num_shared_experts=1, shared_ffn_dim=8,
                 shared_expert_gate=True, capacity_factor=1.25)
DROPLESS = BASE
CAPACITY = dataclasses.replace(BASE, dispatch="capacity", capacity_factor=0.5)  # drops about half

MESHES = {
    "data8": dict(data=8),
    "fsdp8": dict(data=1, fsdp=8),
    "expert8": dict(data=1, expert=8),
    "data2_expert4": dict(data=2, expert=4),
    "fsdp2_expert2_tensor2": dict(data=1, fsdp=2, expert=2, tensor=2),
}


@pytest.fixture(scope="module")
def setup():
    params = unbox(init_moe(jax.random.PRNGKey(0), D, BASE, std=0.3))
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, SEQ, D))
    return params, x


def _both(params, x):
    y1, a1 = moe(params, x, DROPLESS)
    y2, a2 = moe(params, x, CAPACITY)
    return y1, a1["dropped_frac"], y2, a2["dropped_frac"]


@pytest.fixture(scope="module")
def reference(setup):
    params, x = setup
    return jax.jit(_both)(params, x)


@pytest.mark.parametrize("name", list(MESHES))
def test_layer_output_equals_unsharded(setup, reference, name):
    params, x = setup
    mesh = build_mesh(MeshConfig(**MESHES[name]))
    with use_mesh(mesh, all_to_all="padded"):
        out = jax.jit(_both)(params, x)
    y1, d1, y2, d2 = out
    r1, rd1, r2, rd2 = reference
    assert float(rd1) == 0.0 and 0.2 < float(rd2) < 0.8  # the capacity case really drops tokens
    chex.assert_trees_all_close(y1, r1, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(y2, r2, atol=1e-5, rtol=1e-5)
    assert float(d1) == 0.0
    assert float(d2) == pytest.approx(float(rd2), abs=1e-7)  # same assignments dropped


def test_exchanges_forward_and_grad_equal_unsharded(setup):
    """Layer gradients (params and inputs, tokens dropped) under expert parallelism equal the
    single-device ones, for the ``padded`` all_to_all and the ``ragged`` exchange (on CPU an
    all_gather emulation of ragged_all_to_all with the same offsets and custom VJP)."""
    params, x = setup
    mesh = build_mesh(MeshConfig(data=2, expert=4))

    def f(p, x):
        y, aux = moe(p, x, CAPACITY)
        return jnp.sum(y * jnp.cos(y)), (y, aux["dropped_frac"])

    ref = jax.jit(jax.value_and_grad(f, has_aux=True, argnums=(0, 1)))(params, x)
    assert float(ref[0][1][1]) > 0.2
    for kind in ("padded", "ragged"):
        with use_mesh(mesh, all_to_all=kind):
            got = jax.jit(jax.value_and_grad(f, has_aux=True, argnums=(0, 1)))(params, x)
        chex.assert_trees_all_close(got, ref, atol=1e-5, rtol=1e-5)
    assert ep_lib.resolve_exchange("auto", mesh) == "padded"  # CPU has no ragged_all_to_all


def _buffer_keep_reference(ids, n_shards, ep, rows):
    """Numpy: per token shard, assignments past ``rows`` per destination device are dropped
    (slot-major priority: first choices of all tokens first)."""
    t, k = ids.shape
    tl = t // n_shards
    keep = np.ones((t, k), bool)
    for r in range(n_shards):
        seen = np.zeros(ep, int)
        for j in range(k):
            for tt in range(r * tl, (r + 1) * tl):
                d = ids[tt, j] // (E // ep)
                keep[tt, j] = seen[d] < rows
                seen[d] += 1
    return keep


def test_exchange_capacity_drops_are_counted(setup):
    """``exchange_capacity`` > 0 caps each device-to-device buffer; the overflow is dropped,
    counted, and the output equals the dense reference over the kept assignments."""
    params, x = setup
    mesh = build_mesh(MeshConfig(data=2, expert=4))
    cfg = dataclasses.replace(BASE, num_shared_experts=0)
    params = {"router": params["router"], "experts": params["experts"]}
    routing = topk_route(params["router"], x.reshape(-1, D), cfg)
    # skew the routing so buffers overflow: send every first choice to expert 0
    ids = routing.expert_ids.at[:, 0].set(0).at[:, 1].set(jnp.where(routing.expert_ids[:, 1] == 0, 1,
                                                                     routing.expert_ids[:, 1]))
    routing = routing.replace(expert_ids=ids)
    factor = 0.5
    plan = ep_lib.make_plan(mesh, None, x.shape, routing, params["experts"], cfg, dispatch="dropless",
                            exchange="padded", exchange_capacity=factor)
    assert plan.may_overflow and plan.buffer_rows == int(np.ceil(factor * plan.tokens_local * K / plan.ep))
    with use_mesh(mesh, exchange_capacity=factor):
        y, aux = jax.jit(lambda p, x: moe(p, x, cfg, routing=routing))(params, x)
    keep = _buffer_keep_reference(np.asarray(ids), plan.n_tok, plan.ep, plan.buffer_rows)
    assert 0 < (~keep).sum()
    assert float(aux["dropped_frac"]) == pytest.approx(1 - keep.mean(), abs=1e-7)
    ref, _ = dense(x.reshape(-1, D), routing.replace(valid=jnp.asarray(keep)), params["experts"])
    chex.assert_trees_all_close(y.reshape(-1, D), ref, atol=1e-5, rtol=1e-5)


def test_validity_mask_and_plan_buffers(setup):
    """Variable experts per token (``Routing.valid``) under expert parallelism, and the exact
    worst-case buffer sizing (no drops whatever the routing)."""
    params, x = setup
    cfg = dataclasses.replace(BASE, num_shared_experts=0)
    routing = topk_route(params["router"], x.reshape(-1, D), cfg)
    valid = jax.random.bernoulli(jax.random.PRNGKey(3), 0.6, routing.expert_ids.shape)
    routing = routing.replace(valid=valid)
    ref, _ = moe(params, x, cfg, routing=routing)
    mesh = build_mesh(MeshConfig(data=1, expert=8))
    with use_mesh(mesh):
        got, aux = jax.jit(lambda p, x: moe(p, x, cfg, routing=routing))(params, x)
    chex.assert_trees_all_close(got, ref, atol=1e-5, rtol=1e-5)
    assert float(aux["dropped_frac"]) == 0.0
    plan = ep_lib.make_plan(mesh, None, x.shape, routing, params["experts"], cfg, dispatch="dropless")
    # 8 tokens per device, each can send at most min(K, experts per device) rows to one device
    assert (plan.tokens_local, plan.experts_local, plan.buffer_rows, plan.may_overflow) == (8, 1, 8, False)


def test_device_balance_loss_uses_expert_parallel_groups(setup):
    params, x = setup
    cfg = dataclasses.replace(BASE, device_balance_coef=0.5, balance_coef=0.0)
    _, aux1 = moe(params, x, cfg)
    assert "device_balance_loss" not in aux1  # one device group: the term is a constant, left out
    mesh = build_mesh(MeshConfig(data=2, expert=4))
    with use_mesh(mesh):
        _, aux4 = jax.jit(lambda p, x: moe(p, x, cfg))(params, x)
    routing = topk_route(params["router"], x.reshape(-1, D), cfg)
    want = losses.device_balance_loss(routing.probs, routing.expert_ids, E, K, 4)
    np.testing.assert_allclose(aux4["device_balance_loss"], want, rtol=1e-5)
    np.testing.assert_allclose(aux4["aux_loss"], aux1["aux_loss"] + 0.5 * want, rtol=1e-5)
