"""Posteriors with K > 200 (above `advi_jax.run.choose.FULLRANK_MAX_DIM`), for `family="auto"` there: the
default `aj.fit` and the candidate families at seed 0 against NUTS (2 chains x 1,500 draws after 1,000 warm-up,
float32), the worst |dmean| / sd and |log sd ratio| (and their medians), k-hat, gradients, wall time and whether
it warned (lead, twenty-second session). Eight structures:

  overdisp     Poisson with a per-observation lognormal effect, non-centred, 250 rows (K = 253)
  varint300    Gaussian varying intercepts, 300 groups x 4 rows, non-centred (K = 304)
  rasch        1PL item response, 250 persons x 15 items, non-centred abilities (K = 266)
  local_level  random-walk level, T = 250, non-centred innovations (K = 252)
  wide_logit   logistic regression, 220 standard-normal predictors, 1,500 rows (K = 221)
  wide_scaled  logistic regression, 210 predictors with scales exp(N(0, 1.5)), 2,000 rows (K = 211)
  far_intercept  varying intercepts, 250 groups x 6 rows, the intercept at 120 and a predictor at 40 +/- 10:
               data far from zero (K = 254)
  varint1500   Gaussian varying intercepts, 1,500 groups x 4 rows, non-centred (K = 1,504; twenty-third session)

The data are simulated once, in that order, from one generator (seed 17).

Usage: python benchmarks/spot_large.py [names...] [--fits default,meanfield,lowrank,lowrank_stl4,fullrank,lowrank_10k,lowrank_20k,lowrank_40k]
"""
import sys, time, warnings
from pathlib import Path
import numpy as np, jax, jax.numpy as jnp
import numpyro, numpyro.distributions as dist
rng = np.random.default_rng(17)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # spot_unseen3, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # and the repository's root
from benchmarks.suite import flatten_draws as flat  # noqa: E402


def overdisp():  # spot_unseen3's, from this file's generator (K = 253)
    from spot_unseen3 import overdisp as build

    return build(rng)


def _varying_intercepts(G, a_sd, b_sd, tau_sd, sigma_sd, sigma_name):
    """Gaussian outcome, non-centred group intercepts tau z_g, one predictor; priors by their scales."""
    def model(g, x, y):
        a = numpyro.sample("a", dist.Normal(0, a_sd)); b = numpyro.sample("b", dist.Normal(0, b_sd))
        tau = numpyro.sample("tau", dist.HalfNormal(tau_sd)); s = numpyro.sample(sigma_name, dist.HalfNormal(sigma_sd))
        with numpyro.plate("G", G):
            z = numpyro.sample("z", dist.Normal(0, 1))
        numpyro.sample("y", dist.Normal(a + b * x + tau * z[g], s), obs=y)
    return model


def varint300():  # Gaussian varying intercepts, 300 groups x 4 rows, non-centred (K = 304)
    G, n = 300, 4; g = np.repeat(np.arange(G), n); x = rng.normal(size=G * n)
    u = 0.5 * rng.normal(size=G); y = 1.0 + 0.7 * x + u[g] + 0.8 * rng.normal(size=G * n)
    return _varying_intercepts(G, 5.0, 5.0, 1.0, 2.0, "sigma"), (g, x, y)


def rasch():  # 1PL IRT, 250 persons x 15 items (K = 266)
    P, I = 250, 15; th = rng.normal(size=P); be = rng.normal(0, 1, I)
    y = (rng.random((P, I)) < 1 / (1 + np.exp(-(th[:, None] - be)))).astype(np.float32)
    def model(y):
        s = numpyro.sample("sigma_theta", dist.HalfNormal(2.0))
        with numpyro.plate("I", I):
            b = numpyro.sample("beta", dist.Normal(0, 3))
        with numpyro.plate("P", P):
            z = numpyro.sample("z", dist.Normal(0, 1))
        numpyro.sample("y", dist.Bernoulli(logits=s * z[:, None] - b), obs=y)
    return model, (y,)

def local_level():  # random-walk level, T = 250, non-centred innovations (K = 252)
    T = 250; lvl = np.cumsum(0.3 * rng.normal(size=T)); y = lvl + 0.5 * rng.normal(size=T)
    def model(y):
        sw = numpyro.sample("sigma_w", dist.HalfNormal(1.0)); sv = numpyro.sample("sigma_v", dist.HalfNormal(1.0))
        e = numpyro.sample("e", dist.Normal(0, 1).expand([T]).to_event(1))
        level = y[0] + jnp.cumsum(sw * e)
        numpyro.sample("y", dist.Normal(level, sv), obs=y)
    return model, (y,)

def wide_logit():  # logistic regression, 220 predictors, 1,500 rows, N(0, 1) priors (K = 221)
    N, D = 1500, 220; x = rng.normal(size=(N, D)).astype(np.float32)
    beta = rng.normal(0, 0.15, D); y = (rng.random(N) < 1 / (1 + np.exp(-(x @ beta)))).astype(np.float32)
    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0, 2)); b = numpyro.sample("b", dist.Normal(0, 1).expand([D]).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=a + x @ b), obs=y)
    return model, (x, y)



def wide_scaled():  # logistic regression, 210 predictors with scales exp(N(0, 1.5)), 2,000 rows (K = 211)
    N, D = 2000, 210; sc = np.exp(rng.normal(0, 1.5, D)); x = (rng.normal(size=(N, D)) * sc).astype(np.float32)
    beta = rng.normal(0, 0.3, D) / sc; y = (rng.random(N) < 1 / (1 + np.exp(-(0.5 + x @ beta)))).astype(np.float32)
    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0, 2)); b = numpyro.sample("b", dist.Normal(0, 10).expand([D]).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=a + x @ b), obs=y)
    return model, (x, y)


def far_intercept():  # varying intercepts, 250 groups x 6 rows, intercept 120, a predictor at 40 +/- 10 (K = 254)
    G, n = 250, 6; g = np.repeat(np.arange(G), n); x = (rng.normal(size=G * n) * 10 + 40).astype(np.float32)
    u = 2.0 * rng.normal(size=G); y = (120.0 + 3.0 * x + u[g] + 1.5 * rng.normal(size=G * n)).astype(np.float32)
    return _varying_intercepts(G, 200.0, 10.0, 3.0, 3.0, "s"), (g, x, y)


def varint1500():  # varint300's structure at 1,500 groups (K = 1,504)
    G, n = 1500, 4; g = np.repeat(np.arange(G), n); x = rng.normal(size=G * n)
    u = 0.5 * rng.normal(size=G); y = 1.0 + 0.7 * x + u[g] + 0.8 * rng.normal(size=G * n)
    return _varying_intercepts(G, 5.0, 5.0, 1.0, 2.0, "sigma"), (g, x, y)


MODELS = {name: build() for name, build in  # built in this order: the data depend on it
          (("overdisp", overdisp), ("varint300", varint300), ("rasch", rasch), ("local_level", local_level),
           ("wide_logit", wide_logit), ("wide_scaled", wide_scaled), ("far_intercept", far_intercept),
           ("varint1500", varint1500))}


FITS = {
    "default": {},
    "meanfield": dict(family="meanfield"),  # the default above K = 200 before (ADVI, 1 draw x 10,000 steps)
    "lowrank": dict(family="lowrank"),  # ADVI, 1 draw x 10,000 steps
    "lowrank_stl4": dict(family="lowrank", estimator="stl", num_samples=4, num_steps=5000),  # 5,000 steps
    "fullrank": dict(family="fullrank"),  # the default's full-rank fit (natural-gradient ADVI, its own stop)
    # the default's settings (AUTO_LOWRANK) with a shorter budget: what a stopping rule could save
    "lowrank_10k": dict(family="lowrank", estimator="stl", num_samples=4, num_steps=10_000),
    "lowrank_20k": dict(family="lowrank", estimator="stl", num_samples=4, num_steps=20_000),
    # the default before its drift rule (twenty-fourth session): the fixed 40,000-step schedule
    "lowrank_40k": dict(family="lowrank", estimator="stl", num_samples=4, num_steps=40_000),
}


def compare(models: dict, argv: list, default_fits=("default", "meanfield", "lowrank", "lowrank_stl4", "fullrank")):
    """NUTS once per posterior, then each fit of `--fits` (FITS' names) against it; prints one line per fit.
    `argv`: posterior names (all of `models` if none) and `--fits a,b`."""
    from numpyro.diagnostics import summary
    from numpyro.infer import MCMC, NUTS

    import advi_jax as aj

    args = list(argv)
    fits = list(default_fits)
    if "--fits" in args:
        i = args.index("--fits"); fits = args[i + 1].split(","); del args[i:i + 2]
    # the process's first fit pays one-time costs (imports, JAX's start-up: ~3 s), which would be charged to
    # whichever fit came first: pay them here
    aj.fit(aj.Model(lambda p: -0.5 * jnp.sum(p["x"] ** 2), {"x": aj.real((2,))}), key=jax.random.key(0),
           progress=False)
    for name in args or list(models):
        model, data = models[name]
        t = time.perf_counter()
        mc = MCMC(NUTS(model), num_warmup=1000, num_samples=1500, num_chains=2, progress_bar=False,
                  chain_method="sequential")
        mc.run(jax.random.PRNGKey(0), *data)
        rhat = max(float(np.max(v["r_hat"])) for v in summary(mc.get_samples(group_by_chain=True)).values())
        ref = flat(mc.get_samples())
        div = int(mc.get_extra_fields()["diverging"].sum())
        print(f"{name}: NUTS {time.perf_counter() - t:.0f}s, {div} divergences, max R-hat {rhat:.3f}", flush=True)
        m = aj.from_numpyro(model, *data)
        for fit in fits:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                t = time.perf_counter()
                try:
                    r = aj.fit(m, key=jax.random.key(0), progress=False, **FITS[fit])
                except Exception as err:  # a crash is a finding: report it and go on
                    print(f"{name} {fit}: FAILED {type(err).__name__}: {err}", flush=True)
                    continue
                dt = time.perf_counter() - t
            q = flat(r.sample(jax.random.key(9), 20000))
            dm = {k: abs(q[k].mean() - ref[k].mean()) / ref[k].std() for k in ref}
            ls = {k: abs(np.log(q[k].std() / ref[k].std())) for k in dm}
            km = max(dm, key=dm.get); ks = max(ls, key=ls.get)
            warned = sum(isinstance(x.message, aj.DiagnosticWarning) for x in w)
            print(f"{name} {fit}: K={m.dim} {r.family.name} dmean {dm[km]:.3f} ({km}) med {np.median(list(dm.values())):.3f} "
                  f"logsd {ls[ks]:.3f} ({ks}) med {np.median(list(ls.values())):.3f} khat {r.khat:.2f} "
                  f"grads {r.num_grad_evals} steps {r.num_steps} {dt:.1f}s warned={warned}", flush=True)


if __name__ == "__main__":
    compare(MODELS, sys.argv[1:])
