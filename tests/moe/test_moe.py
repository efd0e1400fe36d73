import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.moe import losses
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.dispatch import capacity, dense, dropless, expert_capacity
from jaxmoe.moe.gmm import gmm, resolve_backend
from jaxmoe.moe.layer import init_moe, moe
from jaxmoe.moe.routers import Routing
from jaxmoe.moe.routers.topk import route as topk_route
from jaxmoe.nn.init import unbox

D, F, E = 8, 12, 4


def _params(cfg, seed=0):
    return unbox(init_moe(jax.random.PRNGKey(seed), D, cfg, std=0.3))


def _loop_reference(params, x, cfg):
    """Per-expert Python loop (the MaxText-style reference)."""
    b, s, d = x.shape
    xt = np.asarray(x.reshape(-1, d), np.float64)
    logits = xt @ np.asarray(params["router"]["kernel"], np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ex = {k: np.asarray(v, np.float64) for k, v in params["experts"].items()}
    silu = lambda z: z / (1 + np.exp(-z))
    y = np.zeros_like(xt)
    for t in range(xt.shape[0]):
        top = np.argsort(-probs[t], kind="stable")[: cfg.experts_per_token]
        w = probs[t, top]
        if cfg.norm_topk:
            w = w / w.sum()
        for e, we in zip(top, w):
            h = silu(xt[t] @ ex["gate"][e]) * (xt[t] @ ex["up"][e])
            y[t] += we * (h @ ex["down"][e])
        if "shared" in params:
            sh = {k: np.asarray(v, np.float64) for k, v in params["shared"].items()}
            ys = (silu(xt[t] @ sh["gate"]) * (xt[t] @ sh["up"])) @ sh["down"]
            if "shared_gate" in params:
                ys = ys / (1 + np.exp(-(xt[t] @ np.asarray(params["shared_gate"]["kernel"], np.float64))))
            y[t] += ys
    return y.reshape(b, s, d)


CASES = [
    MoEConfig(num_experts=E, experts_per_token=2, expert_ffn_dim=F, norm_topk=False),
    MoEConfig(num_experts=E, experts_per_token=2, expert_ffn_dim=F, norm_topk=True),
    MoEConfig(num_experts=E, experts_per_token=3, expert_ffn_dim=F, num_shared_experts=2, shared_ffn_dim=4,
              shared_expert_gate=True),
]


@pytest.mark.parametrize("cfg", CASES, ids=["raw", "norm_topk", "shared_gated"])
def test_engines_equal_loop_forward_and_grad(cfg):
    params = _params(cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, D))
    ref = _loop_reference(params, x, cfg)
    outs, grads = {}, {}
    for name in ("dropless", "capacity", "dense"):
        c = cfg if name != "capacity" else MoEConfig(**{**cfg.__dict__, "capacity_factor": 100.0})
        f = lambda p, x, name=name, c=c: moe(p, x, c, dispatch=name)
        y, aux = f(params, x)
        assert float(aux["dropped_frac"]) == 0.0
        outs[name] = y
        grads[name] = jax.grad(lambda p, x, f=f: jnp.sum(jnp.sin(f(p, x)[0])), argnums=(0, 1))(params, x)
        chex.assert_shape(y, x.shape)
        np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5, rtol=1e-5)
    for name in ("capacity", "dense"):
        chex.assert_trees_all_close(grads["dropless"], grads[name], atol=1e-5, rtol=1e-5)


def test_capacity_drops_are_counted_and_match_hand_count():
    cfg = MoEConfig(num_experts=E, experts_per_token=1, expert_ffn_dim=F, capacity_factor=1.0)
    params = _params(cfg)
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 8, D))
    ids = jnp.array([[0], [0], [0], [0], [1], [1], [2], [3]])  # expert 0 over-subscribed
    r = Routing(ids, jnp.ones((8, 1)), jnp.full((8, E), 1 / E), jnp.zeros((8, E)))
    xt = x.reshape(8, D)
    y, stats = capacity(xt, r, params["experts"], capacity_factor=1.0)
    c = expert_capacity(8, 1, E, 1.0)
    assert c == 2
    np.testing.assert_allclose(float(stats["dropped_frac"]), 2 / 8)
    # the first two tokens of expert 0 are kept, the next two are dropped (zero output)
    yd, _ = dropless(xt, r, params["experts"])
    np.testing.assert_allclose(y[:2], yd[:2], atol=1e-6)
    np.testing.assert_allclose(y[2:4], 0.0, atol=1e-7)
    np.testing.assert_allclose(y[4:], yd[4:], atol=1e-6)


def test_dropless_validity_mask_skips_slots():
    cfg = MoEConfig(num_experts=E, experts_per_token=2, expert_ffn_dim=F)
    params = _params(cfg)
    xt = jax.random.normal(jax.random.PRNGKey(3), (6, D))
    ids = jnp.array([[0, 1], [2, 3], [1, 0], [3, 2], [0, 2], [1, 3]])
    w = jax.random.uniform(jax.random.PRNGKey(4), (6, 2))
    valid = jnp.array([[True, False]] * 3 + [[True, True]] * 3)
    r = Routing(ids, w, jnp.full((6, E), 1 / E), jnp.zeros((6, E)), valid)
    y1, _ = dropless(xt, r, params["experts"])
    y2, _ = dense(xt, r, params["experts"])
    chex.assert_trees_all_close(y1, y2, atol=1e-5)
    g1 = jax.grad(lambda x: dropless(x, r, params["experts"])[0].sum())(xt)
    g2 = jax.grad(lambda x: dense(x, r, params["experts"])[0].sum())(xt)
    chex.assert_trees_all_close(g1, g2, atol=1e-5)


@pytest.mark.parametrize("sizes", [[3, 0, 5, 2], [0, 0, 10, 0], [1, 2, 3, 4]])
def test_gmm_backends_equal_including_empty_groups(sizes):
    m = sum(sizes)
    lhs = jax.random.normal(jax.random.PRNGKey(0), (m, 6))
    rhs = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 5))
    gs = jnp.array(sizes, jnp.int32)
    ref = np.concatenate([np.asarray(lhs[sum(sizes[:e]):sum(sizes[:e + 1])] @ rhs[e]) for e in range(4)])
    for backend in ("xla", "xla_vjp"):
        np.testing.assert_allclose(gmm(lhs, rhs, gs, backend=backend), ref, atol=1e-5)
    f = lambda b: jax.grad(lambda l, r: jnp.sum(jnp.tanh(gmm(l, r, gs, backend=b))), argnums=(0, 1))(lhs, rhs)
    chex.assert_trees_all_close(f("xla"), f("xla_vjp"), atol=1e-5)


def test_gmm_backend_selection(monkeypatch):
    monkeypatch.delenv("JAXMOE_GMM_BACKEND", raising=False)
    assert resolve_backend("auto") == "xla"
    assert resolve_backend("xla_vjp") == "xla_vjp"
    monkeypatch.setenv("JAXMOE_GMM_BACKEND", "xla_vjp")
    assert resolve_backend("xla") == "xla_vjp"
    monkeypatch.setenv("JAXMOE_GMM_BACKEND", "nope")
    with pytest.raises(ValueError, match="choose one of"):
        resolve_backend("auto")


def test_balance_losses_hand_computed():
    probs = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    ids = jnp.array([[0, 1], [1, 2], [0, 1], [2, 0]])
    counts = np.array([3, 3, 2])
    p_mean = np.array([1.5, 1.25, 1.25]) / 4
    n, k, t = 3, 2, 4
    f = n / (k * t) * counts
    np.testing.assert_allclose(losses.expert_balance_loss(probs, ids, n, k), np.sum(f * p_mean), rtol=1e-6)
    np.testing.assert_allclose(losses.switch_balance_loss(probs, ids, n), n * np.sum(counts / t * p_mean), rtol=1e-6)
    # sequence-wise: two sequences of two tokens
    seq = []
    for sl in (slice(0, 2), slice(2, 4)):
        c = np.bincount(np.asarray(ids[sl]).ravel(), minlength=3)
        seq.append(np.sum(n / (k * 2) * c * np.asarray(probs[sl]).mean(0)))
    np.testing.assert_allclose(losses.sequence_balance_loss(probs.reshape(2, 2, 3), ids.reshape(2, 2, 2), n, k),
                               np.mean(seq), rtol=1e-6)
    logits = jnp.log(probs) + 1.0
    z = np.log(np.exp(np.asarray(logits)).sum(-1))
    np.testing.assert_allclose(losses.router_z_loss(logits), np.mean(z ** 2), rtol=1e-6)
    # device-level with 3 devices of one expert each equals the expert-level loss
    np.testing.assert_allclose(losses.device_balance_loss(probs, ids, n, k, 3), np.sum(f * p_mean), rtol=1e-6)


def test_sigmoid_router_bias_selects_but_does_not_weight():
    cfg = MoEConfig(num_experts=4, experts_per_token=1, expert_ffn_dim=4, score_func="sigmoid", selection_bias=True)
    params = unbox(init_moe(jax.random.PRNGKey(0), 3, cfg))["router"]
    params["kernel"] = jnp.zeros((3, 4)).at[0, 0].set(2.0)
    params["selection_bias"] = jnp.array([0.0, 0.0, 5.0, 0.0])
    r = topk_route(params, jnp.array([[1.0, 0.0, 0.0]]), cfg)
    assert int(r.expert_ids[0, 0]) == 2  # bias wins the selection
    np.testing.assert_allclose(r.weights[0, 0], jax.nn.sigmoid(0.0))  # weight from unbiased score


def test_group_limited_routing_and_interventions():
    cfg = MoEConfig(num_experts=8, experts_per_token=2, expert_ffn_dim=4, num_groups=4, topk_groups=1)
    params = {"kernel": jnp.eye(8)}
    x = jnp.array([[0.0, 3.0, 2.9, 0.0, 0.0, 0.0, 2.8, 2.7]])  # group 0: {0,1}, group 1: {2,3}, group 3: {6,7}
    r = topk_route(params, x, cfg)
    # best group by sum of top-2 = group 3 (2.8 + 2.7 = 5.5 > 3.0 + 0 and 2.9 + 0)
    assert sorted(np.asarray(r.expert_ids[0]).tolist()) == [6, 7]
    cfg2 = MoEConfig(num_experts=8, experts_per_token=2, expert_ffn_dim=4)
    mask = jnp.ones(8, bool).at[1].set(False)
    force = jnp.zeros(8, bool).at[5].set(True)
    r = topk_route(params, x, cfg2, expert_mask=mask, force_mask=force)
    assert sorted(np.asarray(r.expert_ids[0]).tolist()) == [2, 5]
