"""Trace a function once into a jaxpr and evaluate a cleaned copy of it on the caller's trace.

`call(fn, *args)` returns `fn(*args)`, computed by tracing `fn` to a jaxpr (`jax.make_jaxpr`),
dropping its dead equations (`dce_jaxpr`: a NumPyro model's unused validity checks, for one) and
evaluating the rest equation by equation, with each nested plain `jax.jit` call (JAX's own
`jnp.where`, `jnp.clip`, ... are jitted functions) evaluated in place rather than bound as a
call. The caller's program then holds the same operations, in the same order, so XLA compiles
the same computation (results are bit-identical), but fewer equations and no nested calls: every
later transformation (vmap, jvp, transpose) and the lowering to StableHLO have less to walk.

Array arguments stay arguments: `args`' leaves become the jaxpr's inputs and are fed back in;
only what `fn` itself closes over is a constant, as it would be without the replay.

The replay uses JAX internals (`jax._src`); where they are missing `call` is plain `fn(*args)`.
`disabled()` turns it off (tests compare the two paths).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from advi_jax import _replay
  >>> f = lambda x: jnp.sum(jnp.where(x > 0, x, 0.0))
  >>> float(jax.jit(lambda x: _replay.call(f, x))(jnp.array([-1.0, 2.0])))
  2.0
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import jax

try:
    from jax._src import core as _core
    from jax._src import source_info_util as _source_info
    from jax._src.interpreters import partial_eval as _pe
    from jax._src.named_sharding import UnspecifiedValue as _Unspecified

    _AVAILABLE = True
except ImportError:  # another jax layout: no replay
    _AVAILABLE = False

__all__ = ["call", "disabled", "enabled"]

_ON = [True]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, `call(fn, *args)` is plain `fn(*args)` (for comparisons; not thread-local)."""
    before = _ON[0]
    _ON[0] = False
    try:
        yield
    finally:
        _ON[0] = before


def enabled() -> bool:
    """Whether `call` replays a cleaned jaxpr (JAX's internals are there and `disabled` is not active)."""
    return _AVAILABLE and _ON[0]


def call(fn: Callable, *args: Any) -> Any:
    """`fn(*args)`, traced once to a jaxpr and replayed without dead code or nested jit calls.

    Args:
      fn: a JAX-traceable function of pytrees of arrays (static values belong in pytree auxiliary
        data or in `fn`'s closure).
      *args: its arguments; their leaves are the jaxpr's inputs.

    Returns:
      `fn(*args)` (the same pytree structure), bit-identical to the plain call.
    """
    if not enabled():
        return fn(*args)
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    jaxpr = _pe.convert_constvars_jaxpr(closed.jaxpr)
    jaxpr, used = _pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars), instantiate=True)
    inputs = [*closed.consts, *jax.tree_util.tree_leaves(args)]
    outs = _evaluate(jaxpr, [x for x, keep in zip(inputs, used) if keep])
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)


def _plain_jit(eqn) -> bool:
    """A nested `jax.jit` call with nothing to say but its jaxpr (no shardings, layouts or options)."""
    if eqn.primitive.name not in ("jit", "pjit"):
        return False
    p = eqn.params
    return (all(isinstance(s, _Unspecified) for s in (*p["in_shardings"], *p["out_shardings"]))
            and all(layout is None for layout in (*p["in_layouts"], *p["out_layouts"]))
            and not p.get("compiler_options_kvs"))


def _evaluate(jaxpr, args: list) -> list:
    """`jax.core.eval_jaxpr` (constants first among `args`) that evaluates nested plain jit calls in place."""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, _core.Literal) else env[v]

    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        if _plain_jit(eqn):
            inner = eqn.params["jaxpr"]
            outs = _evaluate(_pe.convert_constvars_jaxpr(inner.jaxpr), [*inner.consts, *values])
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            name_stack = _source_info.current_name_stack() + eqn.source_info.name_stack
            with _source_info.user_context(eqn.source_info.traceback, name_stack=name_stack), eqn.ctx.manager:
                outs = eqn.primitive.bind(*values, **params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]
