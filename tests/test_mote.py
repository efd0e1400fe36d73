"""MoTE expert steering: profiling two prompt sets, disabling and forcing experts."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.cli import main
from jaxmoe.config import load_config
from jaxmoe.data.tokenizers import ByteTokenizer
from jaxmoe.decode import steering
from jaxmoe.models import lm
from jaxmoe.moe.routers import RouterInputs
from routing_helpers import fast_init, make_run

apply = jax.jit(lm.apply, static_argnames="cfg")


TINY = ["model.embed_dim=16", "model.num_layers=3", "model.num_heads=2", "model.num_kv_heads=1",
        "model.moe.num_experts=6", "model.moe.expert_ffn_dim=8", "model.moe.shared_ffn_dim=8",
        "model.moe.dense_ffn_dim=16", "model.max_seq_len=64", "data.seq_len=32"]


@pytest.fixture(scope="module")
def model():
    cfg = load_config("configs/lm_tiny.yaml", TINY).model  # the CLI test loads the same model: shared compiles
    return cfg, fast_init(cfg, std=0.5)


def test_parse_and_mask_errors(model):
    cfg, _ = model
    assert steering.parse_pairs("1:5, 2:0") == [(1, 5), (2, 0)]
    em, fm = steering.router_masks(cfg, "1:5,2:0", "2:3")
    assert em.shape == fm.shape == (3, 6)
    assert (~em).sum() == 2 and not em[1, 5] and not em[2, 0] and fm[2, 3] and fm.sum() == 1
    for bad, msg in [("0:1", "has no MoE"), ("1:6", "does not exist"), ("1-2", "LAYER:EXPERT")]:
        with pytest.raises(ValueError, match=msg):
            steering.router_masks(cfg, bad)
    with pytest.raises(ValueError, match="both disabled and forced"):
        steering.router_masks(cfg, "1:2", "1:2")
    with pytest.raises(ValueError, match="forces 3 experts"):
        steering.router_masks(cfg, None, "1:0,1:1,1:2")
    with pytest.raises(ValueError, match="keeps 1 enabled"):
        steering.router_masks(cfg, "1:0,1:1,1:2,1:3,1:4")


def test_disabled_expert_gets_zero_tokens_and_forced_expert_is_everywhere(model):
    cfg, params = model
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 259, (4, 16)), jnp.int32)
    none_off, none_forced = np.ones((3, 6), bool), np.zeros((3, 6), bool)  # neutral masks: one compiled program
    _, base = apply(params, tokens, cfg, inputs=RouterInputs(expert_mask=none_off, force_mask=none_forced))
    ids = np.asarray(base["expert_ids"])  # [moe layers (1, 2), T, k]
    busiest = [int(np.bincount(ids[i].ravel(), minlength=6).argmax()) for i in range(2)]
    em, fm = steering.router_masks(cfg, f"1:{busiest[0]},2:{busiest[1]}")
    _, aux = apply(params, tokens, cfg, inputs=RouterInputs(expert_mask=em, force_mask=none_forced))
    for i in range(2):
        assert (ids[i] == busiest[i]).sum() > 0  # it had tokens before
        assert (np.asarray(aux["expert_ids"][i]) != busiest[i]).all()  # exactly zero tokens now
        assert float(aux["load"][i, busiest[i]]) == 0.0
    rare = [int(np.bincount(ids[i].ravel(), minlength=6).argmin()) for i in range(2)]
    _, fm = steering.router_masks(cfg, None, f"1:{rare[0]},2:{rare[1]}")
    _, aux = apply(params, tokens, cfg, inputs=RouterInputs(expert_mask=none_off, force_mask=fm))
    for i in range(2):
        assert (np.asarray(aux["expert_ids"][i]) == rare[i]).any(-1).all()  # in every token's set


def test_profile_ranks_experts_and_masks_silence_them(model, tmp_path):
    cfg, params = model
    tok = ByteTokenizer()
    a = ["0123 4567 89", "3141592653", "2718 2818 28"]
    b = ["the quick brown fox", "jumps over the lazy dog", "hello world"]
    prof = steering.profile_experts(params, cfg, a, b, tok)
    fa, fb = np.asarray(prof["freq_a"]), np.asarray(prof["freq_b"])
    assert prof["layers"] == [1, 2] and fa.shape == (2, 6)
    np.testing.assert_allclose(fa.sum(1), 2.0, rtol=1e-6)  # each token uses k = 2 experts
    np.testing.assert_allclose(np.asarray(prof["diff"]), fa - fb)
    assert prof["tokens_a"] == sum(len(p) for p in a)
    diffs = [r["diff"] for r in prof["ranking"]]
    assert diffs == sorted(diffs, reverse=True) and diffs[0] > 0.1
    top = prof["ranking"][0]
    em, _ = steering.router_masks(cfg, steering.top_experts(prof, 1))
    freq, _ = steering.expert_frequencies(params, cfg, [tok.encode(p) for p in a], expert_mask=em)
    assert freq[prof["layers"].index(top["layer"]), top["expert"]] == 0.0
    steering.save_profile(prof, tmp_path / "p.json")
    assert steering.load_profile(tmp_path / "p.json")["ranking"][0] == top
    steering.plot_profile(prof, tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 1000


def test_cli_profile_and_generate_flags(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, "configs/lm_tiny.yaml", TINY, std=0.5)
    (tmp_path / "a.txt").write_text("def f(x):\n    return x\n\nimport os\n")
    (tmp_path / "b.txt").write_text("The cat sat on the mat.\nA quiet evening.\n")
    rc = main(["experts", "profile", "--checkpoint", str(run), "--prompts-a", str(tmp_path / "a.txt"),
               "--prompts-b", str(tmp_path / "b.txt"), "--plot", str(tmp_path / "heat.png"),
               "--out", str(tmp_path / "ranking.json"), "--labels", "code,prose", "--top", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "experts most specific to code" in out and "--disable-experts" in out
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    assert ranking["labels"] == ["code", "prose"] and len(ranking["ranking"]) == 2 * 6
    assert (tmp_path / "heat.png").exists()
    rc = main(["generate", "--checkpoint", str(run), "--prompt", "def ", "--max-new-tokens", "4",
               "--disable-experts", "1:0,2:1", "--force-experts", "2:3"])
    assert rc == 0 and capsys.readouterr().out.startswith("def ")
    rc = main(["generate", "--checkpoint", str(run), "--prompt", "x", "--disable-experts", "0:1"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: layer 0 has no MoE") and len(err.splitlines()) == 1
    rc = main(["experts", "profile", "--checkpoint", str(run), "--prompts-a", str(tmp_path / "missing.txt"),
               "--prompts-b", str(tmp_path / "b.txt")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
