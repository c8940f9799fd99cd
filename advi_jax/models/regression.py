"""Ready generalised linear models: Bayesian logistic, Poisson, probit and negative-binomial regression.

(`probit_regression` and `negbin_regression` are built in `advi_jax.models.regression_more` on
the same machinery and re-exported here.)

Both build an `aj.Model` whose arrays travel as `data=` (so jitted fits take them as
arguments). The linear predictor is

    eta_n = intercept + sum_d beta_d * (x_nd - m_d) / s_d  (+ offset_n for Poisson),

where `m`, `s` are the column means and standard deviations of the training features when
`standardize=True` (constant columns keep `s_d = 1`; without an intercept `m = 0` and `s` the
columns' root mean squares, see `standardization`) and `m = 0, s = 1` otherwise. They are
recorded in `model.data` so that `predict` applies the same transform to new features.

Priors (all parameters are real except `tau` and the negative-binomial dispersion `phi`):

* `intercept ~ Normal(0, intercept_scale)` (only when `intercept=True`);
* `beta_d ~ Normal(0, prior_scale)` independently, or, with `hierarchical_scale=True`,
  `tau ~ HalfNormal(prior_scale)` (support `aj.positive()`) and `beta_d | tau ~ Normal(0, tau)`
  (centred parameterisation: with few data points the posterior can be funnel-shaped);
* negative binomial only: `1 / sqrt(phi) ~ Exponential(mean dispersion_scale)` (see `negbin_regression`).

Likelihoods, computed by `advi_jax.models.glm.glm_log_likelihood`, which reads X once per gradient
(value and gradient in one blocked pass), in forms that stay finite for any finite `eta`:

* logistic: `log p(y | eta) = y * eta - softplus(eta)`, with `softplus(eta) = logaddexp(0, eta)`
  (never forms `sigmoid(eta)` or `log(1 - p)`);
* Poisson:  `log p(y | eta) = y * eta - exp(eta) - lgamma(y + 1)`. `eta` is not clipped:
  `exp(eta)` overflows (giving a log joint of `-inf`) only beyond eta ~ 88 in float32
  (709 in float64), i.e. rates of ~1e38, which standardised features do not reach.

Example:
  >>> import numpy as np, advi_jax as aj
  >>> from advi_jax.models import logistic_regression
  >>> x = np.random.default_rng(0).normal(size=(50, 2)); y = (x[:, 0] > 0).astype(float)
  >>> model = logistic_regression(x, y, prior_scale=2.5)
  >>> model.dim, model.names
  (3, ('intercept', 'beta'))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax._types import Array, ArrayLike
from advi_jax._stack import user_stacklevel
from advi_jax.flatten import Model
from advi_jax.models.glm import glm_log_likelihood
from advi_jax.models.glm_more import distinct_counts, distinct_table, glm_more_log_likelihood
from advi_jax.supports import positive, real

__all__ = [
    "ConstantColumnWarning",
    "FLOAT32_COUNT_LIMITS",
    "PrecisionWarning",
    "Prediction",
    "RegressionInfo",
    "RegressionModel",
    "coefficients_on_original_scale",
    "float32_count_limit",
    "linear_predictor",
    "logistic_regression",
    "negbin_regression",
    "parameter_labels",
    "poisson_regression",
    "predict",
    "probit_regression",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
BINARY_KINDS = ("logistic", "probit")
COUNT_KINDS = ("poisson", "negbin")  # the kinds that take an exposure / offset


@dataclasses.dataclass(frozen=True)
class RegressionInfo:
    """Static description of a regression model (hashable; part of the model's pytree metadata).

    Attributes:
      kind: "logistic", "poisson", "probit" or "negbin".
      feature_names: one name per column of X.
      intercept: whether the model has an intercept.
      standardize: whether features were centred and scaled.
      hierarchical_scale: whether the coefficient scale `tau` is a parameter.
      prior_scale: prior sd of the coefficients (or the half-normal scale of `tau`).
      intercept_scale: prior sd of the intercept.
      has_offset: whether the (Poisson / negative-binomial) model has an offset / exposure.
      dispersion_scale: negative binomial only: the scale of the exponential prior on
        1 / sqrt(phi) (see `negbin_regression`).
    """

    kind: str
    feature_names: tuple[str, ...]
    intercept: bool
    standardize: bool
    hierarchical_scale: bool
    prior_scale: float
    intercept_scale: float
    has_offset: bool = False
    dispersion_scale: float = 1.0


class _ModelWithInfo(Model):
    """An `aj.Model` that also carries a static description (`model.info`) through jit and vmap."""

    def __init__(self, log_joint, support, data, info: Any):
        super().__init__(log_joint, support, data=data)
        self.info = info

    def tree_flatten(self):
        children, aux = super().tree_flatten()
        return children, (aux, self.info)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = super().tree_unflatten(aux[0], children)
        obj.info = aux[1]
        return obj


@jax.tree_util.register_pytree_node_class
class RegressionModel(_ModelWithInfo):
    """An `aj.Model` that also carries a `RegressionInfo` (`model.info`) for predictions and labels.

    `model.data` is a dict with `x` (N, D) transformed features, `y` (N,), `x_mean` (D,),
    `x_scale` (D,) and, for Poisson models with an exposure or offset, `offset` (N,); negative-binomial
    models also carry their distinct counts `y_distinct` (U,) and multiplicities `y_count` (U,)
    (`glm_more.distinct_counts`; rebuild the model, rather than edit `data["y"]`, for new counts).
    """

    full_compile_mode = "mid"
    """How this model's programs compile on CPU where `compile_options.compile_mode` would say "full":
    "mid" (`compile_options.MID_OPTIONS`), the classic fusion emitter at XLA's default optimisation level. On the ready GLMs' programs (the
    glm_exact loop, the log density, the diagnostics) it compiles in about half the CPU time of
    the MLIR fusion emitters (N = 1e6, D = 10 logistic, full rank: the loop 1.7 -> 1.1 s of CPU,
    the first call of `aj.fit` 6.6 -> 4.1 s of process CPU on a loaded machine), with the same
    numbers and the same run time: their work is matrix products (library kernels) and one
    vectorised elementwise pass per row block."""

    def __repr__(self) -> str:
        return f"{self.info.kind.capitalize()}Regression" + super().__repr__()[len("Model"):]

    def log_density_relative(self, zeta: ArrayLike, zeta_ref: ArrayLike) -> tuple[Array, Array]:
        """(log p(zeta) - log p(zeta_ref), log p(zeta_ref)), the first accurate (`models.relative`)."""
        from advi_jax.models.relative import log_density_relative  # it imports this module

        return log_density_relative(self, zeta, zeta_ref)


class Prediction(NamedTuple):
    """Posterior predictive summary of a probability or rate for each new row.

    Attributes:
      mean: (M,) posterior mean.
      quantiles: (Q, M) posterior quantiles at `levels`.
      levels: (Q,) the quantile levels, e.g. (0.05, 0.5, 0.95).
      draws: (S, M) the value at every posterior draw.
    """

    mean: Array
    quantiles: Array
    levels: Array
    draws: Array


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_scale(value: Any, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def _check_x(x: ArrayLike, name: str = "X", num_features: int | None = None) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a numeric array of shape (N, D)") from None
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D) (one row per observation), got shape {x.shape}; "
                         "use x.reshape(-1, 1) for a single feature")
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(f"{name} must have {num_features} columns (the model's features), got {x.shape[1]}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {x.shape}")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        r, c = bad[0]
        raise ValueError(f"{name} has a non-finite value {x[r, c]} at row {r}, column {c} "
                         f"({len(bad)} in all); drop or impute those rows")
    return x


def _check_vector(v: ArrayLike, name: str, n: int) -> np.ndarray:
    try:
        v = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a numeric array of shape ({n},)") from None
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per row of X), got {v.shape}")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"{name} has a non-finite value {v[bad[0]]} at row {bad[0]} ({bad.size} in all)")
    return v


def _check_y(y: ArrayLike, n: int, kind: str) -> np.ndarray:
    y = _check_vector(y, "y", n)
    if kind in BINARY_KINDS:
        bad = np.flatnonzero((y != 0) & (y != 1))
        if bad.size:
            raise ValueError(f"y must contain only 0 and 1 for {kind} regression; y[{bad[0]}] = {y[bad[0]]:g} "
                             f"({bad.size} entries in all). Recode the two classes as 0/1.")
    else:
        bad = np.flatnonzero((y < 0) | (y != np.round(y)))
        if bad.size:
            raise ValueError(f"y must contain non-negative integer counts for {kind} regression; "
                             f"y[{bad[0]}] = {y[bad[0]]:g} ({bad.size} entries in all)")
    return y


def _offset(exposure, offset, n: int, name_exposure="exposure", name_offset="offset") -> np.ndarray | None:
    if exposure is not None and offset is not None:
        raise ValueError(f"pass either {name_exposure} or {name_offset}, not both (offset = log(exposure))")
    if exposure is not None:
        exposure = _check_vector(exposure, name_exposure, n)
        bad = np.flatnonzero(exposure <= 0)
        if bad.size:
            raise ValueError(f"{name_exposure} must be positive; {name_exposure}[{bad[0]}] = {exposure[bad[0]]:g} "
                             f"({bad.size} rows in all; a row with zero exposure has rate zero and carries no "
                             "information: drop it)")
        return np.log(exposure)
    if offset is not None:
        return _check_vector(offset, name_offset, n)
    return None


def _frame_input(X, feature_names):
    """A pandas DataFrame's values and column names (see `advi_jax.models.formula.frame_to_array`)."""
    if not hasattr(X, "columns"):
        return X, feature_names
    from advi_jax.models.formula import frame_to_array

    return frame_to_array(X, feature_names)


def _feature_names(feature_names, num_features: int) -> tuple[str, ...]:
    if feature_names is None:
        return tuple(f"x{j}" for j in range(num_features))
    names = tuple(str(s) for s in feature_names)
    if len(names) != num_features:
        raise ValueError(f"feature_names must have one name per column of X ({num_features}), got {len(names)}")
    if len(set(names)) != len(names):  # they label beta's entries: summaries, JSON keys, ArviZ coordinates
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"feature_names must be distinct; {dup} repeat")
    return names


# ---------------------------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------------------------


def _normal_logpdf(x: Array, scale) -> Array:
    return -0.5 * jnp.square(x / scale) - jnp.log(scale) - _HALF_LOG_2PI


def _log_prior(params: Mapping[str, Array], info: RegressionInfo) -> Array:
    beta = params["beta"]
    if info.hierarchical_scale:
        tau = params["tau"]
        # HalfNormal(prior_scale): Normal log density + log 2.
        total = _normal_logpdf(tau, info.prior_scale) + math.log(2.0)
        total = total + jnp.sum(_normal_logpdf(beta, tau))
    else:
        total = jnp.sum(_normal_logpdf(beta, info.prior_scale))
    if info.intercept:
        total = total + _normal_logpdf(params["intercept"], info.intercept_scale)
    if info.kind == "negbin":
        total = total + dispersion_log_prior(params["phi"], info.dispersion_scale)
    return total


def dispersion_log_prior(phi: Array, scale: float) -> Array:
    """log density of phi when kappa = 1 / sqrt(phi) ~ Exponential(mean `scale`).

    log p(phi) = -log(scale) - kappa / scale - log 2 - 1.5 log(phi) (the Jacobian of kappa(phi)).
    """
    log_phi = jnp.log(phi)
    return -math.log(scale) - jnp.exp(-0.5 * log_phi) / scale - math.log(2.0) - 1.5 * log_phi


def _make_log_joint_uncached(info: RegressionInfo):
    family = {"logistic": "bernoulli", "poisson": "poisson"}.get(info.kind, info.kind)

    def log_joint(params: Mapping[str, Array], data: Mapping[str, Array]) -> Array:
        intercept = params["intercept"] if info.intercept else 0.0
        if family in ("probit", "negbin"):  # the XLA path (the native kernel is logistic / Poisson only)
            table = distinct_table(data) if family == "negbin" else None
            log_lik = glm_more_log_likelihood(data["x"], data["y"], params["beta"], intercept, data.get("offset"),
                                              family, params.get("phi"), None if table is None else table[:2])
            if table is not None:  # a table that no longer matches y (edited after the build): NaN, not wrong
                log_lik = jnp.where(table[2], log_lik, jnp.nan)
        else:
            log_lik = glm_log_likelihood(data["x"], data["y"], params["beta"], intercept, data.get("offset"),
                                         family=family)
        return _log_prior(params, info) + log_lik

    log_joint.__doc__ = f"Log joint of the {info.kind} regression (params constrained; data from model.data)."
    return log_joint


# One log joint per model description, so that rebuilding a model with the same description
# (e.g. on new data of the same shape) reuses compiled fits instead of recompiling.
_make_log_joint = functools.lru_cache(maxsize=None)(_make_log_joint_uncached)


class PrecisionWarning(UserWarning):
    """The data ask for more precision than the model's float dtype has (counts too large for float32)."""


FLOAT32_COUNT_LIMITS = {"poisson": 2.0 ** 24, "negbin": 300.0}
"""Largest count a float32 count model handles accurately (`float32_count_limit`).

Poisson: 2^24, above which float32 cannot hold every integer (the counts themselves are rounded;
at counts of 1e9 the intercept's float32 resolution, ~2e-6 at eta ~ 20, is the size of its
posterior sd, 3e-6 at N = 100, and the fitted sd came out 60% too wide; at 1e7 float32 matched
float64). Negative binomial: its likelihood's terms (lgamma(y + phi), y log(mu + phi), ...) are
~y log y each and cancel to a value many times smaller, so float32 loses the fit's precision as
counts grow. Measured against float64 (N = 1000, D = 2, means 10-300, phi 0.5-20): largest counts up
to 424 gave means within 0.002 sd and sds within 0.1%; 809 and 2230 (phi = 2) gave means 0.12 sd off
and sds 2-3% narrow, and the fit stopped at its step budget; counts of 1e5 without over-dispersion
gave sds 2.6x too wide, of 1e7 an intercept 15 sds off.
"""


def float32_count_limit(kind: str, y: ArrayLike) -> float | None:
    """The float32 limit of `FLOAT32_COUNT_LIMITS` that the counts `y` exceed, or None (also for other kinds)."""
    limit = FLOAT32_COUNT_LIMITS.get(kind)
    y = np.asarray(y)
    if limit is None or y.size == 0 or not np.isfinite(y).all() or float(np.max(y)) <= limit:
        return None
    return limit


def _warn_precision(kind: str, y: np.ndarray, dtype) -> None:
    limit = float32_count_limit(kind, y) if np.dtype(dtype) == np.float32 else None
    if limit is not None:
        import warnings

        warnings.warn(f"y has counts up to {float(np.max(y)):.6g}, above {limit:.6g}: a float32 {kind} regression "
                      "loses the likelihood's precision there (see advi_jax.models.regression.FLOAT32_COUNT_LIMITS); "
                      "fit it in float64: jax.config.update('jax_enable_x64', True) before building the model "
                      "(advi-jax fit does so by itself)", PrecisionWarning, stacklevel=user_stacklevel())


def standardization(x: np.ndarray, intercept: bool) -> tuple[np.ndarray, np.ndarray]:
    """(m, s) of `standardize=True`: x is used as (x - m) / s.

    With an intercept: the column means and sds (constant columns keep s = 1: only centred).
    Without one: m = 0 and s the columns' root mean squares (all-zero columns keep s = 1), because
    centring would change the model: sum_d b_d (x_d - m_d) / s_d carries the intercept
    -sum_d b_d m_d / s_d, which a model without one must not have (a user's own column of ones, with
    `intercept=False`, was centred to zeros, so the model lost its intercept altogether).
    """
    if intercept:
        mean, scale = x.mean(axis=0), x.std(axis=0)
    else:
        mean, scale = np.zeros(x.shape[1]), np.sqrt(np.mean(np.square(x), axis=0))
    return mean, np.where(scale > 0, scale, 1.0)


class ConstantColumnWarning(UserWarning):
    """A feature column is constant: with the model's intercept its coefficient is not identified."""


def _warn_constant(x: np.ndarray, names: Sequence[str], intercept: bool) -> None:
    """Warn about constant columns (a user's own column of ones, a filter that left one value).

    Centred, such a column is zero, so its coefficient's posterior is its prior, and on the data's
    scale it is confounded with the intercept: `coefficients_on_original_scale` gives the
    intercept minus that prior draw times the constant (measured: a column of ones widened the
    data-scale intercept's sd from 0.18 to 2.6, the prior's 2.5).
    """
    constant = [j for j in range(x.shape[1]) if x.shape[0] > 1 and np.all(x[:, j] == x[0, j])]
    if constant and intercept:
        import warnings

        shown = ", ".join(f"{names[j]!r} (= {x[0, j]:g})" for j in constant[:5])
        more = f" and {len(constant) - 5} more" if len(constant) > 5 else ""
        warnings.warn(f"X has constant columns {shown}{more}: the model has its own intercept, so their coefficients "
                      "are not identified (their posterior is their prior) and on the data's scale they blur the "
                      "intercept; leave them out", ConstantColumnWarning, stacklevel=user_stacklevel())


def _build(kind, x, y, *, prior_scale, intercept, intercept_scale, standardize, hierarchical_scale,
           feature_names, offset=None, dispersion_scale=1.0) -> RegressionModel:
    x = _check_x(x)
    n, d = x.shape
    y = _check_y(y, n, kind)
    _warn_precision(kind, y, jnp.result_type(float))
    prior_scale = _check_scale(prior_scale, "prior_scale")
    intercept_scale = _check_scale(intercept_scale, "intercept_scale")
    names = _feature_names(feature_names, d)
    if standardize:
        mean, scale = standardization(x, intercept)
        _warn_constant(x, names, intercept)
    else:
        mean, scale = np.zeros(d), np.ones(d)
    dispersion_scale = _check_scale(dispersion_scale, "dispersion_scale")
    info = RegressionInfo(kind, names, bool(intercept), bool(standardize), bool(hierarchical_scale),
                          prior_scale, intercept_scale, offset is not None, dispersion_scale)
    dtype = np.dtype(jnp.result_type(float))

    def put(a):  # converted on the host, then one transfer: jnp.asarray(float64, float32) compiles a program
        return jax.device_put(np.asarray(a, dtype))

    data = {"x": put((x - mean) / scale), "y": put(y), "x_mean": put(mean), "x_scale": put(scale)}
    if offset is not None:
        data["offset"] = put(offset)
    if kind == "negbin":  # E_q[D(y, phi)] once per distinct count in the exact-ELBO fit (`vi._glm_lik`)
        data.update({k: jax.device_put(v) for k, v in distinct_counts(y, dtype).items()})
    support = {}
    if intercept:
        support["intercept"] = real()
    support["beta"] = real((d,))
    if hierarchical_scale:
        support["tau"] = positive()
    if kind == "negbin":
        support["phi"] = positive()  # exp bijector: the flat coordinate is log(phi)
    return RegressionModel(_make_log_joint(info), support, data, info)


def _grouped(kind, X, y, group, hierarchical_scale, **kwargs):
    """`group=` of the ready GLMs: the varying-intercept model of `advi_jax.models.grouped`."""
    if hierarchical_scale:
        raise ValueError("group= and hierarchical_scale=True do not combine: the grouped model's scale is the "
                         "group sd tau (see advi_jax.models.grouped)")
    from advi_jax.models import grouped  # grouped imports this module

    build = grouped.grouped_logistic_regression if kind == "logistic" else grouped.grouped_poisson_regression
    return build(X, y, group=group, **kwargs)


def logistic_regression(
    X: ArrayLike,
    y: ArrayLike,
    *,
    prior_scale: float = 2.5,
    intercept: bool = True,
    intercept_scale: float = 10.0,
    standardize: bool = True,
    hierarchical_scale: bool = False,
    feature_names: Sequence[str] | None = None,
    group: Any = None,
) -> RegressionModel:
    """Bayesian logistic regression, `y_n ~ Bernoulli(sigmoid(eta_n))`.

    Parameters: `intercept` (scalar, when `intercept=True`), `beta` (D,), and `tau` (scalar,
    positive, when `hierarchical_scale=True`). See the module docstring for priors and the
    stable likelihood.

    Args:
      X: (N, D) features, finite; a pandas DataFrame's column names become the feature names
        (for categorical columns and interactions use `logistic_regression.from_formula(df,
        "y ~ x1 + C(x2)")`).
      y: (N,) labels in {0, 1}.
      prior_scale: sd of the Normal prior on each coefficient (on the standardised scale when
        `standardize=True`); with `hierarchical_scale=True`, the scale of the half-normal prior
        on `tau`.
      intercept: include an intercept with prior `Normal(0, intercept_scale)`.
      intercept_scale: prior sd of the intercept.
      standardize: centre and scale each column of X (statistics kept in `model.data`); with
        `intercept=False`, scale only (by the root mean square): centring would add an intercept.
      hierarchical_scale: learn a shared coefficient scale `tau`.
      feature_names: D names for labels (default `x0, x1, ...`).
      group: optional (N,) group codes or labels: a varying intercept per group, i.e.
        `advi_jax.models.grouped_logistic_regression(X, y, group=group, ...)` (see there).

    Returns:
      A `RegressionModel` (an `aj.Model`) with `data = {x, y, x_mean, x_scale}`, or with
      `group=` a `GroupedRegressionModel`.

    Raises:
      ValueError: X not 2-D or with NaN/inf, y of the wrong length or not 0/1, non-positive
        scales, or a wrong number of feature names.

    Example:
      >>> import numpy as np
      >>> x = np.random.default_rng(1).normal(size=(20, 3)); y = (x[:, 1] > 0) * 1.0
      >>> logistic_regression(x, y).dim
      4
    """
    if group is not None:
        return _grouped("logistic", X, y, group, hierarchical_scale, prior_scale=prior_scale, intercept=intercept,
                        intercept_scale=intercept_scale, standardize=standardize, feature_names=feature_names)
    X, feature_names = _frame_input(X, feature_names)
    return _build("logistic", X, y, prior_scale=prior_scale, intercept=intercept, intercept_scale=intercept_scale,
                  standardize=standardize, hierarchical_scale=hierarchical_scale, feature_names=feature_names)


def poisson_regression(
    X: ArrayLike,
    y: ArrayLike,
    *,
    exposure: ArrayLike | None = None,
    offset: ArrayLike | None = None,
    prior_scale: float = 1.0,
    intercept: bool = True,
    intercept_scale: float = 10.0,
    standardize: bool = True,
    hierarchical_scale: bool = False,
    feature_names: Sequence[str] | None = None,
    group: Any = None,
) -> RegressionModel:
    """Bayesian Poisson regression with a log link, `y_n ~ Poisson(exp(eta_n))`.

    `eta_n = intercept + x_n . beta + offset_n`, with `offset = log(exposure)` when an exposure
    (e.g. time at risk) is given. Parameters and priors as in `logistic_regression`.

    Args:
      X: (N, D) features, finite.
      y: (N,) non-negative integer counts.
      exposure: optional (N,) positive exposures; mutually exclusive with `offset`.
      offset: optional (N,) offsets added to the linear predictor.
      prior_scale: sd of the Normal prior on each (standardised) coefficient, or the scale of
        the half-normal prior on `tau` when `hierarchical_scale=True`.
      intercept, intercept_scale, standardize, hierarchical_scale, feature_names: as in
        `logistic_regression`.
      group: optional (N,) group codes or labels: a varying intercept per group
        (`advi_jax.models.grouped_poisson_regression`).

    Returns:
      A `RegressionModel` with `data = {x, y, x_mean, x_scale}` (+ `offset`).

    Raises:
      ValueError: as `logistic_regression`, with y required to be non-negative integers, and
        exposures required to be positive.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(2); x = rng.normal(size=(30, 2))
      >>> model = poisson_regression(x, rng.poisson(np.exp(x[:, 0])), exposure=np.ones(30))
      >>> sorted(model.data)
      ['offset', 'x', 'x_mean', 'x_scale', 'y']
    """
    if group is not None:
        return _grouped("poisson", X, y, group, hierarchical_scale, exposure=exposure, offset=offset,
                        prior_scale=prior_scale, intercept=intercept, intercept_scale=intercept_scale,
                        standardize=standardize, feature_names=feature_names)
    X, feature_names = _frame_input(X, feature_names)
    x_checked = _check_x(X)
    off = _offset(exposure, offset, x_checked.shape[0])
    return _build("poisson", x_checked, y, prior_scale=prior_scale, intercept=intercept,
                  intercept_scale=intercept_scale, standardize=standardize,
                  hierarchical_scale=hierarchical_scale, feature_names=feature_names, offset=off)


# ---------------------------------------------------------------------------------------------
# Posterior summaries and predictions
# ---------------------------------------------------------------------------------------------


def _check_model(model) -> RegressionInfo:
    if not isinstance(model, RegressionModel) and getattr(model, "num_groups", None) is not None:
        # a varying-intercept model, built by the same poisson_regression / logistic_regression (group=)
        raise TypeError(f"this function takes the ready GLMs without group=; a varying-intercept model "
                        f"({type(model).__name__}, from group=) has no predictions or data-scale coefficients "
                        "here yet: compute them from its draws (intercept + u[group] + standardised X @ beta)")
    if not isinstance(model, RegressionModel):
        raise TypeError("model must come from logistic_regression, poisson_regression, probit_regression or "
                        "negbin_regression, "
                        f"got {type(model).__name__}")
    return model.info


def _check_draws(model: RegressionModel, draws: Mapping[str, ArrayLike]) -> tuple[dict[str, Array], int]:
    if not isinstance(draws, Mapping):
        raise TypeError(f"draws must be a dict of constrained posterior draws, got {type(draws).__name__}")
    missing = [n for n in model.names if n not in draws]
    if missing:
        raise ValueError(f"draws is missing parameters {missing}; it has {list(draws)}")
    out = {n: jnp.asarray(draws[n]) for n in model.names}
    num = {n: (out[n].shape[0] if out[n].ndim else None) for n in out}
    for n, s in model.support.items():
        if out[n].ndim != len(s.shape) + 1 or out[n].shape[1:] != s.shape:
            raise ValueError(f"draws[{n!r}] must have shape (num_draws,) + {s.shape}, got {out[n].shape}")
    if len(set(num.values())) != 1:
        raise ValueError(f"all draws must have the same number of draws (leading axis), got {num}")
    return out, next(iter(num.values()))


def linear_predictor(model: RegressionModel, draws: Mapping[str, ArrayLike], X_new: ArrayLike, *,
                     exposure: ArrayLike | None = None, offset: ArrayLike | None = None) -> Array:
    """eta for new rows at every posterior draw, using the training standardisation.

    Args:
      model: a `RegressionModel`.
      draws: constrained draws, e.g. `result.sample(key, S)`: `beta` (S, D), `intercept` (S,).
      X_new: (M, D) features on the original (unstandardised) scale, or a DataFrame: its columns named
        after the model's features are used by name (in any order), one that names none is read by position.
      exposure, offset: for Poisson models, per-row exposure or offset of the new rows
        (default: none, i.e. exposure 1).

    Returns:
      (S, M) linear predictors.
    """
    return jax.device_put(_host_linear_predictor(model, draws, X_new, exposure, offset))


def _features_by_name(frame, feature_names: Sequence[str]):
    """A DataFrame of new rows with the model's features picked by name, in the model's order, where its
    columns name them (a frame in another column order, or with other columns too, such as the target);
    a frame that names none of them is read by position."""
    by_name = {str(c): c for c in frame.columns}
    found = [n for n in feature_names if n in by_name]
    if not found:
        return frame
    missing = [n for n in feature_names if n not in by_name]
    if missing:
        raise ValueError(f"X_new lacks the model's feature columns {missing}; it has {list(by_name)} "
                         f"(the model's features, in order: {list(feature_names)})")
    return frame[[by_name[n] for n in feature_names]]


def _host_linear_predictor(model: RegressionModel, draws: Mapping[str, ArrayLike], X_new: ArrayLike,
                           exposure: ArrayLike | None, offset: ArrayLike | None) -> np.ndarray:
    """`linear_predictor`'s checks and its (S, M) values in NumPy, in the model's dtype. Host arithmetic
    compiles nothing: with jax.numpy each new number of rows compiled every operation again (0.5-0.65 s
    a call of `predict` on breast cancer)."""
    info = _check_model(model)
    draws, _ = _check_draws(model, draws)
    if hasattr(X_new, "columns") and hasattr(model, "design_matrix"):
        X_new = model.design_matrix(X_new)  # a DataFrame of new rows through the model's formula
    elif hasattr(X_new, "columns"):
        X_new = _features_by_name(X_new, info.feature_names)
    X_new, _ = _frame_input(X_new, None)
    x = _check_x(X_new, "X_new", num_features=len(info.feature_names))
    off = _offset(exposure, offset, x.shape[0])
    if off is not None and info.kind not in COUNT_KINDS:
        raise ValueError("exposure/offset apply only to Poisson and negative-binomial models")
    dtype = np.dtype(model.data["x"].dtype)
    x_mean, x_scale = (np.asarray(jax.device_get(model.data[k]), dtype) for k in ("x_mean", "x_scale"))
    xs = (np.asarray(x, dtype) - x_mean[None, :]) / x_scale[None, :]
    eta = np.asarray(jax.device_get(draws["beta"]), dtype) @ xs.T  # (S, M)
    if info.intercept:
        eta = eta + np.asarray(jax.device_get(draws["intercept"]), dtype)[:, None]
    if off is not None:
        eta = eta + np.asarray(off, dtype)[None, :]
    return eta


def predict(model: RegressionModel, draws: Mapping[str, ArrayLike], X_new: ArrayLike, *,
            exposure: ArrayLike | None = None, offset: ArrayLike | None = None,
            levels: Sequence[float] = (0.05, 0.5, 0.95)) -> Prediction:
    """Posterior predictive probabilities (logistic) or rates (Poisson) for new rows.

    Args:
      model: a `RegressionModel`.
      draws: dict of constrained posterior draws with a leading draw axis of length S.
      X_new: (M, D) new features on the original scale (standardised internally with the
        training means and sds), or a DataFrame: its columns named after the model's features are
        used by name (in any order, other columns ignored), one that names none is read by position.
      exposure, offset: Poisson only, for the new rows (the rate is then per row, including
        exposure).
      levels: quantile levels in [0, 1] of the credible band.

    Returns:
      `Prediction(mean (M,), quantiles (Q, M), levels (Q,), draws (S, M))` of P(y = 1) for
      logistic and probit models, or of the mean `exp(eta)` for Poisson and negative-binomial models.

    Example:
      >>> import numpy as np, jax.numpy as jnp
      >>> x = np.random.default_rng(0).normal(size=(40, 1)); y = (x[:, 0] > 0) * 1.0
      >>> model = logistic_regression(x, y)
      >>> draws = {"intercept": jnp.zeros(10), "beta": jnp.ones((10, 1))}
      >>> predict(model, draws, np.zeros((3, 1))).mean.shape
      (3,)
    """
    try:
        levels_arr = np.asarray(levels, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"levels must be quantile levels in [0, 1], e.g. (0.05, 0.5, 0.95), got {levels!r}") from None
    if levels_arr.size == 0 or np.any(~((levels_arr >= 0) & (levels_arr <= 1))):
        raise ValueError(f"levels must be quantile levels in [0, 1], got {levels!r}")
    eta = _host_linear_predictor(model, draws, X_new, exposure, offset)
    kind = model.info.kind
    # on the host, as `linear_predictor` (no compilation per number of rows)
    if kind == "logistic":
        values = 0.5 * (1.0 + np.tanh(0.5 * eta))  # the logistic function, without overflow
    elif kind == "probit":
        from scipy.special import ndtr  # SciPy comes with JAX

        values = ndtr(eta).astype(eta.dtype)
    else:
        with np.errstate(over="ignore"):
            values = np.exp(eta)
    lv = levels_arr.astype(values.dtype)
    quantiles = np.quantile(values, lv, axis=0).astype(values.dtype)
    mean = values.mean(axis=0, dtype=np.float64).astype(values.dtype)  # float32 sums down a column drift
    return Prediction(*(jax.device_put(v) for v in (mean, quantiles, lv, values)))


def coefficients_on_original_scale(model: RegressionModel, draws: Mapping[str, ArrayLike]) -> dict[str, Array]:
    """Undo the standardisation: coefficients per unit of each original feature.

    With `eta = a + sum_d b_d (x_d - m_d) / s_d`, the original-scale coefficients are
    `b_d / s_d` and the intercept is `a - sum_d b_d m_d / s_d`.

    Args:
      model: a `RegressionModel`.
      draws: constrained draws with a leading axis S.

    Returns:
      dict with `beta` (S, D) and, when the model has one, `intercept` (S,).
    """
    info = _check_model(model)
    draws, _ = _check_draws(model, draws)
    beta = draws["beta"] / model.data["x_scale"][None, :]
    out = {"beta": beta}
    if info.intercept:
        out["intercept"] = draws["intercept"] - beta @ model.data["x_mean"]
    return out


def parameter_labels(model: RegressionModel) -> dict[str, tuple[str, ...]]:
    """Human-readable labels for every entry of every parameter (for summaries).

    Returns:
      dict mapping parameter name to labels of its flattened entries, e.g.
      `{"intercept": ("(intercept)",), "beta": ("mean_radius", ...), "tau": ("tau",)}`.
    """
    info = _check_model(model)
    out: dict[str, tuple[str, ...]] = {}
    for name in model.names:
        if name == "beta":
            out[name] = info.feature_names
        elif name == "intercept":
            out[name] = ("(intercept)",)
        else:
            out[name] = (name,)
    return out


from advi_jax.models.regression_more import negbin_regression, probit_regression  # noqa: E402 (built on _build)
