"""What every router shares: the :class:`Routing` record it returns, the :class:`RouterInputs`
it receives, the base of its options (:class:`RouterOptions`) and the :class:`Router`
interface with its optional hooks.

A router turns token representations ``x [T, embed]`` into one :class:`Routing`. Inference-
time interventions are *inputs* to the router (never forks of the layer), carried by one
:class:`RouterInputs` pytree:

- ``expert_mask [N]`` bool: False switches an expert off (it receives zero tokens; the next
  best fills in); ``force_mask [N]`` bool: True puts an expert into every token's set;
- ``rank_select`` (static int): keep only the expert ranked ``r`` (SCMoE's weak routing);
- ``weight_override [T, N]`` with ``override_mask [T]``: replace the router scores of some
  tokens (C3PO re-mixing);
- ``rng``: the key of a stochastic router (THOR);
- ``pregate_logits [T, N]``: router logits computed before the layer stack (Read-ME);
- ``jitter_rng``: the key of the router-input jitter (``model.moe.router_jitter``, training
  only); the MoE layer consumes it, the router never sees it;
- ``return_probs`` (static bool): the MoE layer also returns the router probabilities.

At the model level (``jaxmoe.models.lm.forward``) the per-layer fields carry a leading
``[num_layers]`` axis (``expert_mask [L, N]``, ``weight_override [L, batch, seq, N]``,
``override_mask [L, batch, seq]``), ``rng`` is one key and ``pregate_logits`` is
``[batch, seq, N]``; :meth:`RouterInputs.stack` and :meth:`RouterInputs.take_layers` turn
them into the per-layer inputs of a scan, in one place.

A router's ``route`` takes the inputs it understands as explicit keyword arguments; any
other keyword is an error. :meth:`Router.route_layer` (what the MoE layer calls) refuses,
in one sentence, inputs that the router does not take.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from jaxmoe.nn.init import normal, param, split, zeros

if TYPE_CHECKING:
    from jaxmoe.moe.config import MoEConfig


@flax.struct.dataclass
class Routing:
    """What a router decided for ``T`` tokens with (at most) ``K`` experts each.

    expert_ids: ``[T, K]`` int32; weights: ``[T, K]`` fp32 combine weights;
    probs: ``[T, N]`` fp32 router probabilities (for balance losses and statistics);
    logits: ``[T, N]`` fp32; valid: ``[T, K]`` bool or None (variable experts per token).
    """

    expert_ids: jax.Array
    weights: jax.Array
    probs: jax.Array
    logits: jax.Array
    valid: Optional[jax.Array] = None


# fields that differ per layer (sliced by the layer scan) and fields every layer shares
LAYER_FIELDS = ("expert_mask", "force_mask", "rng", "weight_override", "override_mask", "jitter_rng")
SHARED_FIELDS = ("pregate_logits",)
# inputs the MoE layer itself consumes (never passed to a router's ``route``)
LAYER_ONLY_FIELDS = ("jitter_rng",)
# what a router's ``route`` may take (``return_probs`` is for the layer, not the router)
ROUTE_FIELDS = tuple(f for f in LAYER_FIELDS if f not in LAYER_ONLY_FIELDS) + SHARED_FIELDS + ("rank_select",)


@flax.struct.dataclass
class RouterInputs:
    """Inputs to the routers of a model or of one MoE layer (see the module docstring for
    the shapes at each level). Every field is optional; ``rank_select`` and
    ``return_probs`` are static (part of the compiled program)."""

    expert_mask: Optional[jax.Array] = None
    force_mask: Optional[jax.Array] = None
    rng: Optional[jax.Array] = None
    weight_override: Optional[jax.Array] = None
    override_mask: Optional[jax.Array] = None
    pregate_logits: Optional[jax.Array] = None
    jitter_rng: Optional[jax.Array] = None
    rank_select: Optional[int] = flax.struct.field(pytree_node=False, default=None)
    return_probs: bool = flax.struct.field(pytree_node=False, default=False)

    def given(self) -> dict[str, Any]:
        """The router inputs that are set, as keyword arguments of a router's ``route``."""
        return {name: getattr(self, name) for name in ROUTE_FIELDS if getattr(self, name) is not None}

    def stack(self, num_layers: int, num_tokens: int) -> "RouterInputs":
        """Model-level inputs -> the layer-stacked, token-flattened form: ``rng`` and
        ``jitter_rng`` split into one key per layer, ``weight_override [L, T, N]``, ``override_mask [L, T]``,
        ``pregate_logits [T, N]`` (``T = batch * seq``); the masks stay ``[L, N]``."""
        out = self
        if self.rng is not None:
            out = out.replace(rng=jax.random.split(self.rng, num_layers))
        if self.jitter_rng is not None:
            out = out.replace(jitter_rng=jax.random.split(self.jitter_rng, num_layers))
        if self.weight_override is not None:
            out = out.replace(weight_override=self.weight_override.reshape(num_layers, num_tokens, -1))
            if self.override_mask is not None:
                out = out.replace(override_mask=self.override_mask.reshape(num_layers, num_tokens))
        if self.pregate_logits is not None:
            out = out.replace(pregate_logits=self.pregate_logits.reshape(num_tokens, -1))
        return out

    def take_layers(self, indices: Sequence[int]) -> "RouterInputs":
        """The per-layer fields of stacked inputs at rows ``indices`` (the xs of a layer
        scan); the shared fields are left out (:meth:`join` puts them back)."""
        rows = jnp.asarray(indices, jnp.int32)
        taken = {name: None if getattr(self, name) is None else jnp.asarray(getattr(self, name))[rows]
                 for name in LAYER_FIELDS}
        return self.replace(**taken, **{name: None for name in SHARED_FIELDS})

    def join(self, shared: "RouterInputs") -> "RouterInputs":
        """These per-layer inputs with the shared fields of ``shared``."""
        return self.replace(**{name: getattr(shared, name) for name in SHARED_FIELDS})


@dataclasses.dataclass(frozen=True)
class RouterOptions:
    """Options of a router (``model.moe.router_options``). Each router with options
    subclasses this frozen dataclass; a router without options uses it as it is (empty).

    The config loader reads ``model.moe.router_options`` with the options class of
    ``model.moe.router`` (:meth:`section_class`)."""

    def validate(self, moe: MoEConfig) -> None:
        """Checks of these options within ``moe``; raise ConfigError with one sentence."""

    @classmethod
    def section_class(cls, parent: dict, where: str) -> type:
        """The options class of the router named in ``parent`` (the ``model.moe`` mapping)."""
        from jaxmoe.moe.routers import DEFAULT_ROUTER, get_router

        name = parent.get("router", DEFAULT_ROUTER)
        return get_router(name, where=f"{where}.router" if where else "router").Options

    @classmethod
    def unknown_key_hint(cls, key: str) -> str:
        """`` (it is an option of router topp)`` when ``key`` belongs to other routers."""
        from jaxmoe.moe.routers import get_router, router_names

        owners = [n for n in router_names() if get_router(n).Options is not cls
                  and key in {f.name for f in dataclasses.fields(get_router(n).Options)}]
        return f" (it is an option of router {', '.join(owners)})" if owners else ""


def router_logits(params, x: jax.Array) -> jax.Array:
    """``x [T, embed] -> logits [T, N]`` in fp32."""
    return x.astype(jnp.float32) @ params["kernel"].astype(jnp.float32)


def apply_interventions(sel: jax.Array, expert_mask: jax.Array | None, force_mask: jax.Array | None) -> jax.Array:
    """Disabled experts (``expert_mask`` False) can never be chosen; forced experts
    (``force_mask`` True) are always chosen. Both are ``[N]`` bool."""
    if expert_mask is not None:
        sel = jnp.where(expert_mask, sel, -jnp.inf)
    if force_mask is not None:
        sel = jnp.where(force_mask, jnp.float32(1e30), sel)
    return sel


def override_scores(scores: jax.Array, weight_override: jax.Array | None, override_mask: jax.Array | None):
    """Replace the router scores ``[T, N]`` of the tokens where ``override_mask [T]`` is
    True (every token when it is None) by ``weight_override [T, N]``."""
    if weight_override is None:
        return scores
    w = weight_override.astype(jnp.float32)
    if override_mask is None:
        return w
    return jnp.where(override_mask[:, None], w, scores)


class Router:
    """The interface of a router; subclasses override what they need.

    Required: ``name``, ``route(params, x [T, embed], cfg, *, <inputs>) -> Routing``
    (a staticmethod with explicit keyword arguments). Optional, with neutral defaults:

    - ``Options``: its :class:`RouterOptions` subclass; ``init``: its per-layer params;
    - ``losses``: its own auxiliary losses; ``loss_names`` lists them;
    - ``ranked``: it returns the ``experts_per_token`` best experts of each token, best first
      (compressed experts need this); ``variable_experts``: experts per token vary
      (``Routing.valid``), so models report the active experts;
    - a pre-gating hook run before the layer stack (``has_pregate``, :meth:`init_pregate`,
      :meth:`init_pregate_cache`, :meth:`pregate`);
    - an extra training objective (:attr:`objective`) that replaces the model's one pass;
    - decoding behaviour (:meth:`decode_config`, :meth:`decode_rng`) and how many experts a
      token uses (:meth:`experts_used`);
    - params it updates itself after each train step, outside the optimizer
      (:meth:`updates_after_step`, :meth:`post_update`): by default the DeepSeek-V3
      auxiliary-loss-free balancing of ``selection_bias``.
    """

    name: str = ""
    Options: type = RouterOptions
    learned_kernel: bool = True  # per-layer router kernel [embed, experts]
    ranked: bool = False
    variable_experts: bool = False
    loss_names: tuple[str, ...] = ()
    has_pregate: bool = False
    # objective(run, ce, mask, cfg, rng) -> (loss, metrics): run(RouterInputs | None) gives a
    # pass's (logits, aux), ce(logits) its cross-entropy; None: one plain pass
    objective: Optional[Callable] = None

    def __repr__(self) -> str:
        return f"<router {self.name}>"

    # ---------------------------------------------------------------- params and routing

    def init(self, key, embed_dim: int, cfg: MoEConfig, std: float = 0.02) -> dict:
        """Boxed per-layer router params: the kernel (when ``learned_kernel``) and, with
        ``selection_bias``, the DeepSeek-V3 selection bias."""
        k = split(key, ["kernel", "bias"])
        p = {}
        if self.learned_kernel:
            p["kernel"] = param(k["kernel"], (embed_dim, cfg.num_experts), ("embed", None), normal(std))
        if cfg.selection_bias:
            p["selection_bias"] = param(k["bias"], (cfg.num_experts,), (None,), zeros)
        return p

    route: Callable[..., Routing]

    @functools.cached_property
    def inputs(self) -> frozenset[str]:
        """The :class:`RouterInputs` fields that ``route`` takes."""
        sig = inspect.signature(self.route)
        return frozenset(n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and n in ROUTE_FIELDS)

    def check_inputs(self, inputs: RouterInputs | None) -> dict[str, Any]:
        """The set inputs as keyword arguments of ``route``; ValueError (one sentence) for
        inputs this router does not take, naming the routers that do."""
        given = {} if inputs is None else inputs.given()
        extra = [k for k in given if k not in self.inputs]
        if extra:
            from jaxmoe.moe.routers import get_router, router_names

            able = [n for n in router_names() if set(extra) <= get_router(n).inputs]
            use = f"; use router {', '.join(able)}" if able else ""
            raise ValueError(f"the {self.name} router does not take {', '.join(extra)}{use}.")
        return given

    def route_layer(self, params, x: jax.Array, cfg: MoEConfig, inputs: RouterInputs | None,
                    batch_shape: tuple[int, int]) -> Routing:
        """Route ``x [T, embed]`` inside an MoE layer whose params are ``params`` (router,
        experts, ...); ``batch_shape`` is ``(batch, seq)`` with ``T = batch * seq``."""
        del batch_shape
        return self.route(params["router"], x, cfg, **self.check_inputs(inputs))

    def losses(self, routing: Routing, cfg: MoEConfig) -> dict[str, tuple[jax.Array, float]]:
        """The router's own losses: ``{name: (unweighted value, coefficient)}``."""
        del routing, cfg
        return {}

    def experts_used(self, cfg: MoEConfig) -> tuple[int, int]:
        """``(enabled experts a token needs, most experts a token can use)``: bounds for
        disabling and forcing experts."""
        return cfg.experts_per_token, cfg.experts_per_token

    # ---------------------------------------------------------------- pre-gating hook

    def init_pregate(self, key, model_cfg) -> dict:
        """Boxed params of the pre-gating network (``params["pregate"]`` of the model)."""
        raise NotImplementedError(f"the {self.name} router has no pre-gating network.")

    def init_pregate_cache(self, model_cfg, batch: int, max_len: int, dtype) -> dict:
        """The pre-gating network's decode cache (``cache["pregate"]``)."""
        raise NotImplementedError(f"the {self.name} router has no pre-gating network.")

    def pregate(self, params, tokens: jax.Array, model_cfg, *, cache: dict | None = None,
                index: jax.Array | int = 0) -> tuple[jax.Array, dict | None]:
        """``tokens [batch, seq]`` -> ``(pregate logits [batch, seq, N], new cache)``."""
        raise NotImplementedError(f"the {self.name} router has no pre-gating network.")

    # ---------------------------------------------------------------- decoding

    def decode_config(self, cfg: MoEConfig) -> MoEConfig:
        """The MoE config the decoders use (e.g. THOR's inference draw); ``cfg`` itself if
        nothing changes."""
        return cfg

    def decode_rng(self, rng: jax.Array, step, cfg: MoEConfig) -> jax.Array | None:
        """The router key of decoding step ``step`` (None: the router is not random)."""
        del rng, step, cfg
        return None

    # ---------------------------------------------------------------- after a train step

    def updates_after_step(self, cfg: MoEConfig) -> bool:
        """Whether :meth:`post_update` changes anything for ``cfg`` (the train step skips the
        hook otherwise): by default, auxiliary-loss-free balancing is on
        (``selection_bias`` with ``bias_update_rate > 0``)."""
        return bool(cfg.selection_bias and cfg.bias_update_rate > 0)

    def post_update(self, params: dict, stats: dict[str, jax.Array], cfg: MoEConfig) -> dict:
        """The router params this router updates itself after a train step, outside the
        optimizer: ``{name: new value}``; each replaces what the optimizer made of that leaf
        (no gradient step, no weight decay). ``params``: this layer's router params *before*
        the step; ``stats["load"] [N]``: the fraction of this step's (valid) assignments per
        expert.

        Default: DeepSeek-V3 auxiliary-loss-free balancing, ``selection_bias += rate *
        sign(mean_load - load_e)`` (overloaded experts become less likely to be selected,
        underloaded ones more; the combine weights never see the bias)."""
        if not self.updates_after_step(cfg) or "selection_bias" not in params:
            return {}
        load = stats["load"].astype(jnp.float32)
        bias = params["selection_bias"]
        step = cfg.bias_update_rate * jnp.sign(load.mean() - load)
        return {"selection_bias": (bias.astype(jnp.float32) + step).astype(bias.dtype)}
