"""A fourth set of posteriors nobody tuned the default fit on: the default `aj.fit` at seeds 0-1 against NUTS
(2 chains x 2,000 draws after 1,000 warm-up, sequential, float32), whether it warned, its gradients and wall
time. Each posterior has a structure the suite (`suite`, `suite_more`, `suite_unseen`, `holdout`) and the
earlier spot sets (`spot_unseen`, `spot_unseen2`) lack:

  crossed_re   Gaussian outcome, two crossed random-intercept factors (30 x 20 levels, 1,200 rows), non-centred,
               two scales (K = 54)
  beta_reg     beta regression of proportions in (0, 1): logit mean, 3 predictors, positive precision, 400 rows
               (K = 5)
  icar         Poisson counts with an offset on a 10 x 10 grid, an intrinsic-CAR spatial effect (pairwise
               differences over grid neighbours plus a soft sum-to-zero) times a scale (K = 102)
  tobit        linear regression left-censored at 0 (Normal log-cdf for the censored rows), 300 rows,
               3 predictors (K = 5)
  vonmises     circular regression: von Mises angles, mean direction 2 atan(a + b x), positive concentration
               (K = 3)
  overdisp     Poisson with a per-observation lognormal effect, non-centred, 250 rows (K = 253: above the
               full-rank limit, the default's mean-field path)
  collinear    logistic regression, 4 predictors with pairwise correlation 0.995, 1,000 rows, N(0, 2.5) priors
               (K = 5)
  tight_hier   Gaussian varying intercepts, 12 groups x 500 rows (intercept sd ~ 0.03), centred (K = 15)

The data are simulated once, in the order above, from one generator (seed 13).

Usage: python benchmarks/spot_unseen3.py [names...] [--methods default,pathfinder,bam,dadvi,laplace]

`--methods` (default "default"): "default" is `aj.fit`'s default at seeds 0 and 1; any other name is
`aj.fit(m, key=jax.random.key(0), method=name, progress=False)`, seed 0 only. NUTS runs once per posterior.
The NUTS line adds max R-hat, min ESS (`numpyro.diagnostics.summary`) and the mean leapfrog steps.

jaxlib 0.10.2 on CPU miscompiles a batched reduce over a short minor axis (the YNN reduce fusion,
jax-ml/jax#39103): NumPyro's Beta log density (a Dirichlet over [y, 1 - y]) evaluated for a batch of
draws past about 32K draw x row entries is wrong by hundreds, so beta_reg's PSIS k-hat reads inf for
every method. `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce` gives the right numbers.
"""
import sys, time
from pathlib import Path
import numpy as np
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", False)
import numpyro, numpyro.distributions as dist
from numpyro.diagnostics import summary
from numpyro.infer import MCMC, NUTS

import advi_jax as aj

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository's root
from benchmarks.suite import flatten_draws as flat  # noqa: E402
from benchmarks.spot_unseen2 import one_fit  # noqa: E402

rng = np.random.default_rng(13)


def crossed_re():
    A, B, N = 30, 20, 1200; ia = rng.integers(0, A, N); ib = rng.integers(0, B, N)
    ua = 0.5 * rng.normal(size=A); ub = 0.8 * rng.normal(size=B); y = 1.0 + ua[ia] + ub[ib] + rng.normal(size=N)
    def model(ia, ib, y):
        mu = numpyro.sample("mu", dist.Normal(0, 5))
        sa = numpyro.sample("sigma_a", dist.HalfNormal(1.0)); sb = numpyro.sample("sigma_b", dist.HalfNormal(1.0))
        sy = numpyro.sample("sigma_y", dist.HalfNormal(2.0))
        with numpyro.plate("A", A):
            za = numpyro.sample("z_a", dist.Normal(0, 1))
        with numpyro.plate("B", B):
            zb = numpyro.sample("z_b", dist.Normal(0, 1))
        numpyro.sample("y", dist.Normal(mu + sa * za[ia] + sb * zb[ib], sy), obs=y)
    return model, (ia, ib, y)


def beta_reg():
    N = 400; x = rng.normal(size=(N, 3)); mu = 1 / (1 + np.exp(-(-0.5 + x @ np.array([0.8, -0.4, 0.2]))))
    y = np.clip(rng.beta(mu * 15.0, (1 - mu) * 15.0), 1e-3, 1 - 1e-3)  # proportions as recorded: 3 decimals
    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0, 2)); b = numpyro.sample("b", dist.Normal(0, 1).expand([3]).to_event(1))
        phi = numpyro.sample("phi", dist.Gamma(2.0, 0.1))
        m = jax.nn.sigmoid(a + x @ b)
        numpyro.sample("y", dist.Beta(m * phi, (1 - m) * phi), obs=y)
    return model, (x, y)


def icar():
    n = 10; idx = np.arange(n * n).reshape(n, n)
    edges = np.concatenate([np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()], 1),
                            np.stack([idx[:-1, :].ravel(), idx[1:, :].ravel()], 1)])  # 180 rook neighbours
    Q = np.zeros((n * n, n * n)); np.add.at(Q, (edges[:, 0], edges[:, 1]), -1.0); np.add.at(Q, (edges[:, 1], edges[:, 0]), -1.0)
    Q[np.diag_indices(n * n)] = -Q.sum(1)
    field = np.linalg.cholesky(np.linalg.inv(Q + 0.05 * np.eye(n * n))) @ rng.normal(size=n * n)
    field = 0.4 * (field - field.mean()) / field.std()  # a smooth spatial effect, sd 0.4
    expected = rng.uniform(5.0, 40.0, n * n); y = rng.poisson(expected * np.exp(0.1 + field))
    i, j = edges[:, 0], edges[:, 1]; log_e = np.log(expected)
    def model(i, j, log_e, y):
        b0 = numpyro.sample("b0", dist.Normal(0, 2)); s = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("cells", n * n):
            phi = numpyro.sample("phi", dist.ImproperUniform(dist.constraints.real, (), ()))
        numpyro.factor("icar", -0.5 * jnp.sum((phi[i] - phi[j]) ** 2))  # unit-scale ICAR on the grid
        numpyro.factor("sum_to_zero", dist.Normal(0, 0.001 * n * n).log_prob(jnp.sum(phi)))  # makes it proper
        numpyro.sample("y", dist.Poisson(jnp.exp(log_e + b0 + s * phi)), obs=y)
    return model, (i, j, log_e, y)


def tobit():
    N = 300; x = rng.normal(size=(N, 3)); ys = 0.5 + x @ np.array([1.0, -0.5, 0.3]) + rng.normal(size=N)
    y = np.maximum(ys, 0.0); cens = ys <= 0.0  # about a third censored
    def model(x, y, cens):
        a = numpyro.sample("a", dist.Normal(0, 5)); b = numpyro.sample("b", dist.Normal(0, 2.5).expand([3]).to_event(1))
        s = numpyro.sample("sigma", dist.HalfNormal(2.0))
        mu = a + x @ b
        lp = jnp.where(cens, jax.scipy.stats.norm.logcdf(-mu / s), dist.Normal(mu, s).log_prob(y))
        numpyro.factor("y", jnp.sum(lp))
    return model, (x, y, cens)


def vonmises():
    N = 200; x = rng.normal(size=N); y = rng.vonmises(2 * np.arctan(0.3 + 0.8 * x), 4.0)
    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0, 2)); b = numpyro.sample("b", dist.Normal(0, 2))
        k = numpyro.sample("kappa", dist.LogNormal(1.0, 1.0))
        numpyro.sample("y", dist.VonMises(2 * jnp.arctan(a + b * x), k), obs=y)
    return model, (x, y)


def overdisp(rng=rng):  # spot_large.py builds it from its own generator
    N = 250; x = rng.normal(size=N); y = rng.poisson(np.exp(1.0 + 0.5 * x + 0.6 * rng.normal(size=N)))
    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0, 2)); b = numpyro.sample("b", dist.Normal(0, 2))
        s = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("N", N):
            z = numpyro.sample("z", dist.Normal(0, 1))
            numpyro.sample("y", dist.Poisson(jnp.exp(a + b * x + s * z)), obs=y)
    return model, (x, y)


def collinear():
    N, D, r = 1000, 4, 0.995; x = np.sqrt(r) * rng.normal(size=(N, 1)) + np.sqrt(1 - r) * rng.normal(size=(N, D))
    y = (rng.random(N) < 1 / (1 + np.exp(-(0.2 + x @ np.array([0.5, 0.3, -0.2, 0.4]))))).astype(np.float32)
    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0, 2.5)); b = numpyro.sample("b", dist.Normal(0, 2.5).expand([D]).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=a + x @ b), obs=y)
    return model, (x, y)


def tight_hier():
    G, n = 12, 500; g = np.repeat(np.arange(G), n); y = (1.0 + 0.5 * rng.normal(size=G))[g] + 0.7 * rng.normal(size=G * n)
    def model(g, y):
        mu = numpyro.sample("mu", dist.Normal(0, 5)); tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        s = numpyro.sample("sigma_y", dist.HalfNormal(2.0))
        with numpyro.plate("G", G):
            alpha = numpyro.sample("alpha", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(alpha[g], s), obs=y)
    return model, (g, y)


MODELS = {name: build() for name, build in  # built in this order: the data depend on it
          (("crossed_re", crossed_re), ("beta_reg", beta_reg), ("icar", icar), ("tobit", tobit),
           ("vonmises", vonmises), ("overdisp", overdisp), ("collinear", collinear), ("tight_hier", tight_hier))}


if __name__ == "__main__":
    argv = sys.argv[1:]
    methods = argv[argv.index("--methods") + 1].split(",") if "--methods" in argv else ["default"]
    names = [a for i, a in enumerate(argv) if a != "--methods" and (i == 0 or argv[i - 1] != "--methods")]
    for name in names or list(MODELS):
        model, args = MODELS[name]
        t = time.perf_counter()
        mc = MCMC(NUTS(model), num_warmup=1000, num_samples=2000, num_chains=2, progress_bar=False,
                  chain_method="sequential")
        mc.run(jax.random.PRNGKey(0), *args, extra_fields=("num_steps",))
        ref = flat(mc.get_samples())
        div = int(mc.get_extra_fields()["diverging"].sum())
        steps = np.asarray(mc.get_extra_fields()["num_steps"])
        stats = summary(mc.get_samples(group_by_chain=True))
        rhat = max(float(np.max(v["r_hat"])) for v in stats.values())
        ess = min(float(np.min(v["n_eff"])) for v in stats.values())
        print(f"{name}: NUTS {time.perf_counter() - t:.0f}s, {div} divergences, max R-hat {rhat:.3f}, "
              f"min ESS {ess:.0f}, mean leapfrog steps {steps.mean():.0f} (max {steps.max()})", flush=True)
        m = aj.from_numpyro(model, *args)
        for method in methods:
            if method == "default":
                for seed in (0, 1):
                    one_fit(name, f"s{seed}", m, ref, key=jax.random.key(seed))
            else:
                one_fit(name, f"{method} s0", m, ref, key=jax.random.key(0), method=method)
