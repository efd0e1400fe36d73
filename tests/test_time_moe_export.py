"""Time-MoE <-> Hugging Face TimeMoeForPrediction: names, shapes, exact round trip, and a
torch re-implementation of the HF forward that reads the exported tensors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.config import load_config
from jaxmoe.export import time_moe as ex
from jaxmoe.models import time_moe as tm


def random_params(m, seed=0, std=0.3):
    shapes = jax.eval_shape(lambda: tm.init(jax.random.PRNGKey(0), m))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, std, s.shape), jnp.float32), shapes)


def make_cfg(*extra):
    return load_config(None, ["model.family=time_moe", "model.embed_dim=16", "model.num_layers=2",
                              "model.num_heads=2", "model.ffn_dim=32", "model.moe.num_experts=3",
                              "model.horizons=[1,4,8]", "data.seq_len=16", "data.sources=[synthetic]", *extra])


def test_names_and_shapes_match_hf_table():
    cfg = make_cfg()
    sd = ex.to_hf_state_dict(random_params(cfg.model), cfg.model)
    E, F, f = 16, 32, 16  # hidden, intermediate, intermediate // top_k
    expected = {  # the Hugging Face Time-MoE checkpoint's names and shapes (torch Linear weights are [out, in])
        "model.embed_layer.emb_layer.weight": (E, 1), "model.embed_layer.gate_layer.weight": (E, 1),
        "model.norm.weight": (E,),
        "lm_heads.0.out_layer.weight": (1, E), "lm_heads.1.out_layer.weight": (4, E),
        "lm_heads.2.out_layer.weight": (8, E),
    }
    for i in range(2):
        pre = f"model.layers.{i}."
        for n in ("q", "k", "v"):
            expected[pre + f"self_attn.{n}_proj.weight"] = (E, E)
            expected[pre + f"self_attn.{n}_proj.bias"] = (E,)
        expected[pre + "self_attn.o_proj.weight"] = (E, E)
        expected[pre + "ffn_layer.gate.weight"] = (3, E)
        for j in range(3):
            expected[pre + f"ffn_layer.experts.{j}.gate_proj.weight"] = (f, E)
            expected[pre + f"ffn_layer.experts.{j}.up_proj.weight"] = (f, E)
            expected[pre + f"ffn_layer.experts.{j}.down_proj.weight"] = (E, f)
        expected[pre + "ffn_layer.shared_expert.gate_proj.weight"] = (F, E)
        expected[pre + "ffn_layer.shared_expert.up_proj.weight"] = (F, E)
        expected[pre + "ffn_layer.shared_expert.down_proj.weight"] = (E, F)
        expected[pre + "ffn_layer.shared_expert_gate.weight"] = (1, E)
        expected[pre + "input_layernorm.weight"] = (E,)
        expected[pre + "post_attention_layernorm.weight"] = (E,)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert ex.hf_layout(cfg.model) == expected
    hf = ex.hf_config(cfg.model)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "num_experts", "num_experts_per_tok", "horizon_lengths", "input_size", "max_position_embeddings",
                "rms_norm_eps", "rope_theta", "router_aux_loss_factor", "apply_aux_loss", "use_dense", "hidden_act"):
        assert key in hf, key
    assert hf["model_type"] == "time_moe" and hf["architectures"] == ["TimeMoeForPrediction"]
    assert (hf["hidden_size"], hf["intermediate_size"], hf["horizon_lengths"]) == (16, 32, [1, 4, 8])


@pytest.mark.parametrize("dense", [False, True])
def test_export_import_round_trip_is_exact(tmp_path, dense):
    cfg = make_cfg(f"model.use_dense={str(dense).lower()}", "model.num_kv_heads=1")
    params = random_params(cfg.model, 1)
    ex.save_hf(params, cfg, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["use_dense"] is dense
    cfg2, params2 = ex.load_hf(tmp_path / "hf", cfg)
    assert cfg2.model == cfg.model
    assert jax.tree.structure(params) == jax.tree.structure(jax.tree.map(np.asarray, params2))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), b)
    # tensors written == tensors read back
    sd = ex.read_safetensors(tmp_path / "hf" / "model.safetensors")
    ref = ex.to_hf_state_dict(params, cfg.model)
    assert sd.keys() == ref.keys() and all(np.array_equal(sd[k], ref[k]) for k in sd)


def test_run_dir_export_import(tmp_path):
    from jaxmoe.checkpoint import load_params

    cfg = make_cfg()
    params = random_params(cfg.model, 2)
    ex.write_run(cfg, params, tmp_path / "run")
    ex.export_time_moe(tmp_path / "run", tmp_path / "hf")
    ex.import_time_moe(tmp_path / "hf", tmp_path / "run2", base=cfg)
    cfg2, params2 = load_params(tmp_path / "run2")
    assert cfg2.model == cfg.model
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(Exception, match="lacks tensor"):
        bad = ex.read_safetensors(tmp_path / "hf" / "model.safetensors")
        bad.pop("model.norm.weight")
        ex.from_hf_state_dict(bad, cfg.model)


def _torch_time_moe(sd, hf, x):
    """The HF TimeMoeForPrediction forward (eager attention, no cache), written from the
    reference implementation, on the exported tensors. x: [b, s] -> list of [b, s, h]."""
    import torch
    import torch.nn.functional as F

    W = {k: torch.tensor(np.asarray(v, np.float64)) for k, v in sd.items()}
    E, H, L = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    D = E // H
    lin = lambda h, name, bias=False: F.linear(h, W[name + ".weight"], W[name + ".bias"] if bias else None)

    def rms(h, name):
        return W[name] * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + hf["rms_norm_eps"]))

    def mlp(h, pre):
        return lin(F.silu(lin(h, pre + "gate_proj")) * lin(h, pre + "up_proj"), pre + "down_proj")

    x = torch.tensor(np.asarray(x, np.float64))[..., None]
    b, s, _ = x.shape
    h = F.silu(lin(x, "model.embed_layer.gate_layer")) * lin(x, "model.embed_layer.emb_layer")
    inv = 1.0 / (hf["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    freqs = torch.outer(torch.arange(s, dtype=torch.float64), inv)
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    rot = lambda t: torch.cat((-t[..., D // 2:], t[..., :D // 2]), -1)
    causal = torch.full((s, s), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(L):
        pre = f"model.layers.{i}."
        r = rms(h, pre + "input_layernorm.weight")
        q, k, v = (lin(r, pre + f"self_attn.{n}_proj", True).view(b, s, H, D).transpose(1, 2) for n in "qkv")
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        att = torch.softmax(q @ k.transpose(2, 3) / D ** 0.5 + causal, -1) @ v
        h = h + lin(att.transpose(1, 2).reshape(b, s, E), pre + "self_attn.o_proj")
        r = rms(h, pre + "post_attention_layernorm.weight").reshape(b * s, E)
        probs = torch.softmax(lin(r, pre + "ffn_layer.gate"), -1)
        w, sel = torch.topk(probs, hf["num_experts_per_tok"], -1)  # not renormalised
        out = torch.zeros_like(r)
        for t in range(b * s):
            for kk in range(sel.shape[1]):
                out[t] += w[t, kk] * mlp(r[t], pre + f"ffn_layer.experts.{int(sel[t, kk])}.")
        out = out + torch.sigmoid(lin(r, pre + "ffn_layer.shared_expert_gate")) * mlp(r, pre + "ffn_layer.shared_expert.")
        h = h + out.reshape(b, s, E)
    h = rms(h, "model.norm.weight")
    return [lin(h, f"lm_heads.{j}.out_layer").numpy() for j in range(len(hf["horizon_lengths"]))]


def test_exported_tensors_reproduce_forward_in_torch():
    pytest.importorskip("torch")
    cfg = make_cfg()
    params = random_params(cfg.model, 3, 0.4)
    x = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    preds, _ = jax.jit(tm.apply, static_argnums=2)(params, jnp.asarray(x), cfg.model)
    ref = _torch_time_moe(ex.to_hf_state_dict(params, cfg.model), ex.hf_config(cfg.model), x)
    for p, r, h in zip(preds, ref, cfg.model.horizons):
        assert r.shape == (2, 6, h)
        np.testing.assert_allclose(np.asarray(p)[..., 0], r, rtol=2e-4, atol=2e-5)
