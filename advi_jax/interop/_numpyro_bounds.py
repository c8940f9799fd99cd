"""Supports whose bounds depend on other parameters or on the data, for `advi_jax.interop.numpyro`.

A site such as `beta ~ Uniform(0, 1 - alpha)` or `x ~ TruncatedNormal(0, 1, low=mu)` has bounds
that move with other values. `dependent_sites` finds them (a data-flow walk of the traced bounds
back to the model's inputs); `dependent_bijector` is the elementwise bijector onto such a support
with its bounds at the current values, and `dependent_support` keeps the site's shape and layout
under a name that says its bounds move.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from advi_jax import bijectors as _bij
from advi_jax.supports import Support


def _import_numpyro():
    from advi_jax._extras import require

    require("numpyro", purpose="from_numpyro")
    from numpyro import handlers
    from numpyro.distributions import constraints

    return handlers, constraints, None


def _base_constraint(constraint):
    _, c, _ = _import_numpyro()
    while isinstance(constraint, c._IndependentConstraint):
        constraint = constraint.base_constraint
    return constraint


def _bounds(constraint) -> tuple:
    """The bounds of an interval / greater_than / less_than constraint (empty for any other)."""
    _, c, _ = _import_numpyro()
    constraint = _base_constraint(constraint)
    if isinstance(constraint, c._SoftplusPositive):
        return ()
    if isinstance(constraint, c._Interval):
        return (constraint.lower_bound, constraint.upper_bound)
    if isinstance(constraint, c._GreaterThan):
        return (constraint.lower_bound,)
    if isinstance(constraint, c._LessThan):
        return (constraint.upper_bound,)
    return ()


def _dependent_bijector(constraint, shape: tuple[int, ...]) -> _bij.Bijector:
    """The elementwise bijector onto `constraint` with its current (possibly traced) bounds."""
    _, c, _ = _import_numpyro()
    constraint = _base_constraint(constraint)
    bound = lambda b: jnp.broadcast_to(jnp.asarray(b), shape)  # noqa: E731
    if isinstance(constraint, c._Interval):
        return _bij.Interval(bound(constraint.lower_bound), bound(constraint.upper_bound))
    if isinstance(constraint, c._GreaterThan):
        return _bij.LowerBound(bound(constraint.lower_bound))
    return _bij.UpperBound(bound(constraint.upper_bound))


def _literal_type():
    try:
        from jax.extend.core import Literal
    except ImportError:  # older jax
        from jax.core import Literal
    return Literal


def _depends_on_inputs(jaxpr) -> list[bool]:
    """For each output of a jaxpr, whether it depends on any input (a conservative data-flow walk)."""
    literal = _literal_type()
    reached = set(jaxpr.invars)

    def hit(v):
        return not isinstance(v, literal) and v in reached

    for eqn in jaxpr.eqns:
        if any(hit(v) for v in eqn.invars):
            reached.update(eqn.outvars)
    return [hit(v) for v in jaxpr.outvars]


def _dependent_sites(model_fn: Callable, arguments: Any, params: dict, candidates: list[str]) -> tuple:
    """The candidate sites whose support bounds depend on the latent values or on the data arrays."""
    if not candidates:
        return ()
    handlers, _, _ = _import_numpyro()

    def bounds(params, data):
        args, kwargs = arguments.rebuild(data)
        fn = handlers.seed(handlers.substitute(model_fn, data=params), rng_seed=0)
        with jax.numpy_rank_promotion("allow"):
            tr = handlers.trace(fn).get_trace(*args, **kwargs)
        return [[jnp.asarray(b) for b in _bounds(tr[name]["fn"].support)] for name in candidates]

    closed = jax.make_jaxpr(bounds)(params, arguments.data)
    flags = iter(_depends_on_inputs(closed.jaxpr))
    shapes = jax.eval_shape(bounds, params, arguments.data)
    return tuple(name for name, site_bounds in zip(candidates, shapes)
                 if any([next(flags) for _ in site_bounds]))


def _dependent_support(support: Support, constraint) -> Support:
    """`support`'s shape and layout under a name saying its bounds move; membership is checked by the model."""
    _, c, _ = _import_numpyro()
    constraint = _base_constraint(constraint)
    kind = ("interval" if isinstance(constraint, c._Interval) else
            "lower_bounded" if isinstance(constraint, c._GreaterThan) else "upper_bounded")
    return Support(f"{kind}(bounds depend on other values)", support.event_shape, support.batch_shape,
                   support.bijector, lambda v: jnp.all(jnp.isfinite(v)))
