"""OLMoE (``OlmoeForCausalLM``): QK-norm over the *whole* q and k projections
(``q_norm [heads*head_dim]``, ``k_norm [kv_heads*head_dim]``, jaxmoe ``qk_norm_scope=full``),
every layer MoE, no shared expert, optional renormalisation. ``attention_bias`` covers
q/k/v and o (o exported as zeros, required zero on import); ``clip_qkv`` is not supported."""

from __future__ import annotations

from jaxmoe.models.lm import LMConfig
from jaxmoe.export.families.common import Caps, ExportError, LMFamily, Rule, make_model, moe_fields


class Olmoe(LMFamily):
    name = "olmoe"
    model_types = ("olmoe",)
    architecture = "OlmoeForCausalLM"
    caps = Caps(qkv_bias=True, qk_norm="full", explicit_head_dim=False)
    default_norm_eps = 1e-5

    def hf_config(self, m: LMConfig) -> dict:
        return {"num_experts": m.moe.num_experts, "intermediate_size": m.moe.expert_ffn_dim,
                "norm_topk_prob": m.moe.norm_topk, "attention_bias": m.qkv_bias, "clip_qkv": None}

    def model_config(self, hf: dict) -> LMConfig:
        if hf.get("clip_qkv") is not None:
            raise ExportError(f"this olmoe config clips q/k/v activations (clip_qkv={hf['clip_qkv']}), which jaxmoe "
                              "does not implement.")
        fields = self.common_model_fields(hf)
        fields.update(qk_norm=True, qk_norm_scope="full", qkv_bias=bool(hf.get("attention_bias")))
        moe = moe_fields(hf, self.name, experts_key="num_experts", ffn_key="intermediate_size")
        moe.update(norm_topk=bool(hf.get("norm_topk_prob", False)))
        return make_model(fields, moe)

    def attn_rules(self, cfg, hf):
        rules = super().attn_rules(cfg, hf)
        if cfg.qkv_bias:
            rules.append(Rule("self_attn.o_proj.bias", None, zero_shape=(cfg.embed_dim,)))
        return rules

    def ffn_rules(self, cfg, ffn, hf):
        return ([Rule("mlp.gate.weight", ("ffn", "router", "kernel"))]
                + self.swiglu_rules("mlp.experts.{e}", ("ffn", "experts"), expert=True))


FAMILY = Olmoe()
