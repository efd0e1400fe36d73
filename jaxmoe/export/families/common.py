"""Shared machinery of the decoder-LM family mappings (jaxmoe ``lm`` <-> transformers).

A family is described by an :class:`LMFamily` subclass: what the target architecture can
express (:class:`Caps`), its config.json fields, and per-layer :class:`Rule` lists that
name every tensor. The generic code here turns rules into

* ``export_tensors(cfg, params)``: ``(hf_name, producer)`` pairs in file order, where the
  producer materialises one tensor (so a sharded writer holds at most one shard), and
* ``import_params(cfg, reader, hf)``: our params pytree filled tensor by tensor from a lazy
  :class:`~jaxmoe.export.safetensors_io.SafetensorsReader`.

Layout facts encoded here: torch ``Linear.weight`` is ``[out, in]`` (our kernels are
``[in, out]``: transpose); attention kernels ``[embed, heads, head_dim]`` flatten to
``[heads*head_dim, embed]``; our stacked experts ``[E, ...]`` and scanned layers
``params["groups"][g][j]`` (leading ``layers`` axis) unstack to per-layer, per-expert names
(``model.layers.{i}.mlp.experts.{e}.gate_proj.weight``), which is what ``save_pretrained``
of transformers 5 writes even though it fuses experts in memory.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np

from jaxmoe.config import Config, ConfigError, DataConfig, validate
from jaxmoe.export.safetensors_io import Fp8BlockReader, fp8_block_size
from jaxmoe.models.lm import LMConfig, layer_kinds
from jaxmoe.moe.config import MoEConfig
from jaxmoe.nn.rope import RopeScaling


from jaxmoe.errors import ExportError  # noqa: E402,F401  (re-exported)


# ----------------------------------------------------------------------------- conversions


@dataclasses.dataclass(frozen=True)
class Conv:
    """One tensor's layout change: ``to_hf(ours) -> hf`` and ``from_hf(hf, our_shape) -> ours``."""

    to_hf: Callable[[np.ndarray], np.ndarray]
    from_hf: Callable[[np.ndarray, tuple], np.ndarray]


LINEAR = Conv(lambda a: a.T, lambda t, shape: t.T)  # kernel [in, out] <-> weight [out, in]
HEADS_IN = Conv(lambda a: a.reshape(a.shape[0], -1).T, lambda t, shape: t.T.reshape(shape))  # [in, H, K]
HEADS_OUT = Conv(lambda a: a.reshape(-1, a.shape[-1]).T, lambda t, shape: t.T.reshape(shape))  # [H, K, out]
FLAT = Conv(lambda a: a.reshape(-1), lambda t, shape: t.reshape(shape))  # norms, biases


def rope_permutation(rope_dim: int) -> np.ndarray:
    """``P`` with ``ours = interleaved[P]``: DeepSeek's interleaved RoPE pairs (x0,x1),(x2,x3)...
    are rotate-half pairs after moving even dims first, odd dims second."""
    return np.concatenate([np.arange(0, rope_dim, 2), np.arange(1, rope_dim, 2)])


def permute_tail(conv: Conv, tail: int, perm: Optional[np.ndarray]) -> Conv:
    """Wrap ``conv`` so the last ``tail`` entries of our last axis are ``hf[perm]``."""
    if perm is None:
        return conv
    inv = np.argsort(perm)

    def to_hf(a):
        a = a.copy()
        a[..., a.shape[-1] - tail:] = a[..., a.shape[-1] - tail:][..., inv]
        return conv.to_hf(a)

    def from_hf(t, shape):
        a = np.array(conv.from_hf(t, shape))
        a[..., a.shape[-1] - tail:] = a[..., a.shape[-1] - tail:][..., perm]
        return a

    return Conv(to_hf, from_hf)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor of a layer: ``hf`` is the name after ``model.layers.{i}.`` (``{e}`` for
    experts); ``path`` the leaf inside our block params. ``path=None`` is a tensor our model
    lacks but the family stores: written as zeros (``zero_shape``) and required to be zero on
    import (e.g. a bias jaxmoe does not have)."""

    hf: str
    path: Optional[tuple[str, ...]]
    conv: Conv = LINEAR
    expert: bool = False
    zero_shape: Optional[tuple[int, ...]] = None


# ------------------------------------------------------------------------- capabilities


@dataclasses.dataclass(frozen=True)
class Caps:
    """What a target family can express; anything else is refused with one sentence."""

    qkv_bias: bool = False  # q/k/v biases allowed
    qk_norm: Optional[str] = None  # None: no QK-norm; "head"/"full": required with that scope
    mla: bool = False  # Multi-head Latent Attention required (else refused)
    score_func: str = "softmax"
    norm_topk: Optional[bool] = None  # None: configurable; True/False: fixed
    selection_bias: bool = False
    routed_scaling: bool = False
    groups: bool = False
    shared: Optional[str] = None  # None: no shared experts; "gated" (Qwen2-MoE, required); "plain"
    dense_layers: str = "none"  # "none", "prefix" (first_k_dense, every later layer MoE), "any"
    explicit_head_dim: bool = True  # head_dim may differ from embed_dim // num_heads
    rope_scaling: bool = False  # YaRN RoPE scaling (model.rope_scaling) can be expressed


def _kinds(cfg: LMConfig) -> list[tuple[str, str]]:
    return layer_kinds(cfg)


def check_exportable(name: str, caps: Caps, cfg: LMConfig) -> None:
    """Raise :class:`ExportError` (one sentence) for the first setting ``name`` cannot express."""
    m = cfg

    def refuse(msg):
        raise ExportError(f"{msg} (family {name}).")

    if m.family != "lm":
        refuse(f"model.family={m.family!r} cannot be exported as a {name} language model; only family 'lm' can")
    if getattr(m, "rope_scaling", None) is not None and not caps.rope_scaling:
        refuse(f"model.rope_scaling ({m.rope_scaling.type}) has no equivalent in {name}")
    moe = m.moe
    others = sorted({k for k in m.layer_pattern if k != "attn"})
    if others:
        refuse(f"model.layer_pattern has {', '.join(others)} layers, which have no Hugging Face equivalent")
    if moe.router != "topk":
        refuse(f"model.moe.router={moe.router!r} has no equivalent in {name}, which only supports top-k routing")
    if getattr(moe, "expert_activation", "silu") != "silu":
        refuse(f"model.moe.expert_activation={moe.expert_activation!r} has no equivalent in {name}, whose experts "
               "are SwiGLU (silu)")
    if getattr(moe, "num_compressed_experts", 0):
        refuse(f"compressed experts (model.moe.num_compressed_experts={moe.num_compressed_experts}) have no "
               f"equivalent in {name}")
    if caps.mla and m.attention_type != "mla":
        refuse(f"{name} uses Multi-head Latent Attention, so it needs model.attention_type=mla")
    if not caps.mla and m.attention_type == "mla":
        refuse(f"model.attention_type=mla has no equivalent in {name} (only deepseek_v2 and deepseek_v3 have "
               "Multi-head Latent Attention)")
    if not caps.mla:
        if m.qkv_bias and not caps.qkv_bias:
            refuse(f"model.qkv_bias=true has no equivalent in {name}, whose attention projections have no bias")
        if caps.qk_norm is None and m.qk_norm:
            refuse(f"model.qk_norm=true has no equivalent in {name}, which has no QK-norm")
        if caps.qk_norm is not None and not m.qk_norm:
            refuse(f"{name} always applies QK-norm, so it needs model.qk_norm=true")
        if caps.qk_norm is not None and m.qk_norm_scope != caps.qk_norm:
            refuse(f"model.qk_norm_scope={m.qk_norm_scope!r} has no equivalent in {name}, which normalises "
                   + ("each head" if caps.qk_norm == "head" else "the whole q/k projection")
                   + f" (qk_norm_scope={caps.qk_norm!r})")
        if not caps.explicit_head_dim and m.head_size * m.num_heads != m.embed_dim:
            refuse(f"model.head_dim={m.head_size} differs from embed_dim/num_heads={m.embed_dim // m.num_heads}, "
                   f"which {name} cannot express")
    elif m.qkv_bias or m.qk_norm:
        refuse(f"model.qkv_bias / model.qk_norm have no equivalent with Multi-head Latent Attention in {name}")
    if moe.score_func != caps.score_func:
        refuse(f"model.moe.score_func={moe.score_func!r} has no equivalent in {name}, whose router uses "
               f"{caps.score_func} scores")
    if caps.norm_topk is not None and moe.norm_topk != caps.norm_topk:
        refuse(f"model.moe.norm_topk={str(moe.norm_topk).lower()} has no equivalent in {name}, which "
               + ("always renormalises" if caps.norm_topk else "never renormalises") + " the top-k weights")
    if moe.selection_bias and not caps.selection_bias:
        refuse(f"model.moe.selection_bias=true has no equivalent in {name}")
    if moe.routed_scaling_factor != 1.0 and not caps.routed_scaling:
        refuse(f"model.moe.routed_scaling_factor={moe.routed_scaling_factor} has no equivalent in {name}")
    if moe.num_groups > 1 and not caps.groups:
        refuse(f"group-limited routing (model.moe.num_groups={moe.num_groups}) has no equivalent in {name}")
    if moe.num_shared_experts and caps.shared is None:
        refuse(f"shared experts (model.moe.num_shared_experts={moe.num_shared_experts}) have no equivalent in {name}")
    if caps.shared == "gated" and not (moe.num_shared_experts and moe.shared_expert_gate):
        refuse(f"{name} always has one shared expert scaled by a sigmoid gate, so it needs "
               "model.moe.num_shared_experts>=1 and model.moe.shared_expert_gate=true")
    if caps.shared != "gated" and moe.shared_expert_gate and moe.num_shared_experts:
        refuse(f"model.moe.shared_expert_gate=true has no equivalent in {name}")
    kinds = [f for _, f in _kinds(m)]
    dense = [i for i, f in enumerate(kinds) if f == "dense"]
    if dense and caps.dense_layers == "none":
        refuse(f"dense FFN layers (model.moe.first_k_dense / moe_every) have no equivalent in {name}, where every "
               "layer is MoE")
    if caps.dense_layers == "prefix" and dense != list(range(len(dense))):
        refuse(f"{name} only has leading dense layers (model.moe.first_k_dense), not model.moe.moe_every="
               f"{moe.moe_every}")


# ------------------------------------------------------------------------------ helpers


def hf_get(hf: dict, key: str, default: Any = dataclasses.MISSING, family: str = "") -> Any:
    if key in hf and hf[key] is not None:
        return hf[key]
    if default is dataclasses.MISSING:
        raise ExportError(f"config.json has no '{key}', which a {family} config needs.")
    return default


def rope_from_hf(hf: dict, default: float, family: str, scaling: bool = False) -> tuple[float, RopeScaling | None]:
    """``(rope_theta, RopeScaling or None)`` from ``rope_parameters`` (transformers 5) or the
    older ``rope_theta`` + ``rope_scaling`` fields. YaRN is read when ``scaling``; other kinds
    (linear, dynamic, llama3, longrope, per-layer-type RoPE) are refused in one sentence."""
    rp = hf.get("rope_parameters") or {}
    rs = hf.get("rope_scaling") or {}
    if not isinstance(rp, dict) or not isinstance(rs, dict):
        raise ExportError(f"this {family} config's rope_parameters/rope_scaling is not a mapping.")
    if any(isinstance(v, dict) for v in rp.values()):
        raise ExportError(f"this {family} config sets RoPE per layer type, which jaxmoe does not implement.")
    kind_of = lambda d: d.get("rope_type") or d.get("type") or "default"  # noqa: E731
    params = rp if kind_of(rp) != "default" or not rs else rs  # transformers 5 first, then the older field
    kind = kind_of(params)
    theta = float(rp.get("rope_theta") or hf.get("rope_theta") or default)
    if float(params.get("partial_rotary_factor") or hf.get("partial_rotary_factor") or 1.0) != 1.0:
        raise ExportError(f"this {family} config rotates only part of each head (partial_rotary_factor), which "
                          "jaxmoe does not implement.")
    if kind == "default":
        return theta, None
    if kind != "yarn" or not scaling:
        what = "" if kind == "yarn" else " (jaxmoe implements only YaRN)"
        raise ExportError(f"this {family} config uses RoPE scaling type {kind!r}, which jaxmoe's {family} family "
                          f"does not implement{what}.")
    max_pos = hf.get("max_position_embeddings")
    original = hf.get("original_max_position_embeddings") or params.get("original_max_position_embeddings") or max_pos
    if not original:
        raise ExportError(f"this {family} config's YaRN RoPE has no original_max_position_embeddings.")
    factor = params.get("factor")
    if factor is None:
        factor = float(max_pos) / float(original) if max_pos else None
    if factor is None:
        raise ExportError(f"this {family} config's YaRN RoPE has no factor.")
    num = lambda key, default: float(params.get(key) or default)  # noqa: E731  (None/0 -> default, as transformers)
    out = RopeScaling(type="yarn", factor=float(factor), original_max_position_embeddings=int(original),
                      beta_fast=num("beta_fast", 32.0), beta_slow=num("beta_slow", 1.0), mscale=num("mscale", 0.0),
                      mscale_all_dim=num("mscale_all_dim", 0.0), attention_factor=num("attention_factor", 0.0),
                      truncate=bool(params.get("truncate", True)))
    try:
        out.validate("rope_scaling")
    except ConfigError as e:
        raise ExportError(f"this {family} config's YaRN RoPE is not valid: {e}") from None
    return theta, out


def rope_theta_from_hf(hf: dict, default: float, family: str) -> float:
    """``rope_theta`` of a config without RoPE scaling (refuses any scaling)."""
    return rope_from_hf(hf, default, family)[0]


def rope_to_hf(theta: float, scaling: RopeScaling | None = None) -> dict:
    """``rope_theta`` and transformers 5's ``rope_parameters`` (YaRN keys when ``scaling``)."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(theta)}
    if scaling is not None:
        params.update(rope_type=scaling.type, factor=float(scaling.factor),
                      original_max_position_embeddings=int(scaling.original_max_position_embeddings),
                      beta_fast=float(scaling.beta_fast), beta_slow=float(scaling.beta_slow))
        for key in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(scaling, key):
                params[key] = float(getattr(scaling, key))
        if not scaling.truncate:
            params["truncate"] = False
    return {"rope_theta": float(theta), "rope_parameters": params}


def layer_slots(cfg: LMConfig) -> list[tuple[int, int, int, tuple[str, str]]]:
    """``(group, position, repeat, kind)`` of every layer, in layer order."""
    from jaxmoe.models import lm

    slots: dict[int, tuple[int, int, int, tuple[str, str]]] = {}
    for gi, g in enumerate(lm.groups(cfg)):
        for j, kind in enumerate(g.unit):
            for r in range(g.repeats):
                slots[g.layer_index(r, j)] = (gi, j, r, kind)
    return [slots[i] for i in range(cfg.num_layers)]


def pattern_from_dense(num_layers: int, dense: list[int], family: str) -> tuple[int, int]:
    """``(first_k_dense, moe_every)`` reproducing the set of dense layer indices, or refuse."""
    dense_set = set(dense)
    if len(dense_set) == num_layers:
        return num_layers, 1
    for every in range(1, num_layers + 1):  # the smallest moe_every, then the fewest leading dense layers
        for first in range(num_layers):
            if all(((i >= first and (i + 1 - first) % every == 0) == (i not in dense_set)) for i in range(num_layers)):
                return first, every
    moe_layers = [i for i in range(num_layers) if i not in dense_set]
    raise ExportError(f"the {family} MoE layer pattern {moe_layers} has no jaxmoe equivalent (first_k_dense "
                      "leading dense layers, then every moe_every-th layer MoE).")


def finish_config(model: LMConfig, seed: int = 0) -> Config:
    data = DataConfig(seq_len=min(128, model.max_seq_len))
    cfg = Config(model=model, data=data)
    try:
        validate(cfg)
    except ConfigError as e:
        raise ExportError(f"the imported config is not valid: {e}") from None
    return cfg


# --------------------------------------------------------------------------------- family


class LMFamily:
    """Base class of the decoder-LM families. Subclasses set the class attributes and
    implement :meth:`hf_config`, :meth:`model_config` and the rule methods."""

    name = ""
    model_types: tuple[str, ...] = ()
    architecture = ""
    caps = Caps()
    default_rope_theta = 10000.0
    default_norm_eps = 1e-6

    # ---- to implement
    def hf_config(self, cfg: LMConfig) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def model_config(self, hf: dict) -> LMConfig:  # pragma: no cover - abstract
        raise NotImplementedError

    def ffn_rules(self, cfg: LMConfig, ffn: str, hf: dict) -> list[Rule]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- shared pieces
    def check(self, cfg: LMConfig) -> None:
        check_exportable(self.name, self.caps, cfg)

    def config_to_hf(self, cfg: Config) -> dict:
        m = cfg.model
        self.check(m)
        out = {
            "architectures": [self.architecture],
            "model_type": self.model_types[0],
            "vocab_size": m.vocab_size,
            "hidden_size": m.embed_dim,
            "num_hidden_layers": m.num_layers,
            "num_attention_heads": m.num_heads,
            "num_key_value_heads": m.kv_heads,
            "max_position_embeddings": m.max_seq_len,
            "rms_norm_eps": m.norm_eps,
            "tie_word_embeddings": m.tie_embeddings,
            "hidden_act": "silu",
            "initializer_range": m.init_std,
            "attention_dropout": 0.0,
            "use_cache": True,
            "num_experts_per_tok": m.moe.experts_per_token,
            "output_router_logits": False,
            "router_aux_loss_coef": m.moe.balance_coef,
            "dtype": "float32",
            **rope_to_hf(m.rope_theta, getattr(m, "rope_scaling", None)),
        }
        if cfg.data.tokenizer == "byte" and m.vocab_size >= 259:
            out.update(bos_token_id=257, eos_token_id=258, pad_token_id=256)
        out.update(self.hf_config(m))
        return out

    def config_from_hf(self, hf: dict) -> Config:
        fp8_block_size(hf.get("quantization_config"))  # block FP8 is dequantised on import; others refused
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ExportError(f"hidden_act={act!r} has no equivalent in jaxmoe, whose FFNs are SwiGLU (silu).")
        return finish_config(self.model_config(hf))

    def common_model_fields(self, hf: dict) -> dict:
        heads = int(hf_get(hf, "num_attention_heads", family=self.name))
        theta, scaling = rope_from_hf(hf, self.default_rope_theta, self.name, self.caps.rope_scaling)
        fields = dict(
            family="lm",
            vocab_size=int(hf_get(hf, "vocab_size", family=self.name)),
            embed_dim=int(hf_get(hf, "hidden_size", family=self.name)),
            num_layers=int(hf_get(hf, "num_hidden_layers", family=self.name)),
            num_heads=heads,
            num_kv_heads=int(hf_get(hf, "num_key_value_heads", heads)),
            rope_theta=theta,
            norm_eps=float(hf_get(hf, "rms_norm_eps", self.default_norm_eps)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=int(hf_get(hf, "max_position_embeddings", 4096)),
            init_std=float(hf_get(hf, "initializer_range", 0.02)),
        )
        if scaling is not None:
            fields["rope_scaling"] = scaling
        return fields

    def attn_rules(self, cfg: LMConfig, hf: dict) -> list[Rule]:
        """Standard q/k/v/o projections (+ biases, QK-norm)."""
        a = "self_attn."
        rules = [Rule(a + "q_proj.weight", ("mixer", "q", "kernel"), HEADS_IN),
                 Rule(a + "k_proj.weight", ("mixer", "k", "kernel"), HEADS_IN),
                 Rule(a + "v_proj.weight", ("mixer", "v", "kernel"), HEADS_IN),
                 Rule(a + "o_proj.weight", ("mixer", "o", "kernel"), HEADS_OUT)]
        if cfg.qkv_bias:
            rules += [Rule(a + f"{x}_proj.bias", ("mixer", x, "bias"), FLAT) for x in "qkv"]
        if cfg.qk_norm:
            rules += [Rule(a + "q_norm.weight", ("mixer", "q_norm", "scale"), FLAT),
                      Rule(a + "k_norm.weight", ("mixer", "k_norm", "scale"), FLAT)]
        return rules

    def swiglu_rules(self, prefix: str, path: tuple[str, ...], names=("gate_proj", "up_proj", "down_proj"),
                     expert: bool = False) -> list[Rule]:
        return [Rule(f"{prefix}.{hf_name}.weight", path + (ours,), LINEAR, expert=expert)
                for hf_name, ours in zip(names, ("gate", "up", "down"))]

    def layer_rules(self, cfg: LMConfig, kind: tuple[str, str], hf: dict) -> list[Rule]:
        return ([Rule("input_layernorm.weight", ("mixer_norm", "scale"), FLAT),
                 Rule("post_attention_layernorm.weight", ("ffn_norm", "scale"), FLAT)]
                + self.attn_rules(cfg, hf) + self.ffn_rules(cfg, kind[1], hf))

    def ignored(self, name: str, cfg: LMConfig) -> bool:
        """HF tensors that have no place in our model and may be dropped on import."""
        if name.endswith("rotary_emb.inv_freq"):
            return True
        m = re.match(r"model\.layers\.(\d+)\.", name)
        return bool(m and int(m.group(1)) >= cfg.num_layers)  # e.g. DeepSeek-V3 multi-token-prediction layers

    # ---- generic conversion
    def export_tensors(self, cfg: Config, params, hf: dict) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
        m = cfg.model
        params = jax.tree.map(np.asarray, params)
        yield "model.embed_tokens.weight", lambda: params["embed"]["embedding"]
        for i, (g, j, r, kind) in enumerate(layer_slots(m)):
            block = params["groups"][g][j]
            for rule in self.layer_rules(m, kind, hf):
                name = f"model.layers.{i}.{rule.hf}"
                if rule.path is None:
                    yield name, (lambda s=rule.zero_shape: np.zeros(s, np.float32))
                    continue
                leaf = _get_path(block, rule.path, name)
                if rule.expert:
                    for e in range(leaf.shape[1]):
                        yield name.format(e=e), (lambda lf=leaf, r=r, e=e, c=rule.conv: c.to_hf(lf[r, e]))
                else:
                    yield name, (lambda lf=leaf, r=r, c=rule.conv: c.to_hf(lf[r]))
        yield "model.norm.weight", lambda: params["final_norm"]["scale"]
        if not m.tie_embeddings:
            yield "lm_head.weight", lambda: params["lm_head"]["kernel"].T

    def import_params(self, cfg: Config, reader, hf: dict) -> dict:
        from jaxmoe.models import lm

        m = cfg.model
        shapes = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), m))
        params = jax.tree.map(lambda s: np.full(s.shape, np.nan, np.float32), shapes)
        used: set[str] = set()
        where = str(reader.paths[0].parent)
        block = fp8_block_size(hf.get("quantization_config"))
        if block is not None:  # FP8 weights are dequantised tensor by tensor as they are read
            reader = Fp8BlockReader(reader, block)
        elif any(n.endswith("weight_scale_inv") or reader.dtype(n).startswith("F8") for n in reader.names()):
            raise ExportError(f"{where} stores FP8 weights (or weight_scale_inv block scales), but its config.json "
                              "has no quantization_config saying how to read them.")

        def take(name: str, shape: tuple, conv: Conv) -> np.ndarray:
            if name not in reader:
                raise ExportError(f"tensor '{name}' is missing from {where}.")
            used.add(name)
            try:
                t = reader.get_float32(name) if hasattr(reader, "get_float32") else reader.get(name).astype(np.float32)
            except ValueError as e:  # FP8 tensors without scales, scales of the wrong shape
                raise ExportError(str(e)) from None
            out = conv.from_hf(t, shape)
            if tuple(out.shape) != tuple(shape):
                raise ExportError(f"tensor '{name}' has shape {list(reader.shape(name))}, which does not match the "
                                  f"config (expected {list(shape)} in jaxmoe's layout).")
            return out

        params["embed"]["embedding"][...] = take("model.embed_tokens.weight", params["embed"]["embedding"].shape, FLAT)
        for i, (g, j, r, kind) in enumerate(layer_slots(m)):
            block = params["groups"][g][j]
            for rule in self.layer_rules(m, kind, hf):
                name = f"model.layers.{i}.{rule.hf}"
                if rule.path is None:
                    if name in reader:
                        used.add(name)
                        if np.any(reader.get(name) != 0):
                            raise ExportError(f"tensor '{name}' is non-zero, but jaxmoe's {self.name} layers have no "
                                              "such parameter.")
                    continue
                leaf = _get_path(block, rule.path, name)
                if rule.expert:
                    for e in range(leaf.shape[1]):
                        leaf[r, e] = take(name.format(e=e), leaf.shape[2:], rule.conv)
                else:
                    leaf[r] = take(name, leaf.shape[1:], rule.conv)
        params["final_norm"]["scale"][...] = take("model.norm.weight", params["final_norm"]["scale"].shape, FLAT)
        if m.tie_embeddings:
            used.add("lm_head.weight")
        else:
            params["lm_head"]["kernel"][...] = take("lm_head.weight", params["lm_head"]["kernel"].shape, LINEAR)
        extra = sorted(n for n in reader.names() if n not in used and not self.ignored(n, m))
        if extra:
            raise ExportError(f"{len(extra)} tensors in {where} have no place in the jaxmoe {self.name} model "
                              f"(e.g. '{extra[0]}').")
        leaves = jax.tree_util.tree_leaves_with_path(params)
        for path, leaf in leaves:
            if np.isnan(leaf).any():
                raise ExportError(f"parameter {jax.tree_util.keystr(path)} was not filled from {where} "
                                  "(or holds NaN values).")
        return params


def _get_path(tree, path, name):
    node = tree
    for k in path:
        try:
            node = node[k]
        except (KeyError, TypeError):
            raise ExportError(f"the jaxmoe params have no {'/'.join(path)} for '{name}'.") from None
    return node


def moe_fields(hf: dict, family: str, *, experts_key: str, ffn_key: str) -> dict:
    """MoEConfig fields shared by the softmax-router families."""
    alias = {"num_experts": "num_local_experts", "num_local_experts": "num_experts"}[experts_key]
    n = int(hf_get(hf, experts_key, hf.get(alias), family=family) if hf.get(alias) is not None
            else hf_get(hf, experts_key, family=family))
    k = int(hf_get(hf, "num_experts_per_tok", family=family))
    return dict(num_experts=n, experts_per_token=k, expert_ffn_dim=int(hf_get(hf, ffn_key, family=family)),
                balance_loss="switch", balance_coef=float(hf.get("router_aux_loss_coef") or 0.01))


def make_model(fields: dict, moe: dict) -> LMConfig:
    return LMConfig(**fields, moe=MoEConfig(**moe))
