import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmoe.config import TrainConfig
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig
from jaxmoe.train.optimizer import make_optimizer
from jaxmoe.train.state import TrainState
from jaxmoe.train.step import make_train_step


def tiny(**kw):
    moe_kw = kw.pop("moe", {})
    moe_args = dict(num_experts=4, experts_per_token=2, expert_ffn_dim=16, num_shared_experts=1,
                    first_k_dense=1, dense_ffn_dim=32)
    moe = MoEConfig(**{**moe_args, **moe_kw})
    base = dict(vocab_size=40, embed_dim=32, num_layers=3, num_heads=4, num_kv_heads=2, max_seq_len=32, moe=moe)
    base.update(kw)
    return LMConfig(**base)


def test_shapes_groups_and_axes():
    cfg = tiny()
    p = lm.init(jax.random.PRNGKey(0), cfg)
    toks = jnp.zeros((2, 7), jnp.int32)
    logits, aux = lm.apply(p, toks, cfg)
    chex.assert_shape(logits, (2, 7, 40))
    chex.assert_tree_all_finite(logits)
    chex.assert_shape(aux["load"], (2, 4))  # two MoE layers
    assert [g.repeats for g in lm.groups(cfg)] == [1, 2]
    axes = lm.param_axes(cfg)
    shapes = jax.tree.map(lambda a: a.shape, p)
    jax.tree.map(lambda ax, s: None if len(ax) == len(s) else pytest.fail(f"{ax} vs {s}"), axes, shapes,
                 is_leaf=lambda x: isinstance(x, tuple))
    assert axes["groups"][1][0]["ffn"]["experts"]["gate"] == ("layers", "expert", "embed", "expert_mlp")


@pytest.mark.parametrize("kw", [
    {},
    {"tie_embeddings": True, "moe": {"moe_every": 2, "norm_topk": True}},
    {"qk_norm": True, "qkv_bias": True, "moe": {"dispatch": "capacity", "capacity_factor": 8.0}},
], ids=["default", "tied_moe_every2", "qknorm_capacity"])
def test_cached_decode_equals_full_forward(kw):
    cfg = tiny(**kw)
    p = lm.init(jax.random.PRNGKey(1), cfg)
    toks = jax.random.randint(jax.random.PRNGKey(2), (2, 9), 0, 40)
    full, _ = lm.apply(p, toks, cfg)
    cache = lm.init_cache(cfg, 2, 16)
    logits, cache = lm.prefill(p, toks[:, :4], cfg, cache)
    outs = [logits]
    step = jax.jit(lambda p, t, c: lm.decode_step(p, t, cfg, c))
    for i in range(4, 9):
        l, cache = step(p, toks[:, i], cache)
        outs.append(l[:, None])
    chex.assert_trees_all_close(jnp.concatenate(outs, 1), full, atol=2e-5, rtol=2e-5)
    assert int(cache["index"]) == 9


def test_remat_does_not_change_loss_or_grads():
    cfg = tiny()
    p = lm.init(jax.random.PRNGKey(0), cfg)
    batch = {"tokens": jax.random.randint(jax.random.PRNGKey(3), (2, 9), 0, 40)}
    g = lambda c: jax.grad(lambda p: lm.loss_fn(p, batch, c)[0])(p)
    chex.assert_trees_all_close(g(cfg), g(tiny(remat="full")), atol=1e-6)


def test_bf16_compute_is_finite_and_close():
    cfg = tiny()
    p = lm.init(jax.random.PRNGKey(0), cfg)
    toks = jax.random.randint(jax.random.PRNGKey(3), (2, 8), 0, 40)
    a, _ = lm.apply(p, toks, cfg)
    b, _ = lm.apply(p, toks, tiny(dtype="bfloat16"))
    chex.assert_tree_all_finite(b)
    assert float(jnp.max(jnp.abs(a - b))) < 0.1


def test_jitted_train_step_lowers_loss_on_fixed_batch():
    cfg = tiny()
    tcfg = TrainConfig(steps=30, learning_rate=1e-2, warmup_steps=0)
    tx = make_optimizer(tcfg)
    state = TrainState.create(lm.init(jax.random.PRNGKey(0), cfg), tx, 0)
    batch = {"tokens": jax.random.randint(jax.random.PRNGKey(3), (4, 17), 0, 40)}
    step = jax.jit(make_train_step(lambda p, b, r: lm.loss_fn(p, b, cfg, r), tx), donate_argnums=0)
    first = None
    for _ in range(30):
        state, m = step(state, batch)
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.5 * first
    assert int(state.step) == 30 and int(m["skipped"]) == 0


def test_nonfinite_step_is_skipped():
    cfg = tiny(num_layers=1, moe={"first_k_dense": 0})
    tx = optax.adamw(1e-3)
    params = lm.init(jax.random.PRNGKey(0), cfg)
    state = TrainState.create(params, tx, 0)

    def loss_fn(p, b, r):
        loss, m = lm.loss_fn(p, b, cfg, r)
        return loss * b["scale"], m

    step = jax.jit(make_train_step(loss_fn, tx))
    batch = {"tokens": jnp.ones((2, 5), jnp.int32), "scale": jnp.float32(jnp.nan)}
    new, m = step(state, batch)
    assert int(m["skipped"]) == 1 and int(new.skipped) == 1
    chex.assert_trees_all_equal(new.params, state.params)


@pytest.mark.parametrize("pattern", [("mamba", "attn"), ("diag_ssm", "attn", "attn")])
def test_hybrid_ssm_stack_cached_decode_equals_full_forward(pattern):
    cfg = tiny(layer_pattern=pattern, num_layers=4, ssm_state_dim=4, ssm_expand=2)
    p = lm.init(jax.random.PRNGKey(1), cfg)
    kinds = [u for g in lm.groups(cfg) for u in g.unit]
    assert any(m != "attn" for m, _ in kinds)
    toks = jax.random.randint(jax.random.PRNGKey(2), (2, 8), 0, 40)
    full, _ = lm.apply(p, toks, cfg)
    chex.assert_tree_all_finite(full)
    cache = lm.init_cache(cfg, 2, 12)
    logits, cache = lm.prefill(p, toks[:, :3], cfg, cache)
    outs = [logits]
    step = jax.jit(lambda p, t, c: lm.decode_step(p, t, cfg, c))
    for i in range(3, 8):
        l, cache = step(p, toks[:, i], cache)
        outs.append(l[:, None])
    chex.assert_trees_all_close(jnp.concatenate(outs, 1), full, atol=5e-5, rtol=5e-5)
