"""Multi-head Latent Attention: shapes, latent-only cache, cached decode == full forward."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.config import Config, ConfigError, DataConfig, validate
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig
from jaxmoe.nn import mla as mla_lib
from jaxmoe.nn.init import unbox


def random_like(shapes, seed=0, std=0.3):
    """Random params with the structure of ``shapes`` (numpy: no per-shape RNG compiles);
    norm scales around 1 so every norm is exercised."""
    rng = np.random.RandomState(seed)
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    out = []
    for path, s in leaves:
        scale = "scale" in jax.tree_util.keystr(path)
        out.append(jnp.asarray((1.0 if scale else 0.0) + std * rng.standard_normal(s.shape), jnp.float32))
    return jax.tree.unflatten(tree, out)


def _mla_params(q_lora_rank, seed=0, embed=24, heads=3):
    shapes = jax.eval_shape(lambda: unbox(mla_lib.init_mla(
        jax.random.PRNGKey(seed), embed, heads, q_lora_rank=q_lora_rank, kv_lora_rank=10, qk_nope_head_dim=6,
        qk_rope_head_dim=4, v_head_dim=5)))
    return random_like(shapes, seed)


@pytest.mark.parametrize("q_lora_rank", [0, 8], ids=["plain_q", "low_rank_q"])
def test_mla_shapes_and_cached_decode_equals_full(q_lora_rank):
    p = _mla_params(q_lora_rank)
    if q_lora_rank:
        chex.assert_shape(p["q_b"]["kernel"], (8, 3, 10))
        assert "q" not in p
    else:
        chex.assert_shape(p["q"]["kernel"], (24, 3, 10))
    chex.assert_shape(p["kv_a"]["kernel"], (24, 14))
    chex.assert_shape(p["kv_b"]["kernel"], (10, 3, 11))
    chex.assert_shape(p["o"]["kernel"], (3, 5, 24))
    b, s = 2, 7
    x = jax.random.normal(jax.random.PRNGKey(1), (b, s, 24))
    pos = jnp.broadcast_to(jnp.arange(s), (b, s))
    run = jax.jit(functools.partial(mla_lib.mla, rope_theta=100.0))
    full, none = run(p, x, pos)
    assert none is None
    chex.assert_shape(full, (b, s, 24))
    cache = mla_lib.init_mla_cache(b, 12, 10, 4)
    assert set(cache) == {"c_kv", "k_pe"}  # only the latent and the shared rotated key
    # prefill 3 tokens, then decode one at a time (absorbed path) -> equals the full (expanded) path
    y, cache = run(p, x[:, :3], pos[:, :3], cache=cache, cache_index=0)
    outs = [y]
    for t in range(3, s):
        y, cache = run(p, x[:, t:t + 1], pos[:, t:t + 1], cache=cache, cache_index=t)
        outs.append(y)
    chex.assert_trees_all_close(jnp.concatenate(outs, 1), full, atol=1e-5, rtol=1e-5)
    # the cache holds rmsnorm(c_kv) per token; untouched positions stay zero
    assert np.abs(np.asarray(cache["c_kv"][:, s:])).max() == 0.0
    rms = np.sqrt((np.asarray(cache["c_kv"][:, :s]) / np.asarray(p["kv_a_norm"]["scale"])) ** 2).mean(-1)
    assert np.all(rms > 0)


def test_mla_is_causal_and_position_dependent():
    p = _mla_params(8)
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 6, 24))
    pos = jnp.arange(6)[None]
    run = jax.jit(mla_lib.mla)
    y, _ = run(p, x, pos)
    y2, _ = run(p, x.at[:, 4:].set(0.0), pos)
    np.testing.assert_allclose(y[:, :4], y2[:, :4], atol=1e-6)  # future tokens do not leak
    y3, _ = run(p, x, pos + 5)
    np.testing.assert_allclose(y3, y, atol=1e-5)  # RoPE: only relative positions matter
    y4, _ = run(p, x, pos * 3)
    assert np.abs(np.asarray(y4 - y))[:, 1:].max() > 1e-3  # ... and they do matter
    np.testing.assert_allclose(y4[:, 0], y[:, 0], atol=1e-5)  # a lone first token attends only to itself


def _mla_lm(**kw):
    moe = MoEConfig(num_experts=4, experts_per_token=2, expert_ffn_dim=8, num_shared_experts=1, first_k_dense=1,
                    dense_ffn_dim=16, score_func="sigmoid", selection_bias=True, norm_topk=True)
    base = dict(vocab_size=40, embed_dim=24, num_layers=3, num_heads=3, max_seq_len=32, attention_type="mla",
                q_lora_rank=8, kv_lora_rank=10, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5, moe=moe)
    base.update(kw)
    return LMConfig(**base)


def test_mla_lm_cache_and_decode_equal_full_forward():
    cfg = _mla_lm()  # low-rank q here; the plain-q LM is covered by the deepseek_v3 parity tests
    validate(Config(model=cfg, data=DataConfig(seq_len=16)))
    p = random_like(jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), cfg)), std=0.2)
    cache = lm.init_cache(cfg, 2, 16)
    leaf = cache["groups"][1][0]
    chex.assert_shape(leaf["c_kv"], (2, 2, 16, 10))  # [layers, batch, max_len, kv_lora_rank]
    chex.assert_shape(leaf["k_pe"], (2, 2, 16, 4))  # [layers, batch, max_len, qk_rope_head_dim]
    toks = jax.random.randint(jax.random.PRNGKey(2), (2, 9), 0, 40)
    full, _ = jax.jit(lambda p, t: lm.apply(p, t, cfg))(p, toks)
    logits, cache = jax.jit(lambda p, t, c: lm.prefill(p, t, cfg, c))(p, toks[:, :4], cache)
    outs = [logits]
    step = jax.jit(lambda p, t, c: lm.decode_step(p, t, cfg, c))
    for i in range(4, 9):
        l, cache = step(p, toks[:, i], cache)
        outs.append(l[:, None])
    chex.assert_trees_all_close(jnp.concatenate(outs, 1), full, atol=2e-5, rtol=2e-5)
    axes = lm.param_axes(cfg)
    assert axes["groups"][1][0]["mixer"]["kv_b"]["kernel"] == ("layers", None, "heads", "head_dim")


def test_mla_config_validation():
    with pytest.raises(ConfigError, match="qk_rope_head_dim"):
        validate(Config(model=_mla_lm(qk_rope_head_dim=3), data=DataConfig(seq_len=16)))
    with pytest.raises(ConfigError, match="kv_lora_rank"):
        validate(Config(model=_mla_lm(kv_lora_rank=0), data=DataConfig(seq_len=16)))
