"""DeepSeekMoE (``deepseek``), DeepSeek-V2 and YaRN in DeepSeek-V3 / Qwen3-MoE, both directions.

* ``deepseek`` has no transformers class: parity is against an independent numpy forward
  (:mod:`deepseek_reference`) that reads the directory by its HF names. Export jaxmoe ->
  HF dir -> reference, and a hand-built HF dir with random weights -> import -> jaxmoe;
  logits and experts chosen per token agree. ``jaxmoe export --family deepseek`` works on
  a (shrunk) lm_tiny run.
* ``deepseek_v2`` and the YaRN cases are checked against transformers (tiny random models
  from a config, ``save_pretrained`` -> import; export -> ``from_pretrained``).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.config import Config, DataConfig
from jaxmoe.export import ExportError, hf_info, load_hf, save_hf
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig
from jaxmoe.nn.rope import RopeScaling

from . import deepseek_reference as ref

TOL = dict(atol=1e-4, rtol=1e-4)
MAX_DIFF: dict[str, float] = {}  # largest logit difference per case (printed with -s)


def _random_params(model: LMConfig, seed: int):
    shapes = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), model))
    rng = np.random.RandomState(seed)
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    out = []
    for path, s in leaves:
        key = jax.tree_util.keystr(path)
        r = rng.standard_normal(s.shape).astype(np.float32)
        val = 1.0 + 0.2 * r if "scale" in key else (0.3 * r if "bias" in key else r / np.sqrt(model.embed_dim))
        out.append(np.asarray(val, np.float32))
    return jax.tree.unflatten(tree, out)


def _compare(name, ours, theirs, min_scale=0.5):
    logits, aux = ours
    ref_logits, ref_ids = theirs
    diff = float(np.abs(np.asarray(logits, np.float64) - ref_logits).max())
    MAX_DIFF[name] = max(MAX_DIFF.get(name, 0.0), diff)
    print(f"{name}: max |logit difference| = {diff:.2e}")
    np.testing.assert_allclose(np.asarray(logits), ref_logits, **TOL)
    assert np.abs(ref_logits).max() > min_scale  # not a degenerate model
    ids = np.asarray(aux["expert_ids"])
    assert ids.shape[0] == len(ref_ids) > 0
    for ours_l, ref_l in zip(ids, ref_ids):
        np.testing.assert_array_equal(np.sort(ours_l, -1), np.sort(ref_l, -1), err_msg=name)


def _apply(cfg):
    return jax.jit(lambda p, t: lm.apply(p, t, cfg.model))


# ------------------------------------------------------------------------- deepseek (v1)

V1_CASES = {
    # the lm_tiny shape: GQA 4/2, 8 experts top-2, one shared expert, first dense layer, no renormalisation
    "lm_tiny_like": dict(num_heads=4, num_kv_heads=2, num_layers=3,
                         moe=dict(num_experts=8, experts_per_token=2, num_shared_experts=1, first_k_dense=1,
                                  dense_ffn_dim=48, norm_topk=False)),
    # q/k/v biases (+ a zero o bias), 2 shared experts, renormalised top-3, MoE every other layer, tied head
    "bias_norm_every2": dict(num_heads=4, num_kv_heads=4, num_layers=4, qkv_bias=True, tie_embeddings=True,
                             moe=dict(num_experts=6, experts_per_token=3, num_shared_experts=2, first_k_dense=1,
                                      moe_every=2, dense_ffn_dim=40, norm_topk=True)),
}


def _v1_model(case) -> LMConfig:
    kw = dict(V1_CASES[case])
    moe = dict(expert_ffn_dim=12, balance_loss="expert", balance_coef=0.003, seq_aux=True, **kw.pop("moe"))
    return LMConfig(vocab_size=50, embed_dim=32, max_seq_len=64, rope_theta=500.0, **kw, moe=MoEConfig(**moe))


@pytest.mark.parametrize("case", list(V1_CASES))
def test_deepseek_export_matches_the_reference_forward(case, tmp_path):
    model = _v1_model(case)
    cfg = Config(model=model, data=DataConfig(seq_len=32))
    params = _random_params(model, seed=1)
    summary = save_hf(cfg, params, "deepseek", tmp_path / "hf", shard_size="20KB")
    assert len(summary["files"]) > 2  # sharded, with an index
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "deepseek" and hf["architectures"] == ["DeepseekForCausalLM"]
    assert hf["scoring_func"] == "softmax" and hf["aux_loss_alpha"] == 0.003 and hf["seq_aux"] is True
    assert hf["first_k_dense_replace"] == 1 and hf["moe_layer_freq"] == model.moe.moe_every
    assert hf["n_shared_experts"] == model.moe.num_shared_experts and "rope_parameters" not in hf
    toks = np.random.RandomState(2).randint(0, 50, (2, 9))
    _compare(f"deepseek export ({case})", _apply(cfg)(params, jnp.asarray(toks)), ref.forward(tmp_path / "hf", toks))
    # and back: the same params and model
    cfg2, back = load_hf(tmp_path / "hf")
    assert cfg2.model.moe.first_k_dense == model.moe.first_k_dense and cfg2.model.moe.moe_every == model.moe.moe_every
    jax.tree.map(np.testing.assert_array_equal, back, params)
    _compare(f"deepseek export ({case})", _apply(cfg2)(back, jnp.asarray(toks)), ref.forward(tmp_path / "hf", toks))


def _write_v1_dir(path, seed=0):
    """A DeepSeekMoE directory as the 16B release lays it out (smaller), with random weights."""
    from safetensors.numpy import save_file

    hidden, heads, kv, layers, vocab, inter, moe_inter, n_exp, n_shared = 48, 6, 2, 3, 70, 64, 16, 8, 2
    conf = {"architectures": ["DeepseekForCausalLM"], "model_type": "deepseek", "attention_bias": False,
            "attention_dropout": 0.0, "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekConfig",
                                                   "AutoModel": "modeling_deepseek.DeepseekModel",
                                                   "AutoModelForCausalLM": "modeling_deepseek.DeepseekForCausalLM"},
            "aux_loss_alpha": 0.001, "bos_token_id": 1, "eos_token_id": 2, "first_k_dense_replace": 1,
            "hidden_act": "silu", "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": inter,
            "max_position_embeddings": 128, "moe_intermediate_size": moe_inter, "moe_layer_freq": 1,
            "n_routed_experts": n_exp, "n_shared_experts": n_shared, "norm_topk_prob": False,
            "num_attention_heads": heads, "num_experts_per_tok": 3, "num_hidden_layers": layers,
            "num_key_value_heads": kv, "pretraining_tp": 1, "rms_norm_eps": 1e-06, "rope_scaling": None,
            "rope_theta": 10000, "scoring_func": "softmax", "seq_aux": True, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": vocab}
    rng = np.random.RandomState(seed)
    hd = hidden // heads
    t = {}

    def lin(name, out, inp):
        t[name] = (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def norm(name, n):
        t[name] = (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    t["model.embed_tokens.weight"] = rng.standard_normal((vocab, hidden)).astype(np.float32)
    for i in range(layers):
        p = f"model.layers.{i}."
        norm(p + "input_layernorm.weight", hidden)
        norm(p + "post_attention_layernorm.weight", hidden)
        lin(p + "self_attn.q_proj.weight", heads * hd, hidden)
        lin(p + "self_attn.k_proj.weight", kv * hd, hidden)
        lin(p + "self_attn.v_proj.weight", kv * hd, hidden)
        lin(p + "self_attn.o_proj.weight", hidden, heads * hd)

        def mlp(prefix, width):
            lin(prefix + "gate_proj.weight", width, hidden)
            lin(prefix + "up_proj.weight", width, hidden)
            lin(prefix + "down_proj.weight", hidden, width)

        if i == 0:
            mlp(p + "mlp.", inter)
        else:
            lin(p + "mlp.gate.weight", n_exp, hidden)
            for e in range(n_exp):
                mlp(p + f"mlp.experts.{e}.", moe_inter)
            mlp(p + "mlp.shared_experts.", n_shared * moe_inter)
    norm("model.norm.weight", hidden)
    lin("lm_head.weight", vocab, hidden)
    path.mkdir(parents=True)
    names = sorted(t)  # two shards with an index, as the release has
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, ns in shards.items():
        save_file({n: t[n] for n in ns}, str(path / file), metadata={"format": "pt"})
    index = {"metadata": {"total_size": int(sum(a.nbytes for a in t.values()))},
             "weight_map": {n: f for f, ns in shards.items() for n in ns}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / "config.json").write_text(json.dumps(conf))
    return conf


def test_deepseek_import_of_a_release_layout_matches_the_reference_forward(tmp_path):
    conf = _write_v1_dir(tmp_path / "hf")
    info = hf_info(tmp_path / "hf")
    assert info["family"] == "deepseek" and info["num_kv_heads"] == 2 and info["first_k_dense"] == 1
    cfg, params = load_hf(tmp_path / "hf")
    m = cfg.model
    assert (m.num_kv_heads, m.moe.num_experts, m.moe.experts_per_token, m.moe.num_shared_experts) == (2, 8, 3, 2)
    assert not m.moe.norm_topk and m.moe.balance_loss == "expert" and m.moe.balance_coef == conf["aux_loss_alpha"]
    assert m.moe.seq_aux and m.moe.first_k_dense == 1 and m.moe.dense_ffn_dim == conf["intermediate_size"]
    toks = np.random.RandomState(3).randint(0, conf["vocab_size"], (2, 10))
    _compare("deepseek import", _apply(cfg)(params, jnp.asarray(toks)), ref.forward(tmp_path / "hf", toks))


def test_deepseek_refusals_are_one_sentence(tmp_path):
    base = _v1_model("lm_tiny_like")
    bad = {
        "head_dim": (base.__class__(**{**_fields(base), "head_dim": 16}), "head_dim=16"),
        "norm_k1": (_with_moe(base, norm_topk=True, experts_per_token=1), "renormalises only when top-k > 1"),
        "pattern": (_with_moe(base, first_k_dense=0, moe_every=2), "have no deepseek equivalent"),
        "sigmoid": (_with_moe(base, score_func="sigmoid"), "score_func='sigmoid'"),
        "yarn": (base.__class__(**{**_fields(base), "rope_scaling": RopeScaling(factor=2.0)}), "rope_scaling"),
        "mla": (base.__class__(**{**_fields(base), "attention_type": "mla"}), "Multi-head Latent Attention"),
        "shared_width": (_with_moe(base, shared_ffn_dim=20), "not a multiple"),
        "relu": (_with_moe(base, expert_activation="relu"), "expert_activation='relu'"),
    }
    for what, (model, msg) in bad.items():
        with pytest.raises(ExportError) as e:
            save_hf(Config(model=model, data=DataConfig(seq_len=32)), {}, "deepseek", tmp_path / what)
        text = str(e.value)
        assert msg in text and "\n" not in text and text.endswith("."), (what, text)
        assert not (tmp_path / what).exists()
    # import side
    conf = _write_v1_dir(tmp_path / "hf")
    for change, msg in [({"scoring_func": "sigmoid"}, "scoring_func='sigmoid'"),
                        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE scaling type 'linear'"),
                        ({"moe_layer_freq": 2, "first_k_dense_replace": 0}, "has no jaxmoe equivalent"),
                        ({"n_routed_experts": None}, "dense model")]:
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**conf, **change}))
        with pytest.raises(ExportError, match=msg.replace("(", r"\(")) as e:
            load_hf(tmp_path / "hf")
        assert "\n" not in str(e.value)


def _fields(m):
    import dataclasses

    return {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}


def _with_moe(m, **kw):
    import dataclasses

    return dataclasses.replace(m, moe=dataclasses.replace(m.moe, **kw))


def test_the_16b_config_exports_as_the_released_deepseek_moe_config():
    from jaxmoe.config import load_config
    from jaxmoe.export import get_family

    hf = get_family("deepseek").config_to_hf(load_config("configs/deepseek_moe_16b.yaml"))
    released = {"hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16,
                "vocab_size": 102400, "intermediate_size": 10944, "moe_intermediate_size": 1408,
                "n_routed_experts": 64, "num_experts_per_tok": 6, "n_shared_experts": 2, "first_k_dense_replace": 1,
                "moe_layer_freq": 1, "norm_topk_prob": False, "scoring_func": "softmax", "aux_loss_alpha": 0.001,
                "seq_aux": True, "rope_theta": 10000.0, "max_position_embeddings": 4096, "attention_bias": False,
                "model_type": "deepseek", "architectures": ["DeepseekForCausalLM"], "rope_scaling": None}
    assert {k: hf[k] for k in released} == released


def test_yarn_is_read_from_old_and_new_config_fields():
    """DeepSeek-V3's released config.json (``rope_scaling`` with ``type``) and transformers 5's
    ``rope_parameters`` give the same scaling; export writes ``rope_parameters``."""
    from jaxmoe.export.families.common import rope_from_hf, rope_to_hf

    released = {"max_position_embeddings": 163840, "rope_theta": 10000,
                "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                                 "original_max_position_embeddings": 4096, "type": "yarn"}}
    theta, s = rope_from_hf(released, 1e4, "deepseek_v3", scaling=True)
    assert theta == 10000.0 and s == RopeScaling(factor=40.0, original_max_position_embeddings=4096, mscale=1.0,
                                                  mscale_all_dim=1.0)
    new = {"max_position_embeddings": 163840, **rope_to_hf(theta, s)}
    assert new["rope_parameters"]["rope_type"] == "yarn" and rope_from_hf(new, 1e4, "x", scaling=True) == (theta, s)
    # factor left out: max_position_embeddings / original_max_position_embeddings, as transformers does
    implicit = {**released, "rope_scaling": {k: v for k, v in released["rope_scaling"].items() if k != "factor"}}
    assert rope_from_hf(implicit, 1e4, "x", scaling=True)[1].factor == 40.0
    with pytest.raises(ExportError, match="RoPE scaling type 'yarn', which jaxmoe's mixtral family does not"):
        rope_from_hf(released, 1e4, "mixtral")
    with pytest.raises(ExportError, match="only YaRN"):
        rope_from_hf({"rope_scaling": {"type": "llama3", "factor": 8.0}}, 1e4, "x", scaling=True)


def test_export_of_a_trained_lm_tiny_run_matches_the_reference(tmp_path, capsys):
    """``jaxmoe export --family deepseek`` on the quick-start config (shrunk for CPU tests)."""
    from jaxmoe.checkpoint import load_params
    from jaxmoe.cli import main

    run, out = tmp_path / "run", tmp_path / "hf"
    shrink = ["model.embed_dim=32", "model.num_layers=2", "model.moe.expert_ffn_dim=16", "model.moe.shared_ffn_dim=16",
              "model.moe.dense_ffn_dim=48", "data.seq_len=32", "train.batch_size=8", "train.progress=false",
              "train.eval_batches=1", "train.log_every=1", "train.steps=3", f"train.output_dir={run}"]
    assert main(["train", "--config", "configs/lm_tiny.yaml", *shrink]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run), "--family", "deepseek", "--out", str(out)]) == 0
    capsys.readouterr()
    cfg, params = load_params(run)
    m = cfg.model
    assert (m.num_heads, m.kv_heads, m.moe.num_experts, m.moe.experts_per_token, m.moe.num_shared_experts,
            m.moe.first_k_dense, m.moe.norm_topk) == (4, 2, 8, 2, 1, 1, False)  # lm_tiny's shape
    hf = json.loads((out / "config.json").read_text())
    assert (hf["vocab_size"], hf["bos_token_id"], hf["eos_token_id"]) == (259, 257, 258)
    toks = np.random.RandomState(0).randint(0, 256, (2, 12))
    _compare("deepseek lm_tiny CLI export", _apply(cfg)(params, jnp.asarray(toks)), ref.forward(out, toks),
             min_scale=0.05)  # a briefly trained model (init std 0.02) has small logits


# ------------------------------------------------------------------------------ transformers

try:
    import torch
    import transformers

    torch.set_grad_enabled(False)
except ImportError:  # the deepseek (v1) tests above need neither
    torch = transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="needs torch and transformers")

COMMON = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, max_position_embeddings=64)


def _yarn(factor=4.0, original=16, **kw):
    return {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": factor,
                                "original_max_position_embeddings": original, **kw}}


HF_CASES = {
    # DeepSeek-V2 as released: greedy top-k, routed scaling, YaRN with mscale == mscale_all_dim, low-rank q
    "deepseek_v2": lambda: transformers.DeepseekV2Config(
        num_hidden_layers=3, num_key_value_heads=4, intermediate_size=48, moe_intermediate_size=16,
        n_routed_experts=8, num_experts_per_tok=3, first_k_dense_replace=1, n_shared_experts=2, q_lora_rank=12,
        kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6, routed_scaling_factor=1.7,
        topk_method="greedy", norm_topk_prob=False, **_yarn(mscale=0.707, mscale_all_dim=0.707), **COMMON),
    # group_limited_greedy with one expert per group (best score == top-2 sum), plain q, no YaRN
    "deepseek_v2_groups": lambda: transformers.DeepseekV2Config(
        num_hidden_layers=2, num_key_value_heads=4, intermediate_size=48, moe_intermediate_size=16,
        n_routed_experts=4, num_experts_per_tok=2, n_group=4, topk_group=2, topk_method="group_limited_greedy",
        first_k_dense_replace=0, n_shared_experts=1, q_lora_rank=None, kv_lora_rank=8, qk_rope_head_dim=4,
        qk_nope_head_dim=8, v_head_dim=8, routed_scaling_factor=1.0,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, **COMMON),
    # DeepSeek-V3/R1-style YaRN: mscale and mscale_all_dim (softmax-scale correction), group-limited routing
    "deepseek_v3_yarn": lambda: transformers.DeepseekV3Config(
        num_hidden_layers=3, num_key_value_heads=4, intermediate_size=48, moe_intermediate_size=16,
        n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, first_k_dense_replace=1,
        n_shared_experts=1, q_lora_rank=12, kv_lora_rank=8, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=6,
        routed_scaling_factor=2.5, norm_topk_prob=True, **_yarn(factor=6.0, mscale=1.0, mscale_all_dim=0.8),
        **COMMON),
    # Qwen long-context YaRN: attention factor from the factor alone, on a standard-attention model
    "qwen3_moe_yarn": lambda: transformers.Qwen3MoeConfig(
        num_hidden_layers=2, num_key_value_heads=2, head_dim=16, intermediate_size=48, moe_intermediate_size=16,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, **_yarn(factor=4.0, original=12, beta_fast=16.0),
        **COMMON),
}


def _randomize_hf(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tensors = dict(model.named_parameters())
    tensors.update({n: b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")})
    for name, t in tensors.items():
        r = torch.randn(t.shape, generator=g, dtype=torch.float32)
        if "norm" in name:
            val = 1.0 + 0.2 * r
        elif name.endswith("e_score_correction_bias"):
            val = 0.5 * r - 0.6
        elif name.endswith("bias"):
            val = 0.3 * r
        else:
            val = r / np.sqrt(t.shape[-1])
        t.data.copy_(val)


def _hf_run(model, toks):
    ids = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: ids.append(out[2].numpy()))
             for m in model.modules() if type(m).__name__.lower().endswith("topkrouter")]
    try:
        logits = model(torch.tensor(toks)).logits.double().numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, ids


@needs_transformers
@pytest.mark.parametrize("case", list(HF_CASES))
def test_transformers_parity_both_directions(case, tmp_path):
    family = case.replace("_groups", "").replace("_yarn", "")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(HF_CASES[case]()).float().eval()
    _randomize_hf(model, seed=1)
    model.save_pretrained(tmp_path / "hf")
    toks = np.random.RandomState(2).randint(0, 64, (2, 40))

    cfg, params = load_hf(tmp_path / "hf")
    assert hf_info(tmp_path / "hf")["family"] == family
    apply = _apply(cfg)
    _compare(case, apply(params, jnp.asarray(toks)), _hf_run(model, toks))
    if "yarn" in case or case == "deepseek_v2":
        assert cfg.model.rope_scaling is not None
        # the scaling matters at these positions: without it the logits differ
        import dataclasses

        plain = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, rope_scaling=None))
        assert np.abs(np.asarray(_apply(plain)(params, jnp.asarray(toks))[0]) - _hf_run(model, toks)[0]).max() > 1e-3

    ours = jax.tree.map(lambda a: np.asarray(a), _random_params(cfg.model, seed=3))
    summary = save_hf(cfg, ours, family, tmp_path / "out", shard_size="24KB")
    assert len(summary["files"]) > 2
    hf_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf_cfg["model_type"] == family
    model2 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    _compare(case, apply(ours, jnp.asarray(toks)), _hf_run(model2, toks))
    cfg2, back = load_hf(tmp_path / "out")
    assert cfg2.model == cfg.model
    jax.tree.map(np.testing.assert_array_equal, back, ours)


@needs_transformers
def test_deepseek_v2_group_routing_jaxmoe_cannot_express_is_refused(tmp_path):
    conf = transformers.DeepseekV2Config(
        num_hidden_layers=2, num_key_value_heads=4, intermediate_size=48, moe_intermediate_size=16,
        n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, topk_method="group_limited_greedy",
        n_shared_experts=1, q_lora_rank=None, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8,
        **COMMON)
    transformers.AutoModelForCausalLM.from_config(conf).save_pretrained(tmp_path / "hf")
    with pytest.raises(ExportError, match="best score") as e:
        load_hf(tmp_path / "hf")
    assert "\n" not in str(e.value)
    raw = json.loads((tmp_path / "hf" / "config.json").read_text())
    for change, msg in [({"norm_topk_prob": True}, "norm_topk_prob=true"), ({"topk_method": "noaux_tc"}, "noaux_tc"),
                        ({"scoring_func": "sigmoid"}, "sigmoid")]:
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**raw, "topk_method": "greedy", **change}))
        with pytest.raises(ExportError, match=msg):
            load_hf(tmp_path / "hf")
    # export side: V3-style top-2 group scoring with 2+ experts per group, sigmoid scores, renormalisation
    moe = dict(num_experts=8, experts_per_token=2, expert_ffn_dim=8, num_shared_experts=1)
    mla = dict(vocab_size=40, embed_dim=16, num_layers=2, num_heads=2, max_seq_len=32, attention_type="mla",
               kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4)
    for extra, msg in [({"num_groups": 4, "topk_groups": 2}, "group_limited_greedy (best score per group)"),
                       ({"score_func": "sigmoid"}, "score_func='sigmoid'"),
                       ({"norm_topk": True}, "never renormalises")]:
        m = LMConfig(**mla, moe=MoEConfig(**moe, **extra))
        with pytest.raises(ExportError) as e:
            save_hf(Config(model=m, data=DataConfig(seq_len=16)), {}, "deepseek_v2", tmp_path / "x")
        assert msg in str(e.value) and "\n" not in str(e.value)
