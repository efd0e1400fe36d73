"""State-space mixers for hybrid stacks (``model.layer_pattern``, e.g. ``[mamba, attn]``).

A hybrid layer replaces attention by a Mamba block or a diagonal (S4D/S5) SSM; the FFN
(MoE or dense) is unchanged. In the decode cache such a layer holds its recurrent state
(Mamba: ``{"conv", "ssm"}``; diagonal: ``{"ssm"}``) instead of K/V, and the same
full-sequence code path continues from it, so prefill and single-token steps agree with
the full forward. ``jaxmoe.models.lm`` imports this module (never the other way round).
"""

from __future__ import annotations

import jax

from jaxmoe.config import ModelConfig
from jaxmoe.models.stack import compute_dtype
from jaxmoe.ssm.diagonal import diagonal_ssm, init_diagonal_ssm, init_diagonal_ssm_state
from jaxmoe.ssm.mamba import init_mamba, init_mamba_state, mamba

SSM_KINDS = ("mamba", "diag_ssm")


def _check(kind: str) -> None:
    if kind not in SSM_KINDS:
        raise ValueError(f"layer kind {kind!r} is not a state-space mixer; choose one of {', '.join(SSM_KINDS)}.")


def init_ssm_mixer(key, kind: str, cfg: ModelConfig) -> dict:
    _check(kind)
    if kind == "mamba":
        return init_mamba(key, cfg.embed_dim, d_state=cfg.ssm_state_dim, d_conv=cfg.ssm_conv_dim,
                          expand=cfg.ssm_expand)
    return init_diagonal_ssm(key, cfg.embed_dim, d_state=cfg.ssm_state_dim)


def init_ssm_state(kind: str, cfg: ModelConfig, batch: int, dtype=None) -> dict:
    _check(kind)
    if kind == "mamba":
        return init_mamba_state(batch, cfg.embed_dim, d_state=cfg.ssm_state_dim, d_conv=cfg.ssm_conv_dim,
                                expand=cfg.ssm_expand, dtype=dtype or compute_dtype(cfg))
    return init_diagonal_ssm_state(batch, cfg.embed_dim, d_state=cfg.ssm_state_dim)


def ssm_mixer(params, x: jax.Array, kind: str, cfg: ModelConfig, cache: dict | None):
    """``x [batch, seq, embed]`` -> ``(y, new_state or None)``; continues from ``cache``."""
    _check(kind)
    fn = mamba if kind == "mamba" else diagonal_ssm
    if cache is None:
        return fn(params, x), None
    return fn(params, x, state=cache, return_state=True)
