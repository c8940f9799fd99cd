"""`family="auto"` and `method="auto"`: the one place that decides what a fit runs, and says why.

The policy was chosen from measurements on the accuracy suite (`benchmarks/bench_auto.py`,
recorded in benchmarks/PERFORMANCE.md), against each posterior's full-rank family limit:

* Family: full-rank when K <= `FULLRANK_MAX_DIM`, else mean-field (`choose_family`); but a model
  `aj.fit` runs ADVI on with no settings of the caller's gets the low-rank family above it
  (`AUTO_LOWRANK`, measured there against mean-field). A full-rank Gaussian is the
  family whose optimum the suite's posteriors are measured against (hierarchical and regression
  posteriors are correlated; mean-field misses them by its own family error), and at K <= 200
  its O(K^2) draws and BaM's O(K^3) eigendecompositions cost less per step than the gradients.
* Method, for a general model and the full-rank family: ADVI (`AUTO_ADVI`: the STL estimator,
  4 draws per step) from the `init="bam"` start: the best-ELBO Gaussian of one Pathfinder path
  (or an isotropic Gaussian at the start when the path is degenerate, as down a funnel's neck),
  refined by 100 Batch-and-Match steps when they raise the ELBO. BaM's affine-invariant updates
  fix the scale (a badly scaled GLM, where ADVI from Pathfinder's Gaussian ends 6 sd off), and
  ADVI in the coordinates whitened by that Gaussian reaches the ELBO's own optimum (BaM's fixed
  point is a score-divergence optimum, 0.2-0.7 sd from it on breast cancer and Neal's funnel).
* When ADVI stops: not after a fixed budget (a fixed 300 steps left radon, K = 90, 1.5 sd from
  the family limit; 2,000 steps reach it; the easy posteriors need fewer than 300), but by its
  own test (`advi_jax.vi.advi.AutoStop`, Dhaka et al. 2020, Welandawe et al. 2024): constant-step
  natural-gradient ascent (the Fisher-natural gradient of the full-rank Gaussian in (mean, Cholesky
  factor), step 0.02, antithetic STL draws, `advi_jax.vi._natural`; it reached the family limit of
  the hierarchical posteriors where Adam's per-coordinate scaling, dominated by the gradient noise,
  left 0.06-0.64 sd: benchmarks/PERFORMANCE.md), the average of the later half of its iterates,
  stopped when that average's Monte Carlo
  standard error, its drift and its estimated distance from the optimum (the averaged natural
  gradient of the mean) are small in q's own sds; then once more at half the step size (RABVI's
  check of the constant step's bias), in batches as long as the first phase's and for at least
  half its length, confirming a change over 0.05 sd by a longer halved phase before it warns.
  `AUTO_ADVI.max_grad_evals` caps it. The natural step's mean direction carries a quadratic control
  variate (`AutoStop.control_rate=0.002`: coefficients averaged over ~500 steps' draws, pooled by
  the symmetry of the third derivatives, shrunk by their noise): the MCSE test is bound by that
  direction's noise on the hierarchical posteriors, and the variate took radon_noncentered and
  radon_varying_slopes from the cap (~50,000 gradients) to their rule's stop at 16,000-26,000
  (seeds 0-1), the suite's median from 4,171 to 4,048 gradients (benchmarks/PERFORMANCE.md,
  "hiercost"; births_lognormal_ts read 0.007 sd further from its limit on average over 4 seeds).
  And the first phase's step grows (x2, to at most 4 x 0.02) while, after 2,000 steps, its
  iterates still drift far and significantly, the window restarting each time (a TRANSIT,
  `AutoStop.transit_growth=2.0`, `advi_jax.vi._advi_averaged`): down a funnel's neck or along a
  centred hierarchy's scale the start lies far from the optimum along a direction the constant
  step climbs slowly, and the later-half average lagged the climb (neals_funnel 0.109 sd from the
  family limit at the cap, radon_centered 0.035). With it the suite at seed 0 ends 20 of 20
  within 0.05 sd (neals_funnel 0.014, radon_centered 0.003 stopping by its rule at 38,354
  gradients, eight_schools_centered by its rule at 46,282), median 4,048 gradients; seeds 1-2 on
  the eight hardest: all within 0.05 but neals_funnel at seed 2 (0.057, warned). The grown step
  stays grown only while a coordinate flagged at the last decision drifts on, flagged, the same way:
  a flag anywhere among the 2K coordinates kept it at 0.08 by noise for 3,200 steps on
  radon_varying_slopes and births_lognormal_ts, and radon_varying_slopes reached the cap (0.017);
  with the persistence test it stops by its rule at 34,895 gradients (0.010), the funnels' transits
  are unchanged (benchmarks/PERFORMANCE.md, "transit" and "birthscap"). births_lognormal_ts still
  reaches the cap, rightly: the halving finds the constant step's bias along log tau_w.
  Where the draws of the first 400 steps read heavy-tailed (more than 2% of them, each alone,
  would move q by over 0.25 sd: `AutoStop.heavy_draws=8`, `advi_jax.vi._advi_averaged`), 8 steps'
  draws are averaged into each update from then on, at the same cap: reg_horseshoe (K = 54, about
  10% heavy) went from 0.24 sd short of its family limit at the cap to 0.033-0.040 (seeds 0-1, still
  warned by k-hat and the cap); every other suite posterior reads 0-2 heavy draws of 1,600 and runs
  the same values as before (benchmarks/PERFORMANCE.md, "a signal for more draws per step").
"""

from __future__ import annotations

from typing import Any, NamedTuple

from advi_jax.base import Family
from advi_jax.families import FAMILIES, LowRankGaussian, get_family
from advi_jax.vi._advi_averaged import AutoStop
from advi_jax.vi._advi_drift import DriftStop

__all__ = ["choose_method", "choose_family", "choose", "Plan", "FULLRANK_MAX_DIM", "AUTO_ADVI", "AUTO_LOWRANK"]

FULLRANK_MAX_DIM = 200
"""`family="auto"` fits the full-rank Gaussian up to this K; above it the low-rank one where `aj.fit`'s
`method="auto"` runs ADVI (`AUTO_LOWRANK`), else the mean-field one."""


class _AutoAdvi(NamedTuple):
    init: str = "bam"
    max_grad_evals: int = 48_000
    num_samples: int = 4
    estimator: str = "stl"
    stop: AutoStop = AutoStop(preconditioner="natural", learning_rate=0.02, control_rate=0.002, transit_growth=2.0,
                              heavy_draws=8)

    def num_steps(self, dim: int) -> int:
        """The hard cap on ADVI's steps (the rule `stop` ends the run before it, where it can):
        `max_grad_evals` gradients."""
        return int(self.max_grad_evals // self.num_samples)


AUTO_ADVI = _AutoAdvi()
"""The settings `method="auto"` gives ADVI for a general model with the full-rank family."""


class _AutoLowRank(NamedTuple):
    rank: int = 10
    num_samples: int = 4
    estimator: str = "stl"
    num_steps: int = 40_000
    stop: DriftStop = DriftStop(max_steps=40_000)


AUTO_LOWRANK = _AutoLowRank()
"""What `family="auto"`, `method="auto"` fit above `FULLRANK_MAX_DIM` for a model no exact method covers:
the low-rank-plus-diagonal Gaussian (rank 10) by ADVI with the STL estimator, 4 draws a step, Adam at a
constant step until its iterates stop drifting, then a cosine decay as long as that phase
(`advi_jax.vi._advi_drift.DriftStop`; at most 40,000 steps, 160,000 gradients, which is what every fit
ran before the rule: 5-20 constant windows were enough on six of eight posteriors, while one needed
23,000 constant steps; benchmarks/PERFORMANCE.md, "a drift rule for the low-rank default"), from the start `init="auto"` gives it (for
K <= 1000 the Laplace mode with its diagonal scales, as mean-field's). On seven posteriors with K = 211-304
against NUTS (benchmarks/spot_large.py, benchmarks/PERFORMANCE.md) the mean-field ADVI that ran there
before missed the hierarchical scales by 1.0-49 sd (a per-observation lognormal Poisson, 300 varying
intercepts, a Rasch model, varying intercepts with data far from zero); this family, whose 10 columns
carry the scale-by-effects correlations, misses them by 0.04-0.3 sd, and matches or beats mean-field on
the rest (a random-walk time series that both miss by 10 sd, two wide logistic regressions). Fewer steps
were too few where the data lie far from zero (that regression's scale 8 sd off after 20,000 steps, 0.01
sd after 40,000); with one draw per step the factor's noise inflated q (0.35-0.6 sd)."""


class Plan(NamedTuple):
    """What `aj.fit` runs.

    Attributes:
      method: a name in `advi_jax.vi.METHODS`.
      family: the `Family`.
      reason: why, in words (family and method), for the result and `summary()`.
      init, num_steps, num_samples, estimator: the settings to run with (the caller's, or the
        policy's where the caller left the default).
      stop: ADVI's `AutoStop` (its own stopping rule, `num_steps` then a cap), or None.
    """

    method: str
    family: Family
    reason: str
    init: Any
    num_steps: int | None
    num_samples: int
    estimator: Any
    stop: Any = None


def choose_family(model: Any, family: Any, method: Any = "auto") -> tuple[Family, str]:
    """`family="auto"` resolved by K (`FULLRANK_MAX_DIM`, or the named method's own
    `FULLRANK_AUTO_MAX_DIM` where it has one: DADVI's); any other value passes through `get_family`.

    Returns:
      (Family, reason); the reason is "" for a family the caller named.

    Example:
      >>> import jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
      >>> choose_family(model, "auto")[0].name
      'fullrank'
    """
    if isinstance(family, str) and family == "auto":
        k = int(model.dim)
        limit, whose = FULLRANK_MAX_DIM, ""
        if isinstance(method, str) and method != "auto":
            from advi_jax.vi import METHODS

            module = METHODS.get(method)
            own = getattr(module, "FULLRANK_AUTO_MAX_DIM", None)
            if own is not None:
                limit, whose = own, f" for method={method!r}"
            fits = tuple(getattr(module, "FAMILIES", ()))
            if fits == ("fullrank",):  # Batch-and-Match: the one family it fits, whatever K
                return get_family("fullrank"), (f"family fullrank: method={method!r} fits only the full-rank "
                                                f"family (K={k}; family='auto')")
        if k <= limit:
            return get_family("fullrank"), f"family fullrank: K={k} <= {limit}{whose} (family='auto')"
        return get_family("meanfield"), f"family meanfield: K={k} > {limit}{whose} (family='auto')"
    if isinstance(family, str) and family not in FAMILIES:  # get_family's list lacks the 'auto' of aj.fit
        raise ValueError(f"family must be 'auto' or one of {sorted(FAMILIES)}, or a Family instance, got {family!r}")
    return get_family(family), ""


def choose_method(model: Any, family: Family, *, estimator: Any = "reparam", num_samples: int = 1,
                  optimizer: Any = None, learning_rate: Any = None, minibatch: bool = False) -> tuple[str, str]:
    """The method `method="auto"` runs for a resolved family, and the reason in words.

    The policy, in order:

    1. A ready GLM (`aj.models.logistic_regression` / `poisson_regression` without
       `hierarchical_scale`) with a family glm_exact fits, full data and no ADVI settings of the
       caller's: `"glm_exact"`. Its ELBO is exact (closed form or quadrature) and it reaches the
       family's optimum in a few passes over X (benchmarks/bench_time_to_answer.py).
    2. Otherwise `"advi"`: for the full-rank family with full data and no ADVI settings of the
       caller's, with `AUTO_ADVI`'s settings from the Pathfinder -> BaM start (`aj.fit` applies
       them; see the module docstring); else with the caller's settings (a caller who passes
       `estimator=`, `num_samples=`, `optimizer=` or `learning_rate=` asked for ADVI's settings,
       so they are used as given), which is also what runs the mean-field and low-rank families,
       any estimator and minibatches.

    A varying-intercept GLM (`group=`) goes the way of 1. to `"glm_grouped"` (each exact
    method's `supports` says what it covers).

    Args:
      model: the model.
      family: the resolved `Family`.
      estimator, num_samples, optimizer, learning_rate: the ADVI settings the caller passed.
      minibatch: whether the fit sees the data in minibatches.

    Returns:
      (name in `advi_jax.vi.METHODS`, reason).

    Example:
      >>> import advi_jax as aj
      >>> from advi_jax.run import choose_method
      >>> choose_method(None, aj.MeanFieldGaussian())[0]
      'advi'
    """
    from advi_jax.vi import METHODS

    advi_settings = _advi_settings(estimator, num_samples, optimizer, learning_rate)
    for exact in ("glm_exact", "glm_grouped"):  # the exact-ELBO methods, each says what it covers
        glm = METHODS.get(exact)
        if glm is not None and not minibatch and glm.supports(model, family):
            if not advi_settings:
                return exact, ("a ready GLM, so the exact (closed-form / quadrature) ELBO and second-order "
                               "steps reach the family's optimum in a few passes over X")
            return "advi", (f"ADVI because {', '.join(advi_settings)} was given (ADVI settings); "
                            f"method={exact!r} is the faster exact fit of this model")
    if advi_settings:
        return "advi", f"ADVI because {', '.join(advi_settings)} was given (ADVI settings)"
    if family.name == "fullrank" and not minibatch:
        step = ("constant-step natural gradient" if AUTO_ADVI.stop.preconditioner == "natural"
                else "constant-step Adam")
        return "advi", (f"ADVI (STL, {AUTO_ADVI.num_samples} draws, {step} with iterate averaging, "
                        "stopped by its own MCSE / drift / distance test, at most "
                        f"{AUTO_ADVI.num_steps(model.dim)} steps) from a Pathfinder -> Batch-and-Match start: BaM fixes "
                        "the scale affine-invariantly, ADVI then reaches the ELBO's optimum")
    return "advi", "ADVI runs every family, estimator and data size"


def choose(model: Any, family: Any, method: Any, *, init: Any = "auto", num_steps: int | None = None,
           estimator: Any = "reparam", num_samples: int = 1, optimizer: Any = None,
           learning_rate: Any = None) -> Plan:
    """The `Plan` of `aj.fit`: the family (`choose_family`), the method (`choose_method` for
    `method="auto"`), and the settings, the caller's wherever the caller gave them.

    Raises:
      ValueError, TypeError: an unknown family or method.

    Example:
      >>> import jax.numpy as jnp, advi_jax as aj
      >>> model = aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((3,))})
      >>> plan = choose(model, "auto", "auto")
      >>> plan.method, plan.family.name, plan.init, plan.estimator
      ('advi', 'fullrank', 'bam', 'stl')
    """
    family_obj, family_reason = choose_family(model, family, method)
    if not isinstance(method, str) or method != "auto":
        reason = "requested" + (f"; {family_reason}" if family_reason else "")
        return Plan(method, family_obj, reason, init, num_steps, num_samples, estimator)
    name, why = choose_method(model, family_obj, estimator=estimator, num_samples=num_samples, optimizer=optimizer,
                              learning_rate=learning_rate)
    reason = "auto: " + (f"{family_reason}; " if family_reason else "") + why
    no_settings = not _advi_settings(estimator, num_samples, optimizer, learning_rate)
    if name == "advi" and no_settings and _is_auto(family) and int(model.dim) > FULLRANK_MAX_DIM:
        low = AUTO_LOWRANK
        steps = (f"Adam steps decaying once its iterates stop drifting, at most {low.num_steps}" if num_steps is None
                 else f"{num_steps} Adam steps")
        reason = (f"auto: family lowrank (rank {low.rank}): K={int(model.dim)} > {FULLRANK_MAX_DIM} (family='auto'); "
                  f"ADVI (STL, {low.num_samples} draws x {steps}): the low-rank factor carries the "
                  "correlations of a hierarchy's scales with its effects, which mean-field misses")
        return Plan(name, LowRankGaussian(rank=low.rank), reason, init, low.num_steps if num_steps is None else num_steps,
                    low.num_samples, low.estimator, low.stop if num_steps is None else None)
    auto_advi = name == "advi" and family_obj.name == "fullrank" and no_settings
    if not auto_advi:
        return Plan(name, family_obj, reason, init, num_steps, num_samples, estimator)
    return Plan(name, family_obj, reason, AUTO_ADVI.init if _is_auto(init) else init,
                AUTO_ADVI.num_steps(model.dim) if num_steps is None else num_steps, AUTO_ADVI.num_samples,
                AUTO_ADVI.estimator, AUTO_ADVI.stop)


def _is_auto(init: Any) -> bool:
    return isinstance(init, str) and init == "auto"


def _advi_settings(estimator: Any, num_samples: Any, optimizer: Any, learning_rate: Any) -> list[str]:
    return [name for name, value, default in (
        ("estimator", estimator, "reparam"), ("num_samples", num_samples, 1), ("optimizer", optimizer, None),
        ("learning_rate", learning_rate, None)) if not (value is default or value == default)]
