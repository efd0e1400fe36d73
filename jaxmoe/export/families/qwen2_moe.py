"""Qwen2-MoE (``Qwen2MoeForCausalLM``): q/k/v biases, one shared expert scaled by
``sigmoid(x @ shared_expert_gate)``, optional top-k renormalisation (``norm_topk_prob``),
dense layers via ``mlp_only_layers`` / ``decoder_sparse_step``, YaRN RoPE scaling
(``model.rope_scaling``: frequencies and the cos/sin attention factor).

Exports always carry q/k/v biases (zeros when the jaxmoe model has none) and
``qkv_bias: true``, so transformers versions that hard-wire the biases load them too."""

from __future__ import annotations

from jaxmoe.models.lm import LMConfig, layer_kinds
from jaxmoe.export.families.common import (Caps, ExportError, LMFamily, Rule, hf_get, make_model, moe_fields,
                                           pattern_from_dense)
from jaxmoe.moe.layer import shared_width


def dense_layout(m: LMConfig) -> dict:
    """``decoder_sparse_step`` / ``mlp_only_layers`` reproducing our dense/MoE layer kinds."""
    dense = [i for i, (_, f) in enumerate(layer_kinds(m)) if f == "dense"]
    if m.moe.first_k_dense == 0:
        return {"decoder_sparse_step": m.moe.moe_every, "mlp_only_layers": []}
    return {"decoder_sparse_step": 1, "mlp_only_layers": dense}


def dense_from_hf(hf: dict, family: str) -> tuple[int, int]:
    n = int(hf_get(hf, "num_hidden_layers", family=family))
    step = int(hf.get("decoder_sparse_step") or 1)
    only = set(hf.get("mlp_only_layers") or [])
    experts = int(hf.get("num_experts") or hf.get("num_local_experts") or 0)
    dense = [i for i in range(n) if i in only or not (experts > 0 and (i + 1) % step == 0)]
    return pattern_from_dense(n, dense, family)


class Qwen2Moe(LMFamily):
    name = "qwen2_moe"
    model_types = ("qwen2_moe",)
    architecture = "Qwen2MoeForCausalLM"
    caps = Caps(qkv_bias=True, shared="gated", dense_layers="any", explicit_head_dim=False, rope_scaling=True)

    def hf_config(self, m: LMConfig) -> dict:
        return {"num_experts": m.moe.num_experts, "moe_intermediate_size": m.moe.expert_ffn_dim,
                "shared_expert_intermediate_size": shared_width(m.moe),
                "intermediate_size": m.moe.dense_ffn_dim or 4 * m.embed_dim, "norm_topk_prob": m.moe.norm_topk,
                "qkv_bias": True, "use_sliding_window": False, "sliding_window": None,
                "max_window_layers": m.num_layers, **dense_layout(m)}

    def model_config(self, hf: dict) -> LMConfig:
        if hf.get("use_sliding_window"):
            raise ExportError("this qwen2_moe config uses sliding-window attention, which jaxmoe does not implement.")
        fields = self.common_model_fields(hf)
        if hf.get("head_dim") not in (None, fields["embed_dim"] // fields["num_heads"]):
            raise ExportError("this qwen2_moe config sets a head_dim other than hidden_size/num_attention_heads, which "
                              "transformers' Qwen2-MoE does not use.")
        fields["qkv_bias"] = bool(hf.get("qkv_bias", True))
        first, every = dense_from_hf(hf, self.name)
        shared = int(hf_get(hf, "shared_expert_intermediate_size", family=self.name))
        if shared <= 0:
            raise ExportError("this qwen2_moe config has no shared expert (shared_expert_intermediate_size=0), which "
                              "jaxmoe's gated shared expert cannot express.")
        moe = moe_fields(hf, self.name, experts_key="num_experts", ffn_key="moe_intermediate_size")
        moe.update(norm_topk=bool(hf.get("norm_topk_prob", False)), num_shared_experts=1, shared_ffn_dim=shared,
                   shared_expert_gate=True, first_k_dense=first, moe_every=every,
                   dense_ffn_dim=int(hf_get(hf, "intermediate_size", family=self.name)))
        return make_model(fields, moe)

    def attn_rules(self, cfg, hf):
        rules = super().attn_rules(cfg, hf)
        if not cfg.qkv_bias and hf.get("qkv_bias", True):  # zero biases keep every transformers version happy
            heads = {"q": cfg.num_heads, "k": cfg.kv_heads, "v": cfg.kv_heads}
            rules += [Rule(f"self_attn.{x}_proj.bias", None, zero_shape=(heads[x] * cfg.head_size,)) for x in "qkv"]
        return rules

    def ffn_rules(self, cfg, ffn, hf):
        if ffn == "dense":
            return self.swiglu_rules("mlp", ("ffn",))
        return ([Rule("mlp.gate.weight", ("ffn", "router", "kernel"))]
                + self.swiglu_rules("mlp.experts.{e}", ("ffn", "experts"), expert=True)
                + self.swiglu_rules("mlp.shared_expert", ("ffn", "shared"))
                + [Rule("mlp.shared_expert_gate.weight", ("ffn", "shared_gate", "kernel"))])


FAMILY = Qwen2Moe()
