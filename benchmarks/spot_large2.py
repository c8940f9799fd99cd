"""Four more posteriors with K > 200, none of which the low-rank default's drift rule
(`advi_jax.vi._advi_drift.DriftStop`) was tuned on (lead, twenty-fourth session): `spot_large.compare`
against NUTS (2 chains x 1,500 draws after 1,000 warm-up, float32), the default and, for comparison, the
fixed 40,000-step schedule it replaced (`--fits default,lowrank_40k`).

  stoch_vol      stochastic volatility, T = 300 returns, AR(1) log-variance with non-centred innovations
                 (K = 303)
  centred300     Gaussian varying intercepts, 300 groups x 4 rows, CENTRED (K = 304)
  slopes_logit   logistic regression with varying intercepts and slopes, 120 groups x 25 rows, non-centred,
                 two scales (K = 244)
  crossed_pois   Poisson counts with two crossed random intercepts (150 x 100 levels, 3,000 rows), non-centred
                 (K = 253)

The data are simulated once, in that order, from one generator (seed 23).

Usage: python benchmarks/spot_large2.py [names...] [--fits default,lowrank_40k]
"""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spot_large import compare  # noqa: E402

rng = np.random.default_rng(23)


def stoch_vol():  # T = 300, h_t = mu + phi (h_{t-1} - mu) + sigma e_t, y_t ~ N(0, exp(h_t / 2))
    T = 300; h = np.zeros(T); h[0] = -1.0
    for t in range(1, T):
        h[t] = -1.0 + 0.95 * (h[t - 1] + 1.0) + 0.25 * rng.normal()
    y = (np.exp(h / 2) * rng.normal(size=T)).astype(np.float32)

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(-1.0, 2.0))
        phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.5))
        e = numpyro.sample("e", dist.Normal(0, 1).expand([T]).to_event(1))

        def ar(prev, x):
            cur = phi * prev + sigma * x
            return cur, cur

        first = sigma * e[0] / jnp.sqrt(1 - phi ** 2)  # the stationary distribution
        _, dev = jax.lax.scan(ar, first, e[1:])
        h = mu + jnp.concatenate([first[None], dev])
        numpyro.sample("y", dist.Normal(0.0, jnp.exp(h / 2)), obs=y)
    return model, (y,)


def centred300():  # varying intercepts, centred: theta_g ~ N(mu, tau)
    G, n = 300, 4; g = np.repeat(np.arange(G), n)
    u = 0.5 * rng.normal(size=G); y = (1.0 + u[g] + 0.8 * rng.normal(size=G * n)).astype(np.float32)

    def model(g, y):
        mu = numpyro.sample("mu", dist.Normal(0, 5)); tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        s = numpyro.sample("sigma", dist.HalfNormal(2.0))
        with numpyro.plate("G", G):
            theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta[g], s), obs=y)
    return model, (g, y)


def slopes_logit():  # 120 groups x 25 rows: logit = a + b x + tau_a za_g + tau_b zb_g x
    G, n = 120, 25; g = np.repeat(np.arange(G), n); x = rng.normal(size=G * n).astype(np.float32)
    ua, ub = 0.8 * rng.normal(size=G), 0.4 * rng.normal(size=G)
    y = (rng.random(G * n) < 1 / (1 + np.exp(-(-0.3 + ua[g] + (0.7 + ub[g]) * x)))).astype(np.float32)

    def model(g, x, y):
        a = numpyro.sample("a", dist.Normal(0, 2)); b = numpyro.sample("b", dist.Normal(0, 2))
        ta = numpyro.sample("tau_a", dist.HalfNormal(1.0)); tb = numpyro.sample("tau_b", dist.HalfNormal(1.0))
        with numpyro.plate("G", G):
            za = numpyro.sample("za", dist.Normal(0, 1)); zb = numpyro.sample("zb", dist.Normal(0, 1))
        numpyro.sample("y", dist.Bernoulli(logits=a + ta * za[g] + (b + tb * zb[g]) * x), obs=y)
    return model, (g, x, y)


def crossed_pois():  # two crossed factors, 150 x 100 levels, 3,000 rows
    A, B, N = 150, 100, 3000; ia, ib = rng.integers(0, A, N), rng.integers(0, B, N)
    ua, ub = 0.5 * rng.normal(size=A), 0.3 * rng.normal(size=B)
    y = rng.poisson(np.exp(0.8 + ua[ia] + ub[ib])).astype(np.float32)

    def model(ia, ib, y):
        c = numpyro.sample("c", dist.Normal(0, 2))
        sa = numpyro.sample("sigma_a", dist.HalfNormal(1.0)); sb = numpyro.sample("sigma_b", dist.HalfNormal(1.0))
        za = numpyro.sample("za", dist.Normal(0, 1).expand([A]).to_event(1))
        zb = numpyro.sample("zb", dist.Normal(0, 1).expand([B]).to_event(1))
        numpyro.sample("y", dist.Poisson(jnp.exp(c + sa * za[ia] + sb * zb[ib])), obs=y)
    return model, (ia, ib, y)


MODELS = {name: build() for name, build in
          (("stoch_vol", stoch_vol), ("centred300", centred300), ("slopes_logit", slopes_logit),
           ("crossed_pois", crossed_pois))}


if __name__ == "__main__":
    compare(MODELS, sys.argv[1:], default_fits=("default", "lowrank_40k"))
