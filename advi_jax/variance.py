"""Gradient-estimator variance: measure, at fixed variational parameters, how noisy each ELBO
gradient estimator is, what one gradient costs, and how the noise evolves along a fit.

For an estimator `g(lambda; eps)` of the ELBO gradient at variational parameters `lambda` (a
pytree flattened to `P` coordinates), `num_draws` independent draws `g_1, ..., g_n` (one PRNG key
each, computed with `jax.vmap` over keys in chunks, never a Python loop) give

* the mean gradient `m = (1/n) sum_i g_i` (an unbiased estimate of the ELBO gradient when the
  estimator is unbiased);
* the per-coordinate variance `v_p = 1/(n-1) sum_i (g_ip - m_p)^2` and its sum
  `variance_trace = tr Cov[g] = sum_p v_p` (the expected squared distance of one draw from the
  true gradient);
* the variance per parameter group, e.g. location vs scale parameters of the Gaussian family;
* the signal-to-noise ratio per coordinate `snr_p = |m_p| / sqrt(v_p)` (Rainforth et al. 2018);
* the measured wall time of one jitted gradient call, and the efficiency figure
  `variance_trace * seconds_per_gradient`: the variance of the average of as many gradient draws
  as fit in one second is `variance_trace / (1 / seconds_per_gradient)`, so lower is better and
  estimators with different costs compare on equal compute.

Moments are accumulated chunk by chunk with Chan's parallel update of (count, mean, M2), which is
numerically stable (no E[g^2] - E[g]^2 cancellation), so a gradient whose draws are all equal up
to float rounding, e.g. STL at the exact posterior, reports a variance at rounding level.

`gradient_stats` is the generic instrument, for any surrogate `(params, key) -> scalar` whose
gradient is the estimator (the VAE's amortized objectives use it); `gradient_variance` applies it
to the ADVI estimators of `advi_jax.estimators`; `track_gradient_variance` records the variances
every few steps of a fit, inside one `lax.scan` over the pure ADVI step.

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
  >>> fam = aj.MeanFieldGaussian()
  >>> params = fam.init(jax.random.key(0), model.dim)
  >>> stats = aj.gradient_variance(model, fam, params, jax.random.key(1), estimators=("reparam", "score"),
  ...                              num_draws=200, time_repeats=0)
  >>> bool(stats["score"].variance_trace > stats["reparam"].variance_trace)
  True

References:
  Mohamed, Rosca, Figurnov & Mnih (2020). Monte Carlo gradient estimation in machine learning. JMLR 21.
  Roeder, Wu & Duvenaud (2017). Sticking the landing. NeurIPS.
  Rainforth et al. (2018). Tighter variational bounds are not necessarily better. ICML.
  Chan, Golub & LeVeque (1979). Updating formulae and a pairwise algorithm for computing sample variances.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from advi_jax._types import Array, PyTree, check_positive_int
from advi_jax.estimators import ESTIMATORS, get_estimator, min_num_samples
from advi_jax.families import Family, get_family
from advi_jax.checks import resolve_optimizer
from advi_jax.vi.advi import advi
from advi_jax.flatten import Model

__all__ = [
    "DEFAULT_ESTIMATORS",
    "GradientStats",
    "VarianceTrace",
    "gradient_stats",
    "gradient_variance",
    "time_gradient",
    "track_gradient_variance",
    "family_groups",
]

DEFAULT_ESTIMATORS: tuple[str, ...] = ("reparam", "stl", "reparam_mc_entropy", "score", "score_baseline")

# Default memory budget for one vmapped chunk of gradient draws: chunk_size * P floats.
_CHUNK_ELEMENTS = 2**22


class GradientStats(NamedTuple):
    """Summary of `num_draws` independent draws of a stochastic gradient at fixed parameters.

    Attributes:
      mean: mean gradient, a pytree with the structure of the parameters.
      mean_flat: (P,) the same, flattened (`jax.flatten_util.ravel_pytree` order).
      variance: (P,) per-coordinate sample variance (denominator n - 1).
      variance_trace: scalar, sum of `variance`: the trace of the gradient covariance.
      group_variance: dict group name -> scalar, the sum of `variance` over that group's
        coordinates (for the Gaussian families: "loc" and "scale").
      snr: (P,) per-coordinate signal-to-noise ratio |mean| / sd (inf where sd = 0 < |mean|,
        NaN where both are 0).
      seconds_per_gradient: median wall time of one jitted gradient call (NaN if not timed).
      efficiency: variance_trace * seconds_per_gradient (lower is better; NaN if not timed).
      num_draws: number of gradient draws n.
    """

    mean: PyTree
    mean_flat: Array
    variance: Array
    variance_trace: Array
    group_variance: dict[str, Array]
    snr: Array
    seconds_per_gradient: float
    efficiency: float
    num_draws: int

    @property
    def loc_variance(self) -> float:
        """Summed variance of the location coordinates (NaN if there is no "loc" group)."""
        return float(self.group_variance.get("loc", jnp.nan))

    @property
    def scale_variance(self) -> float:
        """Summed variance of the scale coordinates (NaN if there is no "scale" group)."""
        return float(self.group_variance.get("scale", jnp.nan))

    @property
    def median_snr(self) -> float:
        """Median of the per-coordinate SNR over coordinates where it is defined."""
        snr = np.asarray(self.snr, np.float64)
        snr = snr[~np.isnan(snr)]
        return float(np.median(snr)) if snr.size else float("nan")

    def standard_error(self) -> Array:
        """(P,) Monte Carlo standard error of `mean_flat`: sqrt(variance / num_draws)."""
        return jnp.sqrt(self.variance / self.num_draws)


class VarianceTrace(NamedTuple):
    """Gradient variances recorded along a fit (see `track_gradient_variance`).

    Attributes:
      steps: (T,) int, the optimisation step at which each record was taken (0 = initial q).
      variance_trace: dict estimator name -> (T,) trace of the gradient covariance.
      loc_variance: dict estimator name -> (T,) summed variance of the location coordinates.
      scale_variance: dict estimator name -> (T,) summed variance of the scale coordinates.
      mean_norm: dict estimator name -> (T,) Euclidean norm of the mean gradient.
      elbo: (num_steps,) the fit's per-step ELBO estimates.
      params: the variational parameters at the end of the fit.
    """

    steps: Array
    variance_trace: dict[str, Array]
    loc_variance: dict[str, Array]
    scale_variance: dict[str, Array]
    mean_norm: dict[str, Array]
    elbo: Array
    params: PyTree


# ----------------------------------------------------------------------------------------------
# Grouping of coordinates


def _path_head(path) -> str:
    entry = path[0]
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def family_groups(path) -> str:
    """Group of a Gaussian family's parameter leaf: "loc" for the location, "scale" otherwise."""
    return "loc" if path and _path_head(path) == "loc" else "scale"


def _default_groups(path) -> str:
    return _path_head(path) if path else "params"


def _group_masks(params: PyTree, groups: Callable[[Any], str]) -> dict[str, np.ndarray]:
    """Boolean (P,) masks, one per group, aligned with `ravel_pytree(params)`."""
    leaves_with_path, _ = jax.tree_util.tree_flatten_with_path(params)
    sizes = [int(np.size(leaf)) for _, leaf in leaves_with_path]
    total = sum(sizes)
    masks: dict[str, np.ndarray] = {}
    start = 0
    for (path, _), size in zip(leaves_with_path, sizes):
        name = str(groups(path))
        masks.setdefault(name, np.zeros((total,), bool))[start:start + size] = True
        start += size
    return masks


# ----------------------------------------------------------------------------------------------
# Core: moments of vmapped gradient draws


def _flat_gradient(surrogate: Callable, has_aux: bool) -> Callable:
    def flat_grad(params, key):
        grads = jax.grad(surrogate, has_aux=has_aux)(params, key)
        grads = grads[0] if has_aux else grads
        return ravel_pytree(grads)[0]

    return flat_grad


def _chunking(num_draws: int, dim: int, chunk_size: int | None) -> tuple[int, int]:
    if chunk_size is None:
        chunk_size = max(1, min(num_draws, _CHUNK_ELEMENTS // max(dim, 1)))
    chunk_size = min(chunk_size, num_draws)
    return chunk_size, -(-num_draws // chunk_size)


def _moments(flat_grad: Callable, params: PyTree, key: Array, num_draws: int, chunk_size: int,
             num_chunks: int, dtype) -> tuple[Array, Array]:
    """(mean, M2) of `num_draws` gradient draws, vmapped within chunks, scanned over chunks.

    Pure and traceable (used inside `lax.scan` by the tracker). Draw i uses key
    `fold_in(key, i)`, so the result does not depend on the chunk size.
    """
    dim = ravel_pytree(params)[0].shape[0]
    index = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)
    weight = (index < num_draws).astype(dtype)

    def body(carry, xs):
        count, mean, m2 = carry
        idx, w = xs
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
        draws = jax.vmap(flat_grad, in_axes=(None, 0))(params, keys)  # (chunk, P)
        draws = jnp.where(w[:, None] > 0, draws, 0.0)  # padded draws never contribute
        n_b = jnp.sum(w)
        mean_b = jnp.sum(w[:, None] * draws, axis=0) / jnp.maximum(n_b, 1.0)
        m2_b = jnp.sum(w[:, None] * (draws - mean_b[None, :]) ** 2, axis=0)
        total = count + n_b
        delta = mean_b - mean
        frac = n_b / jnp.maximum(total, 1.0)
        mean = mean + delta * frac
        m2 = m2 + m2_b + delta ** 2 * (count * frac)
        return (total, mean, m2), None

    init = (jnp.zeros((), dtype), jnp.zeros((dim,), dtype), jnp.zeros((dim,), dtype))
    (_, mean, m2), _ = jax.lax.scan(body, init, (index, weight))
    return mean, m2


def _summarise(mean: Array, m2: Array, num_draws: int, unravel: Callable, masks: dict[str, np.ndarray],
               seconds: float) -> GradientStats:
    variance = m2 / (num_draws - 1)
    sd = jnp.sqrt(variance)
    abs_mean = jnp.abs(mean)
    snr = jnp.where(sd > 0, abs_mean / jnp.where(sd > 0, sd, 1.0), jnp.where(abs_mean > 0, jnp.inf, jnp.nan))
    trace = jnp.sum(variance)
    groups = {name: jnp.sum(jnp.where(jnp.asarray(mask), variance, 0.0)) for name, mask in masks.items()}
    efficiency = float(trace) * seconds if math.isfinite(seconds) else float("nan")
    return GradientStats(unravel(mean), mean, variance, trace, groups, snr, seconds, efficiency, num_draws)


def time_gradient(surrogate: Callable, params: PyTree, key: Array, *, repeats: int = 20,
                  has_aux: bool = False) -> float:
    """Median wall time in seconds of one jitted call of `jax.grad(surrogate)(params, key)`.

    The function is compiled and run twice before timing; each timed call uses a fresh key and
    waits with `block_until_ready`, so the figure includes dispatch overhead (which dominates
    for very small models, as it would in a Python training loop).

    Args:
      surrogate: `(params, key) -> scalar` (or `(scalar, aux)` with `has_aux=True`).
      params: the parameters at which to differentiate.
      key: PRNG key; call i uses `fold_in(key, i)`.
      repeats: number of timed calls (>= 1).
      has_aux: whether `surrogate` returns `(scalar, aux)`.

    Returns:
      The median time of the `repeats` calls, in seconds.
    """
    repeats = check_positive_int(repeats, "repeats")
    grad_fn = jax.jit(jax.grad(surrogate, has_aux=has_aux))
    for i in range(2):
        jax.block_until_ready(grad_fn(params, jax.random.fold_in(key, i)))
    times = []
    for i in range(repeats):
        k = jax.random.fold_in(key, 2 + i)
        start = time.perf_counter()
        jax.block_until_ready(grad_fn(params, k))
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def _check_key(key: Any, name: str = "key") -> Array:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.shape == (2,) and key.dtype == np.uint32:
        return jax.random.wrap_key_data(jnp.asarray(key))
    raise TypeError(f"{name} must be a single PRNG key such as jax.random.key(0), got "
                    f"{type(key).__name__}{getattr(key, 'shape', '')}")


def gradient_stats(surrogate: Callable, params: PyTree, key: Array, *, num_draws: int = 1000,
                   groups: Callable[[Any], str] | None = None, chunk_size: int | None = None,
                   time_repeats: int = 20, has_aux: bool = False) -> GradientStats:
    """Mean, variance, SNR and cost of the stochastic gradient `jax.grad(surrogate)(params, key)`.

    The generic instrument: `surrogate(params, key)` is any scalar whose gradient with respect to
    `params` is the estimator under study (an ELBO surrogate, an amortized VAE objective, ...).
    Draw i uses key `fold_in(key, i)`; the draws are computed with `jax.vmap` over keys in
    chunks of `chunk_size` and combined with Chan's stable update.

    Args:
      surrogate: `(params, key) -> scalar` (or `(scalar, aux)` with `has_aux=True`).
      params: pytree of float arrays with P coordinates in all.
      key: a PRNG key.
      num_draws: number n >= 2 of independent gradient draws.
      groups: maps a leaf's key path (from `jax.tree_util.tree_flatten_with_path`) to a group
        name; default: the first path entry (the top-level field or dict key).
      chunk_size: draws per vmapped chunk; default keeps a chunk near 4M floats.
      time_repeats: timed calls for `seconds_per_gradient` (0: do not time; NaN reported).
      has_aux: whether `surrogate` returns `(scalar, aux)`.

    Returns:
      A `GradientStats`.

    Raises:
      TypeError, ValueError: a non-callable surrogate, a bad key, num_draws < 2, params with
        no float leaves, or a surrogate that does not return a scalar.
    """
    if not callable(surrogate):
        raise TypeError(f"surrogate must be a callable (params, key) -> scalar, got {type(surrogate).__name__}")
    key = _check_key(key)
    num_draws = check_positive_int(num_draws, "num_draws", minimum=2)
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    if isinstance(time_repeats, bool) or not isinstance(time_repeats, (int, np.integer)) or time_repeats < 0:
        raise ValueError(f"time_repeats must be an int >= 0 (0 disables timing), got {time_repeats!r}")
    flat, unravel = ravel_pytree(params)
    if flat.size == 0 or not jnp.issubdtype(flat.dtype, jnp.floating):
        raise ValueError(f"params must hold float arrays to differentiate, got dtype {flat.dtype} with "
                         f"{flat.size} coordinates")
    out = jax.eval_shape(surrogate, params, key)
    value = out[0] if has_aux else out
    if getattr(value, "shape", None) != ():
        raise ValueError(f"surrogate must return a scalar{' as its first output' if has_aux else ''}, "
                         f"got shape {getattr(value, 'shape', type(value).__name__)}")
    masks = _group_masks(params, groups or _default_groups)
    size, num_chunks = _chunking(num_draws, flat.shape[0], chunk_size)
    flat_grad = _flat_gradient(surrogate, has_aux)
    moments = jax.jit(lambda p, k: _moments(flat_grad, p, k, num_draws, size, num_chunks, flat.dtype))
    mean, m2 = moments(params, key)
    seconds = (time_gradient(surrogate, params, jax.random.fold_in(key, 0x7FFFFFFF), repeats=time_repeats,
                             has_aux=has_aux) if time_repeats else float("nan"))
    return _summarise(mean, m2, num_draws, unravel, masks, seconds)


# ----------------------------------------------------------------------------------------------
# The ADVI estimators


def _estimator_names(estimators: str | Sequence[str | Callable]) -> dict[str, Callable]:
    if isinstance(estimators, str) or callable(estimators):
        estimators = (estimators,)
    try:
        estimators = tuple(estimators)
    except TypeError:
        raise TypeError(f"estimators must be a name or a sequence of names from {sorted(ESTIMATORS)}, "
                        f"got {estimators!r}") from None
    if not estimators:
        raise ValueError(f"estimators must name at least one of {sorted(ESTIMATORS)}")
    out: dict[str, Callable] = {}
    for item in estimators:
        if isinstance(item, str):
            if item not in ESTIMATORS:
                raise ValueError(f"unknown estimator {item!r}; choose from {sorted(ESTIMATORS)}")
            name = item
        elif callable(item):
            name = getattr(item, "__name__", "custom")
        else:
            raise TypeError(f"each estimator must be a name from {sorted(ESTIMATORS)} or a callable, got {item!r}")
        if name in out:
            raise ValueError(f"estimator {name!r} is listed twice")
        out[name] = get_estimator(item)
    return out


def _check_num_samples(num_samples: int, names: Sequence[str]) -> int:
    num_samples = check_positive_int(num_samples, "num_samples")
    for name in names:
        if num_samples < min_num_samples(name):
            raise ValueError(f"estimator {name!r} needs num_samples >= {min_num_samples(name)}, got {num_samples}; "
                             f"pass num_samples={min_num_samples(name)} or drop {name!r}")
    return num_samples


def _check_model(model: Any) -> Model:
    if not isinstance(model, Model):
        raise TypeError(f"model must be an advi_jax Model (aj.Model or aj.from_numpyro), got {type(model).__name__}")
    return model


def _check_params(family: Family, params: PyTree, dim: int) -> None:
    reference = jax.eval_shape(lambda: family.init(jax.random.key(0), dim))
    ref_def = jax.tree_util.tree_structure(reference)
    got_def = jax.tree_util.tree_structure(params)
    if ref_def != got_def:
        raise ValueError(f"params do not match family {family.name!r}: expected {ref_def}, got {got_def} "
                         f"(build them with family.init(key, model.dim) or take result.params from a fit)")
    for ref, leaf in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(params)):
        if tuple(np.shape(leaf)) != tuple(ref.shape):
            raise ValueError(f"params do not match family {family.name!r} for a model of dim {dim}: a leaf has "
                             f"shape {np.shape(leaf)}, expected {ref.shape}")


def _estimator_index(name: str) -> int:
    """A stable per-estimator key offset (its position in ESTIMATORS, or a hash of a custom name)."""
    names = list(ESTIMATORS)
    return names.index(name) if name in names else 1000 + sum(map(ord, name))


def gradient_variance(model: Model, family: str | Family, params: PyTree, key: Array,
                      estimators: str | Sequence[str | Callable] = DEFAULT_ESTIMATORS, num_draws: int = 1000,
                      num_samples: int = 1, *, chunk_size: int | None = None,
                      time_repeats: int = 20) -> dict[str, GradientStats]:
    """Variance, SNR and cost of each ELBO gradient estimator at fixed variational parameters.

    For each estimator `e` (see `advi_jax.estimators`), `num_draws` independent draws of
    `grad_lambda surrogate_e(lambda; eps)` with `num_samples` Monte Carlo samples each. The
    estimators use independent keys (`fold_in(key, index of e in ESTIMATORS)`), so differences
    of their means have variance var_a/n + var_b/n. The coordinates are grouped as "loc" (the
    family's `loc`) and "scale" (every other leaf: raw scales, Cholesky entries).

    Args:
      model: an `aj.Model` (log density on R^K).
      family: "meanfield", "fullrank", or a `Family`.
      params: the family's parameters for this model (e.g. `result.params`).
      key: a PRNG key.
      estimators: names from `ESTIMATORS` (or estimator callables), default all five.
      num_draws: independent gradient draws per estimator (>= 2).
      num_samples: Monte Carlo samples inside each gradient (>= 2 for "score_baseline").
      chunk_size: draws per vmapped chunk (default: automatic).
      time_repeats: timed calls per estimator for `seconds_per_gradient` (0: skip timing).

    Returns:
      dict estimator name -> `GradientStats`, in the order given.

    Raises:
      TypeError, ValueError: an unknown estimator (the valid ones are listed), num_draws < 2,
        num_samples below an estimator's minimum, params that do not fit the family and model.

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
      >>> params = aj.FullRankGaussian().init(jax.random.key(0), 3, scale=1.0)
      >>> stats = aj.gradient_variance(model, "fullrank", params, jax.random.key(1), ("stl",), 100, time_repeats=0)
      >>> float(stats["stl"].variance_trace) < 1e-8     # q equals the target: STL is exact
      True
    """
    model = _check_model(model)
    family = get_family(family)
    key = _check_key(key)
    named = _estimator_names(estimators)
    num_samples = _check_num_samples(num_samples, [n for n in named if n in ESTIMATORS])
    num_draws = check_positive_int(num_draws, "num_draws", minimum=2)
    _check_params(family, params, model.dim)
    out = {}
    for name, estimator_fn in named.items():
        def surrogate(p, k, estimator_fn=estimator_fn):
            return estimator_fn(family, model.log_density, p, k, num_samples)[0]

        out[name] = gradient_stats(surrogate, params, jax.random.fold_in(key, _estimator_index(name)),
                                   num_draws=num_draws, groups=family_groups, chunk_size=chunk_size,
                                   time_repeats=time_repeats)
    return out


# ----------------------------------------------------------------------------------------------
# Along a fit


def track_gradient_variance(model: Model, family: str | Family, key: Array, num_steps: int, *,
                            every: int | None = None,
                            estimators: str | Sequence[str | Callable] = DEFAULT_ESTIMATORS,
                            num_draws: int = 200, num_samples: int = 1, fit_estimator: str = "reparam",
                            fit_num_samples: int = 1, optimizer: optax.GradientTransformation | None = None,
                            learning_rate: float | None = None, init_scale: float = 0.1,
                            loc: Any = None, chunk_size: int | None = None) -> VarianceTrace:
    """Run an ADVI fit and record each estimator's gradient variance every `every` steps.

    The fit is `advi(model, family, estimator=fit_estimator, num_samples=fit_num_samples)`'s pure
    step inside a jitted `lax.scan`; every `every` steps (and once at the end) the current
    parameters are frozen and each estimator in `estimators` is measured from `num_draws` extra
    gradient draws with `num_samples` samples each (keys independent of the fit's). The
    measurements do not influence the fit. On a Gaussian target with a full-rank family, STL's
    variance falls toward zero as q approaches the posterior; the reparameterisation
    estimator's does not (its entropy gradient and the log p gradient no longer cancel per draw).

    Args:
      model: an `aj.Model`.
      family: "meanfield", "fullrank", or a `Family`.
      key: a PRNG key.
      num_steps: optimisation steps (>= 1).
      every: steps between records (default: num_steps // 20, at least 1).
      estimators: names from `ESTIMATORS` to measure.
      num_draws: gradient draws per estimator per record (>= 2).
      num_samples: Monte Carlo samples inside each measured gradient.
      fit_estimator: the estimator that drives the fit.
      fit_num_samples: Monte Carlo samples per fit step.
      optimizer: an optax optimizer (default: `fit`'s default, Adam at `learning_rate`, cosine-decayed
        over the second half of the steps).
      learning_rate: Adam's step size when `optimizer` is None.
      init_scale: initial scale of q.
      loc: initial location of q, a (K,) vector (default zeros).
      chunk_size: draws per vmapped chunk.

    Returns:
      A `VarianceTrace` with T = num_steps // every + 1 records at steps
      0, every, ..., (T - 2) * every, num_steps.

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
      >>> trace = aj.track_gradient_variance(model, "fullrank", jax.random.key(0), 100, every=50,
      ...                                    estimators=("stl",), num_draws=10)
      >>> trace.steps.tolist()
      [0, 50, 100]
    """
    model = _check_model(model)
    family = get_family(family)
    key = _check_key(key)
    num_steps = check_positive_int(num_steps, "num_steps")
    every = max(1, num_steps // 20) if every is None else check_positive_int(every, "every")
    if every > num_steps:
        raise ValueError(f"every must be <= num_steps ({num_steps}), got {every}")
    named = _estimator_names(estimators)
    num_samples = _check_num_samples(num_samples, [n for n in named if n in ESTIMATORS])
    num_draws = check_positive_int(num_draws, "num_draws", minimum=2)
    if isinstance(fit_estimator, str) and fit_estimator not in ESTIMATORS:
        raise ValueError(f"unknown fit_estimator {fit_estimator!r}; choose from {sorted(ESTIMATORS)}")
    fit_num_samples = _check_num_samples(fit_num_samples, [fit_estimator] if isinstance(fit_estimator, str) else [])
    optimizer = resolve_optimizer(optimizer, learning_rate, num_steps)

    algorithm = advi(model, family, optimizer=optimizer, estimator=fit_estimator, num_samples=fit_num_samples,
                     init_scale=init_scale)
    fit_key, init_key, measure_key = jax.random.split(key, 3)
    state = algorithm.init(init_key, loc)
    flat, _ = ravel_pytree(state.params)
    masks = _group_masks(state.params, family_groups)
    loc_mask = jnp.asarray(masks.get("loc", np.zeros(flat.shape, bool)))
    size, num_chunks = _chunking(num_draws, flat.shape[0], chunk_size)
    flat_grads = {}
    for name, estimator_fn in named.items():
        def surrogate(p, k, estimator_fn=estimator_fn):
            return estimator_fn(family, model.log_density, p, k, num_samples)[0]

        flat_grads[name] = _flat_gradient(surrogate, False)
    num_blocks = num_steps // every
    # Record r is taken at step r * every (r < num_blocks) and the last one at num_steps.
    record_steps = jnp.concatenate([jnp.arange(num_blocks) * every, jnp.array([num_steps])]).astype(jnp.int32)

    def measure(params, record):
        out = {}
        k_record = jax.random.fold_in(measure_key, record)
        for name, flat_grad in flat_grads.items():
            k = jax.random.fold_in(k_record, _estimator_index(name))
            mean, m2 = _moments(flat_grad, params, k, num_draws, size, num_chunks, flat.dtype)
            variance = m2 / (num_draws - 1)
            out[name] = (jnp.sum(variance), jnp.sum(jnp.where(loc_mask, variance, 0.0)),
                         jnp.sum(jnp.where(loc_mask, 0.0, variance)), jnp.sqrt(jnp.sum(mean ** 2)))
        return out

    def run_until(state, elbo, stop):
        # One compiled step body; the number of steps to the next record is a traced bound.
        def body(carry):
            st, trace = carry
            st_new, info = algorithm.step(jax.random.fold_in(fit_key, st.step), st)
            return st_new, trace.at[st.step].set(info.elbo)

        return jax.lax.while_loop(lambda carry: carry[0].step < stop, body, (state, elbo))

    @jax.jit
    def run(state):
        def record(carry, r):
            st, elbo = carry
            measured = measure(st.params, r)  # one compiled copy of the measurement
            stop = record_steps[jnp.minimum(r + 1, num_blocks)]
            return run_until(st, elbo, stop), measured

        elbo = jnp.full((num_steps,), jnp.nan, flat.dtype)
        (state, elbo), measured = jax.lax.scan(record, (state, elbo), jnp.arange(num_blocks + 1))
        return state, measured, elbo

    state, measured, elbo = run(state)
    steps = record_steps
    pick = lambda i: {name: measured[name][i] for name in named}  # noqa: E731  (keep the caller's order)
    return VarianceTrace(steps, pick(0), pick(1), pick(2), pick(3), elbo, state.params)
