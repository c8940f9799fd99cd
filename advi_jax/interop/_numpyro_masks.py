"""Which of a NumPyro model's sites can skip NumPyro's per-site support mask, for `advi_jax.interop.numpyro`.

NumPyro validates every `log_prob` by default: its `validate_sample` decorator (numpyro
0.22, `distributions/util.py`) returns `where(d._validate_sample(value), log_prob, -inf)`,
where `d._validate_sample(value)` is `d.support(value)`. Inside a fit's programs that mask is a
comparison chain and a select per site, in every copy of the log density (each call site,
batch size, `vmap`, `jvp` and transpose): 20-35% of the log density's equations on the
benchmark suite. Where the mask is all true at every point the fit evaluates, `where(True, lp,
-inf)` is `lp` (and its gradient `lp`'s), so dropping it changes no value and no gradient
(evaluated op by op, bit for bit; compiled, XLA fuses the smaller program differently, so values
and gradients agree to float32 rounding, and a fit's numbers can move by that much):

* a latent site is evaluated at its bijector's output, which for the elementwise supports
  (real, positive, greater_than, less_than, interval, unit_interval) lies strictly inside
  NumPyro's support for every finite point of R^K: advi_jax's bijectors clamp their output
  into the open support (`bijectors.Exp`'s `max(exp(x), tiny)`, `Interval`'s clip to the
  first representable points inside its bounds), and NumPyro's checks for these supports are
  `x == x and |x| != inf`, `x > a`, `x >= a`, `x < b`, `x <= b` and `a <= x <= b` (an
  overflow to +inf passes `x > a`). Other supports (simplex, ordered, Cholesky factors, ...)
  have checks with tolerances that a bijector's rounding can fail: their mask stays, as it
  does for a site whose bounds depend on other values (`dependent_names`).
* an observed site whose mask does not depend on the latent values (a data-flow walk of the
  traced mask: `Uniform(0, theta)` observed depends on `theta`, so its mask stays) is checked
  once, on the data, when the model is built. All true: the mask is dropped. Not all true,
  where the site's distribution receives the data as they are (no `handlers.mask`): the log
  density is -inf at every point, and `from_numpyro` raises an error naming the site. Under a
  mask (the masked-out entries may hold anything), the mask stays.

Only the site's own distribution's mask goes, reached through the wrappers that hand it the
site's value unchanged (`Independent`, `ExpandedDistribution`, `MaskedDistribution`, which
have no mask of their own): distributions a `log_prob` builds inside (HalfNormal's Normal,
Beta's Dirichlet, a transformed distribution's base) keep theirs. At a non-finite point of
R^K (never a point of the posterior) a site's term can read NaN where the mask read -inf.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import compile_options
from advi_jax.interop._numpyro_bounds import _depends_on_inputs

__all__ = ["without_masks", "unmasked_sites"]


def _numpyro():
    from numpyro import handlers
    from numpyro.distributions import constraints, distribution
    from numpyro.primitives import Messenger

    return handlers, constraints, distribution, Messenger


def _chain(fn) -> list | None:
    """[fn, ..., leaf]: the wrappers that pass the site's value unchanged down to the distribution whose
    mask applies (`Independent`, `ExpandedDistribution`, `MaskedDistribution`), then that distribution;
    None where `fn` is not a NumPyro distribution."""
    _, _, d, _ = _numpyro()
    wrappers = (d.Independent, d.ExpandedDistribution, d.MaskedDistribution)
    if not isinstance(fn, d.Distribution):
        return None
    chain = [fn]
    while type(chain[-1]) in wrappers:
        chain.append(chain[-1].base_dist)
        if not isinstance(chain[-1], d.Distribution):
            return None
    return chain


def _unmasked(fn):
    """A copy of the site's distribution chain with `_validate_args` off on each link (and so no
    support mask on the leaf's `log_prob`); the leaf's own inner distributions are left as they are."""
    _, _, d, _ = _numpyro()
    new = copy.copy(fn)
    new._validate_args = False
    if type(fn) in (d.Independent, d.ExpandedDistribution, d.MaskedDistribution):
        new.base_dist = _unmasked(fn.base_dist)
    return new


def without_masks(model_fn: Callable, names: frozenset) -> Callable:
    """`model_fn` with NumPyro's support mask off for the sample sites in `names` (see the module doc)."""
    if not names:
        return model_fn
    _, _, _, messenger = _numpyro()

    class _Unmask(messenger):
        def process_message(self, msg):
            if msg["type"] == "sample" and msg["name"] in names and _chain(msg["fn"]) is not None:
                msg["fn"] = _unmasked(msg["fn"])

    return _Unmask(model_fn)


def _elementwise_inside(constraint) -> bool:
    """Whether advi_jax's bijector for `constraint` (`numpyro.support_from_constraint`) puts every finite
    point strictly inside NumPyro's check of it: real, greater_than / less_than (and their `_eq` forms,
    positive, nonnegative, softplus_positive), interval (unit_interval, open_interval, circular), with
    concrete finite bounds a finite width apart."""
    _, c, _, _ = _numpyro()
    while isinstance(constraint, c._IndependentConstraint):
        constraint = constraint.base_constraint
    if isinstance(constraint, c._Real):
        return True
    if isinstance(constraint, c._GreaterThan):
        bounds = (constraint.lower_bound,)
    elif isinstance(constraint, c._LessThan):
        bounds = (constraint.upper_bound,)
    elif isinstance(constraint, c._Interval):
        bounds = (constraint.lower_bound, constraint.upper_bound)
    else:
        return False
    if any(isinstance(b, jax.core.Tracer) for b in bounds):
        return False
    values = [np.asarray(b, np.float32) for b in bounds]
    if not all(np.all(np.isfinite(v)) for v in values):
        return False
    return len(values) == 1 or bool(np.all(np.isfinite(values[1] - values[0])))


def _latent_ok(fn) -> bool:
    _, _, d, _ = _numpyro()
    chain = _chain(fn)
    if chain is None:
        return False
    leaf = chain[-1]
    # The mask is `leaf._validate_sample(value)`; NumPyro's own is `leaf.support(value)`.
    if type(leaf)._validate_sample is not d.Distribution._validate_sample:
        return False
    return _elementwise_inside(leaf.support)


def unmasked_sites(model_fn: Callable, arguments: Any, trace: dict, latent: dict, dependent: tuple) -> frozenset:
    """The sample sites whose NumPyro support mask is all true wherever a fit evaluates the model.

    Args:
      model_fn, arguments: the model and its `_Arguments` (data and static parts).
      trace: the model's structure trace (`numpyro._structure`).
      latent: the latent sites' values (abstract: `jax.ShapeDtypeStruct`s), by name.
      dependent: the latent sites whose bounds depend on other values (their masks stay).

    Raises:
      ValueError: an observed site's data lie outside its distribution's support (a check that does
        not depend on the latent values) where the distribution receives them unmasked: the log
        density would be -inf at every point.
    """
    names = {name for name, site in trace.items()
             if name in latent and name not in dependent and _latent_ok(site["fn"])}
    observed = [name for name, site in trace.items()
                if site["type"] == "sample" and site.get("is_observed") and _chain(site["fn"]) is not None]
    if observed:
        names |= _observed_in_support(model_fn, arguments, trace, latent, observed)
    return frozenset(names)


def _observed_in_support(model_fn: Callable, arguments: Any, trace: dict, latent: dict, observed: list[str]) -> set:
    """The observed sites whose mask (the leaf's `_validate_sample` of the site's value) does not depend
    on the latent values and is all true on the data; raises for one that is false unmasked.

    The model runs once more, abstractly in the latent values but with the data as they are: where a
    site's value is a data array and its support's bounds are constants, NumPyro's check runs in NumPy
    (its constraints do for NumPy input), so no XLA program is compiled. A check that JAX traced instead
    (bounds computed from the data, as a Binomial's `total_count`) is evaluated, when it does not
    depend on the latent values, by one small compiled program. Anything else keeps the mask.
    """
    handlers, _, d, _ = _numpyro()
    on_host: dict = {}
    traced: list[str] = []

    def checks(params, data, record):
        args, kwargs = arguments.rebuild(data)
        fn = handlers.seed(handlers.substitute(model_fn, data=params), rng_seed=0)
        with jax.numpy_rank_promotion("allow"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NumPyro warns of out-of-support values: answered below
            tr = handlers.trace(fn).get_trace(*args, **kwargs)
            out = []
            for name in observed:
                inside = _chain(tr[name]["fn"])[-1]._validate_sample(tr[name]["value"])
                if record and not isinstance(inside, jax.core.Tracer):
                    on_host[name] = np.reshape(np.asarray(inside), (-1,))
                    continue
                if record:
                    traced.append(name)
                out.append(jnp.reshape(inside, (-1,)))
        return out

    try:
        closed = jax.make_jaxpr(lambda params: checks(params, arguments.data, True))(latent)
    except Exception:  # noqa: BLE001 - e.g. NumPyro rejecting a concrete argument: keep every mask
        return set()
    found = dict(on_host)
    free = [name for name, depends in zip(traced, _depends_on_inputs(closed.jaxpr)) if not depends]
    if free:
        zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), latent)
        # One small program (the checks on the data; the model's other values are dead code), fast options.
        values = compile_options.jit(lambda p, data: checks(p, data, False), model_arg=None)(zeros, arguments.data)
        found.update((name, np.asarray(v)) for name, v in zip(observed, values) if name in free)
    ok = set()
    for name, inside in found.items():
        chain = _chain(trace[name]["fn"])
        if inside.all():
            ok.add(name)
        elif not any(isinstance(link, d.MaskedDistribution) for link in chain):
            raise ValueError(f"observed site {name!r} has data outside the support {chain[-1].support} of its "
                             f"distribution ({type(chain[-1]).__name__}; first at flat index "
                             f"{int(np.argmin(inside))}), so the log density is -inf at every parameter value; "
                             "check the data (or mask those entries with numpyro.handlers.mask)")
    return ok
