"""Parity with transformers (CPU, fp32) for every Hugging Face family, in both directions.

For each family a tiny random model is built from a config (no download) with every
tensor randomised (norm scales, biases, selection bias included), saved with
``save_pretrained`` and imported: our logits == transformers' logits and the same experts
are chosen per token. Then independent random jaxmoe params are exported (sharded) and
loaded by ``from_pretrained``: again equal logits and expert choices, and re-importing the
export gives back the exact params.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxmoe.export import ExportError, get_family, hf_info, load_hf, save_hf  # noqa: E402
from jaxmoe.models import lm  # noqa: E402
from jaxmoe.models.lm import LMConfig  # noqa: E402
from jaxmoe.moe.config import MoEConfig  # noqa: E402

torch.set_grad_enabled(False)

COMMON = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, max_position_embeddings=64)


def _rope(theta):
    return {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}


CASES = {
    # explicit head_dim (16 != 32/4), GQA
    "mixtral": lambda: transformers.MixtralConfig(
        num_hidden_layers=2, num_key_value_heads=2, head_dim=16, intermediate_size=16, num_local_experts=4,
        num_experts_per_tok=2, **_rope(1e4), **COMMON),
    # dense layer 0 via mlp_only_layers, q/k/v biases, gated shared expert, no renormalisation
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        num_hidden_layers=3, num_key_value_heads=2, intermediate_size=48, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0],
        norm_topk_prob=False, **_rope(500.0), **COMMON),
    # per-head QK-norm, explicit head_dim, attention biases (o bias zero), tied embeddings, renormalised
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        num_hidden_layers=3, num_key_value_heads=2, head_dim=16, intermediate_size=48, moe_intermediate_size=16,
        num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0], norm_topk_prob=True, attention_bias=True,
        tie_word_embeddings=True, **_rope(1e4), **COMMON),
    # QK-norm over the whole projection
    "olmoe": lambda: transformers.OlmoeConfig(
        num_hidden_layers=2, num_key_value_heads=2, intermediate_size=16, num_experts=4, num_experts_per_tok=2,
        norm_topk_prob=False, pad_token_id=0, eos_token_id=1, **_rope(1e4), **COMMON),
    # MLA with low-rank q, sigmoid router + selection bias, group-limited routing, scaling, shared, dense layer 0
    "deepseek_v3": lambda: transformers.DeepseekV3Config(
        num_hidden_layers=3, num_key_value_heads=4, intermediate_size=48, moe_intermediate_size=16,
        n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, first_k_dense_replace=1,
        n_shared_experts=2, q_lora_rank=12, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6,
        routed_scaling_factor=2.5, norm_topk_prob=True, **_rope(1e4), **COMMON),
    # MLA with a plain q projection, no groups, no renormalisation
    "deepseek_v3_plain_q": lambda: transformers.DeepseekV3Config(
        num_hidden_layers=2, num_key_value_heads=4, intermediate_size=48, moe_intermediate_size=16,
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=0,
        n_shared_experts=1, q_lora_rank=None, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8,
        routed_scaling_factor=1.0, norm_topk_prob=False, **_rope(1e4), **COMMON),
}


def _randomize_hf(model, seed: int) -> None:
    """Every parameter (and the DeepSeek selection bias) random; o_proj biases zero (jaxmoe has none)."""
    g = torch.Generator().manual_seed(seed)
    tensors = dict(model.named_parameters())
    tensors.update({n: b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")})
    for name, t in tensors.items():
        r = torch.randn(t.shape, generator=g, dtype=torch.float32)
        if name.endswith("o_proj.bias"):
            val = torch.zeros_like(r)
        elif "norm" in name:
            val = 1.0 + 0.2 * r
        elif name.endswith("e_score_correction_bias"):  # mostly negative, so selection scores go negative
            val = 0.5 * r - 0.6  # and group masking (-inf, as in transformers, not 0) matters
        elif name.endswith("bias"):
            val = 0.3 * r
        else:
            val = r / np.sqrt(t.shape[-1])
        t.data.copy_(val)


def _random_ours(shapes, seed: int):
    rng = np.random.RandomState(seed)
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    out = []
    for path, s in leaves:
        key = jax.tree_util.keystr(path)
        r = rng.standard_normal(s.shape).astype(np.float32)
        val = 1.0 + 0.2 * r if "scale" in key else (0.5 * r - 0.6 if "selection_bias" in key else
                                                    0.3 * r if "bias" in key else r / np.sqrt(32))
        out.append(np.asarray(val, np.float32))
    return jax.tree.unflatten(tree, out)


def _hf_run(model, toks):
    """Logits and per-MoE-layer top-k expert ids (from the router modules) of a transformers model."""
    ids = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: ids.append(out[2].numpy()))
             for m in model.modules() if type(m).__name__.lower().endswith(("topkrouter",))]
    try:
        logits = model(torch.tensor(toks)).logits.numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, ids


def _check(ours, ref, family):
    logits, aux = ours
    ref_logits, ref_ids = ref
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-4, rtol=1e-4)
    assert np.abs(ref_logits).max() > 0.5  # not a degenerate model
    ids = np.asarray(aux["expert_ids"])
    assert ids.shape[0] == len(ref_ids) > 0
    for ours_l, ref_l in zip(ids, ref_ids):  # same experts per token (order within top-k is irrelevant)
        np.testing.assert_array_equal(np.sort(ours_l, -1), np.sort(ref_l, -1), err_msg=family)


@pytest.mark.parametrize("case", list(CASES))
def test_parity_import_and_export(case, tmp_path):
    family = case.replace("_plain_q", "")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CASES[case]()).float().eval()
    _randomize_hf(model, seed=1)
    model.save_pretrained(tmp_path / "hf")
    toks = np.random.RandomState(2).randint(0, 64, (2, 11))

    # HF -> jaxmoe
    cfg, params = load_hf(tmp_path / "hf")
    assert hf_info(tmp_path / "hf")["family"] == family
    apply = jax.jit(lambda p, t: lm.apply(p, t, cfg.model))
    _check(apply(params, jnp.asarray(toks)), _hf_run(model, toks), case)

    # jaxmoe -> HF (sharded), loaded by transformers
    ours = _random_ours(params, seed=3)
    summary = save_hf(cfg, ours, family, tmp_path / "out", shard_size="24KB")
    assert len(summary["files"]) > 2 and (tmp_path / "out" / "model.safetensors.index.json").exists()
    hf_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf_cfg["model_type"] == family
    model2 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    sd = model2.state_dict()
    if family == "deepseek_v3":  # the selection bias is a buffer: check it arrived
        bias = [v for k, v in sd.items() if k.endswith("e_score_correction_bias")]
        assert bias and all(b.abs().sum() > 0 for b in bias)
    _check(apply(ours, jnp.asarray(toks)), _hf_run(model2, toks), case)

    # export -> import gives back exactly the same params and config
    cfg2, back = load_hf(tmp_path / "out")
    assert cfg2.model == cfg.model
    jax.tree.map(np.testing.assert_array_equal, back, ours)


def _mcfg(**kw):
    moe = dict(num_experts=4, experts_per_token=2, expert_ffn_dim=8, norm_topk=True)
    moe.update(kw.pop("moe", {}))
    return LMConfig(**{"vocab_size": 40, "embed_dim": 16, "num_layers": 2, "num_heads": 2, "max_seq_len": 32,
                       **kw}, moe=MoEConfig(**moe))


REFUSALS = [
    ("mixtral", _mcfg(moe={"router": "topp"}), "router='topp' has no equivalent in mixtral"),
    ("mixtral", _mcfg(moe={"norm_topk": False}), "norm_topk=false has no equivalent in mixtral"),
    ("mixtral", _mcfg(qkv_bias=True), "qkv_bias=true has no equivalent in mixtral"),
    ("mixtral", _mcfg(moe={"first_k_dense": 1}), "dense FFN layers"),
    ("mixtral", _mcfg(moe={"num_shared_experts": 1}), "shared experts"),
    ("olmoe", _mcfg(qk_norm=True), "qk_norm_scope='head' has no equivalent in olmoe"),
    ("qwen3_moe", _mcfg(), "needs model.qk_norm=true"),
    ("qwen2_moe", _mcfg(moe={"num_shared_experts": 1}), "needs model.moe.num_shared_experts>=1 and"),
    ("deepseek_v3", _mcfg(moe={"score_func": "sigmoid"}), "needs model.attention_type=mla"),
    ("deepseek_v3", _mcfg(attention_type="mla", moe={"num_shared_experts": 1}), "score_func='softmax'"),
    ("qwen2_moe", _mcfg(moe={"score_func": "sigmoid"}), "score_func='sigmoid' has no equivalent"),
    ("mixtral", _mcfg(layer_pattern=("mamba", "attn")), "mamba layers"),
]


@pytest.mark.parametrize("family,mcfg,msg", REFUSALS, ids=[f"{f}-{m[:20]}" for f, _, m in REFUSALS])
def test_unsupported_combinations_are_refused_in_one_sentence(family, mcfg, msg, tmp_path):
    from jaxmoe.config import Config

    with pytest.raises(ExportError) as e:
        save_hf(Config(model=mcfg), {}, family, tmp_path / "out")
    text = str(e.value)
    assert msg in text and "\n" not in text and text.endswith(".")
    assert not (tmp_path / "out").exists()  # refused before writing anything
    assert get_family(family).name == family


def test_import_refuses_what_jaxmoe_cannot_express(tmp_path):
    cfg = transformers.Qwen3MoeConfig(num_hidden_layers=1, num_key_value_heads=2, head_dim=8, intermediate_size=16,
                                      moe_intermediate_size=8, num_experts=2, num_experts_per_tok=1,
                                      attention_bias=True, **COMMON)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    _randomize_hf(model, 0)
    model.model.layers[0].self_attn.o_proj.bias.data.fill_(0.5)
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(ExportError, match="o_proj.bias' is non-zero"):
        load_hf(tmp_path / "hf")
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    conf["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ExportError, match="RoPE scaling type 'dynamic'"):
        load_hf(tmp_path / "hf")
