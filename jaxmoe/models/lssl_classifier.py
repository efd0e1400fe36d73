"""LSSL sequence classifier: discrete inputs -> LSSL layers -> pooled linear classifier.

::

    h = embed(tokens)                          tokens [batch, seq] ids < model.vocab_size -> [batch, seq, H]
    each layer:  h = h + lssl(LN(h))           jaxmoe.ssm.lssl: HiPPO SSM per channel, GELU, dropout, mix
    h = LN(h); pooled = mean over seq (model.pooling="mean") or h[:, -1] ("last")
    logits = pooled @ W + b                    [batch, model.num_classes]

Loss: softmax cross-entropy (fp32); metrics ``accuracy``. The sklearn digits read pixel by
pixel (64 steps, 17 pixel values) are the demo task (``configs/lssl_digits.yaml``).

Model config (:class:`LSSLClassifierConfig`): ``embed_dim`` (H), ``num_layers``,
``ssm_state_dim`` (N; LSSL paper 256, 64 in small configs), ``vocab_size``, ``num_classes``,
``pooling``, ``dropout_rate``, ``lssl_mode`` (``convolution`` | ``recurrent`` |
``parallel``, default convolution), ``a_mode`` (``fixed`` | ``shared`` | ``per_feature``),
``measure`` (``legs`` | ``legt``), ``discretization`` (bilinear alpha or ``zoh``, default
0.5) and ``dt_min`` / ``dt_max`` (range of the log-uniform initial step sizes, default
1e-3 / 1e-1).

Params::

    embed:      {embedding [vocab, H]}
    layers:     stacked ("layers" axis): {norm {scale, bias}, lssl (jaxmoe.ssm.lssl params)}
    final_norm: {scale, bias}
    head:       {kernel [H, classes], bias [classes]}

Batches: ``{"tokens": int32 [batch, seq], "labels": int32 [batch]}`` (:mod:`jaxmoe.data.pipelines`,
data kind ``classification``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxmoe.config import Config, ModelConfig, check
from jaxmoe.nn.init import logical_axes, split, stack_boxed, unbox
from jaxmoe.nn.layers import embed, init_embedding, init_layernorm, init_linear, layernorm, linear
from jaxmoe.ssm.lssl import init_lssl, lssl


@dataclasses.dataclass(frozen=True)
class LSSLClassifierConfig(ModelConfig):
    """LSSL sequence classifier (``model.family: lssl_classifier``): vocabulary, classes,
    pooling, state size, dropout, and the LSSL layer's view, A, measure, discretisation and
    initial step sizes."""

    data_kind: ClassVar[str] = "classification"  # jaxmoe.data.pipelines: {"tokens": [b, seq], "labels": [b]}

    family: Literal["lssl_classifier"] = "lssl_classifier"
    vocab_size: int = 259  # inputs are ids < vocab_size
    num_classes: int = 10
    pooling: Literal["mean", "last"] = "mean"
    ssm_state_dim: int = 16  # HiPPO state size N
    dropout_rate: float = 0.0
    lssl_mode: Literal["convolution", "recurrent", "parallel"] = "convolution"
    a_mode: Literal["fixed", "shared", "per_feature"] = "fixed"
    measure: Literal["legs", "legt"] = "legs"
    discretization: float | Literal["zoh"] = 0.5  # generalised-bilinear alpha (0.5: bilinear) or zoh
    dt_min: float = 1e-3  # initial dt log-uniform in [dt_min, dt_max]
    dt_max: float = 1e-1

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        m = self
        check(m.vocab_size > 0, f"model.vocab_size must be positive, got {m.vocab_size}.")
        check(m.num_classes >= 2, f"model.num_classes={m.num_classes} must be >= 2.")
        check(0.0 <= m.dropout_rate < 1.0, f"model.dropout_rate={m.dropout_rate} must be in [0, 1).")


def _opts(cfg: LSSLClassifierConfig) -> dict:
    return {"mode": cfg.lssl_mode, "measure": cfg.measure, "discretization": cfg.discretization}


def init_boxed(key: jax.Array, cfg: LSSLClassifierConfig) -> dict:
    """Boxed params (logical axes) of an LSSL classifier."""
    k = split(key, ["embed", "layers", "head"])
    h = cfg.embed_dim
    layer = lambda kk: {"norm": init_layernorm(h),  # noqa: E731
                        "lssl": init_lssl(kk, h, state_size=cfg.ssm_state_dim, a_mode=cfg.a_mode, measure=cfg.measure,
                                          dt_min=cfg.dt_min, dt_max=cfg.dt_max)}
    return {
        "embed": init_embedding(k["embed"], cfg.vocab_size, h, std=1.0),
        "layers": stack_boxed(layer, k["layers"], cfg.num_layers, "layers"),
        "final_norm": init_layernorm(h),
        "head": init_linear(k["head"], h, cfg.num_classes, ("embed", None), bias=True, std=1 / math.sqrt(h)),
    }


def init(key: jax.Array, cfg: LSSLClassifierConfig) -> dict:
    return unbox(init_boxed(key, cfg))


def param_axes(cfg: LSSLClassifierConfig):
    return logical_axes(init_boxed, jax.random.PRNGKey(0), cfg)


def features(params: dict, tokens: jax.Array, cfg: LSSLClassifierConfig, rng: jax.Array | None = None) -> jax.Array:
    """Per-step features after the final norm: ``tokens [batch, seq] -> [batch, seq, H]`` fp32."""
    params = unbox(params)
    h = embed(params["embed"], tokens, jnp.float32)
    opts = _opts(cfg)
    rngs = jax.random.split(rng, cfg.num_layers) if rng is not None else None

    def body(h, inputs):
        lp, r = inputs
        return h + lssl(lp["lssl"], layernorm(lp["norm"], h), dropout_rate=cfg.dropout_rate, rng=r, **opts), None

    if rngs is None:
        h, _ = lax.scan(lambda h, lp: body(h, (lp, None)), h, params["layers"])
    else:
        h, _ = lax.scan(body, h, (params["layers"], rngs))
    return layernorm(params["final_norm"], h)


def apply(params: dict, tokens: jax.Array, cfg: LSSLClassifierConfig, rng: jax.Array | None = None) -> jax.Array:
    """Class logits ``[batch, num_classes]`` fp32 for ``tokens [batch, seq]``."""
    h = features(params, tokens, cfg, rng)
    pooled = h[:, -1] if cfg.pooling == "last" else jnp.mean(h, axis=1)
    return linear(unbox(params)["head"], pooled).astype(jnp.float32)


def loss_fn(params, batch: dict, cfg: LSSLClassifierConfig, rng: jax.Array | None = None):
    """``batch{"tokens", "labels"}`` -> ``(cross-entropy, {"accuracy"})``; ``rng`` enables dropout."""
    logits = apply(params, batch["tokens"], cfg, rng)
    labels = batch["labels"].astype(jnp.int32)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return loss, {"accuracy": acc}


__all__ = ["init", "init_boxed", "param_axes", "features", "apply", "loss_fn"]
