"""The moment check from a widened proposal: p's mean and sd per coordinate estimated by importance
sampling from a mixture that is wider than q one coordinate at a time (issue 15, "never silently").

Why. The PSIS moment check (`advi_jax.psis_moments`) reweights q's own draws. Where q is too narrow in
some direction (reverse KL fits are), q puts almost no draws in the tail where p's missing mass is,
and the reweighted sd sees about half of the error (garch11's arch_share: +0.04 to +0.13 against a
true log sd ratio of 0.25). No computation on q's draws alone can see more. Here fresh draws come from

    mix = alpha q + (1 - alpha) (1/J) sum_{j in J} q_j,   q_j = N(m, Sigma + v_j e_j e_j^T),
    v_j = (c^2 - 1) Sigma_jj,

q with coordinate j's variance inflated by c^2 (the other coordinates' joint law kept; or its
"regression" form, below), for the J coordinates the plain check reads as most suspicious. The
weights stay bounded whatever K is: q / mix <= 1 / alpha, and with alpha = 0 (the fits' choice)
q / mix <= about c, since q_j >= q / sqrt(1 + v_j P_jj) everywhere (q_j >= q / c in the regression
form; a plain N(m, c^2 Sigma) would lose ESS like c^K). With P = Sigma^-1 and r = z - m, by the
matrix determinant lemma and Sherman-Morrison,

    log q_j(z) - log q(z) = -1/2 log(1 + v_j P_jj) + 1/2 v_j (P r)_j^2 / (1 + v_j P_jj),

P r = L^-T (L^-1 r) by two triangular solves, P_jj = |L^-1 e_j|^2 (never an explicit inverse).

That "coordinate" form keeps the other coordinates' joint law, so where q's coordinates are strongly
correlated (a funnel's neck, a ridge) it moves its draws off q's ridge, where p has nothing. The
"regression" form (`widened_check(form=...)`; the fits keep the coordinate form, `WIDEN_FORM`) widens
coordinate j's marginal by c and lets the others follow it along q's own regression on it:

    q_j = N(m, Sigma + (c^2 - 1) Sigma e_j e_j^T Sigma / Sigma_jj) = q(z_-j | z_j) N(z_j; m_j, c^2 Sigma_jj).

In whitened coordinates w = L^-1 r its covariance is I + (c^2 - 1) u u^T with the unit vector
u = L^T e_j / sqrt(Sigma_jj), and u^T w = r_j / sqrt(Sigma_jj), so the determinant lemma and
Sherman-Morrison give

    log q_j(z) - log q(z) = -log c + 1/2 (1 - 1/c^2) r_j^2 / Sigma_jj,

and a draw is q's, r, stretched along the regression: r + (c - 1) r_j Sigma e_j / Sigma_jj. For a
mean-field q the two forms are the same Gaussian; a low-rank q's regression form is not in its family
(the rank would grow), so it keeps the coordinate form (`effective_form`).

The draws are stratified (alpha S from q, the rest shared equally by the q_j) and weighted by the
mixture's density (deterministic-mixture importance sampling). p's mean and sd per coordinate come
from the Pareto-smoothed weights p / mix, q's from the weights q / mix of the same draws, so that with
p = q the discrepancy is 0 and most of the draws' own noise cancels; the standard errors are the
linearised ones of `psis_moments`, with q's weights in place of 1/S.

In a fit (`widened_check`, called by `fit_diagnostics.widen_if_grey` only where the fit would be
silent and its reading is grey): alpha = 0, J = `WIDEN_DIRECTIONS`, and each q_j is a Gaussian of q's
own family (`widened_params`), drawn and evaluated by the diagnostics' own compiled program with the
first sample's S: nothing new compiles; the price is J x S log-density evaluations, counted in
`num_logp_evals`. The J coordinates are chosen from the plain check's reading of an independent
sample (the diagnostics' own), so the Bonferroni bound counts only the tests made here. Widening all K
coordinates instead spreads the draws too thin: at K = 100 the reading's standard error is about
the error sought (benchmarks/PERFORMANCE.md, helper `widen`, with the measurements behind c and J).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from scipy.linalg import solve_triangular

__all__ = ["WIDEN_C", "WIDEN_ALPHA", "WIDEN_DIRECTIONS", "WIDEN_DRAWS", "WIDEN_FORM", "FORMS", "component_log_ratios",
           "log_q_centred", "sample", "log_mix_minus_log_q", "weighted_discrepancy", "select", "plain_score",
           "mixture_weights", "host_gaussian", "widened_params", "effective_form", "component_key", "dependence",
           "scores", "weighted_tail_khat", "widened_check"]

WIDEN_C = 3.0
"""A widened component's sd in its coordinate, in q's sds there."""
WIDEN_ALPHA = 0.5
"""q's share of the mixture where the draws are stratified in one sample (`sample`; q / mix <= 1 /
alpha); a fit's check takes no draws of q itself (alpha = 0: `widened_check`)."""
WIDEN_DIRECTIONS = 2
"""How many coordinates are widened (the plain check's most suspicious)."""
WIDEN_FORM = "coordinate"
"""How a widened component widens coordinate j: "coordinate" (q_j = N(m, Sigma + (c^2 - 1) Sigma_jj e_j
e_j^T), the other coordinates' joint law kept), "regression" (q_j = N(m, Sigma + (c^2 - 1) Sigma e_j e_j^T
Sigma / Sigma_jj): coordinate j's marginal widened by c, the others following it along q's own
regression, q(z_-j | z_j) kept) or "both" (each coordinate both ways: 2 J components, 2 J x S draws).
The fits keep the coordinate form: on the calibration's 45 fits (seed 0, garch11 at seed 1, the spot
posteriors) the regression form missed garch11 s0 in 4 of 4 draw sets where the coordinate form
flagged it in 4 of 4 (p / mix's k-hat 0.72-0.98 against 0.29-0.58), and read the IRT's sigma_b no
better; "both" missed 0.25 fewer draw sets at twice the draws (benchmarks/PERFORMANCE.md, helper
`widen2`). The regression form is the one that reads a q narrow along a correlated ridge
(tests/test_widened_directions.py)."""
WIDEN_DRAWS = 4096
"""`widened_check`'s draws when not told (each a log-density evaluation, counted in `num_logp_evals`);
a fit's diagnostics take as many as the sample the check follows (`fit_diagnostics.widen_if_grey`)."""


def component_log_ratios(r: np.ndarray, chol: np.ndarray, dirs: np.ndarray, c: float = WIDEN_C,
                         form: Any = "coordinate") -> np.ndarray:
    """(S, J) log q_j(z) - log q(z) for centred draws r = z - m (S, K), q's lower Cholesky factor
    `chol` (K, K) and the widened coordinates `dirs` (J,) (module docstring); `form` is "coordinate",
    "regression" or one of them per component."""
    dirs = np.asarray(dirs, int)
    forms = _forms(form, dirs.size)
    out = np.zeros((r.shape[0], dirs.size))
    coord = np.array([f == "coordinate" for f in forms], bool)
    if coord.any():
        d = dirs[coord]
        white = solve_triangular(chol, r.T, lower=True)  # L^-1 r, (K, S)
        pr = solve_triangular(chol.T, white, lower=False)[d].T  # (P r)_j, (S, J)
        unit = np.zeros((chol.shape[0], d.size))
        unit[d, np.arange(d.size)] = 1.0
        p_jj = np.sum(solve_triangular(chol, unit, lower=True) ** 2, axis=0)  # |L^-1 e_j|^2
        v = (c * c - 1.0) * np.sum(chol[d] ** 2, axis=1)  # (c^2 - 1) Sigma_jj
        denom = 1.0 + v * p_jj
        out[:, coord] = -0.5 * np.log(denom) + 0.5 * v * pr * pr / denom
    if (~coord).any():
        # q_j = q(z_-j | z_j) N(z_j; m_j, c^2 Sigma_jj): only coordinate j's marginal changes
        d = dirs[~coord]
        s_jj = np.sum(chol[d] ** 2, axis=1)
        out[:, ~coord] = -math.log(c) + 0.5 * (1.0 - 1.0 / (c * c)) * r[:, d] ** 2 / s_jj
    return out


FORMS = ("coordinate", "regression")


def _forms(form: Any, num: int) -> list[str]:
    forms = [form] * num if isinstance(form, str) else list(form)
    if len(forms) != num or any(f not in FORMS for f in forms):
        raise ValueError(f"form must be one of {FORMS} or one of them per widened component ({num}); got {form!r}")
    return forms


def log_q_centred(r: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """(S,) log N(m + r; m, L L^T)."""
    white = solve_triangular(chol, r.T, lower=True)
    return (-0.5 * np.sum(white * white, axis=0) - np.sum(np.log(np.abs(np.diag(chol))))
            - 0.5 * chol.shape[0] * math.log(2 * math.pi))


def counts(num: int, num_dirs: int, alpha: float = WIDEN_ALPHA) -> np.ndarray:
    """Stratified draw counts: q's, then each widened component's (with alpha = 0, none of q's, and
    the components' equal shares may leave up to J - 1 of the `num` undrawn)."""
    if not num_dirs:
        return np.array([num])
    if alpha == 0:
        return np.array([0] + [num // num_dirs] * num_dirs)
    per = int((1.0 - alpha) * num / num_dirs)
    return np.array([num - per * num_dirs] + [per] * num_dirs)


def sample(rng: np.random.Generator, mean: np.ndarray, chol: np.ndarray, dirs: np.ndarray, num: int,
           c: float = WIDEN_C, alpha: float = WIDEN_ALPHA, form: Any = "coordinate") -> np.ndarray:
    """(S, K) stratified draws of the mixture: m + L u, plus sqrt(v_j) xi e_j for a coordinate-form
    component's, or with r = L u stretched along q's regression on coordinate j, r + (c - 1) r_j
    Sigma e_j / Sigma_jj, for a regression-form component's."""
    dirs = np.asarray(dirs, int)
    forms = _forms(form, dirs.size)
    n = counts(num, dirs.size, alpha)
    z = mean + rng.standard_normal((int(np.sum(n)), mean.shape[0])) @ chol.T
    v = (c * c - 1.0) * np.sum(chol[dirs] ** 2, axis=1)
    start = int(n[0])
    for j, vj, nj, f in zip(dirs, v, n[1:], forms):
        part = slice(start, start + int(nj))
        if f == "coordinate":
            z[part, j] += math.sqrt(vj) * rng.standard_normal(int(nj))
        else:
            beta = chol @ chol[j] / float(np.sum(chol[j] ** 2))  # Sigma e_j / Sigma_jj
            z[part] += (c - 1.0) * (z[part, j] - mean[j])[:, None] * beta
        start += int(nj)
    return z


def log_mix_minus_log_q(r: np.ndarray, chol: np.ndarray, dirs: np.ndarray, c: float = WIDEN_C,
                        alpha: float = WIDEN_ALPHA, form: Any = "coordinate") -> np.ndarray:
    """(S,) log mix(z) - log q(z) (a log-sum-exp of the components' ratios)."""
    dirs = np.asarray(dirs, int)
    if dirs.size == 0:
        return np.zeros(r.shape[0])
    lr = component_log_ratios(r, chol, dirs, c, form)
    top = np.maximum(lr.max(axis=1), 0.0)
    inner = alpha * np.exp(-top) + (1 - alpha) / dirs.size * np.sum(np.exp(lr - top[:, None]), axis=1)
    return top + np.log(inner)


def mixture_weights(log_p: np.ndarray, log_q: np.ndarray, log_mix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Normalised Pareto-smoothed weights p / mix, normalised weights q / mix, and the k-hat of p / mix."""
    from advi_jax import diagnostics as _diag

    ratios = np.asarray(log_p, np.float64) - log_mix
    with np.errstate(all="ignore"):
        smoothed = _diag._psis_core(ratios, True, np)
        khat = float(_diag._diagnostics_core(ratios, np, smoothed).khat)
    wp = np.exp(np.asarray(smoothed.log_weights, np.float64))
    wp = wp / np.sum(wp)
    lq = log_q - log_mix
    wq = np.exp(lq - np.max(lq))
    return wp, wq / np.sum(wq), khat


def weighted_discrepancy(y: np.ndarray, wp: np.ndarray, wq: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per column of (S, k) values y: (d_mean, se, d_logsd, se) of p's self-normalised estimates (normalised
    weights wp) against q's (wq) from the same draws; d_mean in q's sds, d_logsd = log(sd_p / sd_q).

    Linearised, as `psis_moments.discrepancy_from_sums`: d_mean's influence terms are
    [wp (y - mu_p) - wq (y - mu_q)] / sd_q, d_logsd's [wp ((y - mu_p)^2 / v_p - 1) - wq ((y - mu_q)^2 /
    v_q - 1)] / 2, and each variance their sum of squares. Columns with no spread or a non-finite
    value read 0 +/- 0."""
    y = np.asarray(y, np.float64)
    finite = np.all(np.isfinite(y), axis=0)
    y = np.where(finite, y, 0.0)
    mu_p, mu_q = wp @ y, wq @ y
    ap, aq = y - mu_p, y - mu_q
    vp, vq = wp @ (ap * ap), wq @ (aq * aq)
    ok = (vp > 0) & (vq > 0) & finite
    vp, vq = np.where(ok, vp, 1.0), np.where(ok, vq, 1.0)
    sd_q = np.sqrt(vq)
    psi_m = (wp[:, None] * ap - wq[:, None] * aq) / sd_q
    psi_s = 0.5 * (wp[:, None] * (ap * ap / vp - 1.0) - wq[:, None] * (aq * aq / vq - 1.0))
    return tuple(np.where(ok, x, 0.0) for x in ((mu_p - mu_q) / sd_q, np.sqrt(np.sum(psi_m ** 2, axis=0)),
                                                0.5 * np.log(vp / vq), np.sqrt(np.sum(psi_s ** 2, axis=0))))


def weighted_tail_khat(y: np.ndarray, wp: np.ndarray) -> np.ndarray:
    """Per column of (S, k) values y: the Pareto k-hat of the upper tail of wp (y - mu_p)^2, the terms
    p's weighted variance (and its standard error) is made of (`psis_moments.squared_tail_khat` of
    their largest `diagnostics.tail_length(S) + 1`). The widened draws are heavy-tailed by design, so
    the tail guard of `psis_moments.moment_check_both` reads their weighted terms, not the draws."""
    from advi_jax import diagnostics as _diag
    from advi_jax import psis_moments as pm

    y = np.asarray(y, np.float64)
    d = y - wp @ y
    terms = wp[:, None] * d * d
    num = y.shape[0]
    tail = min(_diag.tail_length(num) + 1, num)
    top = np.partition(terms.T, num - tail, axis=1)[:, num - tail:]
    return pm.squared_tail_khat(top)


def plain_score(d_mean: np.ndarray, d_logsd: np.ndarray) -> np.ndarray:
    """A coordinate's suspicion from the plain check's reading: its mean shift or its sd's excess (a q
    too narrow there; a q too wide is read well by PSIS from q's own draws)."""
    return np.maximum(np.abs(np.asarray(d_mean, np.float64)), np.maximum(np.asarray(d_logsd, np.float64), 0.0))


def select(score: np.ndarray, num: int = WIDEN_DIRECTIONS) -> np.ndarray:
    """The `num` coordinates with the largest `score`, sorted."""
    num = min(int(num), int(np.shape(score)[0]))
    return np.sort(np.argsort(-np.asarray(score), kind="stable")[:num])


def _softplus(x):
    return np.logaddexp(0.0, np.asarray(x, np.float64))


def _raw(sd):  # softplus^-1, the families' parametrisation of a positive sd
    sd = np.asarray(sd, np.float64)
    return sd + np.log(-np.expm1(-sd))


def _low_rank_diag(host: Any) -> np.ndarray:
    """`LowRankGaussian.diag_scale` in float64 NumPy, from parameters on the host."""
    from advi_jax.families import DIAG_FLOOR

    factor = np.asarray(host.factor, np.float64)
    return np.sqrt(_softplus(np.asarray(host.raw_diag, np.float64)) ** 2
                   + DIAG_FLOOR ** 2 * np.sum(factor ** 2, axis=-1))


def host_gaussian(family: Any, params: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """q's mean and lower Cholesky factor in float64 NumPy, from its parameters on the host (no
    `jax.numpy` call: eagerly, each would compile a small program of its own, 0.05-0.2 s apiece on a
    first call); None for a family other than the mean-field, full-rank and low-rank Gaussians."""
    from advi_jax.families import FullRankGaussian, LowRankGaussian, MeanFieldGaussian

    host = jax.device_get(params)
    if isinstance(family, MeanFieldGaussian):
        return np.asarray(host.loc, np.float64), np.diag(_softplus(host.raw_scale))
    if isinstance(family, FullRankGaussian):
        return np.asarray(host.loc, np.float64), (np.tril(np.asarray(host.off_diag, np.float64), -1)
                                                  + np.diag(_softplus(host.raw_diag)))
    if isinstance(family, LowRankGaussian):
        factor = np.asarray(host.factor, np.float64)
        return np.asarray(host.loc, np.float64), np.linalg.cholesky(np.diag(_low_rank_diag(host) ** 2)
                                                                     + factor @ factor.T)
    return None


def widened_params(family: Any, params: Any, chol: np.ndarray, j: int, c: float = WIDEN_C, form: str = "coordinate"):
    """The parameters of q_j in q's own family, so that the diagnostics' compiled program
    (`importance.draws_and_log_ratios`) draws from it and evaluates log p there without compiling
    anything new. "coordinate": q_j = N(m, Sigma + (c^2 - 1) Sigma_jj e_j e_j^T); the mean-field and
    low-rank families widen their diagonal entry j, the full-rank family takes the Cholesky factor of the
    widened covariance (host NumPy). "regression": q_j = N(m, Sigma + (c^2 - 1) Sigma e_j e_j^T Sigma /
    Sigma_jj), the full-rank family's Cholesky factor of it; for a mean-field q the two forms are the
    same Gaussian; a low-rank q_j of this form is not in the family (its rank would grow): None, as for
    any family other than the three Gaussians (`effective_form` says which form a family takes)."""
    from advi_jax.families import FullRankGaussian, FullRankParams, LowRankGaussian, MeanFieldGaussian

    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}; got {form!r}")
    v = (c * c - 1.0) * float(np.sum(chol[j] ** 2))
    host = jax.device_get(params)
    dtype = np.asarray(host.loc).dtype
    if isinstance(family, MeanFieldGaussian) or (isinstance(family, LowRankGaussian) and form == "coordinate"):
        field = "raw_scale" if isinstance(family, MeanFieldGaussian) else "raw_diag"
        values = np.array(getattr(host, field), np.float64)
        sd = float(_softplus(values[j]))  # the low-rank d_j's floor (`diag_scale`) adds in squares: unchanged
        values[j] = _raw(math.sqrt(sd * sd + v))
        return params._replace(**{field: jax.device_put(values.astype(dtype))})
    if isinstance(family, FullRankGaussian):
        cov = chol @ chol.T
        if form == "coordinate":
            cov[j, j] += v
        else:
            col = cov[:, j].copy()
            cov += (c * c - 1.0) * np.outer(col, col) / col[j]
        wide = np.linalg.cholesky(cov)
        return FullRankParams(params.loc, jax.device_put(_raw(np.diag(wide)).astype(dtype)),
                              jax.device_put(wide.astype(dtype)))
    return None


def effective_form(family: Any, form: str) -> str:
    """The form `widened_check` uses for q's family: the regression form where it is asked for and the
    family holds it (full-rank; mean-field, where it is the coordinate form), the coordinate form
    otherwise (a low-rank q)."""
    from advi_jax.families import LowRankGaussian

    return "coordinate" if isinstance(family, LowRankGaussian) else form


def component_key(key: Any, index: int) -> Any:
    """The key of widened component `index`: fold_in(key, 2 + index) (on the host for a threefry key on
    the CPU, as `fit_diagnostics`' re-estimate key; `jax.random` otherwise)."""
    from advi_jax.run import host_keys

    if host_keys.fit_keys(key) is not None:
        data = host_keys.fold_in(np.asarray(jax.random.key_data(key)), 2 + int(index))
        return jax.random.wrap_key_data(data, impl="threefry2x32")
    return jax.random.fold_in(key, 2 + int(index))


def dependence(model: Any, dim: int) -> np.ndarray:
    """(Kc, K) which unconstrained coordinates each constrained column (`importance.constrained_flat`)
    is made of: one each where a site keeps its size (an elementwise bijector), the site's whole block
    otherwise (a simplex, a Cholesky factor). From the model's site slices; without them (a plain
    `Model` that does not say), no column is tied to a coordinate."""
    from advi_jax.importance import _site_info

    info = {name: shape for name, (shape, changed) in _site_info(model, dim).items() if changed}
    sizes = [int(np.prod(shape)) for shape in info.values()]
    out = np.zeros((sum(sizes), dim), bool)
    slices = getattr(model, "slices", None)
    if not callable(slices):
        return out
    where = slices()
    row = 0
    for (name, _), size in zip(info.items(), sizes):
        block = where.get(name)
        if block is not None:
            width = block.stop - block.start
            if width == size:
                out[np.arange(row, row + size), np.arange(block.start, block.stop)] = True
            else:
                out[row:row + size, block.start:block.stop] = True
        row += size
    return out


def scores(plain: tuple, plain_c: tuple | None, tested: np.ndarray | None, dep: np.ndarray) -> np.ndarray:
    """Per unconstrained coordinate: its plain reading's `plain_score`, or that of a tested constrained
    column made of it, whichever is larger."""
    score = plain_score(plain[0], plain[2])
    if plain_c is not None and dep.shape[0]:
        ok = np.asarray(tested, bool) & np.all([np.isfinite(np.asarray(x, np.float64)) for x in plain_c], axis=0)
        sc = np.where(ok, np.nan_to_num(plain_score(plain_c[0], plain_c[2])), 0.0)
        score = np.maximum(score, np.max(np.where(dep, sc[:, None], 0.0), axis=0, initial=0.0))
    return score


def widened_check(model: Any, family: Any, params: Any, key: Any, score: np.ndarray, num_draws: int = WIDEN_DRAWS,
                  c: float = WIDEN_C, directions: int = WIDEN_DIRECTIONS, dep: np.ndarray | None = None,
                  form: str = WIDEN_FORM):
    """The widened moment check of q (`psis_moments.Moments`, `source` "widened"), or None where q's
    family has no widened form (`widened_params`).

    For each of the `directions` coordinates j with the largest `score` (the plain check's reading of
    an independent sample), `num_draws` fresh draws of q_j and their log densities and constrained
    values from the diagnostics' own compiled program (`importance.draws_and_log_ratios`, same model,
    family and S: nothing new compiles), key `component_key(key, i)`. Together they are the stratified
    draws of the equal mixture of the q_j (alpha = 0: q / mix stays under about c); p's estimates
    (weights p / mix, Pareto-smoothed) are compared with q's (weights q / mix) for those coordinates in
    R^K and for the constrained columns made of them (`dependence`). A column is flagged where its log
    sd ratio is at least the moment check's tolerance and beyond the Bonferroni bound for the columns
    tested here (`psis_moments.moment_check_both`), and, for a constrained column, where the p-weighted
    squared deviations' tail is one PSIS would trust (`weighted_tail_khat` under 0.7); mean shifts are
    reported, not flagged (the plain check reads them). `directions x num_draws` log-density evaluations.
    """
    from advi_jax import psis_moments as pm
    from advi_jax.importance import constrained_labels, draws_and_log_ratios

    gaussian = host_gaussian(family, params)
    if gaussian is None:
        return None
    mean, chol = gaussian
    dim = mean.shape[0]
    if form not in FORMS + ("both",):
        raise ValueError(f"form must be one of {FORMS + ('both',)}; got {form!r}")
    dirs = select(score, directions)
    if form == "both":  # each coordinate widened both ways: 2 J components
        comps = [(int(j), "coordinate") for j in dirs] + [(int(j), "regression") for j in dirs]
    else:
        comps = [(int(j), effective_form(family, form)) for j in dirs]
    parts, eps = [], None
    for i, (j, f) in enumerate(comps):
        wide = widened_params(family, params, chol, j, c, f)
        if wide is None:
            return None
        zeta, centred, shift, cons = jax.device_get(
            draws_and_log_ratios(model, family, wide, component_key(key, i), int(num_draws)))
        eps = float(np.finfo(cons.dtype).eps)  # the draws' own rounding, before they turn float64 below
        r = np.asarray(zeta, np.float64) - mean
        log_q_j = log_q_centred(r, chol) + component_log_ratios(r, chol, np.array([j]), c, f)[:, 0]
        parts.append((r, np.asarray(centred, np.float64) + float(shift) + log_q_j, np.asarray(cons, np.float64)))
    r, log_p, cons = (np.concatenate(x) for x in zip(*parts))
    log_p = np.where(np.isfinite(log_p), log_p, -np.inf)
    lq = log_q_centred(r, chol)
    wp, wq, khat = mixture_weights(log_p, lq, lq + log_mix_minus_log_q(
        r, chol, np.array([j for j, _ in comps]), c, 0.0, [f for _, f in comps]))
    dep = dependence(model, dim) if dep is None else dep
    cols = np.flatnonzero(dep[:, dirs].any(axis=1)) if dep.shape[0] else np.zeros(0, int)
    cons = cons[:, cols]
    disc_u = weighted_discrepancy(r[:, dirs], wp, wq)
    disc_c = weighted_discrepancy(cons, wp, wq)
    finite = np.all(np.isfinite(cons), axis=0)
    with np.errstate(all="ignore"):  # constant coordinates (a correlation factor's L[0, 0]) vary by rounding only
        spread = pm.has_spread(np.where(finite, cons, 0.0), eps)
    tested = finite & spread & ~((disc_c[1] == 0) & (disc_c[3] == 0))
    total = r.shape[0]
    labels = constrained_labels(model, dim)
    # flagged by the sd alone: the widened draws are there for the tails q misses; a mean shift is read
    # by the plain check, and on the calibration's fits a mean flag here added a false alarm
    # (breast_cancer_logistic, beta[20]'s mean +0.154 +/- 0.041 in 1 of 8 draw sets) and caught nothing more
    moments = pm.moment_check_both(disc_u, total, disc_c, tested, mean_tol=math.inf,
                                   labels=lambda idx: [labels[cols[i]] for i in idx],
                                   tail_khat=lambda idx: weighted_tail_khat(cons[:, idx], wp))
    flagged = tuple(int(dirs[i]) for i in moments.flagged)
    worst = moments.worst_index
    if worst >= 0:
        worst = int(dirs[worst]) if moments.space == "unconstrained" else int(cols[worst])
    return moments._replace(flagged=flagged, worst_index=worst, source="widened", widened_draws=total,
                            mixture_khat=khat, directions=tuple(int(j) for j in dirs))
