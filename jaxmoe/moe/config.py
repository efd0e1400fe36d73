"""The configuration of a Mixture-of-Experts feed-forward layer (``model.moe``).

One frozen, hashable dataclass shared by every family whose FFNs are MoE layers (``lm``,
``time_moe``, ``moirai_moe``); :meth:`MoEConfig.validate` holds its cross-field checks.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxmoe.config import check


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-Experts feed-forward layers (DeepSeekMoE / Mixtral / Qwen-MoE family)."""

    num_experts: int = 8
    experts_per_token: int = 2
    expert_ffn_dim: int = 256
    num_shared_experts: int = 0
    shared_ffn_dim: int = 0  # per shared expert; 0 -> expert_ffn_dim
    shared_expert_gate: bool = False  # Qwen2-MoE: scale shared output by sigmoid(x @ w)
    router: Literal["topk", "topp", "thor", "readme", "moex"] = "topk"
    score_func: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk: bool = False  # renormalise the top-k weights to sum to 1
    selection_bias: bool = False  # DeepSeek-V3: per-expert bias used for selection only
    bias_update_rate: float = 0.0  # aux-loss-free balancing: bias += rate * sign(mean - load)
    routed_scaling_factor: float = 1.0
    num_groups: int = 1  # group-limited routing (DeepSeek-V3)
    topk_groups: int = 1
    top_p: float = 0.4  # dynamic top-p routing threshold
    first_k_dense: int = 0
    moe_every: int = 1
    dense_ffn_dim: int = 0  # FFN width of dense layers; 0 -> 4 * embed_dim
    dispatch: Literal["dropless", "capacity", "dense"] = "dropless"
    capacity_factor: float = 1.25
    gmm_backend: Literal["auto", "xla", "xla_vjp", "pallas_mgpu", "megablox"] = "auto"
    balance_loss: Literal["expert", "switch", "none"] = "expert"
    balance_coef: float = 0.01
    seq_aux: bool = False  # DeepSeekMoE sequence-wise balance loss
    device_balance_coef: float = 0.0
    z_loss_coef: float = 0.0
    dynamic_loss_coef: float = 1e-4  # top-p entropy loss
    router_jitter: float = 0.0
    # routing variants (specs/routing.md)
    max_experts_per_token: int = 0  # top-p: most experts a token may use (0 -> num_experts)
    thor_consistency_coef: float = 1.0  # THOR: alpha of the two-pass consistency (symmetric KL) loss
    thor_draw: Literal["batch", "token", "sequence"] = "batch"  # THOR: one random expert per layer per ...
    thor_inference: Literal["token", "sequence"] = "token"  # THOR: draw used by the decoders
    readme_dim: int = 64  # Read-ME pre-gating router network width
    readme_layers: int = 2
    readme_heads: int = 4
    num_compressed_experts: int = 0  # of the top-k, the last n are IA3 "compressed" experts
    expert_activation: Literal["silu", "relu"] = "silu"  # GLU nonlinearity of the experts (relu: MoE-X)
    moex_sparsity_coef: float = 1.0  # MoE-X: logits -= coef * expected active fraction of each expert

    def validate(self, num_layers: int) -> None:
        """Cross-field checks of ``model.moe`` in a stack of ``num_layers`` layers; raises
        :class:`~jaxmoe.errors.ConfigError` with one sentence."""
        moe = self
        check(moe.num_experts >= 1, f"model.moe.num_experts must be >= 1, got {moe.num_experts}.")
        check(1 <= moe.experts_per_token <= moe.num_experts,
               f"model.moe.experts_per_token={moe.experts_per_token} must be between 1 and "
               f"model.moe.num_experts={moe.num_experts}.")
        check(moe.expert_ffn_dim > 0, "model.moe.expert_ffn_dim must be positive.")
        check(moe.num_shared_experts >= 0, "model.moe.num_shared_experts must be >= 0.")
        check(moe.moe_every >= 1, "model.moe.moe_every must be >= 1.")
        check(0 <= moe.first_k_dense <= num_layers,
               f"model.moe.first_k_dense={moe.first_k_dense} must be between 0 and model.num_layers={num_layers}.")
        check(moe.capacity_factor > 0, "model.moe.capacity_factor must be positive.")
        check(0.0 < moe.top_p <= 1.0, f"model.moe.top_p={moe.top_p} must be in (0, 1].")
        check(0 <= moe.max_experts_per_token <= moe.num_experts,
               f"model.moe.max_experts_per_token={moe.max_experts_per_token} must be between 0 (all) and "
               f"model.moe.num_experts={moe.num_experts}.")
        check(0 <= moe.num_compressed_experts < moe.experts_per_token,
               f"model.moe.num_compressed_experts={moe.num_compressed_experts} must be between 0 and "
               f"model.moe.experts_per_token-1={moe.experts_per_token - 1}.")
        if moe.num_compressed_experts:
            check(moe.router in ("topk", "moex", "readme"),
                   "model.moe.num_compressed_experts needs router topk, moex or readme.")
        if moe.router == "readme":
            check(moe.readme_dim > 0 and moe.readme_layers >= 1 and moe.readme_heads >= 1
                   and moe.readme_dim % moe.readme_heads == 0 and (moe.readme_dim // moe.readme_heads) % 2 == 0,
                   f"model.moe.readme_heads={moe.readme_heads} must divide model.moe.readme_dim={moe.readme_dim} "
                   "into an even head size, with readme_layers >= 1.")
            check(not moe.selection_bias and moe.num_groups == 1,
                   "model.moe.router=readme shares one expert choice across layers; it cannot use selection_bias "
                   "or num_groups > 1.")
        check(moe.num_groups >= 1 and moe.num_experts % moe.num_groups == 0,
               f"model.moe.num_groups={moe.num_groups} must divide model.moe.num_experts={moe.num_experts}.")
        check(1 <= moe.topk_groups <= moe.num_groups,
               f"model.moe.topk_groups={moe.topk_groups} must be between 1 and model.moe.num_groups={moe.num_groups}.")
        if moe.num_groups > 1:
            per_group = moe.num_experts // moe.num_groups
            check(moe.topk_groups * per_group >= moe.experts_per_token,
                   "model.moe.topk_groups groups do not hold experts_per_token experts.")
