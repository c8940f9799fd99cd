"""Eight posteriors the default `aj.fit` was never tuned on (issue 15): supports and geometries that
neither `benchmarks.suite` / `benchmarks.suite_more` (the 22 the default was tuned on) nor
`benchmarks.holdout` hold.

Each is a plain NumPyro model function plus its arguments (see `benchmarks.suite`), registered in
`benchmarks.suite.MODELS` the way `benchmarks.suite_more` registers its own, so that
`benchmarks.make_references`, `benchmarks.bench_auto` and `benchmarks.family_limit` take them by name:

==========================  ===============================================================  ==
name                        what is new                                                        K
==========================  ===============================================================  ==
reg_horseshoe               regularised horseshoe (Piironen & Vehtari 2017), N = 60, D = 25,   54
                            3 non-zero coefficients, non-centred; tau ~ HalfCauchy(tau0),
                            local scales half-Student-t(5) (`FoldedDistribution`), slab c^2
                            ~ InverseGamma(2, 8)
gp_poisson_latent           latent GP, Poisson counts at N = 40 inputs, f = chol(K) z (non-    43
                            centred), lengthscale ~ LogNormal, amplitude ~ HalfNormal
ordinal_rare_categories     ordered-logistic regression, 6 categories with rare extremes,      7
                            cutpoints a proper `OrderedTransform` prior (not ImproperUniform)
gamma_survival_censored     Gamma accelerated-failure-time survival, 22% right-censored       4
                            through log Q(k, k t / mu) (`gammaincc`) in a `numpyro.factor`
rats_tumour                 real data: 71 rat-tumour experiments (Tarone 1982, BDA3 Table      73
                            5.1), centred theta_j ~ Beta(a, b), improper p(a, b) ~ (a + b)^-5/2
                            on `ImproperUniform` positive a, b
ar1_state_space             latent AR(1) observed with noise, T = 80, centred states through   84
                            a factor, rho ~ Uniform(-1, 1) (interval support, true 0.9)
separation_student_t        logistic regression with COMPLETE separation by x1, N = 40, D = 2,  3
                            beta ~ StudentT(7, 0, 2.5) (the prior alone bounds beta_1)
softmax_regression          multinomial logit, 4 classes (one reference), D = 3, N = 120       12
==========================  ===============================================================  ==

Data are fixed-seed simulations, except `rats_tumour` (the published table), so the references stay
valid. The priors are chosen so that every posterior has finite means and sds (the reference's
dmean / sd must mean something): a half-Cauchy local scale in the regularised horseshoe, or a
Cauchy prior under complete separation, leaves a posterior tail proportional to the prior's, with
no mean; half-t(5) / t(7) keep the heavy tails and finite moments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import OrderedTransform

# ---------------------------------------------------------------------------------------------
# Model functions
# ---------------------------------------------------------------------------------------------


def reg_horseshoe(x, y, tau0):
    """Regularised horseshoe linear regression, non-centred: beta_d = tau lambda~_d z_d.

    lambda~_d^2 = c^2 lambda_d^2 / (c^2 + tau^2 lambda_d^2); z_d ~ N(0, 1); lambda_d ~ half-t(5, 1);
    tau ~ HalfCauchy(tau0); c^2 ~ InverseGamma(2, 8) (slab df 4, scale 2); a ~ N(0, 5), sigma ~ HalfNormal(2).
    """
    d = x.shape[1]
    a = numpyro.sample("intercept", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(tau0))
    c2 = numpyro.sample("c2", dist.InverseGamma(2.0, 8.0))
    lam = numpyro.sample("lambda", dist.FoldedDistribution(dist.StudentT(5.0, jnp.zeros(d), 1.0)).to_event(1))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
    lam_tilde = jnp.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(a + x @ (tau * lam_tilde * z), sigma), obs=y)


def gp_poisson_latent(x, y):
    """y_n ~ Poisson(exp(m + f(x_n))), f = alpha chol(exp(-(x_i - x_j)^2 / (2 rho^2)) + 1e-4 I) z, z ~ N(0, I).

    rho ~ LogNormal(log 2, 0.5), alpha ~ HalfNormal(1), m ~ N(0, 2).
    """
    rho = numpyro.sample("lengthscale", dist.LogNormal(jnp.log(2.0), 0.5))
    alpha = numpyro.sample("amplitude", dist.HalfNormal(1.0))
    m = numpyro.sample("mean", dist.Normal(0.0, 2.0))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(x.shape[0]), 1.0).to_event(1))
    d2 = jnp.square(x[:, None] - x[None, :])
    chol = jnp.linalg.cholesky(jnp.exp(-0.5 * d2 / rho**2) + 1e-4 * jnp.eye(x.shape[0]))
    numpyro.sample("y", dist.Poisson(jnp.exp(m + alpha * (chol @ z))).to_event(1), obs=y)


def ordinal_rare_categories(x, y, num_categories):
    """y_n ~ OrderedLogistic(x_n . beta, c); beta_d ~ N(0, 2.5); c ~ OrderedTransform(N(0, 3)^(C-1))."""
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 2.5).to_event(1))
    c = numpyro.sample("cutpoints", dist.TransformedDistribution(
        dist.Normal(jnp.zeros(num_categories - 1), 3.0).to_event(1), OrderedTransform()))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.OrderedLogistic(x @ beta, c), obs=y)


def gamma_survival_censored(x, t, event):
    """Gamma AFT: t_n ~ Gamma(k, k / mu_n), mu_n = exp(a + x_n . beta); censored rows add log Q(k, k t / mu).

    k ~ LogNormal(0, 1), a ~ N(0, 5), beta_d ~ N(0, 2). Q is the regularised upper incomplete gamma
    function (`jax.scipy.special.gammaincc`), the Gamma survival function.
    """
    k = numpyro.sample("shape", dist.LogNormal(0.0, 1.0))
    a = numpyro.sample("intercept", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 2.0).to_event(1))
    rate = k / jnp.exp(a + x @ beta)
    observed = event > 0
    with numpyro.plate("n", t.shape[0]), numpyro.handlers.mask(mask=observed):
        numpyro.sample("t", dist.Gamma(k, rate), obs=t)
    log_surv = jnp.log(jax.scipy.special.gammaincc(k, rate * t))
    numpyro.factor("censored", jnp.sum(jnp.where(observed, 0.0, log_surv)))


def rats_tumour(y, n):
    """theta_j ~ Beta(a, b), y_j ~ Binomial(n_j, theta_j); p(a, b) proportional to (a + b)^(-5/2) (BDA3 5.3)."""
    a = numpyro.sample("a", dist.ImproperUniform(constraints.positive, (), ()))
    b = numpyro.sample("b", dist.ImproperUniform(constraints.positive, (), ()))
    numpyro.factor("hyperprior", -2.5 * jnp.log(a + b))
    with numpyro.plate("experiments", y.shape[0]):
        theta = numpyro.sample("theta", dist.Beta(a, b))
        numpyro.sample("y", dist.Binomial(n, probs=theta), obs=y)


def ar1_state_space(y):
    """x_1 ~ N(0, s / sqrt(1 - rho^2)), x_t ~ N(rho x_{t-1}, s), y_t ~ N(mu + x_t, sigma); centred states.

    rho ~ Uniform(-1, 1), s ~ HalfNormal(1), sigma ~ HalfNormal(1), mu ~ N(0, 5). The states are an
    `ImproperUniform` real vector with their AR(1) density added by a factor (Stan's way of writing it).
    """
    t = y.shape[0]
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    rho = numpyro.sample("rho", dist.Uniform(-1.0, 1.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    x = numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (t,)))
    numpyro.factor("x_1", dist.Normal(0.0, s / jnp.sqrt(1.0 - rho**2)).log_prob(x[0]))
    numpyro.factor("x_rest", dist.Normal(rho * x[:-1], s).log_prob(x[1:]).sum())
    numpyro.sample("y", dist.Normal(mu + x, sigma).to_event(1), obs=y)


def ar1_state_space_marginal(y):
    """`ar1_state_space` with the states integrated out: y ~ MVN(mu, Sigma_AR + sigma^2 I), Sigma_AR[i, j] =
    s^2 rho^|i - j| / (1 - rho^2). Its reference draws the states afterwards from their Gaussian
    conditional (`ar1_states_given_parameters`): NUTS on the centred states diverges in the funnel
    of s against them (558 divergences at target_accept_prob 0.95), on the innovations form too."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    rho = numpyro.sample("rho", dist.Uniform(-1.0, 1.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    lag = jnp.abs(jnp.arange(y.shape[0])[:, None] - jnp.arange(y.shape[0])[None, :])
    cov = s**2 / (1.0 - rho**2) * rho**lag + sigma**2 * jnp.eye(y.shape[0])
    numpyro.sample("y", dist.MultivariateNormal(mu, covariance_matrix=cov), obs=y)


def ar1_states_given_parameters(samples, y, seed=0):
    """One draw of the states x | (mu, rho, s, sigma), y per parameter draw (float64 NumPy): a Gaussian
    with precision Q_AR + I / sigma^2 (Q_AR the tridiagonal AR(1) precision) and mean
    precision^-1 (y - mu) / sigma^2. Returns `samples` with "x" added, shaped (..., T)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, np.float64)
    t = y.shape[0]
    flat = {k: np.asarray(v, np.float64).reshape(-1) for k, v in samples.items()}
    x = np.empty((flat["mu"].shape[0], t))
    for i, (mu, rho, s, sigma) in enumerate(zip(flat["mu"], flat["rho"], flat["s"], flat["sigma"])):
        diag = np.full(t, 1.0 + rho**2)
        diag[0] = diag[-1] = 1.0
        prec = (np.diag(diag) - rho * (np.eye(t, k=1) + np.eye(t, k=-1))) / s**2 + np.eye(t) / sigma**2
        chol = np.linalg.cholesky(prec)
        mean = np.linalg.solve(prec, (y - mu) / sigma**2)
        x[i] = mean + np.linalg.solve(chol.T, rng.standard_normal(t))
    lead = np.shape(samples["mu"])
    return {**samples, "x": x.reshape(lead + (t,))}


def separation_student_t(x, y):
    """y_n ~ Bernoulli(logit = a + x_n . beta) with y = 1[x_n1 > 0] exactly; a, beta_d ~ StudentT(7, 0, 2.5)."""
    a = numpyro.sample("intercept", dist.StudentT(7.0, 0.0, 2.5))
    beta = numpyro.sample("beta", dist.StudentT(7.0, jnp.zeros(x.shape[1]), 2.5).to_event(1))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=a + x @ beta), obs=y)


def softmax_regression(x, y, num_classes):
    """y_n ~ Categorical(softmax([0, a_k + x_n . B_k])); a_k ~ N(0, 5), B ~ N(0, 2) (class 0 the reference)."""
    d = x.shape[1]
    a = numpyro.sample("intercept", dist.Normal(jnp.zeros(num_classes - 1), 5.0).to_event(1))
    b = numpyro.sample("coef", dist.Normal(jnp.zeros((d, num_classes - 1)), 2.0).to_event(2))
    logits = jnp.concatenate([jnp.zeros((x.shape[0], 1)), a + x @ b], axis=1)
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


# ---------------------------------------------------------------------------------------------
# Data (fixed seeds) and builders
# ---------------------------------------------------------------------------------------------


def build_horseshoe(suite_model):
    rng = np.random.default_rng(201)
    n, d, p0 = 60, 25, 3
    x = rng.standard_normal((n, d))
    beta = np.zeros(d)
    beta[:p0] = [2.0, -1.5, 1.0]
    y = 0.5 + x @ beta + rng.standard_normal(n)
    tau0 = p0 / (d - p0) / np.sqrt(n)  # Piironen & Vehtari's tau0 = p0 / (D - p0) * sigma / sqrt(n), sigma ~ 1
    return suite_model(reg_horseshoe, (x.astype(np.float32), y.astype(np.float32), np.float32(tau0)),
                       f"regularised horseshoe regression, N = {n}, D = {d}, 3 non-zero, tau0 = {tau0:.4f}, non-centred")


def build_gp_poisson(suite_model):
    rng = np.random.default_rng(202)
    x = np.sort(rng.uniform(0.0, 10.0, size=40))
    y = rng.poisson(np.exp(1.0 + np.sin(0.8 * x) - 0.3 * np.cos(1.7 * x)))
    return suite_model(gp_poisson_latent, (x.astype(np.float32), y.astype(np.float32)),
                       "latent GP Poisson counts, N = 40, squared-exponential kernel, non-centred (K = 43)")


def build_ordinal(suite_model):
    rng = np.random.default_rng(203)
    x = rng.standard_normal((150, 2))
    eta = x @ np.array([1.2, -0.6]) + rng.logistic(size=150)
    y = np.searchsorted(np.array([-3.5, -1.0, 0.3, 1.5, 4.0]), eta)  # 6 categories, 0..5
    counts = np.bincount(y, minlength=6)
    return suite_model(ordinal_rare_categories, (x.astype(np.float32), y.astype(np.int32), 6),
                       f"ordered-logistic regression, N = 150, D = 2, 6 categories (counts {counts.tolist()}), "
                       "OrderedTransform cutpoint prior")


def build_gamma_survival(suite_model):
    rng = np.random.default_rng(204)
    n = 120
    x = rng.standard_normal((n, 2))
    mu = np.exp(1.0 + x @ np.array([0.4, -0.3]))
    t_true = rng.gamma(2.5, mu / 2.5)
    censor = rng.uniform(1.0, 9.0, size=n)
    event = (t_true <= censor).astype(np.float32)
    t = np.minimum(t_true, censor)
    return suite_model(gamma_survival_censored, (x.astype(np.float32), t.astype(np.float32), event),
                       f"Gamma AFT survival, shape 2.5, N = {n}, D = 2, {100 * (1 - event.mean()):.0f}% right-censored")


# Tarone (1982) as tabulated in Gelman et al., Bayesian Data Analysis (3rd ed.), Table 5.1: tumours in
# the control groups of 70 historical experiments and the current one (4 of 14), in the table's order.
RATS_Y = np.array([0] * 14 + [1] * 8 + [2] * 9 + [1, 5, 2, 5, 3, 2, 7, 7, 3, 3, 2, 9, 10] + [4] * 7
                  + [10, 4, 4, 4, 5, 11, 12, 5, 5, 6, 5, 6, 6, 6, 6, 16, 15, 15, 9, 4])
RATS_N = np.array([20] * 7 + [19] * 4 + [18, 18, 17] + [20] * 4 + [19, 19, 18, 18, 25, 24, 23] + [20] * 6
                  + [10, 49, 19, 46, 27, 17, 49, 47, 20, 20, 13, 48, 50] + [20] * 7
                  + [48, 19, 19, 19, 22, 46, 49, 20, 20, 23, 19, 22, 20, 20, 20, 52, 46, 47, 24, 14])


def build_rats(suite_model):
    return suite_model(rats_tumour, (RATS_Y.astype(np.float32), RATS_N.astype(np.float32)),
                       "rat tumours (BDA3 Table 5.1, 71 experiments), centred Beta-binomial, p(a, b) ~ (a + b)^-5/2")


def build_ar1(suite_model):
    rng = np.random.default_rng(206)
    t, rho, s = 80, 0.9, 0.6
    x = np.empty(t)
    x[0] = s / np.sqrt(1 - rho**2) * rng.standard_normal()
    for i in range(1, t):
        x[i] = rho * x[i - 1] + s * rng.standard_normal()
    y = 2.0 + x + 0.3 * rng.standard_normal(t)
    return suite_model(ar1_state_space, (y.astype(np.float32),),
                       f"latent AR(1) + noise, T = {t}, rho = 0.9, s = 0.6, sigma = 0.3, centred states (K = {t + 4})")


def build_separation(suite_model):
    rng = np.random.default_rng(207)
    x = rng.standard_normal((40, 2))
    y = (x[:, 0] > 0).astype(np.float32)  # x1 separates y completely
    return suite_model(separation_student_t, (x.astype(np.float32), y),
                       "logistic regression, complete separation by x1, N = 40, D = 2, StudentT(7, 0, 2.5) priors")


def build_softmax(suite_model):
    rng = np.random.default_rng(208)
    x = rng.standard_normal((120, 3))
    b = np.array([[1.0, -0.5, 0.0], [0.5, 1.0, -1.0], [0.0, 0.3, 0.8]])
    logits = np.column_stack([np.zeros(120), np.array([0.3, -0.5, 0.2]) + x @ b])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    return suite_model(softmax_regression, (x.astype(np.float32), y.astype(np.int32), 4),
                       "multinomial logit, 4 classes, N = 120, D = 3 (K = 12)")


BUILDERS = {
    "reg_horseshoe": build_horseshoe,
    "gp_poisson_latent": build_gp_poisson,
    "ordinal_rare_categories": build_ordinal,
    "gamma_survival_censored": build_gamma_survival,
    "rats_tumour": build_rats,
    "ar1_state_space": build_ar1,
    "separation_student_t": build_separation,
    "softmax_regression": build_softmax,
}
