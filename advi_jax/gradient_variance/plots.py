"""Figures of gradient-variance results, every estimate drawn with its confidence interval.

Each function writes one PNG (matplotlib's Agg backend, no display needed), closes the figure and
returns the path. Variances are drawn on a log scale (values at or below zero are drawn at the
smallest float32 so an exact zero, e.g. STL at the optimum, stays visible).

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> from advi_jax.gradient_variance import plot_variance_bars
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
  >>> params = aj.MeanFieldGaussian().init(jax.random.key(0), 2)
  >>> stats = aj.gradient_variance(model, "meanfield", params, jax.random.key(1), num_draws=100, time_repeats=0)
  >>> plot_variance_bars(stats, "variance.png")  # doctest: +SKIP
  'variance.png'
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from advi_jax.gradient_variance.instruments import GradientStats

__all__ = ["plot_snr", "plot_univariate_study", "plot_variance_along_fit", "plot_variance_bars"]

_FLOOR = float(np.finfo(np.float32).tiny)


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _check_path(path) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"path {path!r}: folder {folder!r} does not exist")
    return path


def _check_stats(stats) -> Mapping[str, GradientStats]:
    if not isinstance(stats, Mapping) or not stats or not all(isinstance(s, GradientStats) for s in stats.values()):
        raise TypeError("stats must be a non-empty dict estimator name -> GradientStats "
                        "(from aj.gradient_variance or gradient_stats)")
    return stats


def _save(fig, plt, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_variance_bars(stats: Mapping[str, GradientStats], path, title: str = "") -> str:
    """Log-scale bars of each estimator's variance trace and its loc / scale parts, with error bars.

    Args:
      stats: dict estimator name -> `GradientStats`.
      path: the PNG to write (its folder must exist).
      title: the figure title.

    Returns:
      `path`.

    Raises:
      TypeError: `stats` is not a dict of `GradientStats`.
      FileNotFoundError: the folder of `path` does not exist.
    """
    stats, path = _check_stats(stats), _check_path(path)
    plt = _pyplot()
    names = list(stats)
    position = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7.5, 4))
    nan2 = np.array([np.nan, np.nan])
    parts = (("total", lambda s: (float(s.variance_trace), s.variance_trace_interval)),
             ("loc", lambda s: (s.loc_variance, s.group_variance_interval.get("loc", nan2))),
             ("scale", lambda s: (s.scale_variance, s.group_variance_interval.get("scale", nan2))))
    width = 0.27
    for offset, (label, get) in zip((-width, 0.0, width), parts):
        values, intervals = zip(*(get(stats[n]) for n in names))
        values = np.maximum(np.asarray(values, np.float64), _FLOOR)
        lo = np.maximum(np.asarray([i[0] for i in intervals], np.float64), _FLOOR)
        hi = np.maximum(np.asarray([i[1] for i in intervals], np.float64), _FLOOR)
        err = np.nan_to_num(np.stack([values - np.minimum(lo, values), np.maximum(hi, values) - values]))
        ax.bar(position + offset, values, width=width, label=label, yerr=err, capsize=3)
    ax.set_yscale("log")
    ax.set_xticks(position, names, rotation=20)
    level = next(iter(stats.values())).confidence
    ax.set_ylabel(f"trace of gradient covariance\n(error bars: {100 * level:.0f}% intervals)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    return _save(fig, plt, path)


def plot_snr(stats: Mapping[str, GradientStats], path, title: str = "") -> str:
    """Per-coordinate SNR of each estimator (dots) and its median with the median's interval.

    Inactive coordinates (always exactly zero) are left out.

    Args:
      stats: dict estimator name -> `GradientStats`.
      path: the PNG to write.
      title: the figure title.

    Returns:
      `path`.

    Raises:
      TypeError, FileNotFoundError: as `plot_variance_bars`.
    """
    stats, path = _check_stats(stats), _check_path(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    rng = np.random.default_rng(0)
    for i, (name, s) in enumerate(stats.items()):
        snr = np.asarray(s.snr, np.float64)[np.asarray(s.active, bool)]
        snr = np.clip(snr[np.isfinite(snr)], _FLOOR, None)
        ax.scatter(i + rng.uniform(-0.15, 0.15, snr.shape), snr, s=6, alpha=0.4, color="0.5")
        med, (lo, hi) = s.median_snr, s.median_snr_interval
        if np.isfinite(med):
            ax.errorbar([i], [max(med, _FLOOR)], yerr=[[max(med - lo, 0.0)], [max(hi - med, 0.0)]], fmt="o",
                        color="C3", capsize=5, label="median (interval)" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(stats)), list(stats), rotation=20)
    ax.set_ylabel("signal-to-noise ratio |mean| / sd")
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, plt, path)


def plot_variance_along_fit(trace, path, title: str = "") -> str:
    """Each estimator's variance trace against the optimisation step, with its interval as a band.

    Args:
      trace: a `VarianceTrace` (from `aj.track_gradient_variance`).
      path: the PNG to write.
      title: the figure title.

    Returns:
      `path`.

    Raises:
      TypeError: `trace` is not a `VarianceTrace`.
      FileNotFoundError: the folder of `path` does not exist.
    """
    from advi_jax.gradient_variance.advi import VarianceTrace

    if not isinstance(trace, VarianceTrace):
        raise TypeError(f"trace must be a VarianceTrace (from aj.track_gradient_variance), got {type(trace).__name__}")
    path = _check_path(path)
    plt = _pyplot()
    steps = np.asarray(trace.steps)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, (name, values) in enumerate(trace.variance_trace.items()):
        lo, hi = np.asarray(trace.variance_trace_interval[name], np.float64)
        ax.plot(steps, np.maximum(np.asarray(values, np.float64), _FLOOR), marker=".", label=name, color=f"C{i}")
        ax.fill_between(steps, np.maximum(lo, _FLOOR), np.maximum(hi, _FLOOR), color=f"C{i}", alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("ADVI step")
    ax.set_ylabel(f"trace of gradient covariance\n(bands: {100 * trace.confidence:.0f}% intervals)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    return _save(fig, plt, path)


def plot_univariate_study(results: Mapping[str, Mapping], path, title: str = "") -> str:
    """Mohamed et al.'s figure: exact variance (lines) and measured variance (bands) against k.

    Args:
      results: dict test function -> `univariate.study(function, ...)` output (one column of
        panels per function; rows: the gradient w.r.t. mu and sigma).
      path: the PNG to write.
      title: the figure title.

    Returns:
      `path`.

    Raises:
      TypeError: `results` is not such a dict.
      FileNotFoundError: the folder of `path` does not exist.
    """
    from advi_jax.gradient_variance.univariate import StudyResult

    if (not isinstance(results, Mapping) or not results
            or not all(isinstance(r, StudyResult) for res in results.values() for r in res.values())):
        raise TypeError("results must be a dict function -> univariate.study(...) output")
    path = _check_path(path)
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(results), figsize=(4 * len(results), 6), squeeze=False)
    for col, (function, res) in enumerate(results.items()):
        for row, param in enumerate(("mu", "sigma")):
            ax = axes[row, col]
            for i, (estimator, r) in enumerate(res.items()):
                ax.plot(r.k, np.maximum(r.exact[row], _FLOOR), color=f"C{i}", label=f"{estimator} (exact)")
                ax.fill_between(r.k, np.maximum(r.interval[0, row], _FLOOR), np.maximum(r.interval[1, row], _FLOOR),
                                color=f"C{i}", alpha=0.25, lw=0)
                ax.plot(r.k, np.maximum(r.measured[row], _FLOOR), ".", color=f"C{i}", ms=3)
            ax.set_yscale("log")
            ax.set_xlabel("k")
            ax.set_title(f"{function}: variance of dF/d{param}", fontsize=9)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, plt, path)
