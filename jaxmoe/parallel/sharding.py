"""Logical-axis sharding: ONE table of rules from logical axis names to mesh axes.

Every parameter declares its logical axes where it is created
(``jaxmoe.nn.init.param(key, shape, ("expert", "embed", "expert_mlp"))``). The table
:data:`DEFAULT_RULES` maps each logical name to mesh axes; param shardings, optimizer-state
shardings, batch shardings and activation constraints are all derived from it here, and
nothing else in the code base spells a ``PartitionSpec``.

Rules resolve per array (:func:`logical_to_spec`): a mesh axis is used at most once per
array (the first dimension that asks for it wins, so ``("batch", "seq", "embed")``
activations shard the batch over ``fsdp`` and leave ``embed`` whole), mesh axes of size 1
are dropped, and so are mesh axes that do not divide the dimension (that dimension is then
sharded over the remaining axes or replicated).

Override rules in the config: ``mesh.rules: [[vocab, null], [embed, [fsdp, tensor]]]``.

The active mesh: the trainer runs its steps inside ``with use_mesh(mesh, rules):``. Code
that needs it at trace time (:func:`constrain`, the MoE layer's expert-parallel path)
reads :func:`current_mesh`. Without an active mesh (or with a single-device one) these
are no-ops and the model runs exactly as on one device. The context is read when a jitted
function is *traced*; it also enters JAX's abstract-mesh context, which is part of jit's
cache key, so ``jax.jit(f)`` retraces per mesh shape. Changing only the rules or exchange
options for the same mesh shape needs a fresh ``jax.jit`` of the function.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmoe.config import MeshConfig, parse_mesh_rules
from jaxmoe.parallel.mesh import AXES

# logical axis -> mesh axes (tuple: dimension split over all of them, major first)
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp", "expert")),  # tokens: every axis except tensor
    ("seq", ()),
    ("embed", ("fsdp",)),  # params: FSDP shards the model dimension
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("vocab", ("tensor",)),
    ("expert", ("expert",)),
    ("expert_mlp", ("tensor",)),
    ("layers", ()),
)

Rules = Mapping[str, tuple[str, ...]]


def make_rules(overrides: Iterable | Mapping | None = None) -> dict[str, tuple[str, ...]]:
    """:data:`DEFAULT_RULES` with ``overrides`` (pairs ``(logical, mesh axes)``) applied
    (checked by :func:`jaxmoe.config.parse_mesh_rules`, which config validation also runs)."""
    rules = dict(DEFAULT_RULES)
    if overrides is None:
        return rules
    rules.update(parse_mesh_rules(overrides))
    return rules


def rules_from_config(mesh_cfg: MeshConfig) -> dict[str, tuple[str, ...]]:
    return make_rules(mesh_cfg.rules)


# ------------------------------------------------------------------ the active mesh

_state = threading.local()

# options of the expert-parallel exchange (MeshConfig.all_to_all / exchange_capacity)
DEFAULT_OPTIONS = {"all_to_all": "auto", "exchange_capacity": 0.0}


def current_mesh():
    """The mesh set by :func:`use_mesh` (None outside)."""
    return getattr(_state, "mesh", None)


def current_rules() -> dict[str, tuple[str, ...]]:
    rules = getattr(_state, "rules", None)
    return rules if rules is not None else make_rules()


def current_options() -> dict[str, Any]:
    return dict(getattr(_state, "options", None) or DEFAULT_OPTIONS)


@contextlib.contextmanager
def use_mesh(mesh, rules: Rules | Iterable | None = None, *, all_to_all: str = "auto",
             exchange_capacity: float = 0.0):
    """Make ``mesh`` (and ``rules``, exchange options) the active ones while tracing model code.

    ``all_to_all``: ``padded`` | ``ragged`` | ``auto`` (ragged on GPU/TPU, padded on CPU);
    ``exchange_capacity``: 0 = exact worst-case exchange buffers (nothing dropped by the
    exchange), x > 0 = buffers of x times the average per-device load (overflow dropped and
    counted). See :mod:`jaxmoe.moe.expert_parallel`.
    """
    old = (getattr(_state, "mesh", None), getattr(_state, "rules", None), getattr(_state, "options", None))
    _state.mesh = mesh
    _state.rules = rules if isinstance(rules, dict) else make_rules(rules)
    _state.options = {"all_to_all": all_to_all, "exchange_capacity": float(exchange_capacity)}
    try:
        with _jax_mesh_context(mesh):
            yield mesh
    finally:
        _state.mesh, _state.rules, _state.options = old


def _jax_mesh_context(mesh):
    """JAX's abstract-mesh context: it is part of jit's cache key, so a function traced
    without a mesh (or under another mesh shape) is traced again under this one."""
    fn = getattr(jax.sharding, "use_abstract_mesh", None)
    if mesh is None or fn is None or not hasattr(mesh, "abstract_mesh") or mesh_size(mesh) == 1:
        return contextlib.nullcontext()
    return fn(mesh.abstract_mesh)


def use_mesh_config(mesh, mesh_cfg: MeshConfig):
    """:func:`use_mesh` with the rules and exchange options of a ``MeshConfig``."""
    return use_mesh(mesh, rules_from_config(mesh_cfg), all_to_all=mesh_cfg.all_to_all,
                    exchange_capacity=float(getattr(mesh_cfg, "exchange_capacity", 0.0)))


def mesh_size(mesh) -> int:
    return 1 if mesh is None else int(math.prod(mesh.shape.values()))


# ------------------------------------------------------------------------ specs


def _entry(axes: Sequence[str]):
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else tuple(axes)


def logical_to_spec(axes: Sequence[str | None], rules: Rules | None, mesh, shape: Sequence[int] | None = None) -> P:
    """``PartitionSpec`` for an array with logical ``axes`` (one name or None per dim).

    Drops mesh axes that the mesh lacks, of size 1, already used by an earlier dimension,
    or (when ``shape`` is given) that do not divide the dimension.
    """
    rules = make_rules() if rules is None else rules
    sizes = dict(mesh.shape)
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        chosen: list[str] = []
        prod = 1
        for ax in (rules.get(name, ()) if name is not None else ()):
            size = int(sizes.get(ax, 1))
            if size <= 1 or ax in used:
                continue
            if shape is not None and shape[i] % (prod * size):
                continue
            chosen.append(ax)
            prod *= size
        used.update(chosen)
        out.append(_entry(chosen))
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def named(mesh, axes: Sequence[str | None], rules: Rules | None = None, shape: Sequence[int] | None = None):
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, shape))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_shardings(axes_tree: Any, mesh, rules: Rules | None = None, shapes: Any = None) -> Any:
    """``NamedSharding`` per param from the logical-axes tree (``jaxmoe.nn.init.logical_axes``).

    ``shapes`` (same structure: arrays or ``ShapeDtypeStruct``) enables the divisibility check.
    """
    from jaxmoe.nn.init import AxisNames

    is_axes = lambda x: isinstance(x, AxisNames)
    if shapes is None:
        return jax.tree.map(lambda a: named(mesh, a, rules), axes_tree, is_leaf=is_axes)
    return jax.tree.map(lambda a, s: named(mesh, a, rules, s.shape), axes_tree, shapes, is_leaf=is_axes)


def _path_table(tree: Any, leaves_fn: Callable) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {tuple(path): leaves_fn(leaf) for path, leaf in flat}


def mirror_shardings(tree_shapes: Any, params_shapes: Any, params_sharding: Any, mesh) -> Any:
    """Shardings for a pytree that mirrors params somewhere inside (optimizer state, a
    train state): a leaf whose key path ends with a param's key path and has that param's
    shape gets the param's sharding; every other leaf (step counters, scalars) is replicated."""
    shapes = _path_table(params_shapes, lambda s: tuple(s.shape))
    shards = _path_table(params_sharding, lambda s: s)
    max_len = max((len(p) for p in shapes), default=0)
    rep = replicated(mesh)

    def pick(path, leaf):
        path = tuple(path)
        for start in range(max(0, len(path) - max_len), len(path)):
            suffix = path[start:]
            if suffix in shapes and shapes[suffix] == tuple(np.shape(leaf)):
                return shards[suffix]
        return rep

    return jax.tree_util.tree_map_with_path(pick, tree_shapes)


def opt_state_shardings(opt_state_shapes: Any, params_shapes: Any, params_sharding: Any, mesh) -> Any:
    """Optax state shardings: moments mirror their params, counters are replicated."""
    return mirror_shardings(opt_state_shapes, params_shapes, params_sharding, mesh)


def state_shardings(abstract_state: Any, param_axes: Any, mesh, rules: Rules | None = None) -> Any:
    """Shardings for a train state with a ``params`` attribute/key and optimizer state."""
    params = abstract_state["params"] if isinstance(abstract_state, dict) else abstract_state.params
    psh = param_shardings(param_axes, mesh, rules, params)
    return mirror_shardings(abstract_state, params, psh, mesh)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` tree carrying ``shardings`` (restore targets for orbax)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, shardings)


def create_sharded_state(make_state: Callable, key: jax.Array, param_axes: Any, mesh,
                         rules: Rules | None = None) -> tuple[Any, Any]:
    """Create ``make_state(key)`` directly sharded (no full copy on one device).

    ``jax.eval_shape`` gives the state's shapes, :func:`state_shardings` its shardings and
    ``jax.jit(make_state, out_shardings=...)`` builds every shard where it lives.
    Returns ``(state, shardings)``.
    """
    abstract = jax.eval_shape(make_state, key)
    shardings = state_shardings(abstract, param_axes, mesh, rules)
    state = jax.jit(make_state, out_shardings=shardings)(key)
    return state, shardings


# ----------------------------------------------------------------- batches, activations


def batch_spec(mesh, rules: Rules | None = None, shape: Sequence[int] | None = None) -> P:
    """Spec of an array whose leading dimension is the batch (any rank; with ``shape``
    the mesh axes that do not divide the batch are dropped)."""
    return logical_to_spec(("batch",), rules, mesh, None if shape is None else tuple(shape)[:1])


def batch_sharding(mesh, rules: Rules | None = None, shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(mesh, rules, shape))


def shard_batch(batch: Any, mesh, rules: Rules | None = None) -> Any:
    """Place a host batch (pytree of arrays with a leading batch dimension) on the mesh.

    Every process holds the same global batch (same data order on every host); each
    process materialises only the shards of its own devices, so this works unchanged on
    one host and on many.
    """

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.device_put(x, replicated(mesh))
        sh = NamedSharding(mesh, batch_spec(mesh, rules, x.shape))
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

    return jax.tree.map(put, batch)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` of an activation by its logical axes under the active
    mesh; the identity without one (or on a single device)."""
    mesh = current_mesh()
    if mesh is None or mesh_size(mesh) == 1:
        return x
    spec = logical_to_spec(logical_axes, current_rules(), mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def describe_shardings(tree: Any) -> dict[str, str]:
    """``{"groups/0/0/ffn/experts/gate": "P('expert', 'fsdp', 'tensor')"}`` for reports."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for path, leaf in flat:
        sh = getattr(leaf, "sharding", leaf)
        out[jax.tree_util.keystr(path)] = str(getattr(sh, "spec", sh))
    return out
