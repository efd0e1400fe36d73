"""Rotary position embeddings (rotate-half layout, as in Llama / Qwen / Mixtral), with
optional YaRN context extension.

Plain RoPE rotates dimension pair ``i`` (of ``d/2``) by ``position * inv_freq[i]`` with
``inv_freq[i] = theta^(-2i/d)``.

**YaRN** (:class:`RopeScaling`, ``type: yarn``; DeepSeek-V3/R1, Qwen long-context) keeps
the high-frequency pairs (many rotations within the original context) and divides the
low-frequency ones by ``factor``, with a linear ramp in between. With ``L`` =
``original_max_position_embeddings``, the pair index that turns ``r`` times over ``L``
positions is ``c(r) = d * ln(L / (2 pi r)) / (2 ln theta)``; ``low = floor(c(beta_fast))``,
``high = ceil(c(beta_slow))`` (clamped to ``[0, d-1]``; no rounding when ``truncate`` is
false), ``ramp[i] = clip((i - low) / (high - low), 0, 1)`` and::

    inv_freq[i] = theta^(-2i/d) * ((1 - ramp[i]) + ramp[i] / factor)

Two attention corrections come with it, both from ``m(s, a) = 0.1 * a * ln(s) + 1``
(1 when ``s <= 1``):

* the attention factor multiplies cos and sin (so q.k of the rotated dims scales by its
  square): ``attention_factor`` if given, else ``m(factor, mscale) / m(factor,
  mscale_all_dim)`` when both are set, else ``m(factor, 1)``
  (:func:`rope_attention_factor`);
* Multi-head Latent Attention (DeepSeek-V2/V3) also multiplies its softmax scale by
  ``m(factor, mscale_all_dim)^2`` when ``mscale_all_dim`` is set
  (:func:`softmax_scale_factor`); standard attention does not (as in Llama/Qwen).

These are the formulas of the YaRN paper as DeepSeek-V3 and transformers implement them;
``tests/nn/test_rope_scaling.py`` checks them against transformers on random settings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE scaling (``model.rope_scaling``). Only ``type: yarn`` is implemented.

    ``mscale`` / ``mscale_all_dim`` / ``attention_factor``: 0 means unset (as a missing key
    in a Hugging Face config)."""

    type: Literal["yarn"] = "yarn"
    factor: float = 1.0  # context extension factor
    original_max_position_embeddings: int = 4096  # the context length the model was pretrained with
    beta_fast: float = 32.0  # pairs turning more often than this over that context keep their frequency
    beta_slow: float = 1.0  # pairs turning less often than this are interpolated (divided by factor)
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    attention_factor: float = 0.0  # 0: derived from factor / mscale / mscale_all_dim
    truncate: bool = True  # round the ramp bounds to whole pairs

    def validate(self, where: str = "model.rope_scaling") -> None:
        if self.type != "yarn":
            raise ConfigError(f"{where}.type={self.type!r} is not implemented; only 'yarn' is.")
        if not self.factor >= 1.0:
            raise ConfigError(f"{where}.factor={self.factor} must be >= 1 (it is a context extension factor).")
        if self.original_max_position_embeddings <= 0:
            raise ConfigError(f"{where}.original_max_position_embeddings must be positive.")
        if not self.beta_fast > 0 or not self.beta_slow > 0:
            raise ConfigError(f"{where}.beta_fast and {where}.beta_slow must be positive.")
        if self.mscale < 0 or self.mscale_all_dim < 0 or self.attention_factor < 0:
            raise ConfigError(f"{where}.mscale, mscale_all_dim and attention_factor must be >= 0 (0 = unset).")


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """``0.1 * mscale * ln(scale) + 1`` (1 for ``scale <= 1``)."""
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def rope_attention_factor(scaling: RopeScaling | None) -> float:
    """The factor applied to cos and sin (1 without scaling)."""
    if scaling is None:
        return 1.0
    if scaling.attention_factor:
        return float(scaling.attention_factor)
    if scaling.mscale and scaling.mscale_all_dim:
        return yarn_mscale(scaling.factor, scaling.mscale) / yarn_mscale(scaling.factor, scaling.mscale_all_dim)
    return yarn_mscale(scaling.factor)


def softmax_scale_factor(scaling: RopeScaling | None) -> float:
    """Multiplier of MLA's softmax scale: ``m(factor, mscale_all_dim)^2`` (1 when unset)."""
    if scaling is None or not scaling.mscale_all_dim:
        return 1.0
    m = yarn_mscale(scaling.factor, scaling.mscale_all_dim)
    return m * m


def yarn_ramp_bounds(head_dim: int, theta: float, scaling: RopeScaling) -> tuple[float, float]:
    """``(low, high)`` pair indices of the interpolation ramp."""

    def pair_index(rotations: float) -> float:
        return (head_dim * math.log(scaling.original_max_position_embeddings / (rotations * 2 * math.pi))
                / (2 * math.log(theta)))

    low, high = pair_index(scaling.beta_fast), pair_index(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, head_dim - 1)


def yarn_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """YaRN ``inv_freq [head_dim/2]`` (fp32, computed in fp32 like the reference code)."""
    low, high = yarn_ramp_bounds(head_dim, theta, scaling)
    if low == high:
        high += 0.001  # the reference's guard against a zero-width ramp
    base = np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    extrapolation = np.float32(1.0) / base
    interpolation = np.float32(1.0) / (np.float32(scaling.factor) * base)
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    keep = np.float32(1.0) - ramp  # 1: keep the original frequency (extrapolate), 0: divide by factor
    return (interpolation * (1 - keep) + extrapolation * keep).astype(np.float32)


def rope_frequencies(head_dim: int, theta: float = 10000.0, scaling: RopeScaling | None = None) -> jax.Array:
    """``inv_freq[i] = theta^(-2i/d)`` for i < d/2, fp32 (YaRN-scaled when ``scaling``)."""
    if scaling is not None:
        return jnp.asarray(yarn_frequencies(head_dim, theta, scaling))
    return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def apply_rope(x: jax.Array, positions: jax.Array, theta: float = 10000.0,
               scaling: RopeScaling | None = None) -> jax.Array:
    """Rotate ``x [batch, seq, heads, head_dim]`` by ``positions [batch, seq]`` (or [seq]).

    With ``scaling`` (YaRN) the frequencies are rescaled and cos/sin are multiplied by the
    attention factor. Computed in fp32 and returned in x's dtype.
    """
    d = x.shape[-1]
    inv = rope_frequencies(d, theta, scaling)
    pos = jnp.asarray(positions, jnp.float32)
    if pos.ndim == 1:
        pos = pos[None, :]
    angles = pos[..., None] * inv  # [b, s, d/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    factor = rope_attention_factor(scaling)
    if factor != 1.0:
        cos, sin = cos * factor, sin * factor
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)
