"""A third set of posteriors nobody tuned the default fit on (lead, twenty-first session): the default
`aj.fit` at seeds 0-1 against NUTS (2 chains x 2,000 draws after 1,000 warm-up, float32), whether it warned,
its gradients and wall time. Each posterior has a structure the suite and the earlier spot sets lack:

  quantile     median (asymmetric Laplace, tau = 0.5) regression: a log density with kinks (K = 3)
  hmm          two-state Gaussian hidden Markov model, states summed out by a forward `lax.scan` (K = 6)
  negbin_re    negative-binomial counts with 40 centred group intercepts (K = 44)
  mix3         three-component Gaussian mixture, ordered means, simplex weights (K = 8)
  boundary     binomial rates near 0 (0-2 events in 50-200 trials), a logit-normal hierarchy (K = 12)
  mvn_lkj      bivariate-normal data, LKJ(2) correlation Cholesky and positive scales (K = 5)
  t_hier       eight-schools shape with Student-t(4) measurements, 20 units, non-centred (K = 22)
  logit_inter  logistic regression with 5 predictors and their 10 interactions, 4,000 rows (K = 16)

The data are simulated once, in the order above, from one generator (seed 11).

Usage: python benchmarks/spot_unseen2.py [names...]   (default: all)
"""
import sys, time, warnings
from pathlib import Path
import numpy as np
import jax, jax.numpy as jnp
import numpyro, numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

import advi_jax as aj

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository's root
from benchmarks.suite import flatten_draws as flat  # noqa: E402

rng = np.random.default_rng(11)


def quantile():
    N = 150; x = rng.normal(size=(N, 2)); y = 0.5 + x @ np.array([1.0, -0.5]) + rng.standard_t(3, N)
    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0, 5)); b = numpyro.sample("b", dist.Normal(0, 5).expand([2]).to_event(1))
        r = y - a - x @ b
        numpyro.factor("check_loss", -jnp.sum(jnp.abs(r)))  # asymmetric Laplace at tau = 0.5, scale 0.5
    return model, (x, y)


def hmm():
    T = 150; P = np.array([[0.95, 0.05], [0.1, 0.9]]); s = [0]
    for _ in range(T - 1): s.append(rng.choice(2, p=P[s[-1]]))
    y = np.array([-1.0, 1.5])[np.array(s)] + 0.7 * rng.normal(size=T)
    def model(y):
        mu = numpyro.sample("mu", dist.TransformedDistribution(dist.Normal(0, 3).expand([2]).to_event(1),
                                                               dist.transforms.OrderedTransform()))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        p_stay = numpyro.sample("p_stay", dist.Beta(5.0, 1.0).expand([2]).to_event(1))
        logP = jnp.log(jnp.stack([jnp.stack([p_stay[0], 1 - p_stay[0]]), jnp.stack([1 - p_stay[1], p_stay[1]])]))
        emit = dist.Normal(mu, sigma).log_prob(y[:, None])  # (T, 2)
        def step(alpha, e):
            alpha = jax.nn.logsumexp(alpha[:, None] + logP, axis=0) + e
            return alpha, None
        alpha, _ = jax.lax.scan(step, jnp.log(0.5) + emit[0], emit[1:])
        numpyro.factor("forward", jax.nn.logsumexp(alpha))
    return model, (y,)


def negbin_re():
    G, n = 40, 8; u = 0.6 * rng.normal(size=G); g = np.repeat(np.arange(G), n); x = rng.normal(size=G * n)
    mu = np.exp(1.0 + 0.4 * x + u[g]); y = rng.negative_binomial(3.0, 3.0 / (3.0 + mu))
    def model(g, x, y):
        m = numpyro.sample("mu_u", dist.Normal(0, 2)); b = numpyro.sample("b", dist.Normal(0, 2))
        s = numpyro.sample("sigma_u", dist.HalfNormal(1.0)); phi = numpyro.sample("phi", dist.Gamma(2.0, 0.5))
        with numpyro.plate("G", G):
            u = numpyro.sample("u", dist.Normal(m, s))
        numpyro.sample("y", dist.NegativeBinomial2(jnp.exp(b * x + u[g]), phi), obs=y)
    return model, (g, x, y)


def mix3():
    N = 300; comp = rng.choice(3, N, p=[0.5, 0.3, 0.2]); y = np.array([-2.0, 0.5, 3.0])[comp] + 0.8 * rng.normal(size=N)
    def model(y):
        w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
        mu = numpyro.sample("mu", dist.TransformedDistribution(dist.Normal(0, 5).expand([3]).to_event(1),
                                                               dist.transforms.OrderedTransform()))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([3]).to_event(1))
        lp = jnp.log(w) + dist.Normal(mu, sigma).log_prob(y[:, None])
        numpyro.factor("mix", jnp.sum(jax.nn.logsumexp(lp, axis=1)))
    return model, (y,)


def boundary():
    J = 10; n = rng.integers(50, 200, J); y = rng.binomial(n, 0.006)
    def model(n, y):
        m = numpyro.sample("mu", dist.Normal(-4.0, 2.0)); s = numpyro.sample("tau", dist.HalfNormal(1.0))
        with numpyro.plate("J", J):
            z = numpyro.sample("z", dist.Normal(0, 1))
            numpyro.sample("y", dist.Binomial(n, logits=m + s * z), obs=y)
    return model, (n, y)


def mvn_lkj():
    N = 60; C = np.array([[1.0, 0.6], [0.6, 1.0]]) * np.outer([2.0, 0.5], [2.0, 0.5])
    y = rng.multivariate_normal([1.0, -1.0], C, N)
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0, 5).expand([2]).to_event(1))
        sd = numpyro.sample("sd", dist.HalfNormal(3.0).expand([2]).to_event(1))
        Lc = numpyro.sample("L_corr", dist.LKJCholesky(2, 2.0))
        numpyro.sample("y", dist.MultivariateNormal(mu, scale_tril=sd[:, None] * Lc), obs=y)
    return model, (y,)


def t_hier():
    J = 20; theta = 1.0 + 2.0 * rng.normal(size=J); se = rng.uniform(2, 6, J); y = theta + se * rng.standard_t(4, J)
    def model(se, y):
        m = numpyro.sample("mu", dist.Normal(0, 10)); tau = numpyro.sample("tau", dist.HalfCauchy(3.0))
        with numpyro.plate("J", J):
            z = numpyro.sample("z", dist.Normal(0, 1))
            numpyro.sample("y", dist.StudentT(4.0, m + tau * z, se), obs=y)
    return model, (se, y)


def logit_inter():
    N, D = 4000, 5; x = rng.normal(size=(N, D)); i, j = np.triu_indices(D, 1)
    xx = np.concatenate([x, x[:, i] * x[:, j]], 1).astype(np.float32)
    beta = np.concatenate([rng.normal(0, 0.8, D), rng.normal(0, 0.3, len(i))])
    y = (rng.random(N) < 1 / (1 + np.exp(-(-0.3 + xx @ beta)))).astype(np.float32)
    def model(xx, y):
        a = numpyro.sample("a", dist.Normal(0, 5))
        b = numpyro.sample("b", dist.Normal(0, 1).expand([xx.shape[1]]).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=a + xx @ b), obs=y)
    return model, (xx, y)


MODELS = {name: build() for name, build in  # built in this order: the data depend on it
          (("quantile", quantile), ("hmm", hmm), ("negbin_re", negbin_re), ("mix3", mix3), ("boundary", boundary),
           ("mvn_lkj", mvn_lkj), ("t_hier", t_hier), ("logit_inter", logit_inter))}


def report(name, label, m, r, ref, dt, w):
    """One fit against NUTS's draws `ref`, a line (also `spot_unseen3`'s)."""
    q = flat(r.sample(jax.random.key(9), 20000))
    dm = {k: abs(q[k].mean() - ref[k].mean()) / ref[k].std() for k in ref if ref[k].std() > 0}
    ls = {k: abs(np.log(q[k].std() / ref[k].std())) for k in dm}
    km = max(dm, key=dm.get); ks = max(ls, key=ls.get)
    print(f"{name} {label}: K={m.dim} {r.method} dmean {dm[km]:.3f} ({km}) logsd {ls[ks]:.3f} ({ks}) "
          f"med logsd {np.median(list(ls.values())):.3f} khat {r.diagnostics.khat:.2f} "
          f"grads {r.num_grad_evals} {dt:.1f}s warned={[str(x.message)[:100] for x in w]}", flush=True)


def one_fit(name, label, m, ref, **kw):
    """`aj.fit(m, **kw)`, timed, its warnings kept, and `report`ed (a crash is reported as a finding)."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t = time.perf_counter()
        try:
            r = aj.fit(m, progress=False, **kw)
        except Exception as err:  # a crash is a finding: report it and go on
            print(f"{name} {label}: FAILED {type(err).__name__}: {err}", flush=True)
            return
        dt = time.perf_counter() - t
    report(name, label, m, r, ref, dt, w)


if __name__ == "__main__":
    names = sys.argv[1:] or list(MODELS)
    for name in names:
        model, args = MODELS[name]
        t = time.perf_counter()
        mc = MCMC(NUTS(model), num_warmup=1000, num_samples=2000, num_chains=2, progress_bar=False,
                  chain_method="sequential")
        mc.run(jax.random.PRNGKey(0), *args)
        ref = flat(mc.get_samples())
        div = int(mc.get_extra_fields()["diverging"].sum())
        print(f"{name}: NUTS {time.perf_counter() - t:.0f}s, {div} divergences", flush=True)
        m = aj.from_numpyro(model, *args)
        for seed in (0, 1):
            one_fit(name, f"s{seed}", m, ref, key=jax.random.key(seed))
