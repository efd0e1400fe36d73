"""YaRN RoPE scaling: inverse frequencies and attention factors equal transformers' on random
settings; the scaled rotation, the plain path and the config checks."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.errors import ConfigError
from jaxmoe.nn.rope import (RopeScaling, apply_rope, rope_attention_factor, rope_frequencies, softmax_scale_factor,
                            yarn_mscale)


def _random_settings(n, seed=0):
    rng = np.random.RandomState(seed)
    for _ in range(n):
        head_dim = int(rng.choice([8, 16, 32, 64, 128]))
        theta = float(10 ** rng.uniform(3, 6.5))
        factor = float(rng.choice([1.0, 2.0, 4.0, 40.0, float(rng.uniform(1, 64))]))
        which = rng.randint(4)  # unset / mscale only / both / an explicit attention factor
        yield head_dim, theta, RopeScaling(
            factor=factor, original_max_position_embeddings=int(rng.choice([256, 1024, 4096, 8192])),
            beta_fast=float(rng.choice([32.0, rng.uniform(8, 64)])),
            beta_slow=float(rng.choice([1.0, rng.uniform(0.5, 4)])),
            mscale=float(rng.uniform(0.5, 1.5)) if which in (1, 2) else 0.0,
            mscale_all_dim=float(rng.uniform(0.5, 1.5)) if which == 2 else 0.0,
            attention_factor=float(rng.uniform(0.8, 1.3)) if which == 3 else 0.0, truncate=bool(rng.randint(2)))


def _hf_params(theta, s: RopeScaling) -> dict:
    out = {"rope_type": "yarn", "rope_theta": theta, "factor": s.factor,
           "original_max_position_embeddings": s.original_max_position_embeddings, "beta_fast": s.beta_fast,
           "beta_slow": s.beta_slow, "truncate": s.truncate}
    for key in ("mscale", "mscale_all_dim", "attention_factor"):
        if getattr(s, key):
            out[key] = getattr(s, key)
    return out


def test_yarn_frequencies_and_factors_match_transformers():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    for head_dim, theta, s in _random_settings(40):
        cfg = transformers.LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                                       max_position_embeddings=int(s.factor * s.original_max_position_embeddings),
                                       rope_parameters=_hf_params(theta, s))
        inv, factor = ROPE_INIT_FUNCTIONS["yarn"](cfg)
        ours = np.asarray(rope_frequencies(head_dim, theta, s))
        assert ours.dtype == np.float32 and ours.shape == (head_dim // 2,)
        np.testing.assert_allclose(ours, inv.numpy(), rtol=2e-6, err_msg=str((head_dim, theta, s)))
        assert rope_attention_factor(s) == pytest.approx(factor, rel=1e-12)
        # DeepSeek's softmax-scale correction of MLA
        assert softmax_scale_factor(s) == pytest.approx(yarn_apply_mscale(_hf_params(theta, s), 1.0), rel=1e-12)


def test_yarn_interpolates_only_the_low_frequencies():
    s = RopeScaling(factor=8.0, original_max_position_embeddings=512)
    plain = np.asarray(rope_frequencies(64, 10000.0))
    yarn = np.asarray(rope_frequencies(64, 10000.0, s))
    np.testing.assert_array_equal(yarn[:4], plain[:4])  # many turns within 512 positions: unchanged
    np.testing.assert_allclose(yarn[-4:], plain[-4:] / 8, rtol=1e-6)  # less than one turn: divided by factor
    assert np.all(np.diff(yarn) < 0)
    assert rope_attention_factor(s) == pytest.approx(0.1 * math.log(8) + 1)
    assert softmax_scale_factor(s) == 1.0 and softmax_scale_factor(None) == 1.0
    assert yarn_mscale(40, 1.0) == pytest.approx(1.3688879454113936) and yarn_mscale(0.5) == 1.0
    # factor 1 is plain RoPE
    np.testing.assert_allclose(np.asarray(rope_frequencies(32, 500.0, RopeScaling(factor=1.0))),
                               np.asarray(rope_frequencies(32, 500.0)), rtol=1e-6)


def test_apply_rope_with_yarn_scales_cos_and_sin():
    s = RopeScaling(factor=4.0, original_max_position_embeddings=64, mscale=1.0, mscale_all_dim=0.5)
    rng = np.random.RandomState(0)
    x = rng.standard_normal((2, 5, 3, 16)).astype(np.float32)
    pos = np.arange(5) + 100
    got = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(pos), 1000.0, s))
    inv = np.asarray(rope_frequencies(16, 1000.0, s), np.float64)
    ang = pos[:, None] * inv  # [s, 8]
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    a = rope_attention_factor(s)
    x1, x2 = x[..., :8], x[..., 8:]
    ref = a * np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    # no scaling: the plain rotation, unchanged
    plain = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(pos), 1000.0))
    inv = 1.0 / 1000.0 ** (np.arange(0, 16, 2) / 16)
    ang = pos[:, None] * inv
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    np.testing.assert_allclose(plain, np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1), atol=2e-5)


@pytest.mark.parametrize("kw,msg", [
    ({"type": "linear"}, "only 'yarn'"),
    ({"factor": 0.5}, "must be >= 1"),
    ({"original_max_position_embeddings": 0}, "must be positive"),
    ({"beta_fast": 0.0}, "beta_fast"),
    ({"mscale": -1.0}, ">= 0"),
])
def test_rope_scaling_is_checked_in_one_sentence(kw, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        RopeScaling(**kw).validate()
    assert "\n" not in str(e.value)
