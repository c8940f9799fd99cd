"""Posteriors nobody tuned the default fit on (lead, sixteenth and seventeenth sessions): the default `aj.fit` at
seeds 0-1 against NUTS (2 chains x 2,000 draws, float32), and whether it warned.

  hetero       Gaussian regression with a log-linear sd (K = 4)
  changepoint  Poisson counts with a smooth switch point s ~ Uniform(0, 100) (K = 3)
  poisson_re   Poisson random intercepts, 60 groups, exposure, non-centred (K = 63)
  irt          two-parameter IRT, 40 people x 12 items, centred item difficulties (K = 65)
  seeds        BUGS seeds: binomial germination on 21 plates, centred plate effects (K = 26)
  meas_error   regression on a predictor measured with known error, latent true values (K = 55)
  zinb         zero-inflated negative binomial regression (K = 5)
  local_level  random-walk level plus noise, 60 steps, non-centred steps (K = 63)
  dirmult      Dirichlet-multinomial counts, 30 groups x 5 categories (K = 5)

The data are simulated once, in the order above, from one generator (seed 3).

Usage: python benchmarks/spot_unseen.py hetero changepoint poisson_re irt seeds meas_error zinb local_level dirmult [--store DIR]

With `--store DIR`, each fit is also kept as `DIR/spot_NAME__sSEED.pkl` in the row format of
`benchmarks.bench_khat_calibrate` (q, its distance to NUTS, the fit's warnings), for the warning
rules' readings (`benchmarks.widened_rules`).
"""
import sys, time, warnings, numpy as np, jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", False)
import numpyro, numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
import advi_jax as aj

rng = np.random.default_rng(3)
def irt():
    J, I = 40, 12
    theta = rng.normal(size=J); b = rng.normal(size=I); a = np.exp(0.3*rng.normal(size=I))
    y = (rng.random((J, I)) < 1/(1+np.exp(-a*(theta[:,None]-b)))).astype(np.int32)
    def model(y):
        sb = numpyro.sample("sigma_b", dist.HalfNormal(2.))
        with numpyro.plate("j", J):
            th = numpyro.sample("theta", dist.Normal(0, 1))
        with numpyro.plate("i", I):
            bb = numpyro.sample("b", dist.Normal(0, sb))
            la = numpyro.sample("log_a", dist.Normal(0, 0.5))
        numpyro.sample("y", dist.Bernoulli(logits=jnp.exp(la)*(th[:,None]-bb)), obs=y)
    return model, (y,)
def hetero():
    N = 200; x = rng.normal(size=N)
    y = 1 + 2*x + np.exp(-0.5 + 0.8*x)*rng.normal(size=N)
    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0, 5)); b = numpyro.sample("b", dist.Normal(0, 5))
        c = numpyro.sample("c", dist.Normal(0, 2)); d = numpyro.sample("d", dist.Normal(0, 2))
        numpyro.sample("y", dist.Normal(a + b*x, jnp.exp(c + d*x)), obs=y)
    return model, (x, y)
def changepoint():
    t = np.arange(100.); rate = np.where(t < 40, 3.0, 1.0); y = rng.poisson(rate)
    def model(t, y):
        e = numpyro.sample("early", dist.Exponential(1.)); l = numpyro.sample("late", dist.Exponential(1.))
        s = numpyro.sample("s", dist.Uniform(0, 100))
        w = jax.nn.sigmoid((t - s)*2.0)
        numpyro.sample("y", dist.Poisson(e*(1-w) + l*w), obs=y)
    return model, (t, y)
def poisson_re():
    G, n = 60, 6; u = 0.5*rng.normal(size=G); g = np.repeat(np.arange(G), n); x = rng.normal(size=G*n)
    expo = rng.uniform(0.5, 3, size=G*n)
    y = rng.poisson(expo*np.exp(0.2 + 0.5*x + u[g]))
    def model(g, x, expo, y):
        a = numpyro.sample("a", dist.Normal(0, 2)); b = numpyro.sample("b", dist.Normal(0, 2))
        s = numpyro.sample("sigma_u", dist.HalfNormal(1.))
        with numpyro.plate("G", G):
            z = numpyro.sample("z", dist.Normal(0, 1))
        numpyro.sample("y", dist.Poisson(expo*jnp.exp(a + b*x + s*z[g])), obs=y)
    return model, (g, x, expo, y)
def seeds():
    # BUGS "seeds": germination counts on 21 plates, 2x2 design, centred plate effects
    n = np.array([39, 62, 81, 51, 39, 6, 74, 72, 51, 79, 13, 16, 30, 28, 45, 4, 12, 41, 30, 51, 7])
    r = np.array([10, 23, 23, 26, 17, 5, 53, 55, 32, 46, 10, 8, 10, 8, 23, 0, 3, 22, 15, 32, 3])
    x1 = np.array([0]*11 + [1]*10, np.float32); x2 = np.array([0]*5 + [1]*6 + [0]*5 + [1]*5, np.float32)
    def model(x1, x2, n, r):
        a0 = numpyro.sample("a0", dist.Normal(0, 10)); a1 = numpyro.sample("a1", dist.Normal(0, 10))
        a2 = numpyro.sample("a2", dist.Normal(0, 10)); a12 = numpyro.sample("a12", dist.Normal(0, 10))
        sigma = numpyro.sample("sigma", dist.HalfCauchy(1.))
        with numpyro.plate("plate", 21):
            b = numpyro.sample("b", dist.Normal(0, sigma))
            numpyro.sample("r", dist.Binomial(n, logits=a0 + a1*x1 + a2*x2 + a12*x1*x2 + b), obs=r)
    return model, (x1, x2, n, r)
def meas_error():
    N = 50; xt = rng.normal(1, 1, N); xo = xt + 0.5*rng.normal(size=N); y = 0.5 + 1.5*xt + 0.7*rng.normal(size=N)
    def model(xo, y):
        mx = numpyro.sample("mu_x", dist.Normal(0, 5)); sx = numpyro.sample("sigma_x", dist.HalfNormal(3.))
        a = numpyro.sample("a", dist.Normal(0, 5)); b = numpyro.sample("b", dist.Normal(0, 5))
        s = numpyro.sample("sigma", dist.HalfNormal(3.))
        with numpyro.plate("N", N):
            x = numpyro.sample("x_true", dist.Normal(mx, sx))
            numpyro.sample("xo", dist.Normal(x, 0.5), obs=xo)
            numpyro.sample("y", dist.Normal(a + b*x, s), obs=y)
    return model, (xo, y)
def zinb():
    N = 300; x = rng.normal(size=(N, 2)); mu = np.exp(0.5 + x @ np.array([0.6, -0.4]))
    y = np.where(rng.random(N) < 0.3, 0, rng.negative_binomial(2.0, 2.0/(2.0 + mu)))
    def model(x, y):
        a = numpyro.sample("a", dist.Normal(0, 2)); b = numpyro.sample("b", dist.Normal(0, 2).expand([2]).to_event(1))
        phi = numpyro.sample("phi", dist.Gamma(2., 0.5)); gate = numpyro.sample("gate", dist.Beta(1., 1.))
        numpyro.sample("y", dist.ZeroInflatedNegativeBinomial2(jnp.exp(a + x @ b), phi, gate=gate), obs=y)
    return model, (x, y)
def local_level():
    T = 60; level = np.cumsum(0.3*rng.normal(size=T)); y = level + 0.5*rng.normal(size=T)
    def model(y):
        s_l = numpyro.sample("sigma_level", dist.HalfNormal(1.)); s_y = numpyro.sample("sigma_y", dist.HalfNormal(1.))
        with numpyro.plate("T", T):
            steps = numpyro.sample("steps", dist.Normal(0, 1))
        mu = numpyro.sample("mu0", dist.Normal(0, 2)) + s_l*jnp.cumsum(steps)
        numpyro.sample("y", dist.Normal(mu, s_y), obs=y)
    return model, (y,)
def dirmult():
    C, G = 5, 30; p = rng.dirichlet(np.array([4., 2., 2., 1., 1.]), size=G)
    counts = np.stack([rng.multinomial(40, pi) for pi in p]).astype(np.float32)
    def model(counts):
        base = numpyro.sample("base", dist.Dirichlet(jnp.ones(C))); conc = numpyro.sample("conc", dist.LogNormal(2., 1.))
        with numpyro.plate("G", G):
            numpyro.sample("counts", dist.DirichletMultinomial(conc*base, total_count=40), obs=counts)
    return model, (counts,)
MODELS = {name: build() for name, build in  # built in this order: the data depend on it
          (('hetero', hetero), ('changepoint', changepoint), ('poisson_re', poisson_re), ('irt', irt),
           ('seeds', seeds), ('meas_error', meas_error), ('zinb', zinb), ('local_level', local_level),
           ('dirmult', dirmult))}

def flat(d):
    cols = {}
    for k, v in d.items():
        v = np.asarray(v); v = v.reshape(v.shape[0], -1)
        for i in range(v.shape[1]): cols[f"{k}[{i}]" if v.shape[1] > 1 else k] = v[:, i]
    return cols

def store_row(folder, name, seed, r, dm, ls, km, ks, warned):
    import os, pickle
    from benchmarks.bench_auto import warned_why
    row = {"model": f"spot_{name}", "seed": seed, "max|dmean|/sd": dm[km], "worst mean": km,
           "max|log sd|": ls[ks], "worst sd": ks, "khat": float(r.diagnostics.khat), "S": int(r.diagnostics.num_draws),
           "warned": warned_why(warned), "messages": [str(x.message) for x in warned],
           "grads": int(r.num_grad_evals), "logp": int(r.report.num_logp_evals), "family": r.family,
           "params": jax.device_get(r.params)}
    row["poor"] = dm[km] > 0.15 or ls[ks] > float(np.log(1.2))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"spot_{name}__s{seed}.pkl"), "wb") as f:
        pickle.dump(row, f)


if __name__ == "__main__":
    argv = sys.argv[1:]
    store = argv[argv.index("--store") + 1] if "--store" in argv else None
    names = [a for i, a in enumerate(argv) if a != "--store" and (i == 0 or argv[i - 1] != "--store")]
    for name in names:
        model, args = MODELS[name]
        mc = MCMC(NUTS(model), num_warmup=1000, num_samples=2000, num_chains=2, progress_bar=False, chain_method="sequential")
        mc.run(jax.random.PRNGKey(0), *args); ref = flat(mc.get_samples())
        m = aj.from_numpyro(model, *args)
        for seed in (0, 1):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                t = time.perf_counter(); r = aj.fit(m, key=jax.random.key(seed), progress=False); dt = time.perf_counter() - t
            q = flat(r.sample(jax.random.key(9), 20000))
            dm = {k: abs(q[k].mean()-ref[k].mean())/ref[k].std() for k in ref}
            ls = {k: abs(np.log(q[k].std()/ref[k].std())) for k in ref}
            km = max(dm, key=dm.get); ks = max(ls, key=ls.get)
            print(f"{name} s{seed}: dmean {dm[km]:.3f} ({km}) logsd {ls[ks]:.3f} ({ks}) med logsd {np.median(list(ls.values())):.3f} khat {r.diagnostics.khat:.2f} grads {r.num_grad_evals} {dt:.1f}s warned={[str(x.message)[:90] for x in w]}", flush=True)
            if store:
                store_row(store, name, seed, r, dm, ls, km, ks, w)
