"""Parameter creation with logical axes declared in exactly one place.

Every ``init_*`` function builds its leaves with :func:`param`, which returns a
:class:`Boxed` value: the array plus its logical axis names (``("embed", "mlp")``).
Public model ``init`` functions call :func:`unbox` so users see plain nested dicts of
arrays; :func:`logical_axes` recovers the axis names of the same tree (through
``jax.eval_shape``, so it costs no memory), and ``jaxmoe.parallel.sharding`` maps them
to mesh axes. Nothing else in the code base spells a PartitionSpec.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]


@flax.struct.dataclass
class Boxed:
    """An array together with its logical axis names (static metadata)."""

    value: jax.Array
    axes: tuple[str | None, ...] = flax.struct.field(pytree_node=False)


def is_boxed(x: Any) -> bool:
    return isinstance(x, Boxed)


def normal(stddev: float = 0.02) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return stddev * jax.random.normal(key, shape, dtype)

    return init


def fan_in_normal(scale: float = 1.0) -> Initializer:
    """Normal with std ``scale / sqrt(fan_in)`` where fan_in is ``shape[-2]``."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = shape[-2] if len(shape) >= 2 else shape[-1]
        return (scale / jnp.sqrt(fan_in)) * jax.random.normal(key, shape, dtype)

    return init


def zeros(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype=jnp.float32):
    del key
    return jnp.ones(shape, dtype)


def constant(value: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, value, dtype)

    return init


def param(
    key: jax.Array,
    shape: Sequence[int],
    axes: Sequence[str | None],
    init: Initializer = normal(),
    dtype=jnp.float32,
) -> Boxed:
    """Create one parameter leaf. ``axes`` has one logical name (or None) per dim."""
    shape = tuple(int(s) for s in shape)
    axes = tuple(axes)
    if len(axes) != len(shape):
        raise ValueError(f"param of shape {shape} needs {len(shape)} axis names, got {axes}")
    return Boxed(init(key, shape, dtype), axes)


def unbox(tree: Any) -> Any:
    """Replace every :class:`Boxed` leaf by its array."""
    return jax.tree.map(lambda b: b.value if is_boxed(b) else b, tree, is_leaf=is_boxed)


def axes_tree(tree: Any) -> Any:
    """Replace every :class:`Boxed` leaf by its axes tuple (a tuple is kept as a leaf)."""
    return jax.tree.map(lambda b: AxisNames(b.axes), tree, is_leaf=is_boxed)


class AxisNames(tuple):
    """A tuple of logical axis names. Not a registered pytree node, so ``jax.tree``
    utilities treat it as one leaf."""


def logical_axes(boxed_init: Callable[..., Any], *args, **kwargs) -> Any:
    """Logical axes of the params that ``boxed_init(*args)`` would create, without
    allocating them: a pytree of :class:`AxisNames` with the structure of the params."""
    shapes = jax.eval_shape(lambda: boxed_init(*args, **kwargs))
    return axes_tree(shapes)


def stack_boxed(init_fn: Callable[[jax.Array], Any], key: jax.Array, num: int, axis_name: str = "layers") -> Any:
    """Initialise ``num`` independent copies with ``init_fn(key)`` and stack them on a new
    leading axis named ``axis_name`` (for scanned layers and stacked experts)."""
    keys = jax.random.split(key, num)
    stacked = jax.vmap(init_fn)(keys)
    return jax.tree.map(lambda b: Boxed(b.value, (axis_name,) + b.axes), stacked, is_leaf=is_boxed)


def split(key: jax.Array, names: Sequence[str]) -> dict[str, jax.Array]:
    """Named sub-keys: ``k = split(key, ["q", "k"]); k["q"]``."""
    keys = jax.random.split(key, len(names))
    return dict(zip(names, keys))
