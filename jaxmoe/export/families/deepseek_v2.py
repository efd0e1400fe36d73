"""DeepSeek-V2 (``DeepseekV2ForCausalLM``): Multi-head Latent Attention (interleaved RoPE
pairs, permuted to jaxmoe's rotate-half layout exactly as for DeepSeek-V3), softmax router
scores, ``topk_method`` ``greedy`` or ``group_limited_greedy``, ``routed_scaling_factor``
on the top-k probabilities (never renormalised in transformers' DeepSeek-V2), shared experts
(``mlp.shared_experts``, width ``n_shared_experts * moe_intermediate_size``),
``first_k_dense_replace`` leading dense layers and YaRN RoPE (``rope_scaling`` with
``mscale``/``mscale_all_dim``, as the released V2 and V2-Lite use).

Differences from DeepSeek-V3 and what jaxmoe can express:

* softmax scores (``score_func: softmax``) instead of sigmoid, and no selection bias
  (``e_score_correction_bias``);
* ``group_limited_greedy`` ranks expert groups by their *best* expert, while jaxmoe's
  group-limited routing (DeepSeek-V3's) ranks them by the sum of their top-2 experts. The
  two agree when every group holds one expert or when all groups are kept, so those are
  converted (the latter to plain top-k); any other group setting is refused in one line.
"""

from __future__ import annotations

from jaxmoe.export.families.common import Caps, ExportError, Rule, hf_get, make_model
from jaxmoe.export.families.deepseek_v3 import DeepseekV3
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.layer import shared_width


def groups_expressible(num_experts: int, num_groups: int, topk_groups: int) -> bool:
    """Whether ranking groups by their best expert equals ranking them by their top-2 sum."""
    return num_groups <= 1 or topk_groups >= num_groups or num_experts // num_groups == 1


class DeepseekV2(DeepseekV3):
    name = "deepseek_v2"
    model_types = ("deepseek_v2",)
    architecture = "DeepseekV2ForCausalLM"
    caps = Caps(mla=True, score_func="softmax", norm_topk=False, routed_scaling=True, groups=True, shared="plain",
                dense_layers="prefix", rope_scaling=True)

    def check(self, m: LMConfig) -> None:
        self.check_shared(m)
        moe = m.moe
        if not groups_expressible(moe.num_experts, moe.num_groups, moe.topk_groups):
            raise ExportError(f"group-limited routing with {moe.num_experts // moe.num_groups} experts per group ranks "
                              "groups by the sum of their top-2 scores (DeepSeek-V3), which deepseek_v2's "
                              "group_limited_greedy (best score per group) cannot express (family deepseek_v2).")

    def hf_config(self, m: LMConfig) -> dict:
        moe = m.moe
        grouped = moe.num_groups > 1 and moe.topk_groups < moe.num_groups
        return {"n_routed_experts": moe.num_experts, "moe_intermediate_size": moe.expert_ffn_dim,
                "n_shared_experts": shared_width(moe) // moe.expert_ffn_dim,
                "intermediate_size": moe.dense_ffn_dim or 4 * m.embed_dim, "first_k_dense_replace": moe.first_k_dense,
                "moe_layer_freq": 1, "norm_topk_prob": False, "routed_scaling_factor": moe.routed_scaling_factor,
                "topk_method": "group_limited_greedy" if grouped else "greedy",
                "n_group": moe.num_groups if grouped else None, "topk_group": moe.topk_groups if grouped else None,
                "scoring_func": "softmax", "q_lora_rank": m.q_lora_rank or None, "kv_lora_rank": m.kv_lora_rank,
                "qk_nope_head_dim": m.qk_nope_head_dim, "qk_rope_head_dim": m.qk_rope_head_dim,
                "v_head_dim": m.v_head_dim, "num_key_value_heads": m.num_heads, "attention_bias": False,
                "mlp_bias": False}

    def model_config(self, hf: dict) -> LMConfig:
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ExportError("this deepseek_v2 config has attention or MLP biases, which jaxmoe's MLA and SwiGLU "
                              "layers do not have.")
        scoring = hf.get("scoring_func", "softmax")
        if scoring != "softmax":
            raise ExportError(f"this deepseek_v2 config uses scoring_func={scoring!r}; DeepSeek-V2 routers use "
                              "softmax.")
        if hf.get("norm_topk_prob"):
            raise ExportError("this deepseek_v2 config sets norm_topk_prob=true, which transformers' DeepSeek-V2 "
                              "ignores (it never renormalises), so the model's function is ambiguous.")
        f = lambda key, default=...: hf_get(hf, key, family=self.name) if default is ... else hf_get(hf, key, default)
        n = int(f("n_routed_experts"))
        method = hf.get("topk_method") or "greedy"
        groups, topk_groups = 1, 1
        if method == "group_limited_greedy":
            groups, topk_groups = int(f("n_group")), int(f("topk_group"))
            if groups < 1 or n % groups:
                raise ExportError(f"this deepseek_v2 config's n_group={groups} does not divide n_routed_experts={n}.")
            if not groups_expressible(n, groups, topk_groups):
                raise ExportError(f"this deepseek_v2 config's group_limited_greedy routing ranks groups of "
                                  f"{n // groups} experts by their best score, which jaxmoe cannot express (its "
                                  "group-limited routing ranks groups by the sum of their top-2 scores, as DeepSeek-V3 "
                                  "does).")
            if topk_groups >= groups:  # every group kept: plain top-k
                groups, topk_groups = 1, 1
        elif method != "greedy":
            raise ExportError(f"this deepseek_v2 config uses topk_method={method!r}; DeepSeek-V2 has 'greedy' and "
                              "'group_limited_greedy'.")
        if int(f("moe_layer_freq", 1)) != 1:
            raise ExportError("this deepseek_v2 config sets moe_layer_freq != 1, which transformers' DeepSeek-V2 "
                              "ignores.")
        fields = self.common_model_fields(hf)
        fields.pop("num_kv_heads")
        fields.update(attention_type="mla", q_lora_rank=int(hf.get("q_lora_rank") or 0),
                      kv_lora_rank=int(f("kv_lora_rank")), qk_nope_head_dim=int(f("qk_nope_head_dim")),
                      qk_rope_head_dim=int(f("qk_rope_head_dim")), v_head_dim=int(f("v_head_dim")))
        moe = dict(num_experts=n, experts_per_token=int(f("num_experts_per_tok")),
                   expert_ffn_dim=int(f("moe_intermediate_size")), num_shared_experts=int(f("n_shared_experts", 0)),
                   score_func="softmax", norm_topk=False,
                   routed_scaling_factor=float(f("routed_scaling_factor", 1.0)), num_groups=groups,
                   topk_groups=topk_groups, first_k_dense=int(f("first_k_dense_replace", 0)),
                   dense_ffn_dim=int(f("intermediate_size")), balance_loss="expert", seq_aux=True,
                   balance_coef=float(hf.get("aux_loss_alpha") or 0.001))
        if moe["num_shared_experts"] < 1:
            raise ExportError("this deepseek_v2 config has n_shared_experts=0, which jaxmoe's deepseek_v2 family does "
                              "not read (it always has shared experts).")
        return make_model(fields, moe)

    def ffn_rules(self, cfg, ffn, hf):
        if ffn == "dense":
            return self.swiglu_rules("mlp", ("ffn",))
        return ([Rule("mlp.gate.weight", ("ffn", "router", "kernel"))]
                + self.swiglu_rules("mlp.experts.{e}", ("ffn", "experts"), expert=True)
                + self.swiglu_rules("mlp.shared_experts", ("ffn", "shared")))


FAMILY = DeepseekV2()
