"""One immutable result: the approximation (model, family, parameters) and the fit's report.

`Result` is built once by a fit pipeline (`advi_jax.run`) and never mutated. It holds

* the approximation: `model`, `family`, `params` (in R^K) with `sample`, `mean`,
  `psis_expectation`, ... mapping back to the constrained space through the model's bijectors;
* the report (`Report`): the ELBO trace, the stop reason, the method and why it was chosen, the
  cost (`num_grad_evals`, `num_logp_evals`, seconds split into start / compile / run /
  diagnostics), the PSIS diagnostics (`Diagnostics`), the start, and method-specific `extras`.
  Every report field reads as an attribute of the result (`result.khat`, `result.stop_reason`).

`summary()` is the one formatter. `ManyResult` is the batched result of `fit_many`, with
per-fit diagnostics; indexing it gives a `Result`.

The diagnostics themselves (how many draws, k-hat and its re-estimate, the verdict, non-finite
draws) are in `advi_jax.fit_diagnostics`; their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from advi_jax import diagnostics as _diag
from advi_jax.importance import blocked, blocked_log_ratios, log_ratios, sampling_key
from advi_jax._types import Array, PyTree, check_positive_int
from advi_jax.base import Family
from advi_jax.fit_diagnostics import (  # re-exported: the diagnostics' public names (__all__)
    CONFIRM_DRAWS_MAX, CONFIRM_FACTOR, DIAGNOSTIC_DRAWS_MAX, DIAGNOSTIC_DRAWS_MIN, DIAGNOSTIC_FRACTION,
    DIAGNOSTIC_FREE_WORK, GRADIENT_COST, NONFINITE_UNRELIABLE, Diagnostics, _constrain, confirmation_draws,
    constrained_draws, data_size, diagnose, diagnose_confirmed, diagnose_ratios, diagnose_with_ratios,
    diagnostic_draw_budget, known_diagnostic_draws, over_threshold, verdict)

__all__ = ["Diagnostics", "Report", "Result", "ManyResult", "diagnose", "diagnose_with_ratios", "log_ratios",
           "verdict", "diagnostic_draw_budget", "confirmation_draws", "diagnose_confirmed", "over_threshold",
           "data_size", "constrained_draws", "NONFINITE_UNRELIABLE",
           "DIAGNOSTIC_DRAWS_MIN", "DIAGNOSTIC_DRAWS_MAX", "DIAGNOSTIC_FRACTION", "DIAGNOSTIC_FREE_WORK",
           "GRADIENT_COST", "CONFIRM_FACTOR", "CONFIRM_DRAWS_MAX", "diagnose_ratios", "known_diagnostic_draws"]


def _default_labels(model: Any) -> Mapping[str, Any] | None:
    """Labels for the summary: the model's own `labels`, or a ready GLM's feature names."""
    labels = getattr(model, "labels", None)
    if labels is not None:
        return labels
    from advi_jax.models.regression import RegressionModel, parameter_labels  # models sit above result

    if isinstance(model, RegressionModel):  # vectors get their feature names; scalars keep their own name
        return {k: v for k, v in parameter_labels(model).items() if k == "beta"}
    return None


def _quantile_table(draws: Mapping[str, np.ndarray], labels: Mapping[str, Any] | None = None,
                    weights: np.ndarray | None = None) -> list[dict]:
    rows = []
    labels = labels or {}
    for name, value in draws.items():
        value = np.asarray(value)
        if value.dtype == np.bool_:  # a deterministic site such as `a > 0`: its mean is the share of True
            value = value.astype(np.float64)
        flat = value.reshape(value.shape[0], -1)
        shape = value.shape[1:]
        names = labels.get(name)
        if isinstance(names, str):  # a scalar's own label; a vector's labels are one per entry
            if shape:
                raise TypeError(f"labels[{name!r}] must be a sequence of {flat.shape[1]} labels, one per entry, "
                                f"got the string {names!r}")
            names = (names,)
        if names is not None and len(names) != flat.shape[1]:
            raise ValueError(f"labels[{name!r}] must have {flat.shape[1]} entries, got {len(names)}")
        for j in range(flat.shape[1]):
            idx = np.unravel_index(j, shape) if shape else ()
            if names is not None:
                label = f"{name}[{names[j]}]" if shape else str(names[j])
            else:
                label = name + ("[" + ",".join(str(i) for i in idx) + "]" if shape else "")
            col = flat[:, j]
            q5, q50, q95 = np.quantile(col, [0.05, 0.5, 0.95])
            row = {"parameter": label, "mean": float(col.mean()), "sd": float(col.std(ddof=1)),
                   "5%": float(q5), "50%": float(q50), "95%": float(q95)}
            if weights is not None:
                mean = float(np.sum(weights * col))
                row["psis_mean"] = mean
                row["psis_sd"] = float(np.sqrt(max(np.sum(weights * (col - mean) ** 2), 0.0)))
            rows.append(row)
    return rows


def _model_table(model: Any, sampled: Mapping[str, Any], labels: Mapping[str, Any] | None,
                 weights: np.ndarray | None = None, check_labels: bool = False) -> list[dict]:
    """`_quantile_table` of a model's constrained draws: with its deterministic sites (numpyro.deterministic
    of `from_numpyro` models), in the model's parameter order. `check_labels`: a name in `labels` that is
    none of these is an error (labels a caller gave), rather than ignored."""
    with_deterministics = getattr(model, "with_deterministics", None)
    if callable(with_deterministics):
        sampled = with_deterministics(sampled)
    names = list(getattr(model, "names", []))
    order = [k for k in names if k in sampled] + [k for k in sampled if k not in names]
    unknown = [k for k in (labels or {}) if k not in sampled] if check_labels else []
    if unknown:
        raise ValueError(f"labels names {unknown}, which this model does not have; its parameters are {order}")
    return _quantile_table({k: np.asarray(sampled[k]) for k in order}, labels, weights)


@dataclasses.dataclass(frozen=True)
class Report:
    """What a fit did and what it cost (see `Result`; every field is also an attribute of it).

    Attributes:
      elbo: (steps run,) per-step ELBO estimates (NaN where a step was skipped).
      num_steps: steps run.
      num_grad_evals: gradients of the log density the fit evaluated (summed `StepInfo` counts, the
        start's, and what the method's extras evaluated: DADVI's final linear-response solve).
      num_logp_evals: log-density values evaluated without a gradient (the diagnostics' draws are
        not counted, except those of a k-hat re-estimate: see `first_diagnostics`).
      num_nonfinite: steps skipped because the ELBO or gradient was not finite.
      converged: whether a convergence test (the relative-ELBO rule or the method's) stopped it.
      stop_reason: why the fit ended, in words.
      stop_code: the driver's code (`advi_jax.run.STOP_REASONS`).
      method: the algorithm that ran (`advi_jax.vi.METHODS`); method_reason: why.
      estimator, num_samples: ADVI's gradient estimator and draws per step (None for others).
      seconds: wall time of the whole call; start_seconds (checks, the Laplace start, step-size
        search), compile_seconds, run_seconds (the loop, then the method's final computation from
        its state: q's parameters and extras, e.g. DADVI's linear-response solve),
        diagnostics_seconds split it. Where the loop was
        compiled on a background thread while the start compiled (`advi_jax.run.ahead`),
        compile_seconds is only the wait for it (about 0) and start_seconds holds the overlap.
      diagnostics: a `Diagnostics`, or None with `diagnostics_note` saying why.
      diagnostic_sample: (key, log_ratios) of the diagnostic draws, or None: the draws are
        `family.sample(params, key, S)` and `log_ratios` their (S,) log p - log q (NumPy);
        `summary_rows` reuses them instead of evaluating the log density again.
      first_diagnostics: when k-hat from the automatic budget's draws read over its threshold and
        a larger fresh sample re-estimated it (`diagnose_confirmed`), the first sample's
        `Diagnostics` (`diagnostics` and `diagnostic_sample` are then the larger sample's, and its
        draws count in `num_logp_evals`); else None.
      learning_rate, adaptation: the step size (Adam's, or the averaged default's first step,
        `AutoStop.learning_rate`) and the `learning_rate="adapt"` search.
      init_loc, init_method, init_candidates, init_scores: how the fit started.
      extras: method-specific outputs (`VIAlgorithm.extras`), a dict.
      runaway: indices of parameters that ran away while the ELBO rose (empty when none).
    """

    elbo: np.ndarray
    num_steps: int
    num_grad_evals: int
    num_logp_evals: int
    num_nonfinite: int
    converged: bool
    stop_reason: str
    stop_code: int = 0
    method: str = "advi"
    method_reason: str = "requested"
    estimator: str | None = "reparam"
    num_samples: int | None = 1
    seconds: float = 0.0
    start_seconds: float = 0.0
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    diagnostics_seconds: float = 0.0
    diagnostics: Diagnostics | None = None
    diagnostics_note: str = "not computed (diagnostics=False)"
    learning_rate: float | None = None
    adaptation: dict | None = None
    init_loc: np.ndarray | None = None
    init_method: str = "zero"
    init_candidates: np.ndarray | None = None
    init_scores: np.ndarray | None = None
    extras: dict = dataclasses.field(default_factory=dict)
    runaway: tuple = ()
    diagnostic_sample: tuple | None = dataclasses.field(default=None, repr=False)
    first_diagnostics: Diagnostics | None = None


_REPORT_FIELDS = frozenset(f.name for f in dataclasses.fields(Report))
_DIAGNOSTIC_FIELDS = ("khat", "iw_elbo", "iw_elbo_se", "ess", "psis_ess", "nonfinite_share")
_RESAMPLE_OPTIONS = (None, "psis")


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of `fit` / `fit_minibatch` (and of one fit of `fit_many`).

    Attributes:
      model: the fitted `Model` (the full-data model for a minibatch fit).
      family: the variational `Family`.
      params: the variational parameters (last finite values).
      report: the `Report`; its fields read as attributes here (`result.elbo`,
        `result.num_grad_evals`, `result.stop_reason`, ...). Also `num_gradient_evals` (an alias
        of `num_grad_evals`), `khat`, `iw_elbo`, `iw_elbo_se`, `ess`, `psis_ess`,
        `nonfinite_share` (NaN without diagnostics) and `num_diagnostic_draws` (0 without).

    Example:
      >>> import jax, jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
      >>> result = aj.fit(model, key=jax.random.key(1), num_steps=500, num_samples=2, progress=False)
      >>> result.num_grad_evals, result.report.method  # 500 steps x 2 draws, and the start's 7
      (1007, 'advi')
    """

    model: Any
    family: Family
    params: PyTree
    report: Report

    def __getattr__(self, name: str):
        if name in _REPORT_FIELDS:
            return getattr(object.__getattribute__(self, "report"), name)
        if name in _DIAGNOSTIC_FIELDS:
            diag = object.__getattribute__(self, "report").diagnostics
            return float("nan") if diag is None else getattr(diag, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def num_gradient_evals(self) -> int:
        """Alias of `num_grad_evals`."""
        return self.report.num_grad_evals

    @property
    def final_elbo(self) -> float:
        """The fit's final ELBO: the last value for a deterministic method (`DETERMINISTIC` in its
        `advi_jax.vi` module), else the mean of the last 100 per-step estimates; NaN when any of
        those is not finite (an average over the finite ones only would flatter the fit)."""
        from advi_jax.vi import METHODS

        elbo = np.asarray(self.report.elbo)
        module = METHODS.get(self.report.method)
        tail = elbo[-1:] if getattr(module, "DETERMINISTIC", False) else elbo[-min(len(elbo), 100):]
        if tail.size == 0 or not np.all(np.isfinite(tail)):
            return float("nan")
        return float(np.mean(tail))

    @property
    def num_diagnostic_draws(self) -> int:
        """Draws of q behind the diagnostics (0 when not computed)."""
        return 0 if self.report.diagnostics is None else self.report.diagnostics.num_draws

    # ------------------------------------------------------------------ the approximation
    def sample_unconstrained(self, key: Array, n: int) -> Array:
        """(n, K) draws of q in R^K."""
        key = _diag.check_key(key)
        n = check_positive_int(n, "n")
        return _unconstrained_draws(self.family, self.params, key, n)

    def sample(self, key: Array, n: int, resample: str | None = None,
               num_proposals: int | None = None) -> dict[str, Array]:
        """n constrained draws: dict name -> array with leading axis n.

        Args:
          key: PRNG key.
          n: number of draws.
          resample: None for independent draws of q; "psis" for sampling-importance-resampling:
            `num_proposals` draws of q are weighted by their Pareto-smoothed importance weights
            and n of them are picked with replacement, which corrects q towards the posterior
            when k-hat < 0.7 (the picks contain repeats; see `diagnostics.psis_resample`).
          num_proposals: draws of q to resample from (default max(4 n, 4096, the fit's diagnostic
            draws): a k-hat that needed a larger sample to read below its threshold
            (`first_diagnostics`) needs that many draws again for its weights to be reliable).

        Returns:
          dict name -> (n, *shape) constrained draws.
        """
        key = _diag.check_key(key)
        n = check_positive_int(n, "n")
        if resample not in _RESAMPLE_OPTIONS:
            raise ValueError(f"resample must be one of {list(_RESAMPLE_OPTIONS)}, got {resample!r}")
        if resample is None:
            if num_proposals is not None:
                raise ValueError("num_proposals is only used with resample='psis'")
            return constrained_draws(self.model, self.family, self.params, key, n)
        else:
            proposals = max(4 * n, self._psis_draws(None)) if num_proposals is None else check_positive_int(num_proposals,
                                                                                          "num_proposals", 25)
            draw_key, pick_key = jax.random.split(key)
            zeta, ratios, _, _ = blocked_log_ratios(self.model, self.family, self.params, draw_key, proposals)
            zeta = _diag.psis_resample(pick_key, zeta, ratios, n)  # PSIS weights ignore the shift
        return _constrain(self.model, zeta)

    def _psis_draws(self, n: int | None) -> int:
        """n, or by default the draws PSIS needs here: 4,096, or the fit's own diagnostic sample where
        that is larger (a k-hat re-estimated from 16,384 draws read over its threshold from 4,096)."""
        if n is not None:
            return check_positive_int(n, "n", 25)
        return max(4096, self.num_diagnostic_draws)

    def importance_draws(self, key: Array, n: int | None = None) -> tuple[dict[str, Array], _diag.PSISResult]:
        """n draws of q (constrained) with their Pareto-smoothed importance weights.

        n defaults to 4,096, or to the fit's diagnostic draws where those are more (a k-hat
        re-estimate, `first_diagnostics`): the sample size at which the fit's k-hat was read.

        Returns:
          (draws, psis_result): draws is dict name -> (n, *shape); `psis_result.log_weights` are
          the normalised smoothed log weights and `psis_result.khat` the k-hat of these draws.
        """
        key = _diag.check_key(key)
        n = self._psis_draws(n)
        zeta, ratios, _, _ = blocked_log_ratios(self.model, self.family, self.params, key, n)
        return _constrain(self.model, zeta), _diag._psis_core(ratios, True)  # normalised: the shift drops out

    def psis_expectation(self, fn: Callable[[dict[str, Array]], PyTree], key: Array, n: int | None = None) -> PyTree:
        """PSIS-corrected posterior expectation E_p[fn(params)] from n draws of q (default as in
        `importance_draws`).

        `fn` takes one dict of constrained parameters and returns an array or pytree; it is
        vmapped over the draws and averaged with self-normalised Pareto-smoothed weights.
        Reliable while k-hat < 0.7 (`importance_draws` gives the k-hat of the draws used).

        Example:
          >>> second_moment = result.psis_expectation(lambda p: p["x"] ** 2, jax.random.key(1))  # doctest: +SKIP
        """
        if not callable(fn):
            raise TypeError(f"fn must be a function of a dict of constrained parameters, got {type(fn).__name__}")
        draws, smoothed = self.importance_draws(key, n)
        values = jax.vmap(fn)(draws)
        weights = jnp.exp(smoothed.log_weights)
        return jax.tree_util.tree_map(lambda v: jnp.tensordot(weights.astype(v.dtype), v, axes=1)
                                      if jnp.issubdtype(v.dtype, jnp.floating) else
                                      jnp.tensordot(weights, v.astype(weights.dtype), axes=1), values)

    def mean(self, key: Array | None = None, num_draws: int = 4000) -> dict[str, Array]:
        """Posterior means in the constrained space, by Monte Carlo over q.

        The constrained mean of q has no closed form for non-linear bijectors; without a `key`
        a fixed key (0) is used so repeated calls agree.
        """
        key = jax.random.key(0) if key is None else key
        num_draws = check_positive_int(num_draws, "num_draws")
        return {k: jnp.mean(v, axis=0) for k, v in self.sample(key, num_draws).items()}

    def linear_response(self, key: Array | None = None, num_draws: int | None = None) -> "Result":
        """This fit's linear-response Gaussian N(m, Sigma_LR) as a full-rank `Result` with its own PSIS
        diagnostics: m is q's mean and Sigma_LR the linear-response covariance the method computed
        (`extras["lr_covariance"]`, in R^K; DADVI, Giordano, Ingram & Broderick 2024).

        A mean-field q underestimates variances and has no correlations; the linear-response
        covariance corrects both from the curvature of the fit's own objective (for a Gaussian
        posterior it is exact). Its `summary()`, `sample()`, `psis_expectation()` and `to_arviz()`
        then use N(m, Sigma_LR); its k-hat says how close that Gaussian is to the posterior.

        Args:
          key: PRNG key for the diagnostics' draws (default `jax.random.key(0)`).
          num_draws: draws for its k-hat (default: max(4,096, the fit's own diagnostic draws)).

        Raises:
          ValueError: the fit has no linear-response covariance (only `method="dadvi"` computes
            one), or it is not positive definite (the fit did not end at a minimum).

        Example:
          >>> result = aj.fit(model, method="dadvi", family="meanfield")  # doctest: +SKIP
          >>> lr = result.linear_response(); print(lr.khat, lr.summary())  # doctest: +SKIP
        """
        from advi_jax.families import FullRankGaussian

        key = jax.random.key(0) if key is None else _diag.check_key(key)
        num_draws = self._psis_draws(num_draws)
        params = self._lr_params()
        family = FullRankGaussian()
        diagnostics, ratios = diagnose(self.model, family, params, key, num_draws, return_ratios=True)
        r = self.report
        report = dataclasses.replace(
            r, diagnostics=diagnostics, diagnostic_sample=(key, np.asarray(ratios)), first_diagnostics=None,
            method_reason=f"{r.method_reason}; shown: its linear-response Gaussian N(m, Sigma_LR) "
                          f"(Result.linear_response()) instead of its {self.family.name} q")
        return Result(self.model, family, params, report)

    def _lr_params(self):
        """Full-rank parameters of N(q's mean, extras["lr_covariance"]) (Cholesky in float64 on the host)."""
        from advi_jax.families import FullRankGaussian

        cov = self.report.extras.get("lr_covariance")
        if cov is None:
            raise ValueError(f"this {self.report.method} fit has no linear-response covariance "
                             "(extras['lr_covariance']): only method='dadvi' computes one")
        cov = np.asarray(cov, np.float64)
        k = self.model.dim
        if cov.shape != (k, k):
            raise ValueError(f"extras['lr_covariance'] must be ({k}, {k}) for this model, got {cov.shape}")
        loc = np.asarray(self.family.mean(self.params))
        try:
            tril = np.linalg.cholesky(0.5 * (cov + cov.T)) if np.all(np.isfinite(cov)) else None
        except np.linalg.LinAlgError:
            tril = None
        if tril is None:
            raise ValueError("the linear-response covariance (extras['lr_covariance']) is not positive definite: "
                             "the fit did not end at a minimum of its objective (see result.stop_reason)")
        dtype = loc.dtype
        return FullRankGaussian.from_scale_tril(jnp.asarray(loc, dtype), jnp.asarray(tril, dtype))

    def _lr_columns(self, key: Array | None, num_draws: int, labels) -> list[dict] | None:
        """Rows of the linear-response Gaussian's constrained mean and sd (from `num_draws` draws) for a
        mean-field fit that has one (None otherwise, or where it is not positive definite)."""
        from advi_jax.families import FullRankGaussian, MeanFieldGaussian

        if (not isinstance(self.family, MeanFieldGaussian) or "lr_covariance" not in self.report.extras
                or num_draws < 2):
            return None
        try:
            params = self._lr_params()
        except ValueError:
            return None
        key = jax.random.fold_in(jax.random.key(0) if key is None else key, 1)
        sampled = constrained_draws(self.model, FullRankGaussian(), params, key, int(num_draws))
        return _model_table(self.model, sampled, labels)

    def to_arviz(self, *args, **kwargs):
        """This result as ArviZ `InferenceData` (`advi_jax.interop.arviz.to_arviz(self, ...)`)."""
        try:
            from advi_jax.interop.arviz import to_arviz
        except ImportError as err:
            raise ImportError("Result.to_arviz needs advi_jax.interop.arviz (and the arviz package): "
                              f"{err}") from err
        return to_arviz(self, *args, **kwargs)

    # ------------------------------------------------------------------ the report
    @property
    def verdict(self) -> str:
        """The diagnostics' verdict in plain words (k-hat and q's mass where log p is not finite)."""
        return verdict(self.report.diagnostics, self.report.diagnostics_note, self.family.name)

    def summary_rows(self, key: Array | None = None, num_draws: int = 4000,
                     labels: Mapping[str, Any] | None = None, *,
                     reuse_diagnostic_draws: bool | None = None,
                     draws: Mapping[str, Any] | None = None) -> list[dict]:
        """Per scalar parameter: mean, sd and 5/50/95% quantiles under q (constrained space).

        When the diagnostics say PSIS is reliable (k-hat below the threshold, no non-finite
        mass) and q is not already close (k-hat >= 0.5, or the PSIS moment check flagged a
        coordinate: `Diagnostics.moments`), each row also has `psis_mean` and `psis_sd`: the
        Pareto-smoothed importance-weighted estimates, which correct q towards the posterior.
        With `reuse_diagnostic_draws` (default: when `key` is None) these reuse the diagnostics'
        own draws and log ratios (`num_draws` is then the diagnostics' S, and no log density is
        evaluated again); otherwise `num_draws` fresh draws (at least the diagnostics' S where k-hat was
        re-estimated from a larger sample, `Report.first_diagnostics`); at least 2. `labels` optionally maps a
        parameter name to labels of its flattened entries (a string for a scalar), a name the model does not
        have being an error; by default the model's own `labels` (e.g. feature names of the ready GLMs).
        `draws`: `sample(key, num_draws)` when the caller already made it (reusing the diagnostic
        draws, `key` is then `report.diagnostic_sample[0]`): used instead of drawing the same
        draws again; ignored where the summary takes fresh importance draws.
        A mean-field fit with a linear-response covariance (DADVI) also gets `lr_mean` and `lr_sd`:
        the same number of draws of its linear-response Gaussian (`linear_response`), constrained.
        """
        num_draws = check_positive_int(num_draws, "num_draws", 2)  # a sd needs two draws
        given = labels is not None
        if labels is None:
            labels = _default_labels(self.model)
        elif not isinstance(labels, Mapping):
            raise TypeError("labels must be a dict mapping a parameter name to labels of its entries, e.g. "
                            f"{{'beta': ['age', 'dose']}}, got {type(labels).__name__}")
        diag = self.report.diagnostics
        weights = None
        if (diag is not None and diag.nonfinite_share == 0 and diag.khat < _diag.khat_threshold(diag.num_draws)
                and (_diag.KHAT_GOOD <= diag.khat or diag.moments_flagged())):
            stored = self.report.diagnostic_sample
            reuse = key is None if reuse_diagnostic_draws is None else bool(reuse_diagnostic_draws)
            if reuse and stored is not None:
                draw_key, ratios = stored
                sampled = (constrained_draws(self.model, self.family, self.params, draw_key, int(len(ratios)))
                           if draws is None else draws)
                smoothed = _diag._psis_core(np.asarray(ratios), True)  # float64 on the host
            else:  # after a re-estimate, never fewer fresh draws than the k-hat that allowed PSIS came from
                fewest = diag.num_draws if self.report.first_diagnostics is not None else 100
                sampled, smoothed = self.importance_draws(jax.random.key(0) if key is None else key,
                                                          max(num_draws, fewest))
            weights = np.exp(np.asarray(smoothed.log_weights, np.float64))
        else:
            sampled = self.sample(jax.random.key(0) if key is None else key, num_draws) if draws is None else draws
        rows = _model_table(self.model, sampled, labels, weights, check_labels=given)
        count = int(np.shape(jax.tree_util.tree_leaves(sampled)[0])[0]) if sampled else 0
        lr_rows = self._lr_columns(key, count, labels)
        if lr_rows is not None:
            for row, lr in zip(rows, lr_rows):
                row["lr_mean"], row["lr_sd"] = lr["mean"], lr["sd"]
        return rows

    def diagnostics_lines(self) -> list[str]:
        """The diagnostics part of `summary()`, one string per line."""
        d = self.report.diagnostics
        if d is None:
            return [f"diagnostics: {self.report.diagnostics_note}"]
        s = d.num_draws
        lines = [f"PSIS k-hat = {d.khat:.3f} from {s} draws of q: {self.verdict}"]
        first = self.report.first_diagnostics
        if first is not None:
            lines.append(f"(re-estimated from {s} fresh draws: the first {first.num_draws} read k-hat "
                         f"{first.khat:.3f}, "
                         f"at or over its threshold {_diag.khat_threshold(first.num_draws):.2f}; k-hat says whether "
                         "PSIS is reliable at the size of the sample it came from)")
        lines.append(f"importance-weighted ELBO = {d.iw_elbo:.4f} +/- {d.iw_elbo_se:.2g} (Monte Carlo se); "
                     f"importance ESS = {d.ess:.0f} raw, {d.psis_ess:.0f} Pareto-smoothed, of {s}")
        if d.nonfinite_share > 0:
            lines.append(f"log density NaN or -inf at {100 * d.nonfinite_share:.3g}% of the draws; ELBO over all "
                         f"the draws = {d.elbo:.4g}")
        return lines

    def summary(self, key: Array | None = None, num_draws: int = 4000,
                labels: Mapping[str, Any] | None = None, rows: list[dict] | None = None) -> str:
        """A printable table of the posterior summary, the fit's outcome, its cost and diagnostics.

        `rows` are `summary_rows(key, num_draws, labels)` when already computed (not recomputed)."""
        r = self.report
        rows = self.summary_rows(key, num_draws, labels) if rows is None else rows
        width = max([len("parameter")] + [len(row["parameter"]) for row in rows])
        cols = ["mean", "sd", "5%", "50%", "95%"] + (["psis_mean", "psis_sd"] if rows and "psis_mean" in rows[0]
                                                      else [])
        cols += ["lr_mean", "lr_sd"] if rows and "lr_sd" in rows[0] else []
        lines = [f"{'parameter':<{width}} " + " ".join(f"{c:>10}" for c in cols)]
        for row in rows:
            lines.append(f"{row['parameter']:<{width}} " + " ".join(f"{row[c]:>10.4g}" for c in cols))
        if "lr_sd" in cols:
            lines.append("(lr_mean, lr_sd: the linear-response Gaussian N(m, Sigma_LR), whose covariance corrects the "
                         "mean-field q's too-small sds and restores correlations; result.linear_response() gives it "
                         "as a result with its own k-hat)")
        if "psis_mean" in cols:
            lines.append("(psis_mean, psis_sd: Pareto-smoothed importance-weighted estimates; k-hat < "
                         f"{_diag.khat_threshold(r.diagnostics.num_draws):.2f} says they are reliable)")
            moments = r.diagnostics.moments
            if moments is not None and moments.any_flagged and moments.source == "widened":
                lines.append("(but the widened moment check found q too narrow where q has few draws: these "
                             "columns, from q's own draws, correct only part of that; see the verdict below)")
        from advi_jax.vi import METHODS

        deterministic = getattr(METHODS.get(r.method), "DETERMINISTIC", False)
        tail = np.asarray(r.elbo[-1:] if deterministic else r.elbo[-min(len(r.elbo), 100):])
        bad = int(np.sum(~np.isfinite(tail)))
        if bad:
            elbo_text = f"ELBO: {bad} of the last {len(tail)} steps were not finite (no ELBO is reported)"
        elif deterministic:
            elbo_text = f"ELBO (final objective) = {self.final_elbo:.4f}"
        else:
            elbo_text = f"ELBO (mean of last {len(tail)} steps) = {self.final_elbo:.4f}"
        lines.append("")
        lr = "" if r.learning_rate is None else f" learning_rate={r.learning_rate:g}"
        lr += " (adapted)" if r.adaptation is not None else ""
        est = "" if r.estimator is None else f" estimator={r.estimator} num_samples={r.num_samples}"
        lines.append(f"method={r.method} ({r.method_reason}) family={self.family.name}{est} steps={r.num_steps}"
                     f"{lr} init={r.init_method}")
        lines.append(f"{elbo_text}; {r.stop_reason}; skipped non-finite steps: {r.num_nonfinite}")
        lines.append(f"cost: {r.num_grad_evals} gradient and {r.num_logp_evals} log-density evaluations; "
                     f"{r.seconds:.2f} s (start {r.start_seconds:.2f}, compile {r.compile_seconds:.2f}, "
                     f"run {r.run_seconds:.2f}, diagnostics {r.diagnostics_seconds:.2f})")
        if deterministic and not r.converged and not bad:
            # An exact-ELBO method's own test did not pass within its step budget: its q may be far from
            # the family's optimum (e.g. a varying-intercept model with many one-row groups, whose group
            # sd moves by ~1e-3 per step), and the diagnostics below then judge that unfinished q.
            lines.append(f"warning: not converged: {r.method} stopped at its step budget ({r.num_steps} steps) "
                         "before its convergence test passed; the estimates may be far from the optimum of "
                         "the family: refit with more steps (num_steps=, advi-jax fit --steps)")
        if r.runaway:
            lines.append(f"warning: parameters {list(r.runaway)} (flat index in R^K) ran away while the ELBO kept "
                         "rising: the posterior may be improper (e.g. separable data with a flat prior)")
        lines.extend(self.diagnostics_lines())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Result(method={self.report.method}, family={self.family.name}, dim={self.model.dim}, "
                f"num_steps={self.report.num_steps}, converged={self.report.converged}, khat={self.khat:.3g}, "
                f"stop_reason={self.report.stop_reason!r})")


from advi_jax.result_many import ManyResult  # noqa: E402  (re-exported; it builds Results)


@functools.partial(jax.jit, static_argnames=("family", "num_draws"))
def _unconstrained_block(family: Family, params: PyTree, key: Array, num_draws: int) -> Array:
    return family.sample(params, sampling_key(key), num_draws)


def _unconstrained_draws(family: Family, params: PyTree, key: Array, num_draws: int) -> Array:
    """`num_draws` draws of q in R^K, one compiled call a block of `importance.DRAW_BLOCK` draws (the
    draws every other sampler of q makes from the key, `importance.draw_blocks`; op by op, the sampler
    compiled each of its operations on first use: 1.2 s of a first `sample_unconstrained` on breast cancer)."""
    return blocked(lambda k, n: _unconstrained_block(family, params, k, n), key, num_draws)
