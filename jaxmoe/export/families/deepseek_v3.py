"""DeepSeek-V3 (``DeepseekV3ForCausalLM``): Multi-head Latent Attention, sigmoid router scores
with a selection-only bias (``gate.e_score_correction_bias``), group-limited routing
(``n_group``/``topk_group``), ``routed_scaling_factor``, shared experts
(``mlp.shared_experts``, width ``n_shared_experts * moe_intermediate_size``) and
``first_k_dense_replace`` leading dense layers.

RoPE: transformers' ``rope_interleave=True`` (the default, and DeepSeek's released layout)
rotates interleaved pairs; jaxmoe's MLA uses rotate-half, so the rope rows of ``q_b_proj``
(or ``q_proj``) and ``kv_a_proj_with_mqa`` are permuted on the way in and out
(:func:`~jaxmoe.export.families.common.rope_permutation`); logits are identical.

YaRN RoPE scaling (``rope_scaling``/``rope_parameters`` with ``factor``,
``original_max_position_embeddings``, ``beta_fast``/``beta_slow``, ``mscale``/``mscale_all_dim``,
as DeepSeek-V3/R1 ship it) maps to ``model.rope_scaling`` (:mod:`jaxmoe.nn.rope`). Block-FP8
checkpoints (``quantization_config`` fp8/e4m3 with ``weight_scale_inv`` blocks) are
dequantised while they are read."""

from __future__ import annotations

from jaxmoe.models.lm import LMConfig
from jaxmoe.export.families.common import (FLAT, HEADS_IN, HEADS_OUT, LINEAR, Caps, ExportError, LMFamily, Rule,
                                           hf_get, make_model, permute_tail, rope_permutation)
from jaxmoe.moe.layer import shared_width


class DeepseekV3(LMFamily):
    name = "deepseek_v3"
    model_types = ("deepseek_v3",)
    architecture = "DeepseekV3ForCausalLM"
    caps = Caps(mla=True, score_func="sigmoid", selection_bias=True, routed_scaling=True, groups=True,
                shared="plain", dense_layers="prefix", rope_scaling=True)

    def check_shared(self, m: LMConfig) -> None:
        """The common checks plus DeepSeek's shared-expert layout (used by V2 and V3)."""
        LMFamily.check(self, m)
        width = shared_width(m.moe)
        if width % m.moe.expert_ffn_dim:
            raise ExportError(f"the shared-expert width {width} is not a multiple of model.moe.expert_ffn_dim="
                              f"{m.moe.expert_ffn_dim}, which {self.name} cannot express (family {self.name}).")
        if not m.moe.num_shared_experts:
            raise ExportError(f"{self.name} always has shared experts, so it needs model.moe.num_shared_experts>=1 "
                              f"(family {self.name}).")

    def check(self, m: LMConfig) -> None:
        self.check_shared(m)
        if m.moe.num_groups > 1 and m.moe.num_experts // m.moe.num_groups < 2:
            raise ExportError("deepseek_v3 scores each expert group by its top-2 experts, so groups need at least 2 "
                              "experts (family deepseek_v3).")

    def hf_config(self, m: LMConfig) -> dict:
        moe = m.moe
        return {"n_routed_experts": moe.num_experts, "moe_intermediate_size": moe.expert_ffn_dim,
                "n_shared_experts": shared_width(moe) // moe.expert_ffn_dim,
                "intermediate_size": moe.dense_ffn_dim or 4 * m.embed_dim, "first_k_dense_replace": moe.first_k_dense,
                "norm_topk_prob": moe.norm_topk, "routed_scaling_factor": moe.routed_scaling_factor,
                "n_group": moe.num_groups, "topk_group": moe.topk_groups,
                "q_lora_rank": m.q_lora_rank or None, "kv_lora_rank": m.kv_lora_rank,
                "qk_nope_head_dim": m.qk_nope_head_dim, "qk_rope_head_dim": m.qk_rope_head_dim,
                "v_head_dim": m.v_head_dim, "num_key_value_heads": m.num_heads, "rope_interleave": True,
                "attention_bias": False, "num_nextn_predict_layers": 0, "topk_method": "noaux_tc",
                "scoring_func": "sigmoid"}

    def model_config(self, hf: dict) -> LMConfig:
        if hf.get("attention_bias"):
            raise ExportError("this deepseek_v3 config has attention biases, which jaxmoe's MLA does not have.")
        if hf.get("scoring_func", "sigmoid") != "sigmoid" or hf.get("topk_method", "noaux_tc") != "noaux_tc":
            raise ExportError("this deepseek_v3 config uses a router other than sigmoid scores with noaux_tc top-k, "
                              "which transformers' DeepSeek-V3 does not implement either.")
        f = lambda key, default=...: hf_get(hf, key, family=self.name) if default is ... else hf_get(hf, key, default)
        fields = self.common_model_fields(hf)
        fields.pop("num_kv_heads")
        n = int(f("n_routed_experts"))
        fields.update(attention_type="mla", q_lora_rank=int(hf.get("q_lora_rank") or 0),
                      kv_lora_rank=int(f("kv_lora_rank")), qk_nope_head_dim=int(f("qk_nope_head_dim")),
                      qk_rope_head_dim=int(f("qk_rope_head_dim")), v_head_dim=int(f("v_head_dim")))
        moe = dict(num_experts=n, experts_per_token=int(f("num_experts_per_tok")),
                   expert_ffn_dim=int(f("moe_intermediate_size")), num_shared_experts=int(f("n_shared_experts", 0)),
                   score_func="sigmoid", norm_topk=bool(hf.get("norm_topk_prob", True)), selection_bias=True,
                   routed_scaling_factor=float(f("routed_scaling_factor", 1.0)), num_groups=int(f("n_group", 1)),
                   topk_groups=int(f("topk_group", 1)), first_k_dense=int(f("first_k_dense_replace", 0)),
                   dense_ffn_dim=int(f("intermediate_size")), balance_loss="expert", seq_aux=True,
                   balance_coef=1e-4, bias_update_rate=1e-3)
        if moe["num_shared_experts"] < 1:
            raise ExportError("this deepseek_v3 config has n_shared_experts=0, which transformers' DeepSeek-V3 cannot run.")
        if int(f("moe_layer_freq", 1)) != 1:
            raise ExportError("this deepseek_v3 config sets moe_layer_freq != 1, which transformers' DeepSeek-V3 ignores.")
        return make_model(fields, moe)

    def attn_rules(self, cfg, hf):
        a = "self_attn."
        rope = cfg.qk_rope_head_dim
        perm = rope_permutation(rope) if hf.get("rope_interleave", True) else None
        q_conv = permute_tail(HEADS_IN, rope, perm)
        if cfg.q_lora_rank:
            q = [Rule(a + "q_a_proj.weight", ("mixer", "q_a", "kernel"), LINEAR),
                 Rule(a + "q_a_layernorm.weight", ("mixer", "q_a_norm", "scale"), FLAT),
                 Rule(a + "q_b_proj.weight", ("mixer", "q_b", "kernel"), q_conv)]
        else:
            q = [Rule(a + "q_proj.weight", ("mixer", "q", "kernel"), q_conv)]
        return q + [Rule(a + "kv_a_proj_with_mqa.weight", ("mixer", "kv_a", "kernel"), permute_tail(LINEAR, rope, perm)),
                    Rule(a + "kv_a_layernorm.weight", ("mixer", "kv_a_norm", "scale"), FLAT),
                    Rule(a + "kv_b_proj.weight", ("mixer", "kv_b", "kernel"), HEADS_IN),
                    Rule(a + "o_proj.weight", ("mixer", "o", "kernel"), HEADS_OUT)]

    def ffn_rules(self, cfg, ffn, hf):
        if ffn == "dense":
            return self.swiglu_rules("mlp", ("ffn",))
        bias = (Rule("mlp.gate.e_score_correction_bias", ("ffn", "router", "selection_bias"), FLAT)
                if cfg.moe.selection_bias else
                Rule("mlp.gate.e_score_correction_bias", None, zero_shape=(cfg.moe.num_experts,)))
        return ([Rule("mlp.gate.weight", ("ffn", "router", "kernel")), bias]
                + self.swiglu_rules("mlp.experts.{e}", ("ffn", "experts"), expert=True)
                + self.swiglu_rules("mlp.shared_experts", ("ffn", "shared")))


FAMILY = DeepseekV3()
