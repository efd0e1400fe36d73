"""Mixtral (``MixtralForCausalLM``): every layer MoE, softmax top-k renormalised, no shared
experts, no biases, no QK-norm. HF names: ``block_sparse_moe.gate``,
``block_sparse_moe.experts.{e}.w1|w3|w2`` (gate, up, down)."""

from __future__ import annotations

from jaxmoe.models.lm import LMConfig
from jaxmoe.export.families.common import Caps, ExportError, LMFamily, Rule, hf_get, make_model, moe_fields


class Mixtral(LMFamily):
    name = "mixtral"
    model_types = ("mixtral",)
    architecture = "MixtralForCausalLM"
    caps = Caps(norm_topk=True)
    default_rope_theta = 1e6
    default_norm_eps = 1e-5

    def hf_config(self, m: LMConfig) -> dict:
        return {"num_local_experts": m.moe.num_experts, "intermediate_size": m.moe.expert_ffn_dim,
                "head_dim": m.head_size, "sliding_window": None, "router_jitter_noise": 0.0}

    def model_config(self, hf: dict) -> LMConfig:
        window = hf.get("sliding_window")
        if window is not None and window < int(hf_get(hf, "max_position_embeddings", 0)):
            raise ExportError(f"this mixtral config uses sliding-window attention (window {window}), which jaxmoe does "
                              "not implement.")
        fields = self.common_model_fields(hf)
        head_dim = hf.get("head_dim") or fields["embed_dim"] // fields["num_heads"]
        fields["head_dim"] = 0 if head_dim * fields["num_heads"] == fields["embed_dim"] else int(head_dim)
        moe = moe_fields(hf, self.name, experts_key="num_local_experts", ffn_key="intermediate_size")
        return make_model(fields, {**moe, "norm_topk": True})

    def ffn_rules(self, cfg, ffn, hf):
        p = "block_sparse_moe"
        return ([Rule(f"{p}.gate.weight", ("ffn", "router", "kernel"))]
                + self.swiglu_rules(f"{p}.experts.{{e}}", ("ffn", "experts"), ("w1", "w3", "w2"), expert=True))


FAMILY = Mixtral()
