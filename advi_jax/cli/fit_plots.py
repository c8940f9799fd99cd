"""Figures written by `advi-jax fit`: the ELBO trace, the marginal posteriors (one panel per
parameter group, each on its own scale) and the posterior predictive check.

Each function returns a matplotlib Figure (the caller saves and closes it), so tests can
inspect the axes.
"""

from __future__ import annotations

import importlib
import threading

import numpy as np


def prefetch() -> threading.Thread:
    """Import matplotlib's Figure and Agg canvas in a background thread, and return the thread.

    Importing matplotlib is about half a second of Python that the figures wait for at the end
    of `advi-jax fit`; started before the fit, it runs while XLA compiles (compilation releases
    the GIL), so on a machine with a second core it costs the command almost no wall time.
    A later import in the main thread finds the modules, or waits for the import in progress.
    """
    thread = threading.Thread(target=_import_matplotlib, name="advi_jax-prefetch-matplotlib", daemon=True)
    thread.start()
    return thread


def _import_matplotlib() -> None:
    try:
        for name in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
            importlib.import_module(name)
    except Exception:  # noqa: BLE001 - the figures' own import reports any problem
        pass


def _figure(**kwargs):
    """A Figure on the Agg canvas, without pyplot (no GUI backend search, no global figure list:
    importing pyplot costs several tenths of a second of the command's start-up)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def elbo_figure(result):
    """The per-step ELBO estimates with a moving mean, the y-range set by the last 90%."""
    elbo = np.asarray(result.elbo, float)
    steps = np.arange(1, len(elbo) + 1)
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(steps, elbo, lw=0.5, alpha=0.35, color="tab:blue", label="per-step estimate")
    window = max(1, len(elbo) // 100)
    if len(elbo) >= window > 1:
        smooth = np.convolve(np.nan_to_num(elbo, nan=np.nanmean(elbo)), np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", lw=1.8, label=f"moving mean ({window} steps)")
    finite = elbo[np.isfinite(elbo)]
    if finite.size:
        tail = finite[len(finite) // 10:]
        lo, hi = np.percentile(tail, 1), np.max(tail)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO")
    ax.set_title(f"ADVI ({result.family.name}, {result.estimator}): ELBO trace")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def _group(label: str) -> str:
    return label.split("[", 1)[0]


_GROUP_TITLES = {
    "intercept": "intercept (log-odds / log-rate at the feature means)",
    "beta": "coefficients per standard deviation of each feature",
    "tau": "coefficient scale tau",
}


def marginals_figure(rows: list[dict]):
    """Posterior mean and 90% interval of every scalar, one panel per parameter group.

    Groups (`intercept`, `beta`, `tau`, ...) get their own panel and x-axis, so an intercept
    of 1 does not squeeze coefficients of +-0.2 with sds of 0.005 into invisible dots.

    Args:
      rows: summary rows with keys parameter, mean, 5%, 95%.

    Returns:
      A matplotlib Figure with one axis per group (in order of first appearance).
    """
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_group(r["parameter"]), []).append(r)
    heights = [len(g) + 1.2 for g in groups.values()]
    fig = _figure(figsize=(7, 0.28 * sum(heights) + 0.8))
    axes = fig.subplots(len(groups), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (name, group) in zip(axes[:, 0], groups.items()):
        y = np.arange(len(group))[::-1]
        mean = np.array([r["mean"] for r in group])
        lo = np.array([r["5%"] for r in group])
        hi = np.array([r["95%"] for r in group])
        ax.hlines(y, lo, hi, color="tab:blue", lw=2.5, label="90% interval")
        ax.plot(mean, y, "o", color="black", ms=3.5, label="mean")
        span = max(float(hi.max() - lo.min()), 1e-12)
        left, right = float(lo.min()) - 0.08 * span, float(hi.max()) + 0.08 * span
        if name == "beta" and left <= 0 <= right + 0.5 * span:
            ax.axvline(0.0, color="grey", lw=0.8, ls="--")
            right = max(right, 0.05 * span)
        ax.set_xlim(left, right)
        ax.set_yticks(y)
        ax.set_yticklabels([r["parameter"] for r in group], fontsize=7)
        ax.set_ylim(-0.7, len(group) - 0.3)
        ax.set_title(_GROUP_TITLES.get(name, name), fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    legend_axis = axes[list(groups).index("beta"), 0] if "beta" in groups else axes[-1, 0]
    legend_axis.legend(loc="best", fontsize=7)
    fig.suptitle("Marginal posteriors (ADVI), each panel on its own scale", fontsize=10)
    fig.tight_layout()
    return fig


def predictive_check_figure(check):
    """Observed data against posterior predictive replications (a `PredictiveCheck`).

    Poisson: frequencies of each count (observed bars, replicated mean and 90% band) and the
    variance-to-mean ratio of the replications against the data's. Logistic: the share of
    ones in the replications against the data's, and observed against predicted rates by
    predicted-probability decile.
    """
    fig = _figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    y, y_rep = np.asarray(check.y), np.asarray(check.y_rep)
    if check.kind in ("poisson", "negbin"):
        top = int(min(max(np.quantile(y, 0.99), 3), 40))
        counts = np.arange(top + 1)
        observed = np.array([(y == c).mean() for c in counts])
        replicated = np.stack([(y_rep == c).mean(axis=1) for c in counts], axis=1)
        left.bar(counts, observed, color="lightgrey", edgecolor="grey", label="observed")
        left.plot(counts, replicated.mean(axis=0), "o-", color="tab:blue", ms=3, label="replicated mean")
        band = np.quantile(replicated, [0.05, 0.95], axis=0)
        left.fill_between(counts, band[0], band[1], color="tab:blue", alpha=0.25, label="replicated 90%")
        left.set_xlabel("count")
        left.set_ylabel("share of rows")
        left.set_title("count frequencies", fontsize=9)
        stat = "variance / mean"
    else:
        stat = "share of ones"
        prob = y_rep.mean(axis=0)
        edges = np.unique(np.quantile(prob, np.linspace(0, 1, 11)))
        which = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, max(len(edges) - 2, 0))
        bins = [b for b in range(max(len(edges) - 1, 1)) if np.any(which == b)]
        pred = np.array([prob[which == b].mean() for b in bins])
        obs = np.array([y[which == b].mean() for b in bins])
        left.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        left.plot(pred, obs, "o-", color="tab:blue", ms=4)
        left.set_xlabel("predicted P(y = 1) (decile means)")
        left.set_ylabel("observed rate")
        left.set_title("calibration", fontsize=9)
    left.legend(fontsize=7) if check.kind in ("poisson", "negbin") else None
    values = np.asarray(check.replicated[stat])
    levels, counts = np.unique(values, return_counts=True)
    if len(levels) <= 60:  # a discrete statistic (a share of N rows): one bar per attained value
        width = 0.8 * (np.min(np.diff(levels)) if len(levels) > 1 else 1.0)
        right.bar(levels, counts, width=width, color="tab:blue", alpha=0.6, label="replications")
    else:
        right.hist(values, bins=30, color="tab:blue", alpha=0.6, label="replications")
    right.axvline(check.observed[stat], color="black", lw=2, label=f"observed (p = {check.p_values[stat]:.3f})")
    right.set_xlabel(stat)
    right.set_title(stat + (": OVER-DISPERSED" if check.overdispersed else ""), fontsize=9)
    right.legend(fontsize=7)
    fig.suptitle("Posterior predictive check", fontsize=10)
    fig.tight_layout()
    return fig
