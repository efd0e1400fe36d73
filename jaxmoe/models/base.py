"""Config base shared by the transformer families (``lm``, ``time_moe``, ``moirai_moe``).

Each family's config class lives beside its model and derives from
:class:`jaxmoe.config.ModelConfig` (family, embed_dim, num_layers); the decoder
transformers derive from :class:`TransformerConfig`, which adds attention, norms, dtypes
and the MoE FFN (``model.moe``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

from jaxmoe.config import ModelConfig, check
from jaxmoe.moe.config import MoEConfig

if TYPE_CHECKING:
    from jaxmoe.config import Config


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    """Pre-norm decoder stacks of causal RoPE attention and (MoE) SwiGLU FFNs."""

    num_heads: int = 4
    num_kv_heads: int = 0  # 0 -> num_heads
    head_dim: int = 0  # 0 -> embed_dim // num_heads
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    max_seq_len: int = 2048
    init_std: float = 0.02
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute dtype
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
    attention_impl: Literal["auto", "xla", "cudnn"] = "auto"
    moe: MoEConfig = MoEConfig()

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        m = self
        for name in ("num_heads", "max_seq_len"):
            check(getattr(m, name) > 0, f"model.{name} must be positive, got {getattr(m, name)}.")
        check(m.num_kv_heads >= 0 and m.head_dim >= 0,
               "model.num_kv_heads and model.head_dim must be >= 0 (0 = default).")
        if not m.head_dim:
            check(m.embed_dim % m.num_heads == 0,
                   f"model.num_heads={m.num_heads} must divide model.embed_dim={m.embed_dim} (or set model.head_dim).")
        check(m.num_heads % m.kv_heads == 0,
               f"model.num_kv_heads={m.kv_heads} must divide model.num_heads={m.num_heads}.")
        check(m.head_size % 2 == 0, f"the head dimension ({m.head_size}) must be even for RoPE.")
        m.moe.validate(m.num_layers)
        check(cfg.data.seq_len <= m.max_seq_len,
               f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={m.max_seq_len}.")
        if cfg.mesh.expert > 1:
            check(m.moe.num_experts % cfg.mesh.expert == 0,
                   f"mesh.expert={cfg.mesh.expert} must divide model.moe.num_experts={m.moe.num_experts}.")
