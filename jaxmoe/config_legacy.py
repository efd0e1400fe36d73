"""The flat model config of jaxmoe 0.1 (before one config class per family), kept as a record.

Run directories and config files written by that version hold every field of the flat
``ModelConfig`` (defaults included, and ``extra: []``). :func:`jaxmoe.config.load_config`
accepts a field that the family's own config class lacks only when its value equals the
default recorded here (it is dropped); anything else is an unknown key of that family.
Nothing else reads these classes: do not add fields to them.

The routers' own options moved from flat ``model.moe`` keys into ``model.moe.router_options``
(one options class per router); :data:`LEGACY_ROUTER_KEYS` and :func:`translate_router_keys`
keep files and dotted overrides with the flat keys working.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from jaxmoe.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LegacyMoEConfig:
    """``model.moe`` as it was (every field, with its default)."""

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
    # routing variants (top-p, THOR, ReMoE-style, MoExtend, centroid gating)
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


@dataclasses.dataclass(frozen=True)
class LegacyModelConfig:
    """``model`` as it was: one flat class for every family."""

    family: Literal["lm", "time_moe", "moirai_moe", "s_mamba", "spacetime", "lssl_classifier"] = "lm"
    vocab_size: int = 259
    embed_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 0  # 0 -> num_heads
    head_dim: int = 0  # 0 -> embed_dim // num_heads
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    qk_norm: bool = False
    qk_norm_scope: Literal["head", "full"] = "head"  # RMSNorm per head (Qwen3) or over the whole q/k projection (OLMoE)
    attention_type: Literal["mha", "mla"] = "mha"  # mla: Multi-head Latent Attention (DeepSeek-V2/V3)
    q_lora_rank: int = 0  # MLA: low-rank query compression (0 -> plain query projection)
    kv_lora_rank: int = 64  # MLA: width of the cached key/value latent
    qk_nope_head_dim: int = 32  # MLA: per-head query/key dims without RoPE
    qk_rope_head_dim: int = 16  # MLA: per-head query dims (and shared key dims) with RoPE
    v_head_dim: int = 32  # MLA: per-head value dim
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    init_std: float = 0.02
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute dtype
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
    attention_impl: Literal["auto", "xla", "cudnn"] = "auto"
    layer_pattern: tuple[str, ...] = ()  # hybrid stacks, e.g. ("mamba", "attn"); empty -> all "attn"
    ssm_state_dim: int = 16
    ssm_conv_dim: int = 4
    ssm_expand: int = 2
    moe: LegacyMoEConfig = LegacyMoEConfig()
    # Time-MoE (family time_moe): FFN width (0 -> 4 * embed_dim; routed experts get ffn_dim // k),
    # forecast heads, point dimension, dense FFNs instead of MoE, router aux-loss weight
    ffn_dim: int = 0
    horizons: tuple[int, ...] = (1, 8, 32, 64)
    input_size: int = 1
    use_dense: bool = False
    aux_loss_coef: float = 0.02
    # Moirai-MoE style (family moirai_moe): points per patch token, components of the mixture
    # distribution head, and the MoE gating: a learned top-k router, or fixed per-layer centroids
    # ("centroid": top-k of the distances as in the released code; "centroid_nearest": the k nearest)
    patch_size: int = 16
    mixture_components: tuple[str, ...] = ("student_t", "normal_fixed", "negative_binomial", "log_normal")
    moirai_gating: Literal["learned", "centroid", "centroid_nearest"] = "learned"
    # state-space families. s_mamba / spacetime: lookback window and forecast horizon
    # (state size ssm_state_dim, FFN width ffn_dim, per-window instance normalisation);
    # lssl_classifier: classes and pooling (inputs are ids < vocab_size); dropout of all three;
    # spacetime: fixed preprocessing kernels and loss weights (horizon, lag, next input)
    lookback: int = 96
    horizon: int = 24
    instance_norm: bool = True
    num_classes: int = 10
    pooling: Literal["mean", "last"] = "mean"
    dropout_rate: float = 0.0
    preprocess_diff_orders: tuple[int, ...] = (0, 1, 2)
    preprocess_ma_windows: tuple[int, ...] = ()
    loss_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    extra: tuple[tuple[str, Any], ...] = ()  # family-specific options as (key, value) pairs


# old flat ``model.moe`` key -> (router, its name in that router's options)
LEGACY_ROUTER_KEYS: dict[str, tuple[str, str]] = {
    "top_p": ("topp", "top_p"),
    "max_experts_per_token": ("topp", "max_experts_per_token"),
    "dynamic_loss_coef": ("topp", "dynamic_loss_coef"),
    "thor_consistency_coef": ("thor", "consistency_coef"),
    "thor_draw": ("thor", "draw"),
    "thor_inference": ("thor", "inference"),
    "readme_dim": ("readme", "dim"),
    "readme_layers": ("readme", "layers"),
    "readme_heads": ("readme", "heads"),
    "moex_sparsity_coef": ("moex", "sparsity_coef"),
}


def translate_router_keys(data: dict, where: str, default_router: str) -> dict:
    """The ``model.moe`` mapping ``data`` with the old flat router keys translated: the
    keys of the router in use move into ``router_options`` (over a value already there: a
    flat key comes from an old file over a newer base, or from a dotted override); the keys
    of other routers are dropped (they never had an effect on this router)."""
    flat = [key for key in data if key in LEGACY_ROUTER_KEYS]
    if not flat:
        return data
    data = dict(data)
    router = data.get("router", default_router)
    moved = {}
    for key in flat:
        value = data.pop(key)
        owner, name = LEGACY_ROUTER_KEYS[key]
        if owner == router:
            moved[name] = value
    if moved:
        options = data.get("router_options")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}.router_options must be a mapping of the router's options, got {options!r}.")
        data["router_options"] = {**options, **moved}
    return data
