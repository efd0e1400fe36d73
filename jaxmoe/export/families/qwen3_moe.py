"""Qwen3-MoE (``Qwen3MoeForCausalLM``): per-head QK-norm (``q_norm``/``k_norm`` over head_dim),
explicit ``head_dim``, no shared expert, optional renormalisation, dense ``mlp_only_layers``,
YaRN RoPE scaling (``model.rope_scaling``).
``attention_bias`` covers q/k/v *and* o; jaxmoe has no o bias, so it is exported as zeros
and must be zero on import."""

from __future__ import annotations

from jaxmoe.models.lm import LMConfig
from jaxmoe.export.families.common import Caps, ExportError, LMFamily, Rule, hf_get, make_model, moe_fields
from jaxmoe.export.families.qwen2_moe import dense_from_hf, dense_layout


class Qwen3Moe(LMFamily):
    name = "qwen3_moe"
    model_types = ("qwen3_moe",)
    architecture = "Qwen3MoeForCausalLM"
    caps = Caps(qkv_bias=True, qk_norm="head", dense_layers="any", rope_scaling=True)

    def hf_config(self, m: LMConfig) -> dict:
        return {"num_experts": m.moe.num_experts, "moe_intermediate_size": m.moe.expert_ffn_dim,
                "intermediate_size": m.moe.dense_ffn_dim or 4 * m.embed_dim, "norm_topk_prob": m.moe.norm_topk,
                "head_dim": m.head_size, "attention_bias": m.qkv_bias, "use_sliding_window": False,
                "sliding_window": None, **dense_layout(m)}

    def model_config(self, hf: dict) -> LMConfig:
        if hf.get("use_sliding_window"):
            raise ExportError("this qwen3_moe config uses sliding-window attention, which jaxmoe does not implement.")
        fields = self.common_model_fields(hf)
        head_dim = int(hf.get("head_dim") or fields["embed_dim"] // fields["num_heads"])
        fields.update(head_dim=head_dim, qk_norm=True, qk_norm_scope="head", qkv_bias=bool(hf.get("attention_bias")))
        first, every = dense_from_hf(hf, self.name)
        moe = moe_fields(hf, self.name, experts_key="num_experts", ffn_key="moe_intermediate_size")
        moe.update(norm_topk=bool(hf.get("norm_topk_prob", False)), first_k_dense=first, moe_every=every,
                   dense_ffn_dim=int(hf_get(hf, "intermediate_size", family=self.name)))
        return make_model(fields, moe)

    def attn_rules(self, cfg, hf):
        rules = super().attn_rules(cfg, hf)
        if cfg.qkv_bias:
            rules.append(Rule("self_attn.o_proj.bias", None, zero_shape=(cfg.embed_dim,)))
        return rules

    def ffn_rules(self, cfg, ffn, hf):
        if ffn == "dense":
            return self.swiglu_rules("mlp", ("ffn",))
        return ([Rule("mlp.gate.weight", ("ffn", "router", "kernel"))]
                + self.swiglu_rules("mlp.experts.{e}", ("ffn", "experts"), expert=True))


FAMILY = Qwen3Moe()
