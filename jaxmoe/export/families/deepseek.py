"""DeepSeekMoE (``DeepseekForCausalLM``, config.json ``model_type: deepseek``; the layout of
the DeepSeek-MoE 16B release, e.g. deepseek-moe-16b-base).

Llama-style attention (q/k/v/o projections, grouped KV heads, rotate-half RoPE, head
dim ``hidden_size / num_attention_heads``; ``attention_bias`` puts biases on q, k, v *and*
o), then per layer either a dense SwiGLU (``mlp.gate_proj|up_proj|down_proj``, width
``intermediate_size``) or a DeepSeekMoE layer: a softmax router ``mlp.gate.weight``,
``n_routed_experts`` fine-grained experts ``mlp.experts.{e}.*`` of width
``moe_intermediate_size``, top ``num_experts_per_tok`` whose probabilities are
renormalised only when ``norm_topk_prob`` and top-k > 1 (the 16B model does not), plus
``n_shared_experts`` always-on experts fused into one SwiGLU ``mlp.shared_experts.*`` of
width ``n_shared_experts * moe_intermediate_size``. Layer ``i`` is MoE when
``i >= first_k_dense_replace and i % moe_layer_freq == 0``. Training settings:
``aux_loss_alpha`` is the expert-level balance coefficient, ``seq_aux`` its sequence-wise
variant.

transformers has no class for this layout (the release ships its own modeling code), so
parity is tested against an independent reference forward written from these formulas
(``tests/export/test_deepseek_families.py``)."""

from __future__ import annotations

from jaxmoe.export.families.common import Caps, ExportError, LMFamily, Rule, hf_get, make_model, pattern_from_dense
from jaxmoe.models.lm import LMConfig, layer_kinds
from jaxmoe.moe.layer import shared_width


def dense_layers_of(num_layers: int, first_k_dense_replace: int, moe_layer_freq: int) -> list[int]:
    """Indices of DeepSeekMoE's dense layers (every other layer is MoE)."""
    return [i for i in range(num_layers) if not (i >= first_k_dense_replace and i % moe_layer_freq == 0)]


def hf_layer_pattern(m: LMConfig, family: str) -> tuple[int, int]:
    """``(first_k_dense_replace, moe_layer_freq)`` giving the same dense layers as ``m``, or refuse."""
    ours = [i for i, (_, f) in enumerate(layer_kinds(m)) if f == "dense"]
    n = m.num_layers
    for freq in range(1, n + 1):
        for first in range(n + 1):
            if dense_layers_of(n, first, freq) == ours:
                return first, freq
    raise ExportError(f"the dense layers {ours} (model.moe.first_k_dense={m.moe.first_k_dense}, moe_every="
                      f"{m.moe.moe_every}) have no {family} equivalent, whose MoE layers are those with index >= "
                      f"first_k_dense_replace and divisible by moe_layer_freq (family {family}).")


class Deepseek(LMFamily):
    name = "deepseek"
    model_types = ("deepseek",)
    architecture = "DeepseekForCausalLM"
    caps = Caps(qkv_bias=True, shared="plain", dense_layers="any", explicit_head_dim=False)
    default_norm_eps = 1e-6

    def check(self, m: LMConfig) -> None:
        super().check(m)
        moe = m.moe
        if moe.num_shared_experts and shared_width(moe) % moe.expert_ffn_dim:
            raise ExportError(f"the shared-expert width {shared_width(moe)} is not a multiple of "
                              f"model.moe.expert_ffn_dim={moe.expert_ffn_dim}, which {self.name} cannot express "
                              f"(family {self.name}).")
        if moe.norm_topk and moe.experts_per_token == 1:
            raise ExportError(f"model.moe.norm_topk=true with experts_per_token=1 (weight 1) has no equivalent in "
                              f"{self.name}, which renormalises only when top-k > 1 (family {self.name}).")
        hf_layer_pattern(m, self.name)

    def hf_config(self, m: LMConfig) -> dict:
        moe = m.moe
        first, freq = hf_layer_pattern(m, self.name)
        if moe.balance_loss == "expert":
            alpha = moe.balance_coef
        elif moe.balance_loss == "switch":  # N * sum(count/T * P) is K times the expert-level form
            alpha = moe.balance_coef * moe.experts_per_token
        else:
            alpha = 0.0
        return {"n_routed_experts": moe.num_experts, "moe_intermediate_size": moe.expert_ffn_dim,
                "n_shared_experts": (shared_width(moe) // moe.expert_ffn_dim) if moe.num_shared_experts else None,
                "intermediate_size": moe.dense_ffn_dim or 4 * m.embed_dim, "first_k_dense_replace": first,
                "moe_layer_freq": freq, "norm_topk_prob": moe.norm_topk, "scoring_func": "softmax",
                "aux_loss_alpha": float(alpha), "seq_aux": bool(moe.seq_aux), "attention_bias": m.qkv_bias,
                "pretraining_tp": 1, "rope_scaling": None}

    def config_to_hf(self, cfg):
        out = super().config_to_hf(cfg)
        for key in ("rope_parameters", "router_aux_loss_coef", "output_router_logits"):  # not DeepSeekMoE fields
            out.pop(key, None)
        return out

    def model_config(self, hf: dict) -> LMConfig:
        scoring = hf.get("scoring_func", "softmax")
        if scoring != "softmax":
            raise ExportError(f"this deepseek config uses scoring_func={scoring!r}; DeepSeekMoE routers use softmax.")
        if hf.get("n_routed_experts") is None:
            raise ExportError("this deepseek config has no routed experts (n_routed_experts is null); it is a dense "
                              "model, not DeepSeekMoE.")
        if int(hf.get("pretraining_tp") or 1) != 1:
            raise ExportError("this deepseek config sets pretraining_tp != 1, which jaxmoe does not implement.")
        fields = self.common_model_fields(hf)
        if fields["embed_dim"] % fields["num_heads"]:
            raise ExportError("this deepseek config's hidden_size is not a multiple of num_attention_heads.")
        fields["qkv_bias"] = bool(hf.get("attention_bias", False))
        n = fields["num_layers"]
        first = int(hf.get("first_k_dense_replace") or 0)
        freq = int(hf.get("moe_layer_freq") or 1)
        first_k, every = pattern_from_dense(n, dense_layers_of(n, first, freq), self.name)
        k = int(hf_get(hf, "num_experts_per_tok", family=self.name))
        shared = int(hf.get("n_shared_experts") or 0)
        moe = dict(num_experts=int(hf["n_routed_experts"]), experts_per_token=k,
                   expert_ffn_dim=int(hf_get(hf, "moe_intermediate_size", family=self.name)),
                   num_shared_experts=shared, norm_topk=bool(hf.get("norm_topk_prob", False)) and k > 1,
                   first_k_dense=first_k, moe_every=every,
                   dense_ffn_dim=int(hf_get(hf, "intermediate_size", family=self.name)),
                   balance_loss="expert", balance_coef=float(hf.get("aux_loss_alpha", 0.001)),
                   seq_aux=bool(hf.get("seq_aux", True)))
        return make_model(fields, moe)

    def attn_rules(self, cfg, hf):
        rules = super().attn_rules(cfg, hf)
        if cfg.qkv_bias:  # attention_bias also gives o_proj a bias, which jaxmoe does not have: zeros
            rules.append(Rule("self_attn.o_proj.bias", None, zero_shape=(cfg.embed_dim,)))
        return rules

    def ffn_rules(self, cfg, ffn, hf):
        if ffn == "dense":
            return self.swiglu_rules("mlp", ("ffn",))
        rules = ([Rule("mlp.gate.weight", ("ffn", "router", "kernel"))]
                 + self.swiglu_rules("mlp.experts.{e}", ("ffn", "experts"), expert=True))
        if cfg.moe.num_shared_experts:
            rules += self.swiglu_rules("mlp.shared_experts", ("ffn", "shared"))
        return rules


FAMILY = Deepseek()
