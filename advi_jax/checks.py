"""Every argument check of the fit entry points, written once.

`fit`, `fit_many` and `fit_minibatch` (and the lower-level builders) call these before anything
is compiled, so a bad argument is a `TypeError`/`ValueError` naming it, with the expected and
the actual value, never a traceback from inside a trace.

Example:
  >>> from advi_jax import checks
  >>> checks.check_number(0.5, "tol_rel_obj")
  0.5
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import compile_options
from advi_jax._types import Array, check_positive_int
from advi_jax.diagnostics import check_key
from advi_jax.estimators import ESTIMATORS, min_num_samples
from advi_jax.optim import DEFAULT_LEARNING_RATE, default_optimizer

if TYPE_CHECKING:  # optax is imported where it is used (`import advi_jax` does not load it)
    import optax

__all__ = [
    "check_key", "check_positive_int", "check_number", "check_flag", "check_estimator", "check_loop_args",
    "resolve_learning_rate", "resolve_optimizer", "initial_loc", "check_log_joint_shape", "check_initial_point",
    "NonFiniteStart",
    "check_data", "estimator_name", "INIT_OPTIONS", "CommonArgs", "common_args", "check_callback",
]

INIT_OPTIONS = "None, 'auto', 'random', 'laplace', 'pathfinder', a dict of constrained values, or a (K,) vector in R^K"


def check_number(value: Any, name: str, *, positive: bool = True) -> float:
    """`value` as a finite float (positive unless `positive=False`), or an error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a {'positive ' if positive else ''}finite number, got "
                        f"{type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be a {'positive ' if positive else ''}finite number, got {value!r}")
    return value


def check_flag(value: Any, name: str) -> bool:
    """`value` as a bool, or a TypeError naming `name` (no truthy strings or ints)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_estimator(estimator: Any, num_samples: Any) -> tuple[Any, int]:
    """Validate an estimator (a name in `ESTIMATORS` or a callable) and `num_samples` together.

    Returns:
      (estimator, num_samples) with `num_samples` an int at least the estimator's minimum.
    """
    if isinstance(estimator, str) and estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}")
    if not isinstance(estimator, str) and not callable(estimator):
        raise TypeError(f"estimator must be one of {sorted(ESTIMATORS)} or a callable, got {type(estimator).__name__}")
    num_samples = check_positive_int(num_samples, "num_samples")
    if isinstance(estimator, str) and num_samples < min_num_samples(estimator):
        raise ValueError(f"estimator {estimator!r} needs num_samples >= {min_num_samples(estimator)}, "
                         f"got {num_samples}")
    return estimator, num_samples


def estimator_name(estimator: Any) -> str:
    """The name shown in results: the registry name, or the callable's `__name__`."""
    return estimator if isinstance(estimator, str) else getattr(estimator, "__name__", "custom")


def check_loop_args(eval_every: Any, window: Any, chunk_size: Any,
                    max_consecutive_nonfinite: Any) -> tuple[int, int, int, int]:
    """Validate the driver's integer settings; returns them as ints in the same order."""
    return (check_positive_int(eval_every, "eval_every"), check_positive_int(window, "window"),
            check_positive_int(chunk_size, "chunk_size"),
            check_positive_int(max_consecutive_nonfinite, "max_consecutive_nonfinite"))


def resolve_learning_rate(learning_rate: Any, optimizer: Any, *, allow_adapt: bool = False) -> tuple[float | None, bool]:
    """Check `learning_rate` against `optimizer`; returns (learning rate or None, adapt?).

    Raises:
      ValueError: both given, a non-positive rate, or "adapt" where it is not supported.
      TypeError: an optimizer that is not an optax GradientTransformation.
    """
    adapt = isinstance(learning_rate, str) and learning_rate == "adapt"
    if isinstance(learning_rate, str) and not (adapt and allow_adapt):
        expected = "a positive number, None or 'adapt'" if allow_adapt else "a positive number or None"
        raise ValueError(f"learning_rate must be {expected}, got {learning_rate!r}")
    if optimizer is not None:
        if adapt:
            raise ValueError("learning_rate='adapt' tunes Adam's step size; it cannot be combined with optimizer=")
        if learning_rate is not None:
            raise ValueError("pass either optimizer or learning_rate, not both")
        import optax

        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")
        return None, False
    if learning_rate is None or adapt:
        return DEFAULT_LEARNING_RATE, adapt
    return check_number(learning_rate, "learning_rate"), False


def resolve_optimizer(optimizer: Any, learning_rate: Any, num_steps: int | None) -> optax.GradientTransformation:
    """`optimizer` if given (checked), else `default_optimizer(learning_rate, num_steps)`."""
    lr, _ = resolve_learning_rate(learning_rate, optimizer)
    return optimizer if optimizer is not None else default_optimizer(float(lr), num_steps)


def initial_loc(model: Any, init: Any, dtype) -> Array:
    """The (K,) starting location in R^K from `init`: None (zeros), a dict of constrained values,
    or a (K,) vector; raises naming `init` otherwise."""
    if init is None:
        return jax.device_put(np.zeros((model.dim,), dtype))  # a transfer: jnp.zeros / jnp.asarray compile one
    if isinstance(init, Mapping):
        try:
            return jnp.asarray(model.to_unconstrained(init), dtype)
        except (TypeError, ValueError) as err:
            raise type(err)(f"init: {err}") from None
    if isinstance(init, (str, bytes)) or not isinstance(init, (jax.Array, np.ndarray, list, tuple)):
        raise TypeError(f"init must be {INIT_OPTIONS}; got {init!r}")
    loc = np.asarray(init)
    if not (np.issubdtype(loc.dtype, np.floating) or np.issubdtype(loc.dtype, np.integer)) or loc.dtype == bool:
        raise TypeError(f"init must be a real vector, got dtype {loc.dtype}")
    if loc.shape != (model.dim,):
        raise ValueError(f"init must be a dict of constrained values or a ({model.dim},) unconstrained vector, "
                         f"got shape {loc.shape}")
    if not np.all(np.isfinite(loc)):
        raise ValueError(f"init has non-finite entries: {loc.tolist()}")
    return jnp.asarray(loc, dtype)


@jax.jit
def log_density_at(model: Any, zeta: Array) -> Array:
    """`model.log_density(zeta)`, compiled once per model structure (also usable inside jit / vmap)."""
    return model.log_density(zeta)


_log_density_top = compile_options.jit(log_density_at.__wrapped__)
"""`log_density_at` compiled with `compile_options`' choice, for calls at the top level only (XLA
options cannot be given to a jit nested in another): the initial-point check."""


@jax.jit
def _log_density_for_shape(model: Any, zeta: Array) -> Array:
    """The log density traced apart from `model.log_density`'s own cached trace (see
    `flatten.Model.log_density_uncached`), once per model structure."""
    return getattr(model, "log_density_uncached", model.log_density)(zeta)


def _ready_glm(model: Any) -> bool:
    """Whether `model` is a ready GLM (`advi_jax.models.regression.RegressionModel`): its log density
    is a float scalar by construction, and its data were checked by its constructor."""
    from advi_jax.models.regression import RegressionModel  # models import this module; avoid a cycle

    return isinstance(model, RegressionModel)


def known_finite_at(model: Any, loc: Any) -> bool:
    """Whether the log density of `model` is known finite at `loc` without evaluating it (no program).

    True for a ready GLM (`_ready_glm`) at loc = 0 (intercept and coefficients zero, every
    positive parameter at its bijector's value at zero) whose data are finite (`check_data`, run
    here; free after `aj.fit`'s own, which it remembers) and whose responses lie in the support
    (counts >= 0; the constructors check it, read again here on the host in case the data were
    replaced). Every term is then finite: the Normal priors; logistic and probit, y eta -
    softplus(eta) and log Phi(+-eta); Poisson and the negative binomial, y eta - exp(eta) -
    lgamma(y + 1) with eta = offset, |offset| below half the float type's log-overflow and a host
    bound on the sum of the terms' magnitudes far below its largest number. Anything else (another
    model, a nonzero start, data on another device, offsets that large): False, and the caller
    evaluates the log density.

    Args:
      model: any model.
      loc: (K,) point in R^K.

    Returns:
      True when the log density is finite at `loc` by construction.

    Raises:
      ValueError: a ready GLM's data have NaN or inf entries (`check_data`, naming the entry).

    Example:
      >>> import numpy as np
      >>> from advi_jax.models import logistic_regression
      >>> model = logistic_regression(np.eye(3), np.array([0.0, 1.0, 1.0]))
      >>> known_finite_at(model, np.zeros(model.dim)), known_finite_at(model, np.ones(model.dim))
      (True, False)
    """
    if not _ready_glm(model):
        return False
    loc = np.asarray(loc)
    if loc.shape != (model.dim,) or np.any(loc != 0):
        return False
    data = model.data
    check_data(data)  # raises on NaN / inf (free where `aj.fit` has just checked them: remembered)
    if model.info.kind in ("poisson", "negbin"):
        y, offset = data["y"], data.get("offset")
        if not _in_host_memory(y) or (offset is not None and not _in_host_memory(offset)):
            return False
        check_count_table(data)
        remembered = _COUNTS_OK.get((id(y), id(offset)))
        if remembered is not None and remembered[0]() is y and (offset is None or remembered[1]() is offset):
            return True  # these (immutable) arrays passed before: nothing to read again
        if not _counts_ok(y, offset, data):
            return False
        if isinstance(y, jax.Array) and (offset is None or isinstance(offset, jax.Array)):
            key = (id(y), id(offset))
            drop = lambda _, key=key: _COUNTS_OK.pop(key, None)  # noqa: E731
            _COUNTS_OK[key] = (weakref.ref(y, drop), None if offset is None else weakref.ref(offset, drop))
    return True


def check_count_table(data: Any) -> None:
    """Raise a clear ValueError when a negative binomial's distinct-count table ("y_distinct",
    "y_count": `advi_jax.models.glm_more.distinct_counts`) does not match its "y": y was changed
    after the model was built. Read on the host, before anything compiles (the fits' own check,
    `glm_more.distinct_table`, would only make the ELBO NaN). The same three sums as that check,
    in exact integers: the rows, sum y and sum y^2."""
    from advi_jax.models.glm_more import DISTINCT_KEYS  # models import this module; avoid a cycle

    if not isinstance(data, Mapping) or not all(name in data for name in DISTINCT_KEYS):
        return
    if not all(_in_host_memory(data[name]) for name in ("y", *DISTINCT_KEYS)):
        return
    y = np.rint(np.asarray(data["y"], np.float64)).astype(np.int64)
    values = np.rint(np.asarray(data[DISTINCT_KEYS[0]], np.float64)).astype(np.int64)
    counts = np.asarray(data[DISTINCT_KEYS[1]]).astype(np.int64)
    if values.shape[-1] >= y.shape[-1]:  # not used by the fits (`distinct_table`)
        return
    table = (int(counts.sum()), int((counts * values).sum()), int((counts * values * values).sum()))
    rows = (y.shape[0], int(y.sum()), int((y * y).sum()))
    if table != rows:
        raise ValueError(
            f"model.data['y'] does not match the model's distinct-count table {DISTINCT_KEYS} (rows, sum y, "
            f"sum y^2: {rows} against {table}): y was changed after the model was built; build the model "
            "again from the new counts (e.g. `aj.models.negbin_regression(x, y)`)")


_COUNTS_OK: dict = {}  # (id(y), id(offset)) -> weakrefs of count data `known_finite_at` found in bounds


def _counts_ok(y: Any, offset: Any, data: Any) -> bool:
    """Counts >= 0, |offset| below half the log-overflow, and the sum of the log-likelihood terms'
    magnitudes at eta = offset far below the float type's largest number (read on the host)."""
    y = np.asarray(y, np.float64)
    eta = np.zeros(1) if offset is None else np.asarray(offset, np.float64)
    dtype = _y_dtype(data)
    if not bool(np.all(y >= 0)) or not bool(np.all(np.abs(eta) < 0.5 * np.log(np.finfo(dtype).max))):
        return False
    # A bound on the sum of the terms' magnitudes (lgamma(y + 1) <= y log(y + 1)), so the sum cannot overflow.
    total = float(np.sum(y * (np.abs(eta) + np.log1p(y) + 1.0)) + np.sum(np.exp(eta)))
    return total < 1e-3 * float(np.finfo(dtype).max)


def _y_dtype(data: Any) -> Any:
    """The float type a ready GLM's log density is computed in (its design's)."""
    return np.dtype(data["x"].dtype)


def check_log_joint_shape(model: Any, dtype) -> None:
    """Raise if the log density is not a float scalar (by shape only: nothing runs; nothing is traced
    for a ready GLM, whose log density is one by construction)."""
    if _ready_glm(model):
        return
    try:
        out = jax.eval_shape(_log_density_for_shape, model, jax.ShapeDtypeStruct((model.dim,), dtype))
    except KeyError as err:  # most often a parameter the log joint reads that support= does not declare
        names = list(getattr(model, "names", ()))
        missing = err.args[0] if err.args else None
        if missing in names:
            raise
        raise ValueError(f"model.log_joint raised KeyError({missing!r}) when called with the model's parameters "
                         f"{names}: every parameter it reads from params must be declared in support= "
                         f"(e.g. support={{..., {missing!r}: aj.real()}}), and data passed through data=") from err
    if out.shape != ():
        raise ValueError(f"model.log_joint must return a scalar log density, got shape {out.shape} "
                         "(sum the per-observation terms)")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"model.log_joint must return a float scalar, got dtype {out.dtype}")


class NonFiniteStart(ValueError):
    """`check_initial_point`: the log density is not finite at the initial point (a ValueError; a
    start chosen by the library, `init="auto"`, then tries jittered points instead)."""


def check_initial_point(model: Any, loc: Array, what: str = "the log density", value: Any = None) -> None:
    """Raise a clear error (`NonFiniteStart`, a ValueError) if `model.log_density` is not a finite
    scalar at `loc` (`value`: the log density there when the caller has already evaluated it)."""
    if value is None:
        if known_finite_at(model, loc):  # a ready GLM at zero: nothing to compile (`known_finite_at`)
            return
        check_log_joint_shape(model, loc.dtype)
        value = _log_density_top(model, loc)
    if not np.isfinite(float(value)):
        params = model.to_constrained(loc)
        raise NonFiniteStart(f"{what} is {float(value)} at the initial point {shown_point(params)}"
                             f"{masked_data_hint(model)}; the log joint must be finite there (pass init= a point "
                             "where it is, or check the model)")


def shown_point(params: Any) -> dict:
    """A point's constrained values for a message: each as a list, or its first 6 entries and its
    shape when it has more than 10."""
    def short(a):
        a = np.round(np.asarray(a), 4)
        return a.tolist() if a.size <= 10 else f"{a.reshape(-1)[:6].tolist()}... (shape {a.shape})"
    return {k: short(v) for k, v in params.items()}


def masked_data_hint(model: Any) -> str:
    """For a model whose data `aj.fit` does not reject up front (a NumPyro model with `obs_mask` sites,
    `NumPyroModel.imputed_names`): where its data hold NaN or inf, as "; model.data... has n non-finite
    entries ..." ("" otherwise)."""
    if not getattr(model, "imputed_names", ()):
        return ""
    for path, leaf in jax.tree_util.tree_leaves_with_path(model.data):
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            return (f"; model.data{jax.tree_util.keystr(path)} has {int(np.sum(~np.isfinite(arr)))} non-finite "
                    "entries, and NumPyro's obs_mask ignores only those where the mask is False")
    return ""


@compile_options.jit(model_arg="leaves")
def _all_finite(leaves: list) -> list:
    return [jnp.all(jnp.isfinite(x)) for x in leaves]


def _in_host_memory(leaf: Any) -> bool:
    """Whether NumPy can read `leaf` where it lies: a NumPy array, or a jax.Array on one CPU device."""
    if not isinstance(leaf, jax.Array):
        return True
    devices = leaf.devices()
    return len(devices) == 1 and next(iter(devices)).platform == "cpu"


def _host_all_finite(leaf: Any, chunk: int = 1 << 20) -> bool:
    """`np.isfinite(leaf).all()` read in chunks (no array of the leaf's size is made; a CPU
    jax.Array is read in place)."""
    flat = np.asarray(leaf).reshape(-1)
    return all(bool(np.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.size, chunk))


_FINITE: dict[int, Any] = {}  # id -> weakref of the jax.Arrays `check_data` found finite


def _known_finite(leaf: Any) -> bool:
    ref = _FINITE.get(id(leaf))
    return ref is not None and ref() is leaf


def _remember_finite(leaf: Any) -> None:
    key = id(leaf)
    _FINITE[key] = weakref.ref(leaf, lambda _, key=key: _FINITE.pop(key, None))


def check_data(data: Any, name: str = "model.data") -> None:
    """Raise if a float leaf of `data` has NaN or inf entries.

    NumPy arrays and arrays on a CPU device are read on the host (a CPU device's memory is the
    host's: no copy, and no program to compile, which on a first call cost 0.3 s of CPU at
    N = 1e6 against 0.04 s to read 1e8 numbers); arrays on other devices are checked there, in
    one compiled call for all of them, one fused read of each. A jax.Array found finite is not
    read again (jax arrays are immutable; a later fit of the same model checks nothing)."""
    found = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(data)
             if isinstance(leaf, (jax.Array, np.ndarray)) and not isinstance(leaf, jax.core.Tracer)
             and np.issubdtype(leaf.dtype, np.inexact) and not _known_finite(leaf)]
    host = [_in_host_memory(leaf) for _, leaf in found]
    on_device = [leaf for (_, leaf), here in zip(found, host) if not here]
    device_ok = iter(jax.device_get(_all_finite(on_device)) if on_device else ())
    checked = [_host_all_finite(leaf) if here else bool(next(device_ok)) for (_, leaf), here in zip(found, host)]
    for (path, leaf), ok in zip(found, checked):
        if bool(ok) and isinstance(leaf, jax.Array):
            _remember_finite(leaf)
        if not bool(ok):
            arr = np.asarray(leaf)
            where = jax.tree_util.keystr(path)
            raise ValueError(f"{name}{where} has non-finite entries "
                             f"({int(np.sum(~np.isfinite(arr)))} of {arr.size}); remove or impute them")


class CommonArgs(NamedTuple):
    """The arguments every fit entry point shares, checked (see `common_args`)."""

    key: Array
    family: Any
    estimator: Any
    num_samples: int
    tol_rel_obj: float | None
    callback: Callable | None


def common_args(key: Any, family: Any, estimator: Any, num_samples: Any, tol_rel_obj: Any, callback: Any,
                **flags: Any) -> CommonArgs:
    """Check what `fit`, `fit_many` and `fit_minibatch` share: the key, the family, the estimator
    with its draws, `tol_rel_obj`, the `callback` and the boolean `flags` (by name)."""
    from advi_jax.families import get_family

    key = check_key(key)
    family = get_family(family)
    estimator, num_samples = check_estimator(estimator, num_samples)
    if tol_rel_obj is not None:
        tol_rel_obj = check_number(tol_rel_obj, "tol_rel_obj")
    for name, flag in flags.items():
        check_flag(flag, name)
    return CommonArgs(key, family, estimator, num_samples, tol_rel_obj, check_callback(callback))


def check_callback(callback: Any) -> Callable | None:
    """None or a callable, else a TypeError naming `callback`."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be None or a function of a run.Progress, got {type(callback).__name__}")
    return callback


class SecondDerivativeError(NotImplementedError):
    """A method differentiated the log density twice and JAX has no rule for one of its functions."""


def second_derivatives(call: Callable[[dict], str]) -> Callable:
    """Decorate a public fitting function: JAX's "Differentiation rule for 'x' not implemented", raised
    where the function differentiates the log density twice (a Hessian, Hessian-vector products) and a
    function in the model has no second derivative in JAX (e.g. the regularised incomplete gamma of a
    censored Gamma likelihood, in its shape), becomes a `SecondDerivativeError` that says which
    methods need second derivatives and which need gradients only. `call(kwargs)` names the call."""

    def decorate(fun: Callable) -> Callable:
        import functools

        @functools.wraps(fun)
        def wrapper(*args, **kwargs):
            try:
                return fun(*args, **kwargs)
            except NotImplementedError as err:
                if "Differentiation rule" not in str(err):
                    raise
                original = err.__cause__ if isinstance(err, SecondDerivativeError) else err
                raise SecondDerivativeError(
                    f"{call(kwargs)} differentiated the log density twice, and JAX cannot: {original} (a function "
                    "in the model has no second derivative in JAX). Second derivatives are taken by method='dadvi' "
                    "(Hessian-vector products), aj.laplace, method='laplace' and init='laplace' (the Hessian); "
                    "method='advi', 'pathfinder' and 'bam' with init='zero' or 'pathfinder' need gradients only"
                ) from original

        return wrapper

    return decorate
