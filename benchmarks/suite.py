"""The accuracy suite: NumPyro models with real (or fixed synthetic) data, each with a reference posterior.

Every model is a plain NumPyro model function plus its arguments, so that the three users of the
suite see the identical log joint:

* `benchmarks.make_references` runs NumPyro's NUTS on it (the reference posterior);
* `benchmarks.accuracy` fits it with `aj.fit(aj.from_numpyro(fn, *args))` and with NumPyro's
  `AutoDiagonalNormal` / `AutoMultivariateNormal` autoguides.

The second set of ten (hierarchical radon in both parameterisations, births, Neal's funnel, a
badly scaled GLM, a free mixture, stochastic volatility, GARCH) is defined in `benchmarks.suite_more`.

Data: the bundled `breast_cancer` and `randhie` sets (`aj.data.load_dataset`), and the shared
`german_credit_numeric.npz` and `wells.npz`, found with `aj.data.find_data_file` (set
`ADVI_JAX_DATA` to the folder holding them, e.g. `../shared/data`). Synthetic data are drawn from
a fixed NumPy seed, so the references stay valid.

`MODELS` maps a name to a zero-argument builder returning `SuiteModel(fn, args, note)`; builders
are lazy so that a missing data file only removes its own models (`available_models`).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import advi_jax as aj
from benchmarks.suite_more import BUILDERS
from benchmarks.suite_unseen import BUILDERS as UNSEEN_BUILDERS


class SuiteModel(NamedTuple):
    """A NumPyro model function, the positional arguments it is called with, and a one-line description."""

    fn: Callable
    args: tuple
    note: str


def _standardize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    sd = x.std(0)
    return ((x - x.mean(0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Model functions
# ---------------------------------------------------------------------------------------------


def logistic_glm(x, y, prior_scale=2.5):
    """y_n ~ Bernoulli(logit = a + x_n . beta); a ~ N(0, 10), beta_d ~ N(0, prior_scale)."""
    d = x.shape[1]
    a = numpyro.sample("intercept", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(d), prior_scale).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=a + x @ beta), obs=y)


def logistic_glm_hierarchical_scale(x, y):
    """As `logistic_glm` with a shared coefficient scale: tau ~ HalfNormal(1), beta_d | tau ~ N(0, tau)."""
    d = x.shape[1]
    a = numpyro.sample("intercept", dist.Normal(0.0, 10.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(d), tau).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=a + x @ beta), obs=y)


def poisson_glm(x, y, offset):
    """y_n ~ Poisson(exp(a + x_n . beta + offset_n)); a ~ N(0, 10), beta_d ~ N(0, 1)."""
    d = x.shape[1]
    a = numpyro.sample("intercept", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
    numpyro.sample("y", dist.Poisson(jnp.exp(a + x @ beta + offset)), obs=y)


def eight_schools_centered(y, sigma):
    """theta_j ~ N(mu, tau), y_j ~ N(theta_j, sigma_j); mu ~ N(0, 5), tau ~ HalfCauchy(5) (a funnel)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(y, sigma):
    """As the centred model with theta_j = mu + tau * theta_tilde_j, theta_tilde_j ~ N(0, 1)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", y.shape[0]):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def mixture_weights(y, locs, scales):
    """Mixture of fixed Gaussians with unknown weights w ~ Dirichlet(1): a simplex parameter."""
    k = locs.shape[0]
    w = numpyro.sample("weights", dist.Dirichlet(jnp.ones(k)))
    numpyro.sample("y", dist.MixtureSameFamily(dist.Categorical(probs=w), dist.Normal(locs, scales)), obs=y)


def dirichlet_multinomial(counts):
    """Category probabilities p ~ Dirichlet(1) of R rows of multinomial counts (a simplex posterior)."""
    k = counts.shape[1]
    p = numpyro.sample("probs", dist.Dirichlet(jnp.ones(k)))
    with numpyro.plate("rows", counts.shape[0]):
        numpyro.sample("counts", dist.Multinomial(total_count=counts.sum(-1), probs=p), obs=counts)


def lkj_mvn(y):
    """y_n ~ MVN(mu, diag(sigma) L L^T diag(sigma)); L ~ LKJCholesky(eta=2), sigma ~ HalfNormal(2), mu ~ N(0, 5)."""
    d = y.shape[1]
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(d), 5.0).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0 * jnp.ones(d)).to_event(1))
    chol = numpyro.sample("corr_chol", dist.LKJCholesky(d, concentration=2.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.MultivariateNormal(mu, scale_tril=sigma[:, None] * chol), obs=y)


# ---------------------------------------------------------------------------------------------
# Data and builders
# ---------------------------------------------------------------------------------------------


def _breast_cancer():
    ds = aj.data.load_dataset("breast_cancer")
    return SuiteModel(logistic_glm, (_standardize(ds.x), np.asarray(ds.y, np.float32)),
                      "logistic GLM, bundled breast cancer (569 x 30, standardised), beta ~ N(0, 2.5)")


def _german():
    g = np.load(aj.data.find_data_file("german_credit_numeric.npz"), allow_pickle=False)
    return _standardize(g["x"]), g["y"].astype(np.float32)


def _german_credit():
    x, y = _german()
    return SuiteModel(logistic_glm, (x, y), "logistic GLM, German credit (1000 x 24, standardised)")


def _german_credit_hier():
    x, y = _german()
    return SuiteModel(logistic_glm_hierarchical_scale, (x, y),
                      "logistic GLM with hierarchical scale tau ~ HalfNormal(1), German credit")


def _wells():
    w = np.load(aj.data.find_data_file("wells.npz"), allow_pickle=False)
    x = np.column_stack([w["dist"] / 100.0, w["arsenic"], w["educ"] / 4.0, w["assoc"]]).astype(np.float32)
    return SuiteModel(logistic_glm, (x, w["switched"].astype(np.float32)),
                      "logistic GLM, arsenic wells (3020 x 4: dist/100, arsenic, educ/4, assoc; unstandardised)")


RANDHIE_ROWS = 5000


def _randhie():
    ds = aj.data.load_dataset("randhie")
    x, y = ds.x[:RANDHIE_ROWS], ds.y[:RANDHIE_ROWS]
    # An exposure term: the model's offset is log(exposure); randhie has none, so a fixed synthetic
    # exposure in (0.5, 1.5) years (seeded) exercises the offset path.
    exposure = np.random.default_rng(3).uniform(0.5, 1.5, size=x.shape[0])
    return SuiteModel(poisson_glm, (_standardize(x), np.asarray(y, np.float32), np.log(exposure).astype(np.float32)),
                      f"Poisson GLM, bundled randhie (first {RANDHIE_ROWS} rows x 9, standardised), "
                      "synthetic exposure offset")


EIGHT_SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
EIGHT_SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)


def _eight_centered():
    return SuiteModel(eight_schools_centered, (EIGHT_SCHOOLS_Y, EIGHT_SCHOOLS_SIGMA),
                      "eight schools, centred (funnel geometry)")


def _eight_noncentered():
    return SuiteModel(eight_schools_noncentered, (EIGHT_SCHOOLS_Y, EIGHT_SCHOOLS_SIGMA),
                      "eight schools, non-centred")


def _mixture():
    rng = np.random.default_rng(11)
    locs = np.array([-2.0, 0.5, 3.0], np.float32)
    scales = np.array([1.0, 0.7, 1.2], np.float32)
    z = rng.choice(3, size=300, p=[0.5, 0.3, 0.2])
    y = rng.normal(locs[z], scales[z]).astype(np.float32)
    return SuiteModel(mixture_weights, (y, locs, scales),
                      "3-component Gaussian mixture with fixed components, weights ~ Dirichlet(1) (300 points)")


def _dirichlet_multinomial():
    rng = np.random.default_rng(12)
    counts = rng.multinomial(20, [0.4, 0.25, 0.2, 0.1, 0.05], size=10).astype(np.float32)
    return SuiteModel(dirichlet_multinomial, (counts,), "Dirichlet-multinomial, 5 categories, 10 rows of 20 counts")


def _lkj():
    rng = np.random.default_rng(13)
    corr = np.array([[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]])
    sd = np.array([1.0, 2.0, 0.5])
    cov = corr * np.outer(sd, sd)
    y = rng.multivariate_normal([0.0, 1.0, -1.0], cov, size=100).astype(np.float32)
    return SuiteModel(lkj_mvn, (y,), "3-d multivariate normal, LKJ(2) Cholesky correlation, 100 points")


MODELS: dict[str, Callable[[], SuiteModel]] = {
    "breast_cancer_logistic": _breast_cancer,
    "german_credit_logistic": _german_credit,
    "german_credit_hier_scale": _german_credit_hier,
    "wells_logistic": _wells,
    "randhie_poisson": _randhie,
    "eight_schools_centered": _eight_centered,
    "eight_schools_noncentered": _eight_noncentered,
    "mixture_weights": _mixture,
    "dirichlet_multinomial": _dirichlet_multinomial,
    "lkj_mvn": _lkj,
}
# The second set (benchmarks.suite_more): hierarchical radon in both parameterisations, births,
# Neal's funnel, a badly scaled GLM, a free mixture, stochastic volatility and GARCH.
MODELS.update({name: functools.partial(build, SuiteModel) for name, build in BUILDERS.items()})
# Eight posteriors the default was NOT tuned on (benchmarks.suite_unseen, issue 15): horseshoe,
# latent GP, ordinal, censored Gamma survival, rat tumours, latent AR(1), separation, softmax.
UNSEEN_MODELS = tuple(UNSEEN_BUILDERS)
MODELS.update({name: functools.partial(build, SuiteModel) for name, build in UNSEEN_BUILDERS.items()})

# Models whose NUTS reference has not been computed yet (benchmarks.accuracy skips them with a
# message; the test checks this list against benchmarks/references/).
NO_REFERENCE_YET: tuple[str, ...] = ()

QUICK_MODELS = ("breast_cancer_logistic", "eight_schools_noncentered", "mixture_weights", "lkj_mvn")


def available_models(names=None) -> dict[str, SuiteModel]:
    """Build the requested models (default all); skip, with a message, those whose data file is missing."""
    out = {}
    for name in names or MODELS:
        if name not in MODELS:
            raise ValueError(f"unknown suite model {name!r}; choose from {sorted(MODELS)}")
        try:
            out[name] = MODELS[name]()
        except ValueError as err:  # find_data_file: file not found
            print(f"skipping {name}: {err}")
    return out


def flatten_draws(draws: dict[str, np.ndarray], num_leading: int = 1) -> dict[str, np.ndarray]:
    """dict site -> (..., *shape) draws  ->  dict 'site[i,j]' -> (...) draws, one entry per scalar."""
    out = {}
    for name, value in draws.items():
        value = np.asarray(value)
        lead, shape = value.shape[:num_leading], value.shape[num_leading:]
        if not shape:
            out[name] = value
            continue
        flat = value.reshape(lead + (-1,))
        for i, index in enumerate(np.ndindex(*shape)):
            out[f"{name}[{','.join(map(str, index))}]"] = flat[..., i]
    return out
