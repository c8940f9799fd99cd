"""Dataset loading: the bundled regression sets, user CSV/NPZ files, and the larger MNIST files.

Three kinds of data:

* Bundled (`load_dataset`): small real datasets shipped in `advi_jax/datasets/` for the default
  commands (see that folder's README for origins, licenses and sha256 values):
  `"breast_cancer"` (logistic regression, 569 x 30) and `"randhie"` (Poisson regression,
  20190 x 9).
* The user's own tables (`load_csv`, `load_npz`), checked eagerly: every problem raises a
  `ValueError` that names the file, the column and, for bad values, the row. Only the target
  and the selected features must be numeric; missing values are an error naming columns and
  rows unless `dropna=True` (which says how many rows it dropped); a CSV that looks separated
  by another delimiter gets an error suggesting it.
* Larger files that are not shipped (MNIST and friends), from `advi_jax.data_files` and
  re-exported here: `find_data_file` and `load_mnist` look in `$ADVI_JAX_DATA`, then the user
  cache folder (`$XDG_CACHE_HOME/advi_jax`, by default `~/.cache/advi_jax`), then
  `../shared/data` beside the repository checkout; `find_data_file` checks the file's sha256 and
  `load_mnist` the arrays' keys, shapes, dtypes and ranges (so a user's own copy works). Nothing
  is ever downloaded: a missing file raises an error that lists the folders searched, says
  where to put it and, for MNIST, where to get it and in what format.

All loaders return NumPy arrays (float64 features); models convert them to JAX arrays.

Example:
  >>> from advi_jax import data
  >>> x, y, names = data.load_dataset("breast_cancer")
  >>> x.shape, y.shape, names[0]
  ((569, 30), (569,), 'mean_radius')
"""

from __future__ import annotations

import csv
import os
import warnings
import zipfile
import zlib
from importlib import resources
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from advi_jax._stack import user_stacklevel

__all__ = [
    "BUNDLED_DATASETS",
    "DATA_FILES",
    "Dataset",
    "check_target",
    "DataFileNotFound",
    "data_search_dirs",
    "find_data_file",
    "load_csv",
    "load_dataset",
    "load_mnist",
    "load_npz",
    "MNIST",
    "MNIST_NAMES",
    "MissingValuesWarning",
    "missing_value_report",
    "parse_delimiter",
]

MIN_ROWS = 2


class Dataset(NamedTuple):
    """A regression table: unpack as `x, y, feature_names = dataset`.

    Attributes:
      x: (N, D) float64 features.
      y: (N,) float64 target.
      feature_names: length-D tuple of column names.
    """

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]


# name -> (file in advi_jax/datasets, likelihood the target suits, one-line description)
BUNDLED_DATASETS: dict[str, dict[str, str]] = {
    "breast_cancer": {
        "file": "breast_cancer.npz",
        "kind": "logistic",
        "description": "Wisconsin diagnostic breast cancer (UCI via scikit-learn); y = 1 if malignant",
    },
    "randhie": {
        "file": "randhie.npz",
        "kind": "poisson",
        "description": "RAND Health Insurance Experiment (via statsmodels); y = outpatient MD visits",
    },
}

# ---------------------------------------------------------------------------------------------
# Checks shared by every loader
# ---------------------------------------------------------------------------------------------


def check_target(y: np.ndarray, kind: str | None, source: str = "target") -> np.ndarray:
    """Check that a target suits a likelihood and return it as float64.

    Args:
      y: (N,) target values.
      kind: "logistic" (values must be 0 or 1), "poisson" (non-negative integers) or None
        (finite values only).
      source: how to name the target in error messages.

    Returns:
      (N,) float64 copy of `y`.

    Raises:
      ValueError: naming the first offending row and value.
    """
    if kind not in (None, "logistic", "poisson"):
        raise ValueError(f"kind must be 'logistic', 'poisson' or None, got {kind!r}")
    y = np.asarray(y, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise ValueError(f"{source} has non-finite value {y[bad[0]]} at row {bad[0]} ({bad.size} rows in all)")
    if kind == "logistic":
        bad = np.flatnonzero((y != 0) & (y != 1))
        if bad.size:
            raise ValueError(f"{source} must be 0 or 1 for logistic regression; row {bad[0]} is {y[bad[0]]:g} "
                             f"({bad.size} rows in all). Recode the classes to 0/1.")
    elif kind == "poisson":
        bad = np.flatnonzero((y < 0) | (y != np.round(y)))
        if bad.size:
            raise ValueError(f"{source} must be a non-negative integer count for Poisson regression; row {bad[0]} "
                             f"is {y[bad[0]]:g} ({bad.size} rows in all)")
    return y


class MissingValuesWarning(UserWarning):
    """Rows with missing values were dropped (`dropna=True`); the message says how many."""


def _rows_text(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", ... ({rows.size} rows)" if rows.size > limit else "")


def missing_value_report(columns: Mapping[str, np.ndarray], names: Sequence[str]) -> tuple[np.ndarray, str]:
    """Find the rows with a missing (NaN) value in any of `names` and describe them.

    Args:
      columns: column name -> (N,) float values (NaN marks a missing cell).
      names: the columns to check.

    Returns:
      `(rows, text)`: the sorted row indices (0-based, data rows after any header) with a
      missing value, and a description naming each affected column and its first rows.
    """
    parts, bad_rows = [], np.zeros(0, dtype=int)
    for name in names:
        rows = np.flatnonzero(np.isnan(np.asarray(columns[name], dtype=np.float64)))
        if rows.size:
            parts.append(f"{name!r} in rows {_rows_text(rows)}")
            bad_rows = np.union1d(bad_rows, rows)
    return bad_rows, "; ".join(parts)


def _finalise(columns: dict[str, np.ndarray], target: str, features, kind, source: str,
              dropna: bool = False) -> Dataset:
    """Pick target and features from named float columns, check values, and build a Dataset."""
    features = _select(list(columns), target, features, source)
    n = len(columns[target])
    used = features + [target]
    bad_rows, text = missing_value_report(columns, used)
    if bad_rows.size:
        if not dropna:
            raise ValueError(f"{source}: missing values (NaN or empty cells) in {bad_rows.size} of {n} rows: {text} "
                             "(rows numbered from 0 after the header); drop those rows with dropna=True "
                             "(--dropna on the command line) or impute them")
        keep = np.setdiff1d(np.arange(n), bad_rows)
        columns = {c: np.asarray(columns[c])[keep] for c in used}
        warnings.warn(f"{source}: dropped {bad_rows.size} of {n} rows with missing values ({text}); "
                      f"{keep.size} rows remain", MissingValuesWarning, stacklevel=user_stacklevel())
        n = keep.size
    if n < MIN_ROWS:
        raise ValueError(f"{source}: too few rows: {n} (need at least {MIN_ROWS})")
    for name in used:
        col = columns[name]
        bad = np.flatnonzero(~np.isfinite(col))
        if bad.size:
            raise ValueError(f"{source}: column {name!r} has an infinite value at row {bad[0]} "
                             f"({bad.size} bad rows in that column); drop or fix them first")
    y = check_target(columns[target], kind, f"{source}: target column {target!r}")
    x = np.column_stack([columns[c] for c in features]).astype(np.float64)
    return Dataset(x, y, tuple(features))


def _select(available: list[str], target: str, features, source: str) -> list[str]:
    """The feature columns to use: checked against the available ones and the target."""
    if target not in available:
        raise ValueError(f"{source}: target column {target!r} not found; available columns: {available}")
    if features is None:
        features = [c for c in available if c != target]
    else:
        features = [features] if isinstance(features, str) else list(features)
        missing = [c for c in features if c not in available]
        if missing:
            raise ValueError(f"{source}: feature columns {missing} not found; available columns: {available}")
        if target in features:
            raise ValueError(f"{source}: the target {target!r} is also listed among the features")
        repeated = sorted({c for c in features if features.count(c) > 1})
        if repeated:  # the same column twice: a duplicated coefficient, refused later as 'feature_names'
            raise ValueError(f"{source}: feature columns {repeated} are listed more than once")
    if not features:
        raise ValueError(f"{source}: no feature columns besides the target {target!r}")
    return features


def _check_file(path) -> Path:
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise ValueError(f"data file not found: {str(path)!r}" + (" (it is a folder)" if path.is_dir() else ""))
    return path


# ---------------------------------------------------------------------------------------------
# User files
# ---------------------------------------------------------------------------------------------

_MISSING = {"", "na", "nan", "null", "none", "n/a"}
_BOOLEAN = {"true": 1.0, "false": 0.0}  # a boolean column's cells (any case) read as 1 / 0


_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}


def parse_delimiter(text: str) -> str:
    """A field separator from its spelling: one character, or "tab" / "\\t" for a tab.

    Raises:
      ValueError: for anything longer than one character (other than the tab spellings).
    """
    if not isinstance(text, str):
        raise TypeError(f"delimiter must be a one-character string, got {type(text).__name__}")
    if text.lower() in ("tab", "\\t", "\t"):
        return "\t"
    if len(text) != 1 or text in ('"', "\n", "\r"):
        raise ValueError(f"delimiter must be one character (or 'tab'), got {text!r}")
    return text


def _delimiter_hint(header_line: str, delimiter: str) -> str | None:
    """A suggested delimiter when the header reads as one column but splits on another separator."""
    for candidate in (";", "\t", "|", ","):
        if candidate != delimiter and header_line.count(candidate) >= 1:
            return candidate
    return None


def load_csv(path, target: str, *, features=None, kind: str | None = None, delimiter: str = ",",
             dropna: bool = False) -> Dataset:
    """Load a CSV file with a header row into features and a target.

    Only the target and the selected feature columns need to be numeric: other columns (ids,
    free text) are ignored when `features` leaves them out. True/False cells (any case; a
    boolean column as pandas or R writes it) read as 1/0. Empty cells and NA/NaN spellings
    are missing values: an error naming the columns and rows, unless `dropna=True`, which
    drops those rows (only missing values in the used columns count) and says how many in a
    `MissingValuesWarning`.

    Args:
      path: the CSV file.
      target: name of the target column.
      features: names of the feature columns (default: every other column, in file order).
      kind: "logistic" (target must be 0/1), "poisson" (non-negative integer target) or None.
      delimiter: the field separator (one character; "tab" for tabs).
      dropna: drop rows with a missing value in the target or a feature instead of failing.

    Returns:
      `Dataset(x (N, D) float64, y (N,) float64, feature_names)`.

    Raises:
      ValueError: missing file, no header, ragged rows, missing target or feature columns
        (listing those available), a header that looks separated by another delimiter
        (suggesting it), non-numeric used columns (named), missing values (columns and rows),
        inf values, a target unfit for `kind`, or fewer than 2 rows.

    Example:
      >>> x, y, names = load_csv("visits.csv", target="visits", kind="poisson")  # doctest: +SKIP
    """
    path = _check_file(path)
    delimiter = parse_delimiter(delimiter)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: no byte order mark in the header
            rows = list(csv.reader(handle, delimiter=delimiter))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text CSV file ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{path}: the file is empty (expected a header row and data rows)")
    header = [h.strip() for h in rows[0]]
    if len(header) == 1 and target not in header:
        hint = _delimiter_hint(rows[0][0], delimiter)
        if hint is not None:
            raise ValueError(f"{path}: the header {rows[0][0]!r} reads as one column with delimiter "
                             f"{_DELIMITER_NAMES.get(delimiter, repr(delimiter))}; it looks "
                             f"{_DELIMITER_NAMES.get(hint, repr(hint))}-separated: pass delimiter={hint!r} "
                             f"(advi-jax fit --delimiter {'tab' if hint == chr(9) else repr(hint)})")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise ValueError(f"{path}: duplicate column names {dup}")
    body = rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ValueError(f"{path}: data row {i} (line {i + 2}) has {len(r)} fields, the header has {len(header)}")
    used = _select(header, target, features, str(path)) + [target]
    columns: dict[str, np.ndarray] = {}
    non_numeric: dict[str, str] = {}
    for j, name in enumerate(header):
        if name not in used:
            continue
        values = np.empty(len(body))
        for i, r in enumerate(body):
            cell = r[j].strip()
            if cell.lower() in _MISSING:
                values[i] = np.nan
                continue
            try:
                values[i] = float(cell)
            except ValueError:
                flag = _BOOLEAN.get(cell.lower())
                if flag is not None:  # True/False (pandas' and R's spelling of a boolean column)
                    values[i] = flag
                    continue
                non_numeric.setdefault(name, f"row {i} (line {i + 2}): {cell!r}")
                break
        columns[name] = values
    if target in non_numeric:
        expected = {"logistic": "0/1", "poisson": "non-negative integer counts"}.get(kind, "numbers")
        raise ValueError(f"{path}: target column {target!r} is not numeric (first at {non_numeric[target]}); "
                         f"it must hold {expected}: recode it (e.g. yes/no as 1/0)")
    if non_numeric:
        details = "; ".join(f"{k!r} first at {v}" for k, v in non_numeric.items())
        raise ValueError(f"{path}: non-numeric columns {list(non_numeric)} ({details}); encode them as numbers "
                         "(e.g. one-hot, or a formula with C(column)) or leave them out with features= "
                         "(--features on the command line)")
    return _finalise(columns, target, features, kind, str(path), dropna=dropna)


_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def load_npz(path, target: str, *, features=None, kind: str | None = None, dropna: bool = False) -> Dataset:
    """Load a NumPy `.npz` table into features and a target (never unpickles).

    Each 1-D array of length N is a column named by its key. A 2-D array `a` of shape (N, D)
    contributes D columns named `a_0 .. a_{D-1}`, or the names in a `feature_names` array
    when the file has one of length D (the layout of the bundled files, target `"y"`).

    Args:
      path: the `.npz` file.
      target: key of the target column.
      features: names of the feature columns (default: every other column).
      kind: "logistic", "poisson" or None, as in `load_csv`.
      dropna: drop rows with a missing (NaN) value in a used column, as in `load_csv`.

    Returns:
      `Dataset(x (N, D) float64, y (N,) float64, feature_names)`.

    Raises:
      ValueError: as `load_csv`, plus a truncated or corrupt file (named), arrays of unequal
        length or with more than 2 dims.
    """
    path = _check_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except _NPZ_ERRORS as err:  # not a zip, truncated, corrupt members, or object arrays
        raise ValueError(f"{path}: not a readable .npz file (truncated or corrupt, or holds pickled objects): "
                         f"{type(err).__name__}: {err}") from None
    names_array = arrays.pop("feature_names", None)
    columns: dict[str, np.ndarray] = {}
    non_numeric, lengths = [], {}
    for key, a in arrays.items():
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            non_numeric.append(key)
            continue
        if a.ndim == 1:
            columns[key] = a.astype(np.float64)
        elif a.ndim == 2:
            if names_array is not None and len(names_array) == a.shape[1]:
                labels = [str(s) for s in names_array]
            else:
                labels = [f"{key}_{j}" for j in range(a.shape[1])]
            for j, label in enumerate(labels):
                columns[label] = a[:, j].astype(np.float64)
        else:
            raise ValueError(f"{path}: array {key!r} has shape {a.shape}; expected 1-D columns or a 2-D (N, D) block")
        lengths[key] = a.shape[0]
    used = set(_select(list(columns) + non_numeric, target, features, str(path)) + [target])
    bad_types = [k for k in non_numeric if k in used]
    if bad_types:
        raise ValueError(f"{path}: non-numeric arrays {bad_types}; store numbers only (encode categories) "
                         "or leave them out with features=")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{path}: arrays have different numbers of rows: {lengths}")
    return _finalise(columns, target, features, kind, str(path), dropna=dropna)


def load_dataset(name: str) -> Dataset:
    """Load a dataset bundled with the package.

    Args:
      name: one of `BUNDLED_DATASETS`: "breast_cancer" (binary target, 1 = malignant) or
        "randhie" (count target: outpatient doctor visits).

    Returns:
      `Dataset(x (N, D) float64, y (N,) float64, feature_names)`.

    Raises:
      ValueError: for an unknown name (listing the valid ones).
    """
    if name not in BUNDLED_DATASETS:
        raise ValueError(f"unknown bundled dataset {name!r}; choose one of {sorted(BUNDLED_DATASETS)}")
    info = BUNDLED_DATASETS[name]
    ref = resources.files("advi_jax").joinpath("datasets", info["file"])
    with resources.as_file(ref) as path:
        return load_npz(path, target="y", kind=info["kind"])


# ---------------------------------------------------------------------------------------------
# Larger files (MNIST and friends): searched, checked and loaded by advi_jax.data_files
# ---------------------------------------------------------------------------------------------

from advi_jax.data_files import (  # noqa: E402  (re-exported: aj.data.load_mnist, ...)
    DATA_FILES,
    MNIST,
    MNIST_NAMES,
    DataFileNotFound,
    data_search_dirs,
    find_data_file,
    load_mnist,
)
