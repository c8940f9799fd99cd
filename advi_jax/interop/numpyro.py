"""From a NumPyro model function to an `aj.Model`.

`from_numpyro(model_fn, *args, **kwargs)` runs the model once under `numpyro.handlers.trace`
(each latent site set to a feasible value, or sampled under `seed` when the distribution has
none) to find its latent sample sites (sample sites that are not observed), their full
shapes (plate dimensions included) and their `support` constraints, and maps each constraint
to an advi_jax support:

=======================================  ================================================
NumPyro constraint                        advi_jax support
=======================================  ================================================
real, real_vector, real_matrix            `aj.real(shape)`
positive, softplus_positive               `aj.positive(shape)` (exp / softplus bijector)
greater_than(a), nonnegative              `aj.lower_bounded(a, shape)`
less_than(b)                              `aj.upper_bounded(b, shape)`
interval(a, b), unit_interval, circular   `aj.interval(a, b, shape)`
simplex                                   `aj.simplex(K, batch_shape=...)`
ordered_vector / positive_ordered_vector  `aj.ordered(K, ...)` / `aj.positive_ordered(K, ...)`
zero_sum (event_dim=1)                    `aj.sum_to_zero(K, ...)`
corr_cholesky / corr_matrix               `aj.corr_cholesky(K, ...)` / `aj.corr_matrix(K, ...)`
lower_cholesky, scaled_unit_lower_chol.   `aj.cholesky_cov(K, ...)`
positive_definite                         `aj.cov_matrix(K, ...)`
independent(c, n)                         as `c`, over the whole array (elementwise `c`)
=======================================  ================================================

The log joint is NumPyro's own `numpyro.infer.util.log_density` at the constrained values:
the sum of `log_prob` over every sample site, observed ones included, with plate scaling
(`numpyro.handlers.scale`) and masks (`handlers.mask`, `obs_mask`) respected, plus
`numpyro.factor` terms (without NumPyro's per-site support mask where it is all true at every
point a fit evaluates: `model.unmasked_names`, `advi_jax.interop._numpyro_masks`; data outside an
observed site's support raise a `ValueError` naming it). So `model.log_joint_at(params)` equals
NumPyro's `log_density`, and where both libraries use the same bijector `model.log_density(zeta)`
equals minus NumPyro's `potential_energy` at the same unconstrained point.

Array arguments (NumPy or JAX arrays anywhere inside `args`/`kwargs`) are passed as the
model's `data` (so a jitted fit receives them as arguments rather than compile-time
constants); every other argument (ints, floats, strings, None, functions) stays static. A
model that needs a concrete array value (say `int(y.max())` as a shape) should receive that
value as a separate Python scalar argument.

Supports that depend on other parameters (or on the data), such as `beta ~ Uniform(0, 1 - alpha)`
or `x ~ TruncatedNormal(0, 1, low=mu)`, are found when the model is built (by following the
bounds back through the traced model) and are not frozen at the values seen then: for these
sites `to_constrained`, `log_density` and `to_unconstrained` run the model and map each site
through the interval / lower / upper bound bijector built from the bounds its distribution has
at the current values of its parents, with that map's log-det (as NumPyro's own potential
energy does with `biject_to(site["fn"].support)`); the model's `dependent_names` lists them and
their `support` entry (named e.g. `interval(bounds depend on other values)`) only fixes the shape
and layout.
Models without such sites take the plain `aj.Model` path.

A `TransformedDistribution` whose first transform is defined on the whole real line while its
base distribution is bounded (`AffineTransform(-1, 2)` of a Beta, without `domain=`) is declared
unbounded by NumPyro itself; `from_numpyro` keeps NumPyro's support and warns, naming the site,
since q would then put mass where the log density is -inf.

Deterministic sites (`numpyro.deterministic`) are not parameters. Compute them with
`model.deterministics(params)` for one set of constrained values or
`model.with_deterministics(draws)` for draws with a leading axis, e.g.
`model.with_deterministics(result.sample(key, 1000))`.

NumPyro's code relies on NumPy-style rank promotion, so the model runs with
`jax.numpy_rank_promotion("allow")` even where the caller set "raise".

Not supported (a `ValueError` names the site): discrete latent sites (marginalise them out,
e.g. with `numpyro.contrib.funsor` enumeration, before using ADVI), constraints with no
advi_jax support, `numpyro.param` sites, and subsampled plates (whose log joint would be
random).

Example:
  >>> import numpyro, numpyro.distributions as dist, numpy as np, advi_jax as aj
  >>> def model(y):
  ...     mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
  ...     sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
  ...     with numpyro.plate("n", y.shape[0]):
  ...         numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
  >>> m = aj.from_numpyro(model, np.array([0.5, 1.0, -0.3]))
  >>> m.names, m.dim
  (('mu', 'sigma'), 2)
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import bijectors as _bij
from advi_jax import supports as _supports
from advi_jax._types import Array, ArrayLike, is_concrete
from advi_jax._stack import user_stacklevel
from advi_jax.flatten import Model
from advi_jax.interop._numpyro_bounds import _bounds, _dependent_bijector, _dependent_sites, _dependent_support
from advi_jax.interop._numpyro_masks import unmasked_sites, without_masks
from advi_jax.supports import Support

_LOG_2PI = float(np.log(2.0 * np.pi))

__all__ = ["NumPyroModel", "from_numpyro", "numpyro_deterministics", "support_from_constraint"]


def _import_numpyro():
    from advi_jax._extras import require

    require("numpyro", purpose="from_numpyro")  # MissingExtraError naming the `numpyro` extra
    from numpyro import handlers
    from numpyro.distributions import constraints
    from numpyro.infer.util import log_density

    return handlers, constraints, log_density


_TRACER_ERRORS = tuple(getattr(jax.errors, name) for name in (
    "ConcretizationTypeError", "TracerIntegerConversionError", "TracerBoolConversionError",
    "TracerArrayConversionError") if hasattr(jax.errors, name))


def _check_traceable(model_fn: Callable, log_joint: Callable, params: dict, data: list) -> None:
    """Trace the log joint once with abstract params and data, as `fit` will under `jit`.

    A model that turns a data array or a parameter into a Python value (`int(y.max())`,
    `if x > 0:`, `np.asarray(x)`) works in the eager first trace but fails under `jit`; this
    raises a short `ValueError` with the remedy instead of JAX's long traceback at `fit`.
    """
    abstract = jax.tree_util.tree_map(_abstract, (params, data))
    try:
        jax.eval_shape(log_joint, *abstract)
    except _TRACER_ERRORS as err:
        _raise_untraceable(model_fn, err)


def _raise_untraceable(model_fn: Callable, err: Exception) -> None:
    """The short `ValueError` for a model that needs a concrete value of an array argument or parameter."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    name = getattr(model_fn, "__name__", "the model")
    raise ValueError(
        f"{name} uses the value of an array argument or a parameter as a Python value (int(...), float(...), "
        f"bool(...), an `if` on an array, or np.asarray), which cannot work when fit compiles the model with "
        f"jax.jit ({type(err).__name__}: {first}). Array arguments are data and are traced: pass such values "
        "as separate Python ints/floats (they stay static, e.g. from_numpyro(model, y, num_groups=int(g.max()) "
        "+ 1)) or compute them outside the model; use jnp.where instead of `if` on values") from None


def _abstract(value) -> jax.ShapeDtypeStruct:
    """The shape and (canonical) dtype of an array, a tracer or a `jax.ShapeDtypeStruct`."""
    if isinstance(value, jax.ShapeDtypeStruct):
        return value
    return jax.ShapeDtypeStruct(jnp.shape(value), jnp.result_type(value))


def _run_structure(model_fn: Callable, args: tuple, kwargs: dict):
    """The model's trace with each latent site at a feasible value (sampled where the distribution has none)."""
    handlers, _, _ = _import_numpyro()
    traced = handlers.seed(handlers.substitute(model_fn, substitute_fn=_feasible_value), rng_seed=0)
    with jax.numpy_rank_promotion("allow"):  # NumPyro relies on NumPy-style rank promotion
        return handlers.trace(traced).get_trace(*args, **kwargs)


def _structure(model_fn: Callable, arguments: _Arguments):
    """The model's sites (names, kinds, shapes, distributions), read from an abstract trace.

    The model runs once under `jax.make_jaxpr` with its data abstract, so none of its operations
    runs eagerly (each eager operation of a model run compiles its own small XLA program: 11 to 32
    of them, 0.25-1.1 s, for the benchmark suite's models). The trace's values are then tracers, of
    which only shapes and dtypes are read. Where a latent site's support has bounds computed inside
    the model (tracers: a TruncatedNormal's `low`, a bound that depends on another parameter), the
    model runs again eagerly, as before, so the bounds are concrete values.
    """
    found = []

    def run(data):
        args, kwargs = arguments.rebuild(data)
        found.append(_run_structure(model_fn, args, kwargs))
        return ()

    try:
        jax.make_jaxpr(run)(arguments.data)
    except _TRACER_ERRORS as err:
        _raise_untraceable(model_fn, err)
    tr = found[0]
    traced_bounds = any(isinstance(b, jax.core.Tracer)
                        for site in tr.values()
                        if site["type"] == "sample" and not site.get("is_observed")
                        for b in _bounds(site["fn"].support))
    if traced_bounds:
        args, kwargs = arguments.rebuild(arguments.data)
        tr = _run_structure(model_fn, args, kwargs)
    return tr


def _structured(name: str, site: str, constraint, event_size: int, batch_shape: tuple[int, ...]) -> Support:
    """Look up one of the structured supports (simplex, ordered, ...) by name."""
    factory = getattr(_supports, name, None)
    if factory is None:
        import advi_jax

        factory = getattr(advi_jax, name, None)
    if factory is None:
        raise ValueError(f"site {site!r} has constraint {constraint}, which needs aj.{name}, not available in this "
                         "version of advi_jax")
    return factory(event_size, batch_shape=batch_shape)


def support_from_constraint(constraint, shape: tuple[int, ...], event_dim: int = 0, site: str = "site") -> Support:
    """The advi_jax support for a NumPyro constraint on a value of shape `shape`.

    Args:
      constraint: a `numpyro.distributions.constraints.Constraint` (a distribution's `support`).
      shape: full shape of the site's value (plate/batch dims + event dims).
      event_dim: the distribution's number of event dims (used for structured supports).
      site: site name for error messages.

    Returns:
      A `Support` of shape `shape`.

    Raises:
      ValueError: a discrete constraint or one with no advi_jax counterpart, naming `site`.
    """
    _, c, _ = _import_numpyro()
    shape = tuple(int(s) for s in shape)
    # independent(...) only reinterprets batch dims as event dims; for elementwise base
    # constraints our support covers the whole array anyway.
    while isinstance(constraint, c._IndependentConstraint):
        constraint = constraint.base_constraint
    if getattr(constraint, "is_discrete", False):
        raise ValueError(f"site {site!r} is a discrete latent variable (support {constraint}); ADVI needs continuous "
                         "latent variables: marginalise it out or make it observed")
    # --- elementwise ---
    if isinstance(constraint, c._Real):
        return _supports.real(shape)
    if isinstance(constraint, c._SoftplusPositive):
        return _supports.positive(shape, transform="softplus")
    if isinstance(constraint, c._Interval):  # unit_interval, circular, open_interval included
        low, high = constraint.lower_bound, constraint.upper_bound
        if np.ndim(low) == 0 and np.ndim(high) == 0 and float(low) == 0.0 and float(high) == 1.0:
            return _supports.unit_interval(shape)
        return _supports.interval(_bound(low, shape), _bound(high, shape), shape=shape)
    if isinstance(constraint, c._GreaterThan):  # positive, nonnegative, greater_than(_eq)
        low = constraint.lower_bound
        if np.ndim(low) == 0 and float(low) == 0.0:
            return _supports.positive(shape)
        return _supports.lower_bounded(_bound(low, shape), shape=shape)
    if isinstance(constraint, c._LessThan):
        return _supports.upper_bounded(_bound(constraint.upper_bound, shape), shape=shape)
    # --- structured (event) supports ---
    structured = [
        (c._Simplex, "simplex", 1),
        (c._PositiveOrderedVector, "positive_ordered", 1),
        (c._OrderedVector, "ordered", 1),
        (c._CorrCholesky, "corr_cholesky", 2),
        (c._CorrMatrix, "corr_matrix", 2),
        (c._LowerCholesky, "cholesky_cov", 2),
        (c._PositiveDefinite, "cov_matrix", 2),
    ]
    if isinstance(constraint, c._ZeroSum) and constraint.event_dim == 1:
        structured = [(c._ZeroSum, "sum_to_zero", 1)]
    for cls, name, ndim in structured:
        if isinstance(constraint, cls):
            if len(shape) < ndim:
                raise ValueError(f"site {site!r}: constraint {constraint} needs at least {ndim} dims, got shape {shape}")
            if ndim == 2 and shape[-1] != shape[-2]:
                raise ValueError(f"site {site!r}: constraint {constraint} needs square matrices, got shape {shape}")
            return _structured(name, site, constraint, shape[-1], shape[:-ndim])
    raise ValueError(f"site {site!r} has constraint {constraint}, which advi_jax cannot map to a support yet "
                     "(supported: real, positive, interval, greater_than, less_than, simplex, ordered_vector, "
                     "positive_ordered_vector, zero_sum, corr_cholesky, corr_matrix, lower_cholesky, "
                     "positive_definite); reparameterise the site with one of these")


def _hidden_bound(fn) -> str | None:
    """The base distribution's support where NumPyro declares a transformed distribution unbounded by mistake.

    `TransformedDistribution(base, transforms)` takes its support from the last transform's
    codomain, which for a transform whose domain is left at the real line (`AffineTransform(loc,
    scale)` without `domain=`) is the real line even when `base` is bounded: a Beta shifted to
    (-1, 1) is declared on all of R, so the fit's Gaussian puts mass where log p is -inf. Returns
    the base's support in that case (the first transform's domain is the real line, the base's
    support is not), else None. A transform defined on the base's support (log of a Gamma:
    `ExpTransform().inv`, whose domain is positive) is not flagged.
    """
    transforms = getattr(fn, "transforms", None)
    base = getattr(fn, "base_dist", None)
    if not transforms or base is None:
        return None

    def unbounded(constraint) -> bool:
        while hasattr(constraint, "base_constraint"):  # independent(c, n)
            constraint = constraint.base_constraint
        return type(constraint).__name__ == "_Real"

    if unbounded(fn.support) and unbounded(transforms[0].domain) and not unbounded(base.support):
        return str(base.support)
    return None


def _bound(value, shape):
    """A constraint bound as a float scalar, or a float array broadcast to `shape`."""
    arr = np.asarray(value, dtype=float)
    return float(arr) if arr.ndim == 0 else np.broadcast_to(arr, shape).copy()


# ---------------------------------------------------------------------------------------------
# Splitting model arguments into data (arrays) and static parts
# ---------------------------------------------------------------------------------------------


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, jax.Array))


class _Arguments:
    """The static skeleton of (args, kwargs); the array leaves travel separately as data."""

    def __init__(self, args: tuple, kwargs: dict):
        leaves, self.treedef = jax.tree_util.tree_flatten((args, kwargs))
        self.is_data = tuple(_is_array(leaf) for leaf in leaves)
        self.static = tuple(None if d else leaf for leaf, d in zip(leaves, self.is_data))
        self.data = [leaf for leaf, d in zip(leaves, self.is_data) if d]

    def rebuild(self, data) -> tuple[tuple, dict]:
        it = iter(data)
        leaves = [next(it) if d else s for s, d in zip(self.static, self.is_data)]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    # Equal skeletons (the same static values; the data may differ) compare equal, so that the models of
    # one function on several datasets are one pytree structure: `stack_models` / `fit_many` take them.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Arguments):
            return NotImplemented
        try:
            return (self.treedef == other.treedef and self.is_data == other.is_data
                    and bool(self.static == other.static))
        except Exception:  # noqa: BLE001 - a static value that does not compare to a bool: equal only if the same
            return self is other

    def __hash__(self) -> int:
        return hash((self.treedef, self.is_data))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class NumPyroModel(Model):
    """An `aj.Model` built from a NumPyro model function (see `from_numpyro`).

    Attributes (in addition to `aj.Model`'s):
      model_fn: the NumPyro model function.
      deterministic_names: names of the `numpyro.deterministic` sites.
      observed_names: names of observed sample sites (including `numpyro.factor` sites).
      dependent_names: latent sites whose support bounds depend on other parameters or on the
        data; they are transformed with the bounds computed at each evaluation.
      unmasked_names: sample sites whose NumPyro support mask the log density leaves out, since
        it is all true at every point a fit evaluates (`advi_jax.interop._numpyro_masks`).
      imputed_names: sites observed through `obs_mask` (NumPyro splits each into `NAME_observed` and
        the latent `NAME_unobserved`). Their data may hold NaN where the mask hides it (NumPyro's
        masked log density and its gradient ignore those entries), so `aj.fit` does not reject such
        data up front; a NaN the mask does not hide makes the log density NaN, which the fit reports.
        The entries of `NAME_unobserved` at observed positions, flat in NumPyro, get a standard
        normal density (`_ghost_log_density`): they enter nothing else.
    """

    def __init__(self, log_joint, support, data, model_fn, arguments: _Arguments,
                 deterministic_names: tuple[str, ...], observed_names: tuple[str, ...],
                 dependent_names: tuple[str, ...] = (), unmasked_names: tuple[str, ...] = (),
                 imputed_names: tuple[str, ...] = ()):
        super().__init__(log_joint, support, data=data)
        self.model_fn = model_fn
        self._arguments = arguments
        self.deterministic_names = deterministic_names
        self.observed_names = observed_names
        self.dependent_names = tuple(dependent_names)
        self.unmasked_names = tuple(unmasked_names)
        self.imputed_names = tuple(imputed_names)

    def tree_flatten(self):
        children, aux = super().tree_flatten()
        return children, (aux, self.model_fn, self._arguments, self.deterministic_names, self.observed_names,
                          self.dependent_names, self.unmasked_names, self.imputed_names)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = super().tree_unflatten(aux[0], children)
        (obj.model_fn, obj._arguments, obj.deterministic_names, obj.observed_names,
         obj.dependent_names, obj.unmasked_names, obj.imputed_names) = aux[1:]
        return obj

    def _run(self, substitute_fn) -> dict:
        """Trace the model once with latent values given by `substitute_fn(site)`."""
        handlers, _, _ = _import_numpyro()
        args, kwargs = self.model_args()
        fn = handlers.seed(handlers.substitute(self.model_fn, substitute_fn=substitute_fn), rng_seed=0)
        with jax.numpy_rank_promotion("allow"):
            return handlers.trace(fn).get_trace(*args, **kwargs)

    def _latent(self, site: dict) -> bool:
        return site["type"] == "sample" and not site.get("is_observed") and site["name"] in self.support

    def to_constrained_and_log_det(self, zeta: ArrayLike) -> tuple[dict[str, Array], Array]:
        """(constrained params, log|det J|) for one flat (K,) vector.

        With dependent supports the map is triangular: each site is mapped, in the model's order,
        with the bounds its distribution has at its parents' constrained values, and the log-det
        is the sum of the sites' own log-dets (the Jacobian is block lower triangular).
        """
        if not self.dependent_names:
            return super().to_constrained_and_log_det(zeta)
        pieces = self.bijector.split(self._check_zeta(zeta))
        blocks = {n: (b, batch) for n, b, batch, _, _, _ in self.bijector._blocks()}
        values, log_dets = {}, []

        def substitute_fn(site):
            if not self._latent(site):
                return None
            name = site["name"]
            if name in self.dependent_names:
                b, batch = _dependent_bijector(site["fn"].support, self.support[name].shape), ()
            else:
                b, batch = blocks[name]
            value, log_det = _bij._batched(b.forward_and_log_det, len(batch))(pieces[name])
            values[name] = value
            log_dets.append(jnp.sum(log_det))
            return value

        self._run(substitute_fn)
        dtype = pieces[self.names[0]].dtype
        return {n: values[n] for n in self.names}, sum(log_dets, jnp.zeros((), dtype))

    def to_unconstrained(self, params: Mapping[str, ArrayLike]) -> Array:
        """Map a dict of constrained parameters to the flat (K,) vector (see `aj.Model.to_unconstrained`).

        Raises:
          ValueError: a missing or unknown name, a wrong shape, or (for concrete values) a value
            outside its support, for a dependent site the support at the other values in `params`.
        """
        if not self.dependent_names:
            return super().to_unconstrained(params)
        self._check_params(params)
        pieces = {}

        def substitute_fn(site):
            if not self._latent(site):
                return None
            name = site["name"]
            value = jnp.asarray(params[name])
            if name in self.dependent_names:
                support = site["fn"].support
                with jax.numpy_rank_promotion("allow"):
                    inside = support(value)
                if is_concrete(inside) and not np.all(np.asarray(inside)):
                    bad = int(np.argmin(np.asarray(inside).reshape(-1)))
                    raise ValueError(f"{name!r} is outside its support {support} at the other values in params "
                                     f"(first offending flat index {bad})")
                pieces[name] = _dependent_bijector(support, self.support[name].shape).inverse(value)
            else:
                b, batch = blocks[name]
                pieces[name] = _bij._batched(b.inverse, len(batch))(value)
            return value

        blocks = {n: (b, batch) for n, b, batch, _, _, _ in self.bijector._blocks()}
        self._run(substitute_fn)
        return jnp.concatenate([jnp.reshape(pieces[n], (-1,)) for n in self.names])

    def model_args(self) -> tuple[tuple, dict]:
        """The `(args, kwargs)` the model function is called with (arrays taken from `data`)."""
        return self._arguments.rebuild(self.data)

    def deterministics(self, params: Mapping[str, Array]) -> dict[str, Array]:
        """Values of the `numpyro.deterministic` sites at one set of constrained `params`.

        Args:
          params: dict of constrained latent values (no leading draw axis).

        Returns:
          dict mapping each deterministic site name to its value.
        """
        handlers, _, _ = _import_numpyro()
        args, kwargs = self.model_args()
        fn = handlers.substitute(handlers.seed(self.model_fn, rng_seed=0), data=dict(params))
        with jax.numpy_rank_promotion("allow"):
            tr = handlers.trace(fn).get_trace(*args, **kwargs)
        return {name: tr[name]["value"] for name in self.deterministic_names}

    def with_deterministics(self, draws: Mapping[str, Array]) -> dict[str, Array]:
        """Add the deterministic sites to posterior draws.

        Args:
          draws: dict of constrained draws, each with a leading draw axis S
            (e.g. `result.sample(key, S)`).

        Returns:
          A new dict with the draws and each deterministic site's values, shape (S, ...).
        """
        if not self.deterministic_names:
            return dict(draws)
        params = {name: draws[name] for name in self.names}
        extra = jax.vmap(self.deterministics)(params)
        return {**dict(draws), **extra}


def numpyro_deterministics(model: NumPyroModel, draws: Mapping[str, Array]) -> dict[str, Array]:
    """Function form of `model.with_deterministics(draws)` (draws with a leading axis)."""
    if not isinstance(model, NumPyroModel):
        raise TypeError(f"model must come from aj.from_numpyro, got {type(model).__name__}")
    return model.with_deterministics(draws)


def _ghost_log_density(site: dict) -> Array:
    """The standard normal log density of the entries of an `obs_mask` site's `NAME_unobserved` value that
    its mask hides (the observed positions), 0 where there are none or the mask cannot be read.

    NumPyro samples `NAME_unobserved` at full shape and masks its density to the missing positions, so
    at the observed ones it is flat: the posterior is improper there (q's sds grow without bound and
    k-hat reads the divergence). Those entries enter nothing (NumPyro's `NAME` takes the observed data
    there), so a proper density on them changes no other parameter's posterior and no value of `NAME`.
    """
    mask = getattr(site["fn"], "_mask", None)  # NumPyro's MaskedDistribution: True where the density applies
    value = site["value"]
    if mask is None or isinstance(mask, bool):
        return jnp.zeros((), jnp.result_type(value))
    event = len(getattr(site["fn"], "event_shape", ()))
    hidden = ~jnp.broadcast_to(jnp.reshape(jnp.asarray(mask), jnp.shape(mask) + (1,) * event), jnp.shape(value))
    return jnp.sum(jnp.where(hidden, -0.5 * (value * value + _LOG_2PI), 0.0))


def _make_log_joint(model_fn: Callable, arguments: _Arguments, unmasked: frozenset = frozenset(),
                    imputed: tuple = ()):
    """NumPyro's `log_density` of the model, without the support mask of the sites in `unmasked`
    (`_numpyro_masks`: sites where it is all true at every point a fit evaluates), plus a standard
    normal density on the entries of each `obs_mask` site in `imputed` that NumPyro leaves flat
    (`_ghost_log_density`)."""
    return _LogJoint(model_fn, arguments, frozenset(unmasked), tuple(imputed))


class _LogJoint:
    """`log_joint(params, data)` of a NumPyro model (`_make_log_joint`). Two of them compare equal when
    they come from the same function, static arguments and sites, so the models that `from_numpyro`
    builds from one function on different data stack (`aj.stack_models`, `aj.fit_many`) and share
    compiled programs, as the ready GLMs' cached log joints do."""

    def __init__(self, model_fn: Callable, arguments: _Arguments, unmasked: frozenset, imputed: tuple):
        self.model_fn, self.arguments, self.unmasked, self.imputed = model_fn, arguments, unmasked, imputed
        self._run = without_masks(model_fn, unmasked)
        self.__doc__ = f"NumPyro log density of {getattr(model_fn, '__name__', 'model')} at constrained params."

    def _key(self) -> tuple:
        return (self.model_fn, self.arguments, self.unmasked, self.imputed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _LogJoint) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __call__(self, params: Mapping[str, Array], data: list) -> Array:
        _, _, log_density = _import_numpyro()
        args, kwargs = self.arguments.rebuild(data)
        with jax.numpy_rank_promotion("allow"):  # NumPyro relies on NumPy-style rank promotion
            value, trace = log_density(self._run, args, kwargs, dict(params))
        for name in self.imputed:
            value = value + _ghost_log_density(trace[name + "_unobserved"])
        return jnp.asarray(value)


def _feasible_value(site: dict):
    """A value in the support of a latent site, found without sampling (compiling samplers is slow).

    Returns None (so the site is sampled instead) when the distribution cannot say.
    """
    if site["type"] != "sample" or site.get("is_observed"):
        return None
    try:
        shape = site["fn"].shape(site["kwargs"].get("sample_shape", ()))
        return site["fn"].support.feasible_like(jnp.zeros(shape))
    except Exception:  # noqa: BLE001 - any failure just falls back to sampling
        return None


def from_numpyro(model_fn: Callable, *args: Any, **kwargs: Any) -> NumPyroModel:
    """Turn a NumPyro model function into an `aj.Model`.

    Args:
      model_fn: a function using `numpyro.sample`, `numpyro.plate`, `numpyro.deterministic`,
        `numpyro.factor`, ...
      *args, **kwargs: the arguments to call it with (observed data etc.). Arrays among them
        become the model's `data`.

    Returns:
      A `NumPyroModel` whose parameters are the latent sample sites, in trace order, with
      supports read from each site's distribution.

    Raises:
      ValueError: a discrete latent site, an unsupported constraint, a `numpyro.param` site,
        a subsampled plate, or a model with no latent sites (the message names the site); or
        a model that needs the concrete value of an array argument (`int(y.max())`) and so
        cannot be compiled: pass such values as static Python arguments instead; or data outside an
        observed site's support, where no `handlers.mask` hides them (the log density would be -inf
        at every point).
      MissingExtraError: numpyro is not installed (the `numpyro` extra).

    Example:
      >>> import numpyro, numpyro.distributions as dist, advi_jax as aj
      >>> def model():
      ...     numpyro.sample("p", dist.Beta(2.0, 2.0))
      >>> aj.from_numpyro(model).support["p"].name
      'unit_interval'
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn must be a NumPyro model function, got {type(model_fn).__name__}")
    handlers, _, _ = _import_numpyro()
    arguments = _Arguments(args, kwargs)
    tr = _structure(model_fn, arguments)
    support: dict[str, Support] = {}
    deterministic, observed = [], []
    for name, site in tr.items():
        kind = site["type"]
        if kind == "param":
            raise ValueError(f"site {name!r} is a numpyro.param; from_numpyro needs every unknown to be a "
                             "numpyro.sample site with a prior")
        if kind == "plate":
            size, sub = site["args"][0], site["args"][1]
            if sub is not None and sub != size:
                raise ValueError(f"plate {name!r} subsamples {sub} of {size}; the log joint would be random. Use "
                                 "the full plate (no subsample_size) with from_numpyro")
            continue
        if kind == "deterministic":
            deterministic.append(name)
            continue
        if kind != "sample":
            continue
        if site["is_observed"]:
            observed.append(name)
            continue
        fn = site["fn"]
        value_shape = tuple(jnp.shape(site["value"]))
        if getattr(fn, "is_discrete", False) or getattr(fn.support, "is_discrete", False):
            raise ValueError(f"site {name!r} is a discrete latent variable ({type(fn).__name__}, support "
                             f"{fn.support}); ADVI needs continuous latent variables: marginalise it out or "
                             "make it observed")
        support[name] = support_from_constraint(fn.support, value_shape, len(fn.event_shape), site=name)
        hidden = _hidden_bound(fn)
        if hidden is not None:
            warnings.warn(f"site {name!r}: NumPyro declares its support as the real line, but its base distribution "
                          f"({type(fn.base_dist).__name__}) has support {hidden}: the first transform "
                          f"({type(fn.transforms[0]).__name__}) is defined on all of R, so q will put mass where the "
                          "log density is -inf. Give the transform the base's domain, e.g. AffineTransform(loc, scale, "
                          "domain=constraints.unit_interval)", UserWarning, stacklevel=user_stacklevel())
    if not support:
        raise ValueError("the NumPyro model has no latent sample sites (every site is observed); nothing to infer")
    imputed = tuple(name[:-len("_observed")] for name in observed
                    if name.endswith("_observed") and name[:-len("_observed")] + "_unobserved" in support)
    log_joint = _make_log_joint(model_fn, arguments, imputed=imputed)
    values = {name: _abstract(tr[name]["value"]) for name in support}
    _check_traceable(model_fn, log_joint, values, arguments.data)
    dependent = _dependent_sites(model_fn, arguments, values, [n for n in support if _bounds(tr[n]["fn"].support)])
    for name in dependent:
        support[name] = _dependent_support(support[name], tr[name]["fn"].support)
    unmasked = unmasked_sites(model_fn, arguments, tr, values, dependent)
    if unmasked:
        log_joint = _make_log_joint(model_fn, arguments, unmasked, imputed)
    return NumPyroModel(log_joint, support, arguments.data, model_fn, arguments, tuple(deterministic),
                        tuple(observed), dependent, tuple(name for name in tr if name in unmasked), imputed)
