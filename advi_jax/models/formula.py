"""Regression models from data frames and Wilkinson formulas (through formulaic).

`from_formula(kind, data, "y ~ x1 + C(x2) + x1:x3")` builds the design matrix with formulaic
(https://matthewwardrop.github.io/formulaic/): `C(x)` one-hot codes a categorical column
(reference level dropped), `a:b` is an interaction, `- 1` or `0 +` removes the intercept,
`np.log(x)`, `center(x)`, `poly(x, 2)`... transform columns. The formula's intercept becomes the
model's own `intercept` parameter (with its own prior); every other design column becomes a
coefficient named after it (`"C(x2)[T.b]"`, `"x1:x3"`), and those names appear in summaries,
plots, JSON and ArviZ coordinates. The same formula (with the training data's category levels
and transform state) is applied to new data by `model.design_matrix(df)`, which
`aj.models.predict` and `linear_predictor` call when given a DataFrame.

Plain DataFrames are accepted by `logistic_regression(df, y)` / `poisson_regression(df, y)`
too: the column names become the feature names (`frame_to_array`).

Missing values in the columns the formula uses are an error naming the columns and rows
(formulaic would drop them silently), unless `dropna=True`, which drops those rows and says how
many in an `aj.data.MissingValuesWarning`.

Needs the `formula` extra (formulaic and pandas).

Example:
  >>> import numpy as np, pandas as pd, advi_jax as aj
  >>> rng = np.random.default_rng(0)
  >>> df = pd.DataFrame({"x1": rng.normal(size=40), "g": rng.choice(["a", "b"], 40)})
  >>> df["y"] = (df.x1 + (df.g == "b") > 0).astype(float)
  >>> model = aj.models.logistic_regression.from_formula(df, "y ~ x1 + C(g)")
  >>> model.info.feature_names
  ('x1', 'C(g)[T.b]')
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import jax
import numpy as np

from advi_jax._extras import require
from advi_jax._stack import user_stacklevel
from advi_jax.data import MissingValuesWarning, missing_value_report
from advi_jax.models import regression as _regression
from advi_jax.models.regression import RegressionModel

__all__ = ["FormulaRegressionModel", "frame_to_array", "from_formula"]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _message(err: BaseException) -> str:
    """formulaic's error as one plain line: its parse errors span lines and mark the bad token with
    terminal colour codes between '⧛' and '⧚' (`y ~ a ⧛\\x1b[1;31m+\\x1b[0m⧚`), shown here as `>>+<<`."""
    text = _ANSI.sub("", str(err)).replace("\u29db", ">>").replace("\u29da", "<<")
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _is_frame(x: Any) -> bool:
    return hasattr(x, "columns") and hasattr(x, "to_numpy") and getattr(x, "ndim", 0) == 2


def frame_to_array(X: Any, feature_names=None) -> tuple[Any, Any]:
    """A pandas DataFrame as a float array and its column names (other inputs pass through).

    Args:
      X: a DataFrame, or anything else (returned unchanged).
      feature_names: explicit names (kept when given).

    Returns:
      `(array, names)`.

    Raises:
      TypeError: a DataFrame with non-numeric columns (named), pointing to `from_formula`.
    """
    if not _is_frame(X):
        if hasattr(feature_names, "tolist"):
            feature_names = feature_names.tolist()
        return X, feature_names
    bad = [str(c) for c in X.columns if not _is_numeric(X[c].dtype)]
    if bad:
        raise TypeError(f"X has non-numeric columns {bad}; encode them, or use from_formula(df, 'y ~ ... + C(col)') "
                        "to one-hot code them")
    names = [str(c) for c in X.columns] if feature_names is None else feature_names
    return X.to_numpy(dtype=np.float64, na_value=np.nan), names


def _is_numeric(dtype) -> bool:
    try:
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        return bool(is_numeric_dtype(dtype) or is_bool_dtype(dtype))
    except ImportError:  # pragma: no cover - a frame without pandas
        try:
            return bool(np.issubdtype(dtype, np.number) or dtype == bool)
        except TypeError:
            return False


class _FormulaSpec:
    """The formula and formulaic's model spec (identity-compared: it never enters traced code)."""

    def __init__(self, formula: str, spec, intercept: bool, response: str):
        self.formula, self.spec, self.intercept, self.response = formula, spec, intercept, response

    def __repr__(self) -> str:
        return f"formula {self.formula!r}"


@jax.tree_util.register_pytree_node_class
class FormulaRegressionModel(RegressionModel):
    """A `RegressionModel` built from a formula; `model.formula` and `model.design_matrix(df)`."""

    def __init__(self, base: RegressionModel, spec: _FormulaSpec):
        super().__init__(base.log_joint, base.support, base.data, base.info)
        self._formula = spec

    def tree_flatten(self):
        children, aux = super().tree_flatten()
        return children, (aux, self._formula)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = super().tree_unflatten(aux[0], children)
        obj._formula = aux[1]
        return obj

    @property
    def formula(self) -> str:
        """The formula the model was built from."""
        return self._formula.formula

    def design_matrix(self, data) -> np.ndarray:
        """(M, D) features of new rows of a DataFrame (or dict of columns), as at training time.

        Categorical levels and stateful transforms are those of the training data; the
        intercept column is left out (the model has its own `intercept` parameter).
        """
        pd = require("pandas", purpose="design_matrix")
        errors = require("formulaic.errors", purpose="design_matrix")
        frame = data if _is_frame(data) else pd.DataFrame(dict(data))
        spec = self._formula.spec
        with warnings.catch_warnings():  # formulaic encodes an unseen level as the reference level, with a warning
            warnings.simplefilter("error", errors.DataMismatchWarning)
            try:
                matrix = spec.get_model_matrix(frame, na_action="raise")
            except errors.DataMismatchWarning as err:
                levels = "; ".join(f"{name}: {state.get('categories')}" for name, (_, state)
                                   in getattr(spec, "encoder_state", {}).items() if "categories" in state)
                unseen = re.search(r"\{.*\}", str(err))  # formulaic's message: "...: {'zzz'}. They are ..."
                raise ValueError(f"new data for the formula {self.formula!r} has categories the training data did "
                                 f"not have ({unseen.group(0) if unseen else err}); the training levels are "
                                 f"{levels or 'unknown'}. Rows with an unseen level cannot be predicted (formulaic "
                                 "would encode them as the reference level): drop or recode them") from None
            except errors.FactorEvaluationError as err:
                raise ValueError(f"new data for the formula {self.formula!r}: {_message(err)}") from None
        names = [str(c) for c in matrix.columns]
        keep = [j for j, c in enumerate(names) if c != "Intercept"]
        return np.asarray(matrix, dtype=np.float64)[:, keep]

    def __repr__(self) -> str:
        return super().__repr__() + f" from {self.formula!r}"


def _builder(kind: str):
    builder = getattr(_regression, f"{kind}_regression", None)
    if not isinstance(kind, str) or builder is None:
        kinds = sorted(n[: -len("_regression")] for n in dir(_regression) if n.endswith("_regression")
                       and callable(getattr(_regression, n)) and not n.startswith("_"))
        raise ValueError(f"kind must be one of {kinds}, got {kind!r}")
    return builder


def _missing_columns(frame, names) -> dict[str, np.ndarray]:
    return {n: np.where(frame[n].isna().to_numpy(), np.nan, 0.0) for n in names}


def from_formula(kind: str, data, formula: str, *, exposure=None, offset=None, dropna: bool = False,
                 **kwargs) -> FormulaRegressionModel:
    """A ready regression model from a data frame and a Wilkinson formula.

    Args:
      kind: "logistic", "poisson", "probit" or "negbin" (any `<kind>_regression` builder of `aj.models`).
      data: a pandas DataFrame (or a dict of equal-length columns).
      formula: e.g. `"y ~ x1 + C(x2) + x1:x3"`; the left side is the target column.
      exposure, offset: Poisson / negative binomial only: a column name of `data` or an (N,) array.
      dropna: drop rows with a missing value in a column the formula (or the exposure) uses,
        instead of failing; says how many in a `MissingValuesWarning`.
      **kwargs: passed to the builder (`prior_scale`, `standardize`, ...). The intercept is
        set by the formula (`- 1` removes it), so `intercept=` is not accepted.

    Returns:
      A `FormulaRegressionModel` whose `beta` entries are named after the design columns.

    Raises:
      MissingExtraError: formulaic or pandas not installed (the `formula` extra).
      ValueError: no `~` or no target, unknown columns, missing values (named), a target that
        expands to several columns, a design with no columns, or what the builder rejects.

    Example:
      >>> model = from_formula("poisson", df, "visits ~ age + C(plan)", exposure="years")  # doctest: +SKIP
    """
    builder = _builder(kind)
    formulaic = require("formulaic", purpose="from_formula")
    pd = require("pandas", purpose="from_formula")
    if not isinstance(formula, str) or "~" not in formula:
        raise ValueError(f"formula must be a string like 'y ~ x1 + C(x2)', got {formula!r}")
    if "intercept" in kwargs:
        raise ValueError("the formula sets the intercept ('y ~ x' has one, 'y ~ x - 1' has none); "
                         "do not pass intercept=")
    frame = data if _is_frame(data) else pd.DataFrame(dict(data))
    try:
        parsed = formulaic.Formula(formula)
        required = sorted(str(v) for v in parsed.required_variables)
    except Exception as err:  # noqa: BLE001 - formulaic's parse errors have many types
        raise ValueError(f"cannot parse formula {formula!r}: {_message(err)}") from None
    used = [v for v in required if v in frame.columns]
    if not used:
        raise ValueError(f"formula {formula!r} uses none of the columns {list(map(str, frame.columns))}")
    extra_cols = [c for c in (exposure, offset) if isinstance(c, str)]
    for c in extra_cols:
        if c not in frame.columns:
            raise ValueError(f"column {c!r} not found; columns: {list(map(str, frame.columns))}")
    check = used + [c for c in extra_cols if c not in used]
    bad_rows, text = missing_value_report(_missing_columns(frame, check), check)
    if bad_rows.size:
        n = len(frame)
        if not dropna:
            raise ValueError(f"missing values in {bad_rows.size} of {n} rows: {text} (rows numbered from 0); "
                             "drop those rows with dropna=True (--dropna on the command line) or impute them")
        frame = frame.drop(index=frame.index[bad_rows])
        warnings.warn(f"dropped {bad_rows.size} of {n} rows with missing values ({text}); {len(frame)} rows remain",
                      MissingValuesWarning, stacklevel=user_stacklevel())
    if len(frame) == 0:
        raise ValueError("data has no rows" + (" left after dropping those with missing values" if bad_rows.size
                                                  else "") + f"; formula {formula!r} needs at least one")
    try:
        matrices = formulaic.model_matrix(formula, frame, na_action="raise")
    except Exception as err:  # noqa: BLE001 - unknown names, bad calls, ... all user errors
        raise ValueError(f"formula {formula!r}: {type(err).__name__}: {_message(err)}") from None
    lhs, rhs = getattr(matrices, "lhs", None), getattr(matrices, "rhs", None)
    if lhs is None or rhs is None:
        raise ValueError(f"formula {formula!r} needs a target on the left of '~'")
    if lhs.shape[1] != 1:
        raise ValueError(f"the left side of {formula!r} expands to {lhs.shape[1]} columns {list(lhs.columns)}; "
                         "the target must be one numeric column (0/1 for logistic, counts for Poisson)")
    names = [str(c) for c in rhs.columns]
    intercept = "Intercept" in names
    keep = [j for j, c in enumerate(names) if c != "Intercept"]
    if not keep:
        raise ValueError(f"formula {formula!r} has no feature columns besides the intercept")
    x = np.asarray(rhs, dtype=np.float64)[:, keep]
    y = np.asarray(lhs, dtype=np.float64)[:, 0]
    extra = {}
    for arg, value in (("exposure", exposure), ("offset", offset)):
        if value is not None:
            extra[arg] = frame[value].to_numpy(dtype=np.float64) if isinstance(value, str) else value
    base = builder(x, y, intercept=intercept, feature_names=[names[j] for j in keep], **extra, **kwargs)
    spec = _FormulaSpec(formula, rhs.model_spec, intercept, str(lhs.columns[0]))
    return FormulaRegressionModel(base, spec)


def _attach(kind: str):
    def method(data, formula: str, **kwargs) -> FormulaRegressionModel:
        return from_formula(kind, data, formula, **kwargs)

    method.__name__ = "from_formula"
    method.__qualname__ = f"{kind}_regression.from_formula"
    method.__doc__ = (f"`from_formula({kind!r}, data, formula, **kwargs)`: a {kind} regression from a DataFrame "
                      "and a Wilkinson formula (see `advi_jax.models.formula.from_formula`).")
    return method


for _kind in ("logistic", "poisson", "probit", "negbin"):
    setattr(getattr(_regression, f"{_kind}_regression"), "from_formula", _attach(_kind))
