"""SCMoE self-contrast decoding: strong top-k routing against a weak rank-r routing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.decode.contrastive import SCMoEConfig, check, contrastive_generate, scmoe_scores
from jaxmoe.decode.generate import generate_tokens
from jaxmoe.models import lm
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.routers import RouterInputs
from jaxmoe.moe.routers.topk import route as topk_route
from routing_helpers import fast_init, tiny_cfg


def test_plausibility_cutoff_hand_example():
    z_s = np.array([0.0, -1.0, -3.0, -5.0, -2.0])
    z_w = np.array([2.0, -2.0, 0.0, -20.0, -6.0])
    got = np.asarray(scmoe_scores(jnp.asarray([z_s]), jnp.asarray([z_w]), SCMoEConfig(beta=0.5, alpha=0.1)))[0]
    cutoff = math.log(0.1) + z_s.max()  # -2.30: tokens 2 (-3) and 3 (-5) fall below it
    want = 1.5 * z_s - 0.5 * z_w  # [-1, -0.5, -4.5, 2.5, 0]
    assert (z_s < cutoff).tolist() == [False, False, True, True, False]
    assert np.isneginf(got[2]) and np.isneginf(got[3])
    np.testing.assert_allclose(got[[0, 1, 4]], want[[0, 1, 4]], rtol=1e-6)
    assert int(np.argmax(want)) == 3 and int(np.argmax(got)) == 4  # the cutoff removes 3; greedy would pick 0
    # temperatures divide the logits before the cutoff: -2 / 0.5 = -4 < log(0.1)
    got_t = np.asarray(scmoe_scores(jnp.asarray([z_s]), jnp.asarray([z_w]),
                                    SCMoEConfig(beta=0.5, alpha=0.1, strong_temperature=0.5)))[0]
    assert np.isneginf(got_t[[2, 3, 4]]).all() and np.isfinite(got_t[[0, 1]]).all()


def test_rank_select_router_input():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 8)), jnp.float32)
    params = {"kernel": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)}
    cfg = MoEConfig(num_experts=4, experts_per_token=2)
    probs = np.asarray(jax.nn.softmax(x @ params["kernel"]))
    for r in range(4):
        weak = topk_route(params, x, cfg, rank_select=r)
        np.testing.assert_array_equal(np.asarray(weak.expert_ids[:, 0]), np.argsort(-probs, axis=-1)[:, r])
        assert np.asarray(weak.weights).tolist() == [[1.0]] * 6  # one expert, weight renormalised
    off = jnp.asarray([True, False, True, True])
    top = np.argsort(-np.where(np.asarray(off), probs, -1), axis=-1)[:, 0]
    first = topk_route(params, x, cfg, rank_select=0, expert_mask=off).expert_ids[:, 0]
    np.testing.assert_array_equal(np.asarray(first), top)


@pytest.fixture(scope="module")
def model():
    cfg = tiny_cfg(norm_topk=True)
    return cfg, fast_init(cfg, std=0.4)


def test_beta_zero_equals_greedy_decoding(model):
    cfg, params = model
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, 32, (2, 5)), jnp.int32)
    greedy = generate_tokens(params, prompt, cfg, 8, jax.random.PRNGKey(0))
    sc0 = contrastive_generate(params, prompt, cfg, 8, jax.random.PRNGKey(0), SCMoEConfig(beta=0.0, weak_rank=2))
    np.testing.assert_array_equal(np.asarray(sc0), np.asarray(greedy))


def test_first_token_follows_the_contrast(model):
    cfg, params = model
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, 32, (2, 5)), jnp.int32)
    apply = jax.jit(lm.apply, static_argnames="cfg")
    strong, _ = apply(params, prompt, cfg)
    weak, aux = apply(params, prompt, cfg, inputs=RouterInputs(rank_select=2))
    assert aux["expert_ids"].shape[-1] == 1  # the weak model runs one expert per token
    assert np.abs(np.asarray(strong) - np.asarray(weak)).max() > 1e-3
    sc = SCMoEConfig(beta=2.0, alpha=0.5, weak_rank=2)
    want = np.asarray(jnp.argmax(scmoe_scores(strong[:, -1], weak[:, -1], sc), -1))
    got = contrastive_generate(params, prompt, cfg, 8, jax.random.PRNGKey(0), sc)  # same program as beta = 0
    np.testing.assert_array_equal(np.asarray(got[:, 0]), want)


def test_checks():
    with pytest.raises(ValueError, match="weak-rank"):
        check(tiny_cfg(), SCMoEConfig(weak_rank=4))
    with pytest.raises(ValueError, match="ranked router"):
        check(tiny_cfg(router="topp"), SCMoEConfig())
    with pytest.raises(ValueError, match="alpha"):
        check(tiny_cfg(), SCMoEConfig(alpha=0.0))


def test_cli_contrastive(tmp_path, capsys):
    from jaxmoe.cli import main
    from routing_helpers import make_run

    run = tmp_path / "run"
    make_run(run, "configs/lm_tiny.yaml", ["model.embed_dim=16", "model.num_layers=2", "model.num_heads=2",
                                            "model.num_kv_heads=1", "model.moe.num_experts=4",
                                            "model.moe.expert_ffn_dim=8", "model.moe.shared_ffn_dim=8",
                                            "model.moe.dense_ffn_dim=16", "model.max_seq_len=32", "data.seq_len=32"],
             std=0.5)
    rc = main(["generate", "--checkpoint", str(run), "--prompt", "def ", "--max-new-tokens", "6",
               "--contrastive", "scmoe", "--beta", "0.5", "--alpha", "0.1", "--weak-rank", "2"])
    assert rc == 0 and capsys.readouterr().out.startswith("def ")
    rc = main(["generate", "--checkpoint", str(run), "--prompt", "x", "--contrastive", "scmoe", "--weak-rank", "4"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: --weak-rank=4 must be between 0 and") and len(err.splitlines()) == 1
