"""The configuration of a Mixture-of-Experts feed-forward layer (``model.moe``).

One frozen, hashable dataclass shared by every family whose FFNs are MoE layers (``lm``,
``time_moe``, ``moirai_moe``); :meth:`MoEConfig.validate` holds its cross-field checks.
It holds the fields every router shares; ``router`` names a router of
:mod:`jaxmoe.moe.routers` and ``router_options`` holds that router's own options class
(``TopPOptions``, ``ThorOptions``, ``ReadMeOptions``, ``MoEXOptions``, ...), which
validates itself. Config files written before the routers had options classes spell those
options as flat keys (``model.moe.top_p``, ``thor_draw``, ``readme_dim``, ...); the loader
translates them (:func:`jaxmoe.config_legacy.translate_router_keys`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Optional

from jaxmoe.config import check
from jaxmoe.config_legacy import LEGACY_ROUTER_KEYS, translate_router_keys
from jaxmoe.moe.routers import DEFAULT_ROUTER, RouterOptions, get_router, resolve_options, router_names


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-Experts feed-forward layers (DeepSeekMoE / Mixtral / Qwen-MoE family)."""

    num_experts: int = 8
    experts_per_token: int = 2
    expert_ffn_dim: int = 256
    num_shared_experts: int = 0
    shared_ffn_dim: int = 0  # per shared expert; 0 -> expert_ffn_dim
    shared_expert_gate: bool = False  # Qwen2-MoE: scale shared output by sigmoid(x @ w)
    router: str = DEFAULT_ROUTER  # a router of jaxmoe.moe.routers: topk, topp, thor, readme, moex, centroid
    router_options: Optional[RouterOptions] = None  # the router's options class (None -> its defaults)
    score_func: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk: bool = False  # renormalise the top-k weights to sum to 1
    selection_bias: bool = False  # DeepSeek-V3: per-expert bias used for selection only
    bias_update_rate: float = 0.0  # aux-loss-free balancing after each train step: bias += rate * sign(mean - load)
    routed_scaling_factor: float = 1.0
    num_groups: int = 1  # group-limited routing (DeepSeek-V3)
    topk_groups: int = 1
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
    router_jitter: float = 0.0  # training: router input times uniform noise in [1 - eps, 1 + eps] (Switch/Mixtral)
    num_compressed_experts: int = 0  # of the top-k, the last n are IA3 "compressed" experts
    expert_activation: Literal["silu", "relu"] = "silu"  # GLU nonlinearity of the experts (relu: MoE-X)

    # config-loader hooks: the old flat router keys, accepted and translated into router_options
    LEGACY_KEYS: ClassVar[frozenset[str]] = frozenset(LEGACY_ROUTER_KEYS)

    def __post_init__(self):
        object.__setattr__(self, "router_options", resolve_options(self.router, self.router_options))

    @classmethod
    def translate_legacy(cls, data: dict[str, Any], where: str) -> dict[str, Any]:
        """``model.moe`` mapping with the old flat router keys moved into ``router_options``."""
        return translate_router_keys(data, where, DEFAULT_ROUTER)

    def validate(self, num_layers: int) -> None:
        """Cross-field checks of ``model.moe`` in a stack of ``num_layers`` layers; raises
        :class:`~jaxmoe.errors.ConfigError` with one sentence."""
        moe = self
        check(isinstance(moe.router, str) and moe.router in router_names(),
              f"model.moe.router={moe.router!r} is not valid; choose one of {', '.join(router_names())}.")
        router = get_router(moe.router)
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
        check(0.0 <= moe.router_jitter < 1.0, f"model.moe.router_jitter={moe.router_jitter} must be in [0, 1).")
        check(moe.bias_update_rate >= 0.0, f"model.moe.bias_update_rate={moe.bias_update_rate} must be >= 0.")
        check(not moe.bias_update_rate or moe.selection_bias,
              "model.moe.bias_update_rate needs model.moe.selection_bias=true (the bias it updates).")
        check(0 <= moe.num_compressed_experts < moe.experts_per_token,
               f"model.moe.num_compressed_experts={moe.num_compressed_experts} must be between 0 and "
               f"model.moe.experts_per_token-1={moe.experts_per_token - 1}.")
        if moe.num_compressed_experts:
            ranked = [name for name in router_names() if get_router(name).ranked]
            check(router.ranked, f"model.moe.num_compressed_experts needs a router that ranks its top-k experts "
                  f"({', '.join(ranked)}); model.moe.router is {moe.router}.")
        check(type(moe.router_options) is router.Options,
              f"model.moe.router_options must be {router.Options.__name__} for model.moe.router={moe.router}.")
        moe.router_options.validate(moe)
        check(moe.num_groups >= 1 and moe.num_experts % moe.num_groups == 0,
               f"model.moe.num_groups={moe.num_groups} must divide model.moe.num_experts={moe.num_experts}.")
        check(1 <= moe.topk_groups <= moe.num_groups,
               f"model.moe.topk_groups={moe.topk_groups} must be between 1 and model.moe.num_groups={moe.num_groups}.")
        if moe.num_groups > 1:
            per_group = moe.num_experts // moe.num_groups
            check(moe.topk_groups * per_group >= moe.experts_per_token,
                   "model.moe.topk_groups groups do not hold experts_per_token experts.")
