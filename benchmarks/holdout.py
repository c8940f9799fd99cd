"""Held-out posteriors: the default `aj.fit` on ten models that the accuracy suite does not hold.

The default fit (`method="auto"`) was tuned and measured on the 22 posteriors of
`benchmarks.suite` + `benchmarks.suite_more`. These ten exist only to check it; nothing is tuned
to them. Each is a plain NumPyro model with fixed-seed synthetic data (K <= 42, N <= 600):

=========================  ==================================================================  ==
name                       what is new against the suite                                         K
=========================  ==================================================================  ==
robust_t_regression        Student-t errors with unknown degrees of freedom (nu ~ Gamma(2, 0.1))  6
ordinal_regression         ordered-logistic likelihood, cutpoints an `ImproperUniform` ordered     8
                           vector with a `numpyro.factor` prior (Stan's `ordered[C-1] c`)
hier_logistic_nc           logistic regression, 30 groups, non-centred intercepts                 33
gp_marginal                GP regression (N = 30, squared-exponential), Cholesky of the kernel     3
zero_inflated_poisson      zero-inflated Poisson regression (the gate in (0, 1))                   4
weibull_censored           Weibull survival, 30% right-censored through `handlers.mask`            4
ar2_stationary             AR(2) through partial autocorrelations in (-1, 1), near the boundary   4
dirichlet_composition      Dirichlet-distributed compositions, simplex mean x concentration        5
logistic_separation        logistic regression with quasi-separation (skewed coefficient)         4
beta_binomial_centered     centred hierarchical Beta-binomial, 40 groups, theta_j in (0, 1)       42
=========================  ==================================================================  ==

References (`--make-references`): NUTS through `benchmarks.make_references.run_nuts` (float64,
4 chains, 1000 warm-up + 2000 draws unless `DRAWS` says more; R-hat <= 1.01 and ESS >= 400 are
checked and printed), stored in `benchmarks/references/holdout/<name>.json` in the suite's format
(per scalar parameter in the constrained space: mean, sd, R-hat, ESS).

The runner (`python -m benchmarks.holdout`) fits each model with the default `aj.fit(model, key=...)`
at the seeds given (default 0, 1) and prints, against NUTS: max |dmean| / sd and the median and
max |log sd ratio| (constrained space, 32,768 antithetic draws of q, as `benchmarks.bench_auto`),
k-hat (with the diagnostics' draws S and the relative sd of the raw importance weights, cv,
`advi_jax.diagnostics.ratio_cv`: below 0.05 the verdict is "good" whatever k-hat reads) and the
first word of its verdict, the warnings raised, gradient evaluations, the wall
time of a first and a second call (another key), and what ran (method / family / start / steps /
stop reason). A row is flagged SILENT when the error is large (max |dmean| / sd > 0.3 or the
median sd ratio off by more than 30%) and no `DiagnosticWarning` was raised, SILENT-1sd when only
one parameter's sd is off by more than 30% without a warning; a crash or a non-finite moment is
flagged CRASH / NAN. With the full-rank family limits stored (`--family-limits`: the variational
Newton fixed point of `benchmarks.family_limit`, in `references/holdout/family_limit/`), each row
also has the distance from the limit (max |dmean| / sd of NUTS, median |log sd ratio|, and
ELBO - ELBO(limit)), which separates the optimiser's error from the Gaussian family's.

Usage:
  nice -n 10 python -m benchmarks.holdout --make-references            # NUTS references (minutes)
  nice -n 10 python -m benchmarks.holdout                              # the default fit, seeds 0, 1
  python -m benchmarks.holdout --models gp_marginal,ar2_stationary --seeds 0 --no-second
  nice -n 10 python -m benchmarks.holdout --family-limits                # full-rank family limits (minutes)
  python -m benchmarks.holdout --khat-noise --models zero_inflated_poisson   # k-hat's spread at fixed q
  python -m benchmarks.holdout --x64 --seeds 0 --no-second               # a float64 user
  python -m benchmarks.bench_first_call --models gp_marginal,hier_logistic_nc  # first calls, fresh processes

The runner's "first s" is the first call in this process (the first model's also pays one-time
costs, a later seed's finds the model's programs compiled); `bench_first_call` measures each first
call in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.distributions import constraints  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax.diagnostics import ratio_cv  # noqa: E402
from benchmarks.bench_auto import NUM_DRAWS, against_limit, antithetic, elbo_of, warned_why  # noqa: E402
from benchmarks.common import machine, markdown_table, versions, write_json  # noqa: E402
from benchmarks.suite import SuiteModel, flatten_draws  # noqa: E402

REFERENCE_DIR = os.path.join(os.path.dirname(__file__), "references", "holdout")
LIMIT_DIR = os.path.join(REFERENCE_DIR, "family_limit")
ESS_BOUND = 400.0
SILENT_MEAN = 0.3
SILENT_SD = float(np.log(1.3))


# ---------------------------------------------------------------------------------------------
# Model functions
# ---------------------------------------------------------------------------------------------


def robust_t_regression(x, y):
    """y_n ~ StudentT(nu, a + x_n . beta, sigma); a, beta_d ~ N(0, 5), sigma ~ HalfNormal(2), nu ~ Gamma(2, 0.1)."""
    a = numpyro.sample("intercept", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 5.0).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.StudentT(nu, a + x @ beta, sigma), obs=y)


def ordinal_regression(x, y, num_categories):
    """y_n ~ OrderedLogistic(x_n . beta, c); beta_d ~ N(0, 2.5); c an ordered vector with c_k ~ N(0, 5) (a factor)."""
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 2.5).to_event(1))
    c = numpyro.sample("cutpoints", dist.ImproperUniform(constraints.ordered_vector, (), (num_categories - 1,)))
    numpyro.factor("cutpoints_prior", dist.Normal(0.0, 5.0).log_prob(c).sum())
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.OrderedLogistic(x @ beta, c), obs=y)


def hier_logistic_nc(x, group, y, num_groups):
    """y_n ~ Bernoulli(logit = a_g[n] + b x_n), a_g = mu + tau z_g; mu ~ N(0, 2), tau ~ HalfNormal(1), b ~ N(0, 2)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    with numpyro.plate("groups", num_groups):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=mu + tau * z[group] + b * x), obs=y)


def gp_marginal(x, y):
    """y ~ MVN(0, alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) + sigma^2 I) through its Cholesky factor.

    rho ~ InverseGamma(5, 5), alpha ~ HalfNormal(2), sigma ~ HalfNormal(1).
    """
    rho = numpyro.sample("rho", dist.InverseGamma(5.0, 5.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    d2 = jnp.square(x[:, None] - x[None, :])
    k = alpha**2 * jnp.exp(-0.5 * d2 / rho**2) + (sigma**2 + 1e-6) * jnp.eye(x.shape[0])
    numpyro.sample("y", dist.MultivariateNormal(jnp.zeros(x.shape[0]), scale_tril=jnp.linalg.cholesky(k)), obs=y)


def zero_inflated_poisson(x, y):
    """y_n ~ ZIP(gate, exp(a + x_n . beta)); gate ~ Beta(1, 1), a ~ N(0, 5), beta_d ~ N(0, 1)."""
    gate = numpyro.sample("gate", dist.Beta(1.0, 1.0))
    a = numpyro.sample("intercept", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.ZeroInflatedPoisson(gate, jnp.exp(a + x @ beta)), obs=y)


def weibull_censored(x, t, event):
    """Weibull survival, scale exp(a + x . beta), shape k ~ LogNormal(0, 1); a ~ N(0, 5), beta_d ~ N(0, 2).

    Observed times (event = 1) through `handlers.mask`; right-censored ones (event = 0) add
    log S(t) = -(t / scale)^k with a `numpyro.factor`.
    """
    k = numpyro.sample("shape", dist.LogNormal(0.0, 1.0))
    a = numpyro.sample("intercept", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 2.0).to_event(1))
    scale = jnp.exp(a + x @ beta)
    observed = event > 0
    with numpyro.plate("n", t.shape[0]), numpyro.handlers.mask(mask=observed):
        numpyro.sample("t", dist.Weibull(scale, k), obs=t)
    numpyro.factor("censored", jnp.sum(jnp.where(observed, 0.0, -((t / scale) ** k))))


def ar2_stationary(y):
    """AR(2) around mu, conditional on the first two values; stationarity through partial autocorrelations.

    r1, r2 ~ Uniform(-1, 1), phi1 = r1 (1 - r2), phi2 = r2 (Durbin-Levinson: every (r1, r2) in
    (-1, 1)^2 is a stationary AR(2) and every stationary AR(2) is one); mu ~ N(0, 5), sigma ~ HalfNormal(1).
    """
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    r = numpyro.sample("pacf", dist.Uniform(-jnp.ones(2), 1.0).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    phi1, phi2 = r[0] * (1.0 - r[1]), r[1]
    d = y - mu
    pred = mu + phi1 * d[1:-1] + phi2 * d[:-2]
    numpyro.sample("y", dist.Normal(pred, sigma).to_event(1), obs=y[2:])


def dirichlet_composition(y):
    """Compositions y_n ~ Dirichlet(kappa p); p ~ Dirichlet(1) (the simplex mean), kappa ~ LogNormal(3, 1)."""
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(y.shape[1])))
    kappa = numpyro.sample("kappa", dist.LogNormal(3.0, 1.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Dirichlet(kappa * p), obs=y)


def logistic_separation(x, y):
    """y_n ~ Bernoulli(logit = a + x_n . beta) where x_n1 nearly separates y; a ~ N(0, 2.5), beta_d ~ N(0, 2.5)."""
    a = numpyro.sample("intercept", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 2.5).to_event(1))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=a + x @ beta), obs=y)


def beta_binomial_centered(y, n):
    """theta_j ~ Beta(m kappa, (1 - m) kappa), y_j ~ Binomial(n_j, theta_j); m ~ Beta(1, 1),
    kappa ~ LogNormal(2.5, 1)."""
    m = numpyro.sample("m", dist.Beta(1.0, 1.0))
    kappa = numpyro.sample("kappa", dist.LogNormal(2.5, 1.0))
    with numpyro.plate("groups", y.shape[0]):
        theta = numpyro.sample("theta", dist.Beta(m * kappa, (1.0 - m) * kappa))
        numpyro.sample("y", dist.Binomial(n, probs=theta), obs=y)


# ---------------------------------------------------------------------------------------------
# Data (fixed seeds) and builders
# ---------------------------------------------------------------------------------------------


def _robust():
    rng = np.random.default_rng(101)
    x = rng.standard_normal((200, 3))
    y = 1.0 + x @ np.array([0.5, -1.0, 0.0]) + 0.8 * rng.standard_t(3.0, size=200)
    y[:6] += rng.choice([-1.0, 1.0], size=6) * 8.0  # a few gross outliers
    return SuiteModel(robust_t_regression, (x.astype(np.float32), y.astype(np.float32)),
                      "robust regression, Student-t errors (nu = 3) + 6 outliers, N = 200, D = 3, nu unknown")


def _ordinal():
    rng = np.random.default_rng(102)
    x = rng.standard_normal((400, 4))
    eta = x @ np.array([1.0, -0.5, 0.25, 0.0]) + rng.logistic(size=400)
    y = np.searchsorted(np.array([-2.0, -0.5, 0.7, 2.5]), eta)  # 5 categories, 0..4
    return SuiteModel(ordinal_regression, (x.astype(np.float32), y.astype(np.int32), 5),
                      "ordered-logistic regression, 5 categories, N = 400, D = 4, ordered cutpoints (ImproperUniform)")


def _hier_logistic():
    rng = np.random.default_rng(103)
    groups, per = 30, 20
    group = np.repeat(np.arange(groups), per)
    x = rng.standard_normal(groups * per)
    a = -0.3 + 0.6 * rng.standard_normal(groups)
    y = (rng.random(groups * per) < 1.0 / (1.0 + np.exp(-(a[group] + 0.8 * x)))).astype(np.float32)
    return SuiteModel(hier_logistic_nc, (x.astype(np.float32), group.astype(np.int32), y, groups),
                      "hierarchical logistic regression, 30 groups x 20, non-centred, tau = 0.6")


def _gp():
    rng = np.random.default_rng(104)
    x = np.sort(rng.uniform(0.0, 10.0, size=30))
    y = np.sin(x) + 0.3 * rng.standard_normal(30)
    return SuiteModel(gp_marginal, (x.astype(np.float32), y.astype(np.float32)),
                      "marginal GP regression, N = 30, squared-exponential kernel (rho, alpha, sigma)")


def _zip():
    rng = np.random.default_rng(105)
    x = rng.standard_normal((500, 2))
    rate = np.exp(0.8 + x @ np.array([0.4, -0.3]))
    y = np.where(rng.random(500) < 0.3, 0, rng.poisson(rate))
    return SuiteModel(zero_inflated_poisson, (x.astype(np.float32), y.astype(np.float32)),
                      "zero-inflated Poisson regression, N = 500, D = 2, gate = 0.3")


def _weibull():
    rng = np.random.default_rng(106)
    x = rng.standard_normal((300, 2))
    scale = np.exp(1.0 + x @ np.array([0.5, -0.25]))
    t_true = scale * rng.weibull(1.5, size=300)
    censor = rng.uniform(0.0, 8.0, size=300)
    event = (t_true <= censor).astype(np.float32)
    t = np.minimum(t_true, censor)
    return SuiteModel(weibull_censored, (x.astype(np.float32), t.astype(np.float32), event),
                      f"Weibull survival, shape 1.5, N = 300, D = 2, {100 * (1 - event.mean()):.0f}% right-censored")


def _ar2():
    rng = np.random.default_rng(107)
    phi1, phi2 = 1.5, -0.6  # partial autocorrelations r1 = 0.9375, r2 = -0.6
    y = np.zeros(202)
    for i in range(2, 202):
        y[i] = phi1 * y[i - 1] + phi2 * y[i - 2] + 0.5 * rng.standard_normal()
    return SuiteModel(ar2_stationary, ((y[2:] + 1.0).astype(np.float32),),
                      "AR(2), T = 200, phi = (1.5, -0.6) (pacf r1 = 0.94), mu = 1, sigma = 0.5")


def _dirichlet():
    rng = np.random.default_rng(108)
    p = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    y = rng.dirichlet(30.0 * p, size=60)
    y = np.clip(y, 1e-6, None)
    y /= y.sum(1, keepdims=True)
    return SuiteModel(dirichlet_composition, (y.astype(np.float32),),
                      "60 Dirichlet compositions of 5 parts, p = (.5, .25, .15, .07, .03), kappa = 30")


def _separation():
    rng = np.random.default_rng(109)
    x = rng.standard_normal((60, 3))
    y = (x[:, 0] + 0.05 * rng.standard_normal(60) > 0).astype(np.float32)
    return SuiteModel(logistic_separation, (x.astype(np.float32), y),
                      f"logistic regression with quasi-separation by x1, N = 60, D = 3 "
                      f"({int(((x[:, 0] > 0) != (y > 0)).sum())} rows on the wrong side)")


def _beta_binomial():
    rng = np.random.default_rng(110)
    n = rng.integers(10, 60, size=40)
    theta = rng.beta(0.2 * 15.0, 0.8 * 15.0, size=40)
    y = rng.binomial(n, theta)
    return SuiteModel(beta_binomial_centered, (y.astype(np.float32), n.astype(np.float32)),
                      "centred hierarchical Beta-binomial, 40 groups, n_j in 10..59, m = 0.2, kappa = 15")


MODELS = {
    "robust_t_regression": _robust,
    "ordinal_regression": _ordinal,
    "hier_logistic_nc": _hier_logistic,
    "gp_marginal": _gp,
    "zero_inflated_poisson": _zip,
    "weibull_censored": _weibull,
    "ar2_stationary": _ar2,
    "dirichlet_composition": _dirichlet,
    "logistic_separation": _separation,
    "beta_binomial_centered": _beta_binomial,
}
DRAWS = {}
"""Per-model multiple of the default NUTS draws (and warm-up) where 2000 x 4 do not reach ESS >= 400."""


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def reference_path(name: str, folder: str = REFERENCE_DIR) -> str:
    return os.path.join(folder, f"{name}.json")


def load_reference(name: str, folder: str = REFERENCE_DIR) -> dict | None:
    """The stored NUTS reference of `name` (or, with `folder=LIMIT_DIR`, its family limit), or None."""
    path = reference_path(name, folder)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def make_references(names, seed: int = 0) -> None:
    """NUTS references through the suite's `run_nuts` (float64, 4 chains), with R-hat and ESS checked."""
    from benchmarks.make_references import RHAT_BOUND, run_nuts

    jax.config.update("jax_enable_x64", True)
    os.makedirs(REFERENCE_DIR, exist_ok=True)
    for name in names:
        factor = DRAWS.get(name, 1)
        ref = run_nuts(name, MODELS[name](), chains=4, warmup=1000 * factor, draws=2000 * factor, seed=seed)
        ref["ess_ok"] = bool(ref["min_ess"] >= ESS_BOUND)
        with open(reference_path(name), "w") as f:
            json.dump(ref, f, indent=1)
        flag = ("ok" if ref["rhat_ok"] and ref["ess_ok"]
                else f"FAILED (R-hat < {RHAT_BOUND}: {ref['rhat_ok']}, ESS >= {ESS_BOUND:.0f}: {ref['ess_ok']})")
        print(f"{name}: {len(ref['params'])} scalars, max R-hat {ref['max_rhat']:.4f}, min ESS {ref['min_ess']:.0f} "
              f"({flag}), {ref['divergences']} divergences, {ref['seconds']:.0f} s", flush=True)


def make_family_limits(names, seed: int = 0) -> None:
    """Full-rank family limits through `benchmarks.family_limit.compute_newton_limit` (float64): the
    variational Newton fixed point on one set of 65,536 antithetic draws, Anderson-accelerated to 1e-4."""
    from benchmarks.family_limit import compute_newton_limit

    jax.config.update("jax_enable_x64", True)
    os.makedirs(LIMIT_DIR, exist_ok=True)
    for name in names:
        out, _ = compute_newton_limit(name, MODELS[name](), iters=40, draws=65536, moment_draws=32768, seed=seed,
                                      fixed_draws=True, tol=1e-4)
        with open(reference_path(name, LIMIT_DIR), "w") as f:
            json.dump(out, f, indent=1)
        print(f"{name}: family limit ELBO {out['elbo']:.3f} +- {out['elbo_se']:.3f}, k-hat {out['khat']:.2f}, "
              f"{out['stop_reason']}, {out['seconds']:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------------
# The default fit against the reference
# ---------------------------------------------------------------------------------------------


def errors(draws: dict, reference: dict) -> dict:
    """Max |dmean| / sd, median and max |log sd ratio| (and the worst parameter) against NUTS; NaN-aware."""
    mean_err, log_sd, labels = [], [], []
    for label, ref in reference["params"].items():
        if not ref["sd"] > 1e-8:
            continue
        x = np.asarray(draws[label], np.float64)
        mean_err.append(abs(x.mean() - ref["mean"]) / ref["sd"])
        log_sd.append(abs(np.log(x.std() / ref["sd"])))
        labels.append(label)
    mean_err, log_sd = np.array(mean_err), np.array(log_sd)
    worst = int(np.nanargmax(mean_err)) if np.isfinite(mean_err).any() else 0
    worst_sd = int(np.nanargmax(log_sd)) if np.isfinite(log_sd).any() else 0
    return {"max|dmean|/sd": float(np.max(mean_err)), "med|log sd|": float(np.median(log_sd)),
            "max|log sd|": float(np.max(log_sd)), "worst mean": labels[worst], "worst sd": labels[worst_sd],
            "finite": bool(np.isfinite(mean_err).all() and np.isfinite(log_sd).all())}


def fit_default(model, seed: int, second_call: bool = True) -> dict:
    """The default `aj.fit(model, key=...)`: its draws, k-hat, verdict, warnings, cost and what ran."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tick = time.perf_counter()
        result = aj.fit(model, key=jax.random.key(seed), progress=False)
        first = time.perf_counter() - tick
    second = float("nan")
    if second_call:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tick = time.perf_counter()
            aj.fit(model, key=jax.random.key(seed + 100), progress=False)
            second = time.perf_counter() - tick
    zeta = antithetic(result.sample_unconstrained(jax.random.key(seed + 1), NUM_DRAWS // 2),
                      result.family.mean(result.params))
    draws = flatten_draws(jax.device_get(jax.vmap(model.to_constrained)(zeta)))
    elbo = elbo_of(model, zeta, result.family.log_prob(result.params, zeta))
    diag = result.report.diagnostics
    other = [str(w.message)[:120] for w in caught if not issubclass(w.category, aj.DiagnosticWarning)]
    return {"draws": draws, "elbo": elbo, "khat": float(result.khat), "S": int(diag.num_draws),
            "cv": float(ratio_cv(diag.ess, diag.num_draws)), "verdict": result.verdict.split(" ")[0].rstrip(":,"),
            "warned": warned_why(caught), "other warnings": other, "grad evals": int(result.num_grad_evals),
            "first s": first, "second s": second,
            "ran": (f"{result.report.method}/{result.family.name}/{result.init_method.split(' (')[0]}/"
                    f"{result.num_steps} steps/{result.stop_reason.split(':')[0]}")}


def khat_noise(name: str, seed: int = 1) -> None:
    """Print k-hat of one default fit's q over fresh draw sets: S (the diagnostics' draws) and 32,768."""
    from advi_jax.diagnostics import khat_threshold

    suite_model = MODELS[name]()
    model = aj.from_numpyro(suite_model.fn, *suite_model.args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = aj.fit(model, key=jax.random.key(seed), progress=False)
    fam, params, num = result.family, result.params, result.num_diagnostic_draws
    log_ratio = jax.jit(jax.vmap(lambda z: model.log_density(z) - fam.log_prob(params, z)))
    print(f"{name}: the fit's k-hat {result.khat:.3f} from S = {num} draws ({result.verdict.split(' ')[0]})")
    for n, reps in ((num, 20), (32768, 5)):
        ks, cvs = [], []
        for i in range(reps):
            ratios = log_ratio(fam.sample(params, jax.random.key(1000 + i), n))
            psis = aj.psis(ratios)
            ks.append(float(psis.khat))
            w = np.exp(np.asarray(ratios, np.float64) - float(np.max(ratios)))
            cvs.append(float(w.std() / w.mean()))  # = sqrt(S / ESS - 1), `ratio_cv`
        ks = np.array(ks)
        print(f"  S = {n:6d}: k-hat mean {ks.mean():.3f} sd {ks.std():.3f} range {ks.min():.3f}-{ks.max():.3f}, "
              f"{np.mean(ks >= khat_threshold(n)):.0%} of draw sets at or over the threshold "
              f"{khat_threshold(n):.3f}; weights' cv {min(cvs):.3f}-{max(cvs):.3f}", flush=True)


def flag_of(row: dict) -> str:
    if "error" in row:
        return "CRASH"
    if not row["finite"]:
        return "NAN"
    bad = row["max|dmean|/sd"] > SILENT_MEAN or row["med|log sd|"] > SILENT_SD
    one_sd = row["max|log sd|"] > SILENT_SD  # one parameter's sd off by more than 30%
    if (bad or one_sd) and row["warned"]:
        return "warned"
    return "SILENT" if bad else "SILENT-1sd" if one_sd else "ok"


COLUMNS = ["model", "K", "seed", "max|dmean|/sd", "med|log sd|", "max|log sd|", "worst mean", "limit max|dmean|/sd",
           "limit med|log sd|", "elbo - limit", "khat", "cv", "verdict", "warned", "grad evals", "first s", "second s",
           "ran", "flag"]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--no-second", action="store_true", help="skip the second (warm-cache) call")
    parser.add_argument("--make-references", action="store_true", help="run NUTS and store the references")
    parser.add_argument("--x64", action="store_true", help="fit with jax_enable_x64 on (a float64 user)")
    parser.add_argument("--khat-noise", action="store_true",
                        help="per model: k-hat of the default fit's q (seed 1) over 20 fresh draw sets of the "
                             "diagnostics' size S and 5 of 32,768 draws (its spread at fixed q)")
    parser.add_argument("--family-limits", action="store_true",
                        help="compute and store the full-rank family limits (variational Newton, float64)")
    parser.add_argument("--out", default=None, help="write the rows and a markdown table to this JSON file")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else list(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {list(MODELS)}")
    if args.make_references:
        make_references(names)
        return []
    if args.family_limits:
        make_family_limits(names)
        return []
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    if args.khat_noise:
        for name in names:
            khat_noise(name)
        return []
    rows = []
    for name in names:
        reference = load_reference(name)
        if reference is None:
            print(f"{name}: no reference (python -m benchmarks.holdout --make-references --models {name}); skipped")
            continue
        suite_model = MODELS[name]()
        model = aj.from_numpyro(suite_model.fn, *suite_model.args)
        for seed in (int(s) for s in args.seeds.split(",")):
            row = {"model": name, "K": model.dim, "seed": seed}
            try:
                out = fit_default(model, seed, second_call=not args.no_second)
                row.update(errors(out["draws"], reference))
                limit = load_reference(name, LIMIT_DIR)
                if limit is not None:
                    row.update(against_limit(out["draws"], limit, reference))
                    row["elbo - limit"] = out["elbo"] - limit["elbo"]
                row.update({k: out[k] for k in ("khat", "S", "cv", "verdict", "warned", "other warnings", "grad evals",
                                                "first s", "second s", "ran")})
            except Exception as err:  # noqa: BLE001 - one failing model must not end the run
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            row["flag"] = flag_of(row)
            rows.append(row)
            if "error" in row:
                print(f"{name:24s} s{seed} CRASH {row['error']}", flush=True)
                continue
            print(f"{name:24s} K={model.dim:3d} s{seed} dmean {row['max|dmean|/sd']:6.3f} ({row['worst mean']}) "
                  f"log sd med {row['med|log sd|']:5.3f} max {row['max|log sd|']:5.3f} ({row['worst sd']}) "
                  f"khat {row['khat']:5.2f} (S {row['S']}, cv {row['cv']:.3f}) {row['verdict']:10s} "
                  f"warned {row['warned'] or '-':8s} "
                  f"grads {row['grad evals']:6d} {row['first s']:5.2f}s/{row['second s']:5.2f}s "
                  + (f"limit {row['limit max|dmean|/sd']:5.3f} {row['limit med|log sd|']:5.3f} "
                     f"dELBO {row['elbo - limit']:7.3f} " if "elbo - limit" in row else "")
                  + f"[{row['ran']}] {row['flag']}"
                  + (f" other warnings: {row['other warnings']}" if row["other warnings"] else ""), flush=True)
    table = markdown_table(rows, COLUMNS + (["error"] if any("error" in r for r in rows) else []))
    print(table)
    if args.out:
        write_json(args.out, {"rows": rows, "versions": versions(), "machine": machine(), "markdown": table})
    return rows


if __name__ == "__main__":
    main()
