"""Varying-intercept (grouped) GLMs: logistic and Poisson regression with a group intercept.

The lme4 / bambi model `y ~ x + (1 | group)`. Row i belongs to group g[i] in {0, ..., G-1}, and

    eta_i = intercept + sum_d beta_d (x_id - m_d) / s_d + u_{g[i]}  (+ offset_i for Poisson),

with the columns standardised as in `advi_jax.models.regression` (`m`, `s` kept in `model.data`).

Priors (centred parameterisation; all real except `tau`):

* `intercept ~ Normal(0, intercept_scale)`, `beta_d ~ Normal(0, prior_scale)`;
* `u_g | tau ~ Normal(0, tau)` for every group, `tau ~ HalfNormal(group_scale)` (support
  `aj.positive()`, i.e. zeta = log tau with its Jacobian in the log density).

The centred form keeps the linear predictor linear in (intercept, beta, u), so under a Gaussian q
over (intercept, beta, u, log tau) every eta_i is exactly Gaussian, and the prior's expectation
is closed form too (`advi_jax.vi.glm_grouped` fits it with an exact, deterministic ELBO). The
group effects enter through the index `g` (a gather), never a dense one-hot design.

Likelihoods as in the ready GLMs: logistic `y eta - softplus(eta)`, Poisson
`y eta - exp(eta) - lgamma(y + 1)` (stable forms from `advi_jax.models.glm`).

Example:
  >>> import numpy as np
  >>> from advi_jax.models import grouped_poisson_regression
  >>> rng = np.random.default_rng(0); x = rng.normal(size=(60, 2)); g = rng.integers(0, 5, 60)
  >>> model = grouped_poisson_regression(x, rng.poisson(2.0, 60), group=g)
  >>> model.names, model.dim
  (('intercept', 'beta', 'u', 'tau'), 9)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax._types import Array, ArrayLike
from advi_jax.models.glm import _pointwise
from advi_jax.models.regression import (_check_scale, _check_x, _check_y, _feature_names, _frame_input,
                                        _ModelWithInfo, _normal_logpdf, _offset,
                                        _warn_precision, standardization)
from advi_jax.supports import positive, real

__all__ = ["GroupedInfo", "GroupedRegressionModel", "grouped_logistic_regression", "grouped_poisson_regression",
           "encode_groups"]


@dataclasses.dataclass(frozen=True)
class GroupedInfo:
    """Static description of a varying-intercept GLM (hashable; the model's pytree metadata).

    Attributes:
      kind: "logistic" or "poisson".
      feature_names: one name per column of X (may be empty: an intercept-only model).
      group_names: one name per group (the labels, or the codes as strings).
      intercept: whether the model has a global intercept.
      standardize: whether features were centred and scaled.
      prior_scale: prior sd of the coefficients.
      intercept_scale: prior sd of the intercept.
      group_scale: scale of the half-normal prior on the group sd `tau`.
      has_offset: whether the (Poisson) model has an offset / exposure.
    """

    kind: str
    feature_names: tuple[str, ...]
    group_names: tuple[str, ...]
    intercept: bool
    standardize: bool
    prior_scale: float
    intercept_scale: float
    group_scale: float
    has_offset: bool = False


@jax.tree_util.register_pytree_node_class
class GroupedRegressionModel(_ModelWithInfo):
    """An `aj.Model` of a varying-intercept GLM with its `GroupedInfo` (`model.info`).

    `model.data` holds `x` (N, D) transformed features, `y` (N,), `group` (N,) int32 codes,
    `x_mean` (D,), `x_scale` (D,) and, with an exposure or offset, `offset` (N,). Parameters, in
    the order of the flat vector: `intercept` (when present), `beta` (D,), `u` (G,), `tau`.
    `model.labels` names the entries of `beta` and `u` for summaries.
    """

    @property
    def num_groups(self) -> int:
        """G, the number of groups (the length of `u`)."""
        return len(self.info.group_names)

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Labels of the vector parameters' entries: feature names for `beta`, group names for `u`."""
        return {"beta": self.info.feature_names, "u": self.info.group_names}

    def __repr__(self) -> str:
        return f"Grouped{self.info.kind.capitalize()}Regression" + super().__repr__()[len("Model"):]


def encode_groups(group: Any, n: int, num_groups: int | None = None,
                  group_names: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes 0..G-1 and group names from a `group=` argument.

    Integer (or integral float) arrays are codes: they must be >= 0, and G is `num_groups` or
    max + 1 (groups without rows are allowed: their posterior is the prior's; without `num_groups`,
    codes that leave more groups empty than have rows, and over 10, are an error: ids taken for codes). Any other array
    (strings, objects, a pandas Categorical) holds labels: G is the number of distinct labels
    (a Categorical's categories, in order; else sorted) and the names are the labels.

    Args:
      group: (N,) codes or labels.
      n: the number of rows it must have.
      num_groups: G for integer codes (default max code + 1).
      group_names: G names for integer codes (default the codes as strings).

    Returns:
      (codes (N,) int32, names (G,) tuple of str).

    Raises:
      ValueError / TypeError: naming `group`: wrong length, not 1-D, negative, non-integer or
        non-finite codes, codes >= num_groups, or a wrong number of names.

    Example:
      >>> encode_groups(["b", "a", "b"], 3)
      (array([1, 0, 1], dtype=int32), ('a', 'b'))
    """
    if group is None:
        raise TypeError("group must be an (N,) array of integer codes 0..G-1 or of labels, got None")
    categories = None
    if hasattr(group, "cat") and hasattr(group.cat, "categories"):  # a pandas Series of dtype category
        categories, group = tuple(str(c) for c in group.cat.categories), np.asarray(group.cat.codes)
    elif hasattr(group, "categories") and hasattr(group, "codes"):  # a pandas Categorical
        categories, group = tuple(str(c) for c in group.categories), np.asarray(group.codes)
    arr = np.asarray(group)
    if arr.ndim != 1:
        raise ValueError(f"group must be 1-D (one group per row), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"group must have one entry per row of X ({n}), got {arr.shape[0]}")
    if categories is not None:
        bad = np.flatnonzero(arr < 0)
        if bad.size:
            raise ValueError(f"group has a missing value at row {bad[0]} ({bad.size} in all)")
        return arr.astype(np.int32), categories
    if arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr))
                                  and np.all(arr == np.round(arr))):
        codes = arr.astype(np.int64)
        bad = np.flatnonzero(codes < 0)
        if bad.size:
            raise ValueError(f"group codes must be integers 0..G-1; group[{bad[0]}] = {arr[bad[0]]} is negative")
        top = int(codes.max()) + 1 if codes.size else 0
        if num_groups is None:
            present = int(np.unique(codes).size)
            if top - present > max(present, 10):
                # ids (zip codes, patient numbers) read as codes: mostly empty groups, a K x K covariance of
                # their size. Empty groups must be asked for.
                raise ValueError(f"group codes are read as 0..G-1: the largest, {top - 1}, makes {top} groups, of "
                                 f"which only {present} have rows; pass the group labels as strings "
                                 "(group=np.asarray(group).astype(str)) to number only the values present, or "
                                 f"num_groups={top} to keep the empty groups (their posterior is the prior's)")
            num_groups = top
        elif isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < top:
            raise ValueError(f"num_groups must be an int >= the largest group code + 1 ({top}), got {num_groups!r}")
        num_groups = int(num_groups)
        if group_names is None:
            names = tuple(str(j) for j in range(num_groups))
        else:
            names = tuple(str(s) for s in group_names)
            if len(names) != num_groups:
                raise ValueError(f"group_names must have one name per group ({num_groups}), got {len(names)}")
        return codes.astype(np.int32), names
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        raise ValueError(f"group must hold integer codes 0..G-1 or labels; group[{bad[0]}] = {arr[bad[0]]} "
                         f"is not an integer ({bad.size} such entries)")
    if arr.dtype.kind not in "USOb":
        raise TypeError(f"group must hold integer codes or labels (str), got dtype {arr.dtype}")
    if arr.dtype.kind == "O" and any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in arr):
        raise ValueError("group has a missing value (None or NaN); drop or label those rows")
    if num_groups is not None or group_names is not None:
        raise ValueError("num_groups / group_names apply to integer codes; labels name themselves")
    labels, codes = np.unique(arr.astype(str), return_inverse=True)
    return codes.astype(np.int32).reshape(n), tuple(str(s) for s in labels)


def _log_prior(params: Mapping[str, Array], info: GroupedInfo) -> Array:
    tau = params["tau"]
    total = _normal_logpdf(tau, info.group_scale) + math.log(2.0)  # HalfNormal(group_scale)
    total = total + jnp.sum(_normal_logpdf(params["u"], tau))
    total = total + jnp.sum(_normal_logpdf(params["beta"], info.prior_scale))
    if info.intercept:
        total = total + _normal_logpdf(params["intercept"], info.intercept_scale)
    return total


@functools.lru_cache(maxsize=None)
def _make_log_joint(info: GroupedInfo):
    family = "bernoulli" if info.kind == "logistic" else "poisson"

    def log_joint(params: Mapping[str, Array], data: Mapping[str, Array]) -> Array:
        eta = data["x"] @ params["beta"] + params["u"][data["group"]]
        if info.intercept:
            eta = eta + params["intercept"]
        if "offset" in data:
            eta = eta + data["offset"]
        return _log_prior(params, info) + jnp.sum(_pointwise(family, data["y"], eta)[0])

    log_joint.__doc__ = f"Log joint of the grouped {info.kind} regression (params constrained)."
    return log_joint


def _build(kind, X, y, group, *, num_groups, group_names, prior_scale, intercept, intercept_scale, group_scale,
           standardize, feature_names, exposure=None, offset=None) -> GroupedRegressionModel:
    if X is None:
        n = int(np.shape(y)[0]) if np.ndim(y) == 1 else -1
        if n < 0:
            raise ValueError(f"y must be 1-D, got shape {np.shape(y)}")
        x = np.zeros((n, 0))
        names: tuple[str, ...] = ()
    else:
        X, feature_names = _frame_input(X, feature_names)
        x = _check_x(X)
        names = _feature_names(feature_names, x.shape[1])
    n, d = x.shape
    y = _check_y(y, n, kind)
    _warn_precision(kind, y, jnp.result_type(float))
    codes, gnames = encode_groups(group, n, num_groups, group_names)
    off = _offset(exposure, offset, n) if kind == "poisson" else None
    prior_scale = _check_scale(prior_scale, "prior_scale")
    intercept_scale = _check_scale(intercept_scale, "intercept_scale")
    group_scale = _check_scale(group_scale, "group_scale")
    if standardize and d:
        mean, scale = standardization(x, intercept)
    else:
        mean, scale = np.zeros(d), np.ones(d)
    info = GroupedInfo(kind, names, gnames, bool(intercept), bool(standardize), prior_scale, intercept_scale,
                       group_scale, off is not None)
    dtype = jnp.result_type(float)
    data = {"x": jnp.asarray((x - mean) / scale, dtype), "y": jnp.asarray(y, dtype),
            "group": jnp.asarray(codes, jnp.int32), "x_mean": jnp.asarray(mean, dtype),
            "x_scale": jnp.asarray(scale, dtype)}
    if off is not None:
        data["offset"] = jnp.asarray(off, dtype)
    support = {}
    if intercept:
        support["intercept"] = real()
    support["beta"] = real((d,))
    support["u"] = real((len(gnames),))
    support["tau"] = positive()
    return GroupedRegressionModel(_make_log_joint(info), support, data, info)


def grouped_logistic_regression(X: ArrayLike | None, y: ArrayLike, *, group: Any, num_groups: int | None = None,
                                group_names: Sequence[str] | None = None, prior_scale: float = 2.5,
                                intercept: bool = True, intercept_scale: float = 10.0, group_scale: float = 1.0,
                                standardize: bool = True,
                                feature_names: Sequence[str] | None = None) -> GroupedRegressionModel:
    """Bayesian logistic regression with a varying intercept per group, `y ~ x + (1 | group)`.

    Args:
      X: (N, D) features (a DataFrame's column names become feature names), or None for an
        intercept-only model.
      y: (N,) labels in {0, 1}.
      group: (N,) integer codes 0..G-1, or labels (strings, a pandas Categorical).
      num_groups: G for integer codes (default max code + 1).
      group_names: names of the G groups for integer codes (default "0", "1", ...).
      prior_scale: prior sd of each (standardised) coefficient.
      intercept: include a global intercept, prior `Normal(0, intercept_scale)`.
      intercept_scale: its prior sd.
      group_scale: scale of the half-normal prior on `tau`, the sd of the group effects (on
        the logit scale).
      standardize: centre and scale the columns of X.
      feature_names: D names (default `x0, x1, ...`).

    Returns:
      A `GroupedRegressionModel` with parameters `intercept`, `beta` (D,), `u` (G,), `tau`.

    Raises:
      ValueError / TypeError: bad X or y (as `logistic_regression`), bad `group` (named), or
        non-positive scales.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0); x = rng.normal(size=(40, 1))
      >>> m = grouped_logistic_regression(x, (x[:, 0] > 0) * 1.0, group=rng.integers(0, 4, 40))
      >>> m.num_groups
      4
    """
    return _build("logistic", X, y, group, num_groups=num_groups, group_names=group_names, prior_scale=prior_scale,
                  intercept=intercept, intercept_scale=intercept_scale, group_scale=group_scale,
                  standardize=standardize, feature_names=feature_names)


def grouped_poisson_regression(X: ArrayLike | None, y: ArrayLike, *, group: Any, num_groups: int | None = None,
                               group_names: Sequence[str] | None = None, exposure: ArrayLike | None = None,
                               offset: ArrayLike | None = None, prior_scale: float = 1.0, intercept: bool = True,
                               intercept_scale: float = 10.0, group_scale: float = 1.0, standardize: bool = True,
                               feature_names: Sequence[str] | None = None) -> GroupedRegressionModel:
    """Bayesian Poisson regression (log link) with a varying intercept per group.

    `eta_i = intercept + x_i . beta + u_{g[i]} + offset_i`, `offset = log(exposure)`.

    Args:
      X, y, group, num_groups, group_names: as `grouped_logistic_regression`, with y
        non-negative integer counts.
      exposure: optional (N,) positive exposures; mutually exclusive with `offset`.
      offset: optional (N,) offsets added to the linear predictor.
      prior_scale, intercept, intercept_scale, group_scale, standardize, feature_names: as
        `grouped_logistic_regression` (group_scale on the log-rate scale).

    Returns:
      A `GroupedRegressionModel`.

    Raises:
      ValueError / TypeError: as `grouped_logistic_regression`; exposures must be positive.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(1); g = rng.integers(0, 3, 30)
      >>> grouped_poisson_regression(None, rng.poisson(3.0, 30), group=g).names
      ('intercept', 'beta', 'u', 'tau')
    """
    return _build("poisson", X, y, group, num_groups=num_groups, group_names=group_names, prior_scale=prior_scale,
                  intercept=intercept, intercept_scale=intercept_scale, group_scale=group_scale,
                  standardize=standardize, feature_names=feature_names, exposure=exposure, offset=offset)
