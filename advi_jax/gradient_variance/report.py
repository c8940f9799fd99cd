"""Tables of gradient-variance results, every estimate with its confidence interval.

Example:
  >>> import jax, jax.numpy as jnp, advi_jax as aj
  >>> from advi_jax.gradient_variance import variance_table, format_table
  >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))})
  >>> params = aj.MeanFieldGaussian().init(jax.random.key(0), 2)
  >>> rows = variance_table(aj.gradient_variance(model, "meanfield", params, jax.random.key(1), "reparam",
  ...                                            100, time_repeats=0))
  >>> rows[0]["estimator"], [k for k in sorted(rows[0]) if k.startswith("variance_trace")]
  ('reparam', ['variance_trace', 'variance_trace_lower', 'variance_trace_se', 'variance_trace_upper'])
"""

from __future__ import annotations

import math
from typing import Mapping

from advi_jax.gradient_variance.instruments import GradientStats

__all__ = ["TABLE_COLUMNS", "format_table", "variance_table"]

TABLE_COLUMNS: tuple[str, ...] = (
    "estimator", "variance_trace", "variance_trace_lower", "variance_trace_upper", "variance_trace_se",
    "loc_variance", "loc_variance_lower", "loc_variance_upper",
    "scale_variance", "scale_variance_lower", "scale_variance_upper",
    "median_snr", "median_snr_lower", "median_snr_upper", "seconds_per_gradient", "efficiency", "efficiency_lower",
    "efficiency_upper", "num_draws",
    "confidence",
)
"""Columns of `variance_table` rows (and of the CLI's CSV), in order."""


def variance_table(stats: Mapping[str, GradientStats]) -> list[dict]:
    """One row per estimator: variance trace, loc/scale parts and median SNR with their limits.

    Args:
      stats: dict estimator name -> `GradientStats` (e.g. from `aj.gradient_variance`).

    Returns:
      A list of dicts with keys `TABLE_COLUMNS` (floats; NaN where a group is absent or the
      cost was not timed).

    Raises:
      TypeError: a value that is not a `GradientStats`.
    """
    rows = []
    for name, s in stats.items():
        if not isinstance(s, GradientStats):
            raise TypeError(f"stats[{name!r}] must be a GradientStats, got {type(s).__name__}")
        nan2 = (math.nan, math.nan)
        loc = s.group_variance_interval.get("loc", nan2)
        scale = s.group_variance_interval.get("scale", nan2)
        rows.append({
            "estimator": name, "variance_trace": float(s.variance_trace),
            "variance_trace_lower": float(s.variance_trace_interval[0]),
            "variance_trace_upper": float(s.variance_trace_interval[1]), "variance_trace_se": s.variance_trace_se,
            "loc_variance": s.loc_variance, "loc_variance_lower": float(loc[0]), "loc_variance_upper": float(loc[1]),
            "scale_variance": s.scale_variance, "scale_variance_lower": float(scale[0]),
            "scale_variance_upper": float(scale[1]), "median_snr": s.median_snr,
            "median_snr_lower": float(s.median_snr_interval[0]), "median_snr_upper": float(s.median_snr_interval[1]),
            "seconds_per_gradient": s.seconds_per_gradient, "efficiency": s.efficiency,
            # the timing's own noise (a median of repeated calls) is left out of these limits
            "efficiency_lower": float(s.variance_trace_interval[0]) * s.seconds_per_gradient,
            "efficiency_upper": float(s.variance_trace_interval[1]) * s.seconds_per_gradient, "num_draws": s.num_draws,
            "confidence": s.confidence,
        })
    return rows


def _cell(value: float, lower: float, upper: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.4g} [{lower:.3g}, {upper:.3g}]"


def format_table(rows: list[dict]) -> str:
    """The rows of `variance_table` as aligned text, each estimate followed by its [lower, upper].

    Args:
      rows: from `variance_table`.

    Returns:
      The table, one line per estimator under a header naming the confidence level.
    """
    if not rows:
        return "(no estimators)"
    heads = ("variance trace", "loc variance", "scale variance", "median SNR", "s/gradient", "efficiency")
    body = []
    for r in rows:
        body.append([r["estimator"], _cell(r["variance_trace"], r["variance_trace_lower"], r["variance_trace_upper"]),
                     _cell(r["loc_variance"], r["loc_variance_lower"], r["loc_variance_upper"]),
                     _cell(r["scale_variance"], r["scale_variance_lower"], r["scale_variance_upper"]),
                     _cell(r["median_snr"], r["median_snr_lower"], r["median_snr_upper"]),
                     "-" if math.isnan(r["seconds_per_gradient"]) else f"{r['seconds_per_gradient']:.3g}",
                     _cell(r["efficiency"], r["efficiency_lower"], r["efficiency_upper"])])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(("estimator",) + heads)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    level = f"{100 * rows[0]['confidence']:.0f}%"
    return "\n".join([f"(brackets: {level} jackknife intervals)", line(("estimator",) + heads)]
                     + [line(b) for b in body])
