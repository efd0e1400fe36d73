import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.nn import attention as A
from jaxmoe.nn.init import logical_axes, unbox
from jaxmoe.nn.layers import init_rmsnorm, init_swiglu, rmsnorm, swiglu
from jaxmoe.nn.rope import apply_rope


def test_rmsnorm_value():
    x = jnp.array([[3.0, 4.0]])
    y = rmsnorm(unbox(init_rmsnorm(2)), x, eps=0.0)
    np.testing.assert_allclose(y, x / np.sqrt(12.5), rtol=1e-6)


def test_swiglu_shape_and_axes():
    p = unbox(init_swiglu(jax.random.PRNGKey(0), 8, 16))
    y = swiglu(p, jnp.ones((2, 3, 8)))
    chex.assert_shape(y, (2, 3, 8))
    chex.assert_tree_all_finite(y)
    axes = logical_axes(init_swiglu, jax.random.PRNGKey(0), 8, 16)
    assert axes["gate"] == ("embed", "mlp") and axes["down"] == ("mlp", "embed")


def test_rope_preserves_norm_and_is_relative():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 8))
    y = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 8))
    rx = lambda p: apply_rope(x, jnp.array([[p]]))
    ry = lambda p: apply_rope(y, jnp.array([[p]]))
    np.testing.assert_allclose(jnp.linalg.norm(rx(7)), jnp.linalg.norm(x), rtol=1e-5)
    d1 = jnp.sum(rx(5) * ry(2))
    d2 = jnp.sum(rx(13) * ry(10))
    np.testing.assert_allclose(d1, d2, rtol=1e-4)


def _naive_attention(p, x, num_heads, kv_heads):
    b, s, _ = x.shape
    q = jnp.einsum("bsd,dhk->bshk", x, p["q"]["kernel"])
    k = jnp.einsum("bsd,dhk->bshk", x, p["k"]["kernel"])
    v = jnp.einsum("bsd,dhk->bshk", x, p["v"]["kernel"])
    pos = jnp.broadcast_to(jnp.arange(s), (b, s))
    q, k = apply_rope(q, pos), apply_rope(k, pos)
    rep = num_heads // kv_heads
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    mask = np.tril(np.ones((s, s), bool))
    scores = jnp.where(mask, scores, -1e30)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v)
    return jnp.einsum("bshk,hkd->bsd", out, p["o"]["kernel"])


def test_attention_matches_naive_gqa():
    p = unbox(A.init_attention(jax.random.PRNGKey(0), 16, 4, 2, 8, std=0.3))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 16))
    pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
    y, cache = A.attention(p, x, pos)
    assert cache is None
    chex.assert_shape(y, (2, 7, 16))
    chex.assert_trees_all_close(y, _naive_attention(p, x, 4, 2), atol=1e-5)


def test_attention_cache_prefill_and_steps_equal_full():
    p = unbox(A.init_attention(jax.random.PRNGKey(0), 16, 4, 1, 8, qkv_bias=True, qk_norm=True, std=0.3))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 16))
    pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
    full, _ = A.attention(p, x, pos)
    cache = A.init_kv_cache(2, 10, 1, 8)
    y0, cache = A.attention(p, x[:, :4], pos[:, :4], cache=cache, cache_index=0)
    outs = [y0]
    for t in (4, 5):
        yt, cache = A.attention(p, x[:, t:t + 1], pos[:, t:t + 1], cache=cache, cache_index=t)
        outs.append(yt)
    chex.assert_trees_all_close(jnp.concatenate(outs, 1), full, atol=1e-5)
