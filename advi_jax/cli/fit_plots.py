"""Figures written by `advi-jax fit`: the ELBO trace, the marginal posteriors (one panel per
parameter group, each on its own scale) and the posterior predictive check.

Each function returns a matplotlib Figure (the caller saves it with `save`), so tests can
inspect the axes.

Cost: the figures are a third of a small fit's command time if drawn carelessly. Margins are
set from the content (label lengths, inches) instead of `tight_layout`, which lays out every
text twice more; the Figure is made at the dpi it is saved at, so the text metrics measured
while drawing are reused by the save; PNGs are written at zlib level 1 (a few % larger files,
about a fifth less save time). On a command line the figures are drawn by a second Python
process that runs this file (`serve`; `advi_jax.cli.figures`), so this module imports nothing
of advi_jax (or JAX) at its top.
"""

from __future__ import annotations

import importlib
import threading

import numpy as np


def prefetch() -> threading.Thread:
    """Import matplotlib's Figure and Agg canvas in a background thread, and return the thread.

    Importing matplotlib is about half a second of Python that the figures wait for when they
    are drawn in the command's own process (`figures.FigureJobs` without a figure process);
    started before the fit, it runs while XLA compiles (compilation releases the GIL).
    A later import in the main thread finds the modules, or waits for the import in progress.
    """
    global _prefetch_thread
    thread = threading.Thread(target=_import_matplotlib, name="advi_jax-prefetch-matplotlib", daemon=True)
    thread.start()
    _prefetch_thread = thread
    return thread


_prefetch_thread: threading.Thread | None = None


def _import_matplotlib() -> None:
    try:
        for name in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
            importlib.import_module(name)
        # load the font and fill matplotlib's font caches while XLA compiles, not at the end
        fig = _figure(figsize=(1, 1))
        fig.text(0.5, 0.5, "0.1 ELBO", fontsize=7)
        fig.canvas.draw()
    except Exception:  # noqa: BLE001 - the figures' own import reports any problem
        pass


DPI = 120


def _figure(**kwargs):
    """A Figure on the Agg canvas, without pyplot (no GUI backend search, no global figure list:
    importing pyplot costs several tenths of a second of the command's start-up)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    thread = _prefetch_thread
    if thread is not None and thread is not threading.current_thread():
        thread.join()  # matplotlib is not thread-safe: its warm-up draw finishes before ours start
    kwargs.setdefault("dpi", DPI)
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save(fig, path) -> None:
    """Write `fig` as a PNG at its own dpi (reusing its text metrics), zlib level 1.

    Args:
      fig: a Figure from this module.
      path: the .png file to write.
    """
    fig.savefig(path, dpi="figure", pil_kwargs={"compress_level": 1})


def _margins(fig, left: float, right: float, bottom: float, top: float, **kwargs) -> None:
    """Set the subplot margins in inches (a fixed layout: no text measuring, unlike tight_layout)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        **kwargs)


def elbo_figure(result):
    """The per-step ELBO estimates with a moving mean, the y-range set by the last 90%."""
    elbo = np.asarray(result.elbo, float)
    steps = np.arange(1, len(elbo) + 1)
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    window = max(1, len(elbo) // 100)
    if window > 1:
        ax.plot(steps, elbo, lw=0.5, alpha=0.35, color="tab:blue", label="per-step estimate")
    else:  # few steps (e.g. a Newton fit): each one visible
        ax.plot(steps, elbo, "o-", lw=1.2, ms=3, color="tab:blue", label="per-step value")
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
    what = ", ".join(str(v) for v in (result.family.name, result.estimator) if v is not None)
    ax.set_title(f"{getattr(result, 'method', None) or 'ADVI'} ({what}): ELBO trace")
    ax.legend(loc="lower right")
    _margins(fig, left=0.95, right=0.2, bottom=0.55, top=0.4)
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
    # a fixed layout in inches, top down: the suptitle, then per group its title, its rows, its x ticks
    top_in, title_in, ticks_in, row_in = 0.4, 0.25, 0.3, 0.28
    panel_in = [row_in * (len(g) + 0.6) for g in groups.values()]
    height = top_in + sum(title_in + h + ticks_in for h in panel_in) + 0.1
    width = 7.0
    longest = max(len(r["parameter"]) for r in rows)
    left_in = min(0.25 + 0.058 * longest, 0.45 * width)  # 7-point labels: ~0.058 in per character
    fig = _figure(figsize=(width, height))
    axes = []
    y_in = height - top_in
    for h in panel_in:
        y_in -= title_in + h
        axes.append(fig.add_axes((left_in / width, y_in / height, (width - left_in - 0.25) / width, h / height)))
        y_in -= ticks_in
    for ax, (name, group) in zip(axes, groups.items()):
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
    legend_axis = axes[list(groups).index("beta")] if "beta" in groups else axes[-1]
    legend_axis.legend(loc="best", fontsize=7)
    fig.suptitle("Marginal posteriors (the fitted q), each panel on its own scale", fontsize=10, y=1 - 0.12 / height)
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
    _margins(fig, left=0.75, right=0.2, bottom=0.55, top=0.6, wspace=0.22)
    return fig


MAKERS = {"elbo": "elbo_figure", "marginals": "marginals_figure", "predictive": "predictive_check_figure"}
"""Figure kinds of a `FigureJobs` job: kind -> the function of this module that draws it."""


def serve(jobs, replies, parallel: bool | None = None) -> int:
    """The figure process's loop (`advi_jax.cli.figures`): draw and write each job it is sent.

    Imports matplotlib and loads the font first (while the command fits), then reads pickled
    `(kind, path, payload)` jobs from `jobs` until end of file, draws `MAKERS[kind](payload)` and
    saves it at `path`. A failure is written to `replies` as one line,
    `error<TAB>oserror|other<TAB>TypeName<TAB>message`.

    With `parallel` (default: on Linux) each job is drawn by a forked copy of this process, so
    that figures sent together (the marginals and the predictive check come within a few
    milliseconds of each other, after the command's own work is done) are drawn on two cores at
    once instead of one after the other; the copy has matplotlib loaded and its fonts cached
    already, and draws exactly what this process would. Otherwise the jobs are drawn here in turn,
    and the first failure ends the loop.

    Args:
      jobs: a binary stream of pickled jobs.
      replies: a text stream for the error lines.
      parallel: draw each job in a forked process.

    Returns:
      The exit status: 0, or 1 after a failure.
    """
    import os
    import pickle
    import sys

    if parallel is None:
        parallel = sys.platform.startswith("linux") and hasattr(os, "fork")
    _import_matplotlib()
    workers = []
    status = 0
    while True:
        try:
            kind, path, payload = pickle.load(jobs)
        except EOFError:
            break
        if parallel:
            replies.flush()
            pid = os.fork()
            if pid == 0:  # the copy: draw, report, and leave without running this process's cleanup
                code = _draw_job(kind, path, payload, replies)
                try:
                    replies.flush()
                finally:
                    os._exit(code)
            workers.append(pid)
        elif _draw_job(kind, path, payload, replies):
            return 1
    for pid in workers:
        _, wait_status = os.waitpid(pid, 0)
        if wait_status != 0:
            status = 1
    return status


def _draw_job(kind: str, path: str, payload, replies) -> int:
    """Draw and save one job of `serve`; on failure write its error line to `replies` and return 1."""
    try:
        save(globals()[MAKERS[kind]](payload), path)
    except Exception as err:  # noqa: BLE001 - reported to the command, which raises it
        kind = "oserror" if isinstance(err, OSError) else "other"
        message = " ".join(str(err).split())
        replies.write(f"error\t{kind}\t{type(err).__name__}\t{message}\n")
        replies.flush()
        return 1
    return 0
