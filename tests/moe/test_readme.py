"""Read-ME pre-gating router: expert ids known before the backbone runs, shared by every layer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.config import ConfigError, load_config
from jaxmoe.decode.generate import generate_tokens
from jaxmoe.models import lm
from jaxmoe.moe.routers import RouterInputs
from jaxmoe.moe.routers import readme as pregate
from jaxmoe.moe.routers.readme import ReadMeOptions
from routing_helpers import fast_init, tiny_cfg


@pytest.fixture(scope="module")
def model():
    cfg = tiny_cfg(router="readme", experts_per_token=1, num_shared_experts=1, shared_ffn_dim=8,
                   router_options=ReadMeOptions(dim=16, heads=2, layers=2))
    return cfg, fast_init(cfg, std=0.5)


apply = jax.jit(lm.apply, static_argnames="cfg")
lookahead = jax.jit(pregate.lookahead, static_argnames="cfg")


def test_params_and_no_per_layer_router(model):
    cfg, params = model
    assert set(params["pregate"]) == {"embed", "blocks", "final_norm", "head"}
    assert params["pregate"]["head"]["kernel"].shape == (16, 4)
    assert params["groups"][0][0]["ffn"]["router"] == {}  # one router for all layers: the pre-gate
    assert "shared" in params["groups"][0][0]["ffn"]  # the always-on shared slice


def test_lookahead_ids_equal_ids_inside_every_layer(model):
    cfg, params = model
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (3, 10)), jnp.int32)
    ids = np.asarray(lookahead(params, tokens, cfg))  # before (and without) the backbone
    assert ids.shape == (3, 10) and len(np.unique(ids)) > 1
    _, aux = apply(params, tokens, cfg)
    for layer_ids in np.asarray(aux["expert_ids"]):  # [moe layers, b*s, 1]
        np.testing.assert_array_equal(layer_ids.reshape(3, 10), ids)
    groups = pregate.group_by_expert(ids)
    assert sum(len(v) for v in groups.values()) == 30
    assert all(ids[r, t] == e for e, pos in groups.items() for r, t in pos)


@functools.partial(jax.jit, static_argnames="cfg")
def _pregate_step(params, tok, cfg, pcache, index):
    return pregate.pregate_forward(params["pregate"], tok, cfg, cache=pcache, index=index)


@functools.partial(jax.jit, static_argnames="cfg")
def _backbone_step(params, tok, cfg, cache, pl):
    return lm.decode_step(params, tok, cfg, cache, inputs=RouterInputs(pregate_logits=pl))


def test_decoding_with_pregate_lookahead_equals_plain_decoding(model):
    """Plain decoding runs the pre-gate inline (its own KV cache inside the model cache);
    the lookahead loop runs the pre-gate first, on its own, and hands the backbone only its
    logits. Both give the same tokens and the same logits as the uncached forward."""
    cfg, params = model
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, 32, (2, 5)), jnp.int32)
    steps = 6
    plain = np.asarray(generate_tokens(params, prompt, cfg, steps, jax.random.PRNGKey(0)))
    # lookahead: the pre-gate decides the experts of the whole prompt up front, then of each new token
    max_len = 5 + steps
    cache = lm.init_cache(cfg, 2, max_len)
    pcache = pregate.init_pregate_cache(cfg, 2, max_len)
    pl, pcache = _pregate_step(params, prompt, cfg, pcache, 0)
    logits, cache = jax.jit(lm.prefill, static_argnames="cfg")(params, prompt, cfg, cache,
                                                              inputs=RouterInputs(pregate_logits=pl))
    tok = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
    out, step_logits = [tok], []
    for i in range(steps - 1):
        pl, pcache = _pregate_step(params, tok[:, None], cfg, pcache, 5 + i)
        logits, cache = _backbone_step(params, tok, cfg, cache, pl)
        step_logits.append(logits)
        tok = jnp.argmax(logits, -1).astype(jnp.int32)
        out.append(tok)
    np.testing.assert_array_equal(np.stack([np.asarray(t) for t in out], 1), plain)
    # and both equal the uncached forward over the generated sequence
    full = jnp.concatenate([prompt, jnp.asarray(plain[:, :-1])], axis=1)
    ref, _ = apply(params, full, cfg)
    np.testing.assert_allclose(np.stack([np.asarray(x) for x in step_logits], 1), np.asarray(ref[:, 5:]),
                               rtol=1e-4, atol=1e-5)


def test_config():
    cfg = load_config("configs/lm_tiny_readme.yaml")
    assert cfg.model.moe.router == "readme" and cfg.model.moe.num_shared_experts == 1
    assert cfg.model.moe.router_options == ReadMeOptions(dim=64, layers=2, heads=4)
    with pytest.raises(ConfigError, match="readme"):
        load_config("configs/lm_tiny_readme.yaml", ["model.moe.router_options.heads=3"])
    with pytest.raises(ConfigError, match="selection_bias"):
        load_config("configs/lm_tiny_readme.yaml", ["model.moe.selection_bias=true"])
