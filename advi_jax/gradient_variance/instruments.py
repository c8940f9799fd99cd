"""The instrument: mean, variance, signal-to-noise ratio and cost of a stochastic gradient, each
with a confidence interval.

For an estimator `g(lambda; eps)` of a gradient at fixed parameters `lambda` (a pytree flattened
to `P` coordinates), `num_draws` independent draws `g_1, ..., g_n` (draw i with key
`fold_in(key, i)`, computed with `jax.vmap` over keys in chunks, never a Python loop) give

* the mean gradient `m = (1/n) sum_i g_i`;
* the per-coordinate variance `v_p = 1/(n-1) sum_i (g_ip - m_p)^2` and its sum
  `variance_trace = tr Cov[g]` (the expected squared distance of one draw from the mean);
* the variance per parameter group (e.g. "loc" and "scale" of a Gaussian family);
* the signal-to-noise ratio per coordinate `snr_p = |m_p| / sqrt(v_p)` (Rainforth et al. 2018);
* the wall time of one jitted gradient call and `efficiency = variance_trace * seconds`, the
  variance of the average of as many draws as fit in one second (lower is better).

Moments are accumulated with Chan's parallel update of (count, mean, M2), which has no
E[g^2] - E[g]^2 cancellation. Draw i is also assigned to group `i mod G` (`num_groups`, default
20) and the moments are kept per group; the delete-one-group jackknife then gives a standard
error for every statistic above (including the trace, whose coordinates are correlated, and the
SNR), without storing the draws. Intervals for variances use the jackknife on the log scale
(`v * exp(+-t se_log)`, always positive, right-skewed like the sampling distribution of a
variance); SNR intervals are `snr +- t se` clipped at 0. `t` is Student's quantile with `G - 1`
degrees of freedom.

Coordinates that every draw leaves at exactly zero (e.g. the unused upper triangle of the
full-rank family's `off_diag`) are "inactive": their SNR is reported as 0 (no signal, no noise,
never NaN) and they are left out of `median_snr` (which is 0 when no coordinate is active).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from advi_jax.gradient_variance import gradient_stats
  >>> surrogate = lambda p, k: jnp.sum(p * jax.random.normal(k, p.shape))   # gradient ~ N(0, I)
  >>> s = gradient_stats(surrogate, jnp.ones(3), jax.random.key(1), num_draws=2000, time_repeats=0)
  >>> bool(s.variance_trace_interval[0] < 3.0 < s.variance_trace_interval[1])  # 95%: key(0)'s misses 3
  True

References:
  Chan, Golub & LeVeque (1979). Updating formulae and a pairwise algorithm for computing sample variances.
  Efron & Stein (1981). The jackknife estimate of variance. Annals of Statistics 9(3).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import statistics
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from advi_jax import compile_options
from advi_jax._types import Array, PyTree, check_positive_int
from advi_jax.diagnostics import check_key

__all__ = ["GradientStats", "gradient_stats", "gradient_stats_many", "time_gradient", "student_t_quantile",
           "CONFIDENCE"]

CONFIDENCE = 0.95
"""Coverage of every interval the package reports."""

_NUM_GROUPS = 20
_CHUNK_ELEMENTS = 2**22  # one vmapped chunk holds about this many floats (chunk_size * P)


class GradientStats(NamedTuple):
    """Summary of `num_draws` independent draws of a stochastic gradient at fixed parameters.

    Attributes:
      mean: mean gradient, a pytree with the structure of the parameters.
      mean_flat: (P,) the same, flattened (`jax.flatten_util.ravel_pytree` order).
      variance: (P,) per-coordinate sample variance (denominator n - 1).
      variance_trace: scalar, sum of `variance`: the trace of the gradient covariance.
      group_variance: dict group name -> scalar, the sum of `variance` over the group.
      snr: (P,) |mean| / sd per coordinate: inf where sd = 0 < |mean|, 0 on inactive coordinates.
      seconds_per_gradient: median wall time of one jitted gradient call (NaN if not timed).
      efficiency: variance_trace * seconds_per_gradient (lower is better; NaN if not timed).
      num_draws: number of gradient draws n.
      variance_interval: (2, P) lower and upper confidence limits of `variance`.
      variance_trace_interval: (2,) confidence limits of `variance_trace`.
      variance_trace_se: jackknife standard error of `variance_trace`.
      group_variance_interval: dict group name -> (2,) confidence limits.
      snr_interval: (2, P) confidence limits of `snr`.
      median_snr_interval: (2,) confidence limits of `median_snr`.
      active: (P,) bool, coordinates that some draw moved away from exactly zero.
      num_groups: G, the number of jackknife groups.
      confidence: the intervals' nominal coverage.
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
    variance_interval: np.ndarray
    variance_trace_interval: np.ndarray
    variance_trace_se: float
    group_variance_interval: dict[str, np.ndarray]
    snr_interval: np.ndarray
    median_snr_interval: np.ndarray
    active: np.ndarray
    num_groups: int
    confidence: float

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
        """Median of the per-coordinate SNR over the active coordinates (0 if none is active)."""
        return _median_active(np.asarray(self.snr, np.float64), self.active)

    def standard_error(self) -> Array:
        """(P,) Monte Carlo standard error of `mean_flat`: sqrt(variance / num_draws)."""
        return jnp.sqrt(self.variance / self.num_draws)


# ----------------------------------------------------------------------------------------------
# Helpers shared by the package


def student_t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t with `dof` degrees of freedom (Cornish-Fisher, error < 2e-3 for dof >= 3).

    Args:
      p: probability in (0.5, 1).
      dof: degrees of freedom (>= 1).

    Returns:
      t such that P(T <= t) = p.
    """
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    if dof <= 2:  # closed forms
        q = 2.0 * p - 1.0
        return math.tan(math.pi * (p - 0.5)) if dof == 1 else q * math.sqrt(2.0 / (1.0 - q * q))
    v = float(dof)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))


def _path_head(path) -> str:
    entry = path[0]
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def default_groups(path) -> str:
    """Group of a leaf: its top-level field or dict key ("params" for a bare array)."""
    return _path_head(path) if path else "params"


def group_masks(params: PyTree, groups: Callable[[Any], str]) -> dict[str, np.ndarray]:
    """Boolean (P,) masks, one per group, aligned with `ravel_pytree(params)`."""
    leaves_with_path, _ = jax.tree_util.tree_flatten_with_path(params)
    sizes = [int(np.size(leaf)) for _, leaf in leaves_with_path]
    total = sum(sizes)
    masks: dict[str, np.ndarray] = {}
    start = 0
    for (path, _), size in zip(leaves_with_path, sizes):
        masks.setdefault(str(groups(path)), np.zeros((total,), bool))[start:start + size] = True
        start += size
    return masks


def flat_gradient(surrogate: Callable, has_aux: bool = False) -> Callable:
    """`(params, key) -> (P,)` flattened gradient of `surrogate`."""
    def fn(params, key):
        grads = jax.grad(surrogate, has_aux=has_aux)(params, key)
        return ravel_pytree(grads[0] if has_aux else grads)[0]

    return fn


def chunking(num_draws: int, dim: int, chunk_size: int | None) -> tuple[int, int]:
    """(draws per chunk, number of chunks)."""
    if chunk_size is None:
        chunk_size = max(1, min(num_draws, _CHUNK_ELEMENTS // max(dim, 1)))
    chunk_size = min(chunk_size, num_draws)
    return chunk_size, -(-num_draws // chunk_size)


def num_groups_for(num_draws: int) -> int:
    """G: 20 jackknife groups, or one per draw when there are fewer draws."""
    return min(_NUM_GROUPS, num_draws)


# ----------------------------------------------------------------------------------------------
# Grouped moments (traceable)


class GroupMoments(NamedTuple):
    """Per-group (count, mean, M2) of the draws: shapes (G,), (G, P), (G, P)."""

    count: Array
    mean: Array
    m2: Array


def grouped_moments(flat_grad: Callable, params: PyTree, key: Array, num_draws: int, chunk_size: int,
                    num_chunks: int, num_groups: int, dtype) -> GroupMoments:
    """Per-group moments of `num_draws` gradient draws, vmapped within chunks, scanned over chunks.

    Pure and traceable (the tracker calls it inside `lax.scan`). Draw i uses key
    `fold_in(key, i)` and belongs to group `i mod num_groups`, so nothing depends on the chunk size.
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
        onehot = jax.nn.one_hot(idx % num_groups, num_groups, dtype=dtype) * w[:, None]  # (chunk, G)
        n_b = jnp.sum(onehot, axis=0)  # (G,)
        mean_b = (onehot.T @ draws) / jnp.maximum(n_b, 1.0)[:, None]
        m2_b = jnp.einsum("cg,cgp->gp", onehot, (draws[:, None, :] - mean_b[None]) ** 2)
        total = count + n_b
        frac = (n_b / jnp.maximum(total, 1.0))[:, None]
        delta = mean_b - mean
        mean = mean + delta * frac
        m2 = m2 + m2_b + delta ** 2 * (count[:, None] * frac)
        return (total, mean, m2), None

    init = (jnp.zeros((num_groups,), dtype), jnp.zeros((num_groups, dim), dtype),
            jnp.zeros((num_groups, dim), dtype))
    (count, mean, m2), _ = jax.lax.scan(body, init, (index, weight))
    return GroupMoments(count, mean, m2)


def pooled_and_left_out(g: GroupMoments, xp=jnp):
    """Pooled (n, mean, M2) and the G leave-one-group-out versions ((G,), (G, P), (G, P))."""
    n = xp.sum(g.count)
    mean = xp.sum(g.count[:, None] * g.mean, axis=0) / n
    dev = g.mean - mean[None]
    m2 = xp.sum(g.m2, axis=0) + xp.sum(g.count[:, None] * dev ** 2, axis=0)
    n_loo = n - g.count
    safe = xp.maximum(n_loo, 1.0)[:, None]
    mean_loo = (n * mean[None] - g.count[:, None] * g.mean) / safe
    m2_loo = m2[None] - g.m2 - n * g.count[:, None] * dev ** 2 / safe
    return (n, mean, m2), (n_loo, mean_loo, xp.maximum(m2_loo, 0.0))


def jackknife_interval(theta, theta_loo, t: float, *, log: bool, xp=jnp):
    """(lower, upper, se) of a statistic from its G leave-one-group-out values (axis 0).

    With `log=True` the jackknife runs on log(theta) (theta >= 0; theta = 0 gives [0, 0]).
    """
    num = theta_loo.shape[0]
    if log:
        tiny = xp.finfo(xp.result_type(theta)).tiny
        lt_loo = xp.log(xp.maximum(theta_loo, tiny))
        se_log = xp.sqrt((num - 1) / num * xp.sum((lt_loo - xp.mean(lt_loo, axis=0, keepdims=True)) ** 2, axis=0))
        se = theta * se_log
        lower = xp.where(theta > 0, theta * xp.exp(-t * se_log), 0.0)
        upper = xp.where(theta > 0, theta * xp.exp(t * se_log), 0.0)
        return lower, upper, se
    finite = xp.isfinite(theta_loo)
    loo = xp.where(finite, theta_loo, 0.0)
    se = xp.sqrt((num - 1) / num * xp.sum((loo - xp.mean(loo, axis=0, keepdims=True)) ** 2, axis=0))
    se = xp.where(xp.all(finite, axis=0), se, xp.inf)
    with np.errstate(invalid="ignore"):  # an infinite statistic keeps [inf, inf]
        lower = xp.where(xp.isfinite(theta), xp.maximum(theta - t * se, 0.0), theta)
        upper = xp.where(xp.isfinite(theta), theta + t * se, theta)
    return lower, upper, se


def _snr(mean, m2, n, active, xp):
    sd = xp.sqrt(m2 / xp.maximum(n - 1.0, 1.0))
    abs_mean = xp.abs(mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = xp.where(sd > 0, abs_mean / xp.where(sd > 0, sd, 1.0), xp.where(abs_mean > 0, xp.inf, 0.0))
    return xp.where(active, ratio, 0.0)


def _median_active(snr: np.ndarray, active: np.ndarray) -> float:
    values = snr[..., np.asarray(active, bool)]
    return float(np.median(values)) if values.size else 0.0  # every draw exactly zero: no signal


def summarise(g: GroupMoments, unravel: Callable, masks: dict[str, np.ndarray], seconds: float,
              num_draws: int, confidence: float = CONFIDENCE) -> GradientStats:
    """`GradientStats` (with jackknife intervals) from grouped moments (host-side, float64)."""
    g = GroupMoments(*(np.asarray(a, np.float64) for a in g))
    num_groups = int(np.sum(g.count > 0))
    g = GroupMoments(*(a[g.count > 0] for a in g))
    t = student_t_quantile(0.5 + confidence / 2, max(num_groups - 1, 1))
    (n, mean, m2), (n_loo, mean_loo, m2_loo) = pooled_and_left_out(g, np)
    variance = m2 / (n - 1)
    var_loo = m2_loo / np.maximum(n_loo - 1, 1.0)[:, None]
    active = (m2 > 0) | (mean != 0) | np.any(g.mean != 0, axis=0)
    v_lo, v_hi, _ = jackknife_interval(variance, var_loo, t, log=True, xp=np)
    trace, trace_loo = variance.sum(), var_loo.sum(axis=1)
    t_lo, t_hi, t_se = jackknife_interval(trace, trace_loo, t, log=True, xp=np)
    groups, group_intervals = {}, {}
    for name, mask in masks.items():
        value, loo = variance[mask].sum(), var_loo[:, mask].sum(axis=1)
        lo, hi, _ = jackknife_interval(value, loo, t, log=True, xp=np)
        groups[name] = jnp.asarray(value, jnp.result_type(float))
        group_intervals[name] = np.array([lo, hi])
    snr = _snr(mean, m2, n, active, np)
    snr_loo = _snr(mean_loo, m2_loo, n_loo[:, None], active, np)
    s_lo, s_hi, _ = jackknife_interval(snr, snr_loo, t, log=False, xp=np)
    med = _median_active(snr, active)
    med_loo = np.array([_median_active(row, active) for row in snr_loo])
    m_lo, m_hi, _ = jackknife_interval(np.float64(med), med_loo, t, log=False, xp=np)
    dtype = jnp.result_type(float)
    mean_j = jnp.asarray(mean, dtype)
    efficiency = float(trace) * seconds if math.isfinite(seconds) else float("nan")
    return GradientStats(unravel(mean_j), mean_j, jnp.asarray(variance, dtype), jnp.asarray(trace, dtype), groups,
                         jnp.asarray(snr, dtype), seconds, efficiency, int(num_draws), np.stack([v_lo, v_hi]),
                         np.array([t_lo, t_hi]), float(t_se), group_intervals, np.stack([s_lo, s_hi]),
                         np.array([m_lo, m_hi], np.float64), active, num_groups, float(confidence))


# ----------------------------------------------------------------------------------------------
# Public entry points


def time_gradient(surrogate: Callable, params: PyTree, key: Array, *, repeats: int = 20,
                  has_aux: bool = False) -> float:
    """Median wall time in seconds of one jitted call of `jax.grad(surrogate)(params, key)`.

    The function is compiled and run twice before timing; each timed call uses a fresh key and
    waits with `block_until_ready`, so the figure includes dispatch overhead.

    Args:
      surrogate: `(params, key) -> scalar` (or `(scalar, aux)` with `has_aux=True`).
      params: the parameters at which to differentiate.
      key: PRNG key; call i uses `fold_in(key, i)`.
      repeats: number of timed calls (>= 1).
      has_aux: whether `surrogate` returns `(scalar, aux)`.

    Returns:
      The median time of the `repeats` calls, in seconds.

    Raises:
      TypeError, ValueError: repeats not an int >= 1.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> seconds = time_gradient(lambda p, k: jnp.sum(p ** 2), jnp.ones(3), jax.random.key(0), repeats=3)
    """
    repeats = check_positive_int(repeats, "repeats")
    return _time_calls(jax.jit(jax.grad(surrogate, has_aux=has_aux)), params, key, repeats)


def _time_calls(grad_fn: Callable, params: PyTree, key: Array, repeats: int) -> float:
    """`time_gradient`'s timing of a (jitted or compiled) gradient function: two untimed calls, then
    the median of `repeats` timed ones, each with a fresh key."""
    for i in range(2):
        jax.block_until_ready(grad_fn(params, jax.random.fold_in(key, i)))
    times = []
    for i in range(repeats):
        k = jax.random.fold_in(key, 2 + i)
        start = time.perf_counter()
        jax.block_until_ready(grad_fn(params, k))
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def gradient_stats(surrogate: Callable, params: PyTree, key: Array, *, num_draws: int = 1000,
                   groups: Callable[[Any], str] | None = None, chunk_size: int | None = None,
                   time_repeats: int = 20, has_aux: bool = False,
                   confidence: float = CONFIDENCE) -> GradientStats:
    """Mean, variance, SNR and cost of the stochastic gradient `jax.grad(surrogate)(params, key)`.

    The generic instrument: `surrogate(params, key)` is any scalar whose gradient with respect to
    `params` is the estimator under study (an ELBO surrogate, an amortized VAE objective, a
    1-D test function, ...). See the module docstring for the intervals.

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
      confidence: coverage of the reported intervals, in (0, 1).

    Returns:
      A `GradientStats`.

    Raises:
      TypeError, ValueError: a non-callable surrogate, a bad key, num_draws < 2, params with
        no float leaves, a confidence outside (0, 1), or a surrogate that does not return a scalar.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> s = gradient_stats(lambda p, k: jnp.sum(p * jax.random.normal(k, (2,))), jnp.ones(2),
      ...                    jax.random.key(0), num_draws=100, time_repeats=0)
      >>> s.variance.shape
      (2,)
    """
    job = _Prepared(surrogate, params, key, num_draws, groups, chunk_size, time_repeats, has_aux, confidence)
    job.compile()
    return job.finish()


def gradient_stats_many(jobs: Sequence[tuple[Callable, PyTree, Array]], *, num_draws: int = 1000,
                        groups: Callable[[Any], str] | None = None, chunk_size: int | None = None,
                        time_repeats: int = 20, has_aux: bool = False,
                        confidence: float = CONFIDENCE) -> list[GradientStats]:
    """`gradient_stats(surrogate, params, key, ...)` for each `(surrogate, params, key)` in `jobs`,
    with every program compiled first, on as many threads as there are CPU cores (XLA's compiler
    does not hold Python's lock), then each estimator run and timed alone, one after the other (no
    timing shares the machine with a compile). Each result is `gradient_stats`'s for its job.
    Measured: `advi-jax variance`'s table (five estimators, breast cancer) spent 21 s of its 26 s
    compiling two programs per estimator one after another.

    Raises:
      as `gradient_stats`, for the first bad job, before anything is compiled.
    """
    prepared = [_Prepared(surrogate, params, key, num_draws, groups, chunk_size, time_repeats, has_aux, confidence)
                for surrogate, params, key in jobs]
    workers = min(len(prepared), os.cpu_count() or 1)
    if workers > 1:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for done in [pool.submit(job.compile) for job in prepared]:
                done.result()
    else:
        for job in prepared:
            job.compile()
    return [job.finish() for job in prepared]


class _Prepared:
    """One `gradient_stats` call: its arguments checked and its two programs made on construction,
    `compile()` compiles them (the moments' and, when timing, one gradient's), then `finish()` runs,
    times and summarises."""

    def __init__(self, surrogate, params, key, num_draws, groups, chunk_size, time_repeats, has_aux, confidence):
        if not callable(surrogate):
            raise TypeError(f"surrogate must be a callable (params, key) -> scalar, got {type(surrogate).__name__}")
        self.key = check_key(key)
        self.num_draws = num_draws = check_positive_int(num_draws, "num_draws", minimum=2)
        if chunk_size is not None:
            chunk_size = check_positive_int(chunk_size, "chunk_size")
        if isinstance(time_repeats, bool) or not isinstance(time_repeats, (int, np.integer)) or time_repeats < 0:
            raise ValueError(f"time_repeats must be an int >= 0 (0 disables timing), got {time_repeats!r}")
        self.time_repeats = time_repeats
        self.confidence = check_confidence(confidence)
        flat, self.unravel = ravel_pytree(params)
        if flat.size == 0 or not jnp.issubdtype(flat.dtype, jnp.floating):
            raise ValueError(f"params must hold float arrays to differentiate, got dtype {flat.dtype} with "
                             f"{flat.size} coordinates")
        closed, out = jax.make_jaxpr(surrogate, return_shape=True)(params, self.key)
        value = out[0] if has_aux else out
        if getattr(value, "shape", None) != ():
            raise ValueError(f"surrogate must return a scalar{' as its first output' if has_aux else ''}, "
                             f"got shape {getattr(value, 'shape', type(value).__name__)}")
        self.params = params
        self.masks = group_masks(params, groups or default_groups)
        self.closed_over = closed.consts  # the arrays the surrogate closes over (a model's data)
        size, num_chunks = chunking(num_draws, flat.shape[0], chunk_size)
        num_groups = num_groups_for(num_draws)
        grad_fn = flat_gradient(surrogate, has_aux)
        self._moments = jax.jit(lambda p, k: grouped_moments(grad_fn, p, k, num_draws, size, num_chunks, num_groups,
                                                             flat.dtype))
        self._grad = jax.jit(jax.grad(surrogate, has_aux=has_aux))  # timed as `time_gradient` times it
        self._timing_key = jax.random.fold_in(self.key, 0x7FFFFFFF)
        self._compiled_moments = self._compiled_grad = None

    def compile(self) -> None:
        # its run time is not reported: compiled by the library's arithmetic rule (fast where that pays)
        self._compiled_moments = compile_options.compile_by_cost(self._moments, (self.params, self.key),
                                                                 self.closed_over, self.num_draws)
        if self.time_repeats:  # XLA's full options: its time is the reported cost
            self._compiled_grad = self._grad.lower(self.params, self._timing_key).compile()

    def finish(self) -> GradientStats:
        g = self._compiled_moments(self.params, self.key)
        seconds = (_time_calls(self._compiled_grad, self.params, self._timing_key, self.time_repeats)
                   if self.time_repeats else float("nan"))
        return summarise(g, self.unravel, self.masks, seconds, self.num_draws, self.confidence)





def check_confidence(confidence: Any) -> float:
    """`confidence` as a float in (0, 1), else a ValueError naming it."""
    try:
        value = float(confidence)
    except (TypeError, ValueError):
        raise TypeError(f"confidence must be a number in (0, 1), got {confidence!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return value
