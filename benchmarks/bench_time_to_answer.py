"""Time to answer for Bayesian logistic and Poisson regression: the exact-ELBO method against ADVI and NumPyro.

For each kind (logistic, Poisson by default; `--kinds negbin` for the negative binomial), N, D and
family (mean-field, full-rank; `--families lowrank` for `family="lowrank"`, rank 10, against NumPyro's
`AutoLowRankMultivariateNormal` of the same rank), on synthetic data (`benchmarks.common.logistic_data` / `poisson_data`,
`negbin_data` here; standard-normal features; NumPyro's NB fit is scored on the intercept and
coefficients, without the dispersion):

* `glm_exact`: the exact (quadrature) ELBO with Newton / fixed-point steps
  (`advi_jax.vi.glm_exact`), called as a user would: `aj.fit(model, method="glm_exact")` when the
  driver has `method=`, else the algorithm looped in one jitted `lax.while_loop` (`_run_exact`).
  Wall time of the first call (compilation included) and of a second call on the same model (the
  least of `--repeat-second` second calls),
  with `diagnostics=False` (the fit alone: the default diagnostics, 256 draws at large N, add about
  0.5 s at N = 1e6, D = 10 and 2.4 s at D = 100 on a loaded machine; see PERFORMANCE.md);
* `advi`: `aj.fit(model, method="advi")` (or today's `aj.fit`), its default 10,000 steps;
* `numpyro`: `SVI(..., AutoNormal / AutoMultivariateNormal, Adam(1e-2), Trace_ELBO()).run` for
  `--numpyro-steps` (10,000) steps on the same standardised features and priors.

Projected peers (`--project-from-n`, default 1e6). Each step of ADVI or of `svi.run` reads X, so
10,000 steps at N = 1e6 take tens of minutes. For N >= `--project-from-n` the peers run fewer
steps and the reported time is a PROJECTION of 10,000 steps, never a measurement:
`svi.run` is run for `--timed-steps` k (default 200) and 2k steps (two calls after an untimed
2-step warm-up, each compiling its program once), the per-step time is (T(2k) - T(k)) / k and the projection T(k) + (10,000 - k) x
per-step (compile and start-up measured, the remaining steps extrapolated; NaN when timing noise
makes T(2k) <= T(k)); ADVI is one 2k-step `aj.fit`, projected as its wall time minus its compiled
loop's seconds plus 10,000 x the loop's seconds per step (`report.run_seconds`). Such rows say
`timing = projected from ...`, and their errors are those after 2k steps (not 10,000): a
10,000-step run would be more accurate, so they are not a peer's best error. Rows of measured
runs say `timing = measured`.

`ratio` = the peer's (measured or projected) seconds / `glm_exact`'s first call (compilation
included, as a user meets it) in the same cell; `ratio 2nd` = the same over `glm_exact`'s second
call (the model compiled: what a user refitting or fitting a second model of the same shape meets;
`svi.run`'s seconds include its compilation).

Error of each against the exact optimum, a float64 `glm_exact` run at tol 1e-12:
`mean err` = max_k |m_k - m*_k| / sd*_k and `sd err` = max_k |sd_k / sd*_k - 1| over the intercept
and coefficients. `passes` = passes over X (glm_exact) or steps (the stochastic methods).

Usage:
  python -m benchmarks.bench_time_to_answer --quick
  python -m benchmarks.bench_time_to_answer --kinds poisson --n 100000 --d 10 --families fullrank --skip advi,numpyro --repeat-second 10
  python -m benchmarks.bench_time_to_answer --n 10000,100000 --d 10,100
  python -m benchmarks.bench_time_to_answer --n 1000000 --d 10 --kinds logistic --families fullrank --skip numpyro,advi
  python -m benchmarks.bench_time_to_answer            # the full grid (N = 1e6 peers projected from 200 / 400 steps)
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax.models import logistic_regression, negbin_regression, poisson_regression  # noqa: E402
from advi_jax.vi import glm_exact  # noqa: E402
from benchmarks.common import logistic_data, machine, markdown_table, poisson_data, versions, write_json  # noqa: E402

COLUMNS = ["kind", "N", "D", "family", "method", "first s", "second s", "passes", "timing", "mean err", "sd err",
           "ratio", "ratio 2nd"]
PEER_STEPS = 10_000


@functools.partial(jax.jit, static_argnames=("family", "options", "num_steps"))
def _run_exact(model, family, options, num_steps=100):
    """init/step of glm_exact in one while_loop until converged (used when aj.fit has no method=)."""
    alg = glm_exact.build(model, family, options)
    state = alg.init(jax.random.key(0), jnp.zeros((model.dim,), model.data["x"].dtype))

    def cond(c):
        return (c[1] < num_steps) & ~c[2]

    def body(c):
        state, i, _ = c
        state, info = alg.step(jax.random.key(0), state)
        return state, i + 1, info.converged

    state, i, _ = jax.lax.while_loop(cond, body, (state, jnp.int32(0), jnp.bool_(False)))
    return alg.params(state), i


def _has_method() -> bool:
    return "method" in inspect.signature(aj.fit).parameters


def fit_exact(model, family, options=glm_exact.Options()):
    """(params, passes) of one user-level glm_exact fit."""
    if _has_method():
        res = aj.fit(model, key=jax.random.key(0), family=family, method="glm_exact", progress=False,
                     diagnostics=False)
        return jax.block_until_ready(res.params), int(res.num_grad_evals)
    params, steps = _run_exact(model, family, options)
    return jax.block_until_ready(params), int(steps)


def negbin_data(n: int, d: int, seed: int = 0, phi: float = 2.0, dtype=np.float32):
    """Synthetic NB2 data: standard-normal features, coefficients ~ N(0, 0.25/d), log link, mean 2 at zero
    and dispersion `phi` (variance = mean + mean^2 / phi)."""
    x, _ = poisson_data(n, d, seed, dtype)
    rng = np.random.default_rng(seed + 1)
    beta = rng.normal(0.0, 0.5 / np.sqrt(d), size=d)
    mean = 2.0 * np.exp(x @ beta)
    return x, rng.negative_binomial(phi, phi / (phi + mean)).astype(dtype)


def make_model(kind, n, d, seed=0):
    if kind == "logistic":
        x, y = logistic_data(n, d, seed)
        return logistic_regression(x, y)
    if kind == "negbin":
        return negbin_regression(*negbin_data(n, d, seed))
    x, y = poisson_data(n, d, seed)
    return poisson_regression(x, y)


def summary(family, params):
    return np.asarray(params.loc, np.float64), np.sqrt(np.asarray(family.variance(params), np.float64))


def errors(mean, sd, ref):
    m0, s0 = ref
    k = min(len(mean), len(m0))  # NumPyro's NB fit reports the intercept and coefficients only (not log phi)
    mean, sd, m0, s0 = mean[:k], sd[:k], m0[:k], s0[:k]
    return float(np.max(np.abs(mean - m0) / s0)), float(np.max(np.abs(sd / s0 - 1.0)))


def reference(kind, n, d, family):
    with jax.enable_x64(True):
        model = make_model(kind, n, d)
        params, _ = _run_exact(model, family, glm_exact.Options(tol=1e-14, rtol=1e-15), num_steps=200)
        return summary(family, params)


def run_numpyro(model, family_name, steps, seed=0):
    """(seconds, mean, sd) of one `svi.run` of `steps` steps (compilation included)."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO, autoguide

    info, data = model.info, model.data
    x, y, offset = data["x"], data["y"], data.get("offset")

    def fn(x, y):
        c = numpyro.sample("intercept", dist.Normal(0.0, info.intercept_scale))
        beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), info.prior_scale).to_event(1))
        eta = c + x @ beta + (0.0 if offset is None else offset)
        if info.kind == "logistic":
            numpyro.sample("y", dist.Bernoulli(logits=eta), obs=y)
        elif info.kind == "negbin":  # the model's prior: 1 / sqrt(phi) ~ Exponential(mean dispersion_scale)
            kappa = numpyro.sample("kappa", dist.Exponential(1.0 / info.dispersion_scale))
            numpyro.sample("y", dist.NegativeBinomial2(jnp.exp(eta), 1.0 / (kappa * kappa)), obs=y)
        else:
            numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=y)

    if family_name == "lowrank":  # the same rank as advi_jax's family="lowrank" (LowRankGaussian().rank)
        guide = autoguide.AutoLowRankMultivariateNormal(fn, rank=aj.LowRankGaussian().rank)
    else:
        guide = (autoguide.AutoNormal if family_name == "meanfield" else autoguide.AutoMultivariateNormal)(fn)
    svi = SVI(fn, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
    start = time.perf_counter()
    out = svi.run(jax.random.key(seed), steps, x, y, progress_bar=False)
    params = jax.block_until_ready(out.params)
    seconds = time.perf_counter() - start
    if family_name == "meanfield":
        mean = np.concatenate([np.atleast_1d(params["intercept_auto_loc"]), params["beta_auto_loc"]])
        sd = np.concatenate([np.atleast_1d(params["intercept_auto_scale"]), params["beta_auto_scale"]])
    else:
        unpack = guide._unpack_latent
        if family_name == "lowrank":  # NumPyro's covariance: diag(s) (W W' + I) diag(s), s = auto_scale
            w, s = params["auto_cov_factor"], params["auto_scale"]
            var = s * s * (jnp.sum(w * w, axis=1) + 1.0)
        else:
            lt = params["auto_scale_tril"]
            var = jnp.sum(lt * lt, axis=1)
        loc, sdv = unpack(params["auto_loc"]), unpack(jnp.sqrt(var))
        mean = np.concatenate([np.atleast_1d(loc["intercept"]), loc["beta"]])
        sd = np.concatenate([np.atleast_1d(sdv["intercept"]), sdv["beta"]])
    return seconds, np.asarray(mean, np.float64), np.asarray(sd, np.float64)


def run_advi(model, family, steps=None):
    """(seconds, params, steps, loop seconds) of one `aj.fit(method="advi")` (its default 10,000 steps,
    or `steps`); loop seconds = the report's `run_seconds` (the compiled loop, no compilation)."""
    kwargs = {"method": "advi"} if _has_method() else {}
    if steps is not None:
        kwargs["num_steps"] = steps
    start = time.perf_counter()
    res = aj.fit(model, key=jax.random.key(0), family=family, progress=False, diagnostics=False, warn=False, **kwargs)
    params = jax.block_until_ready(res.params)
    return time.perf_counter() - start, params, len(res.elbo), res.report.run_seconds


def projected(run_k, k, total=PEER_STEPS):
    """Time `run_k(k)` and `run_k(2 k)`; project `total` steps as T(k) + (total - k) (T(2k) - T(k)) / k.

    Returns (projected seconds, the 2k-step run's output, a label for the table); NaN seconds when
    T(2k) <= T(k) (timing noise larger than k steps: use a larger --timed-steps).
    """
    run_k(2)  # warm-up, not timed: one-time costs (the peer's imports and caches) would bias T(k)
    t_k, _ = run_k(k)
    t_2k, out = run_k(2 * k)
    if not t_2k > t_k:
        return float("nan"), out, f"projection failed: T({2 * k})={t_2k:.3g} s <= T({k})={t_k:.3g} s (noise)"
    per_step = (t_2k - t_k) / k
    return t_k + (total - k) * per_step, out, f"projected from {k}, {2 * k} steps ({per_step * 1e3:.3g} ms/step)"


def projected_advi(model, family, k, total=PEER_STEPS):
    """ADVI's `total` steps projected from one k-step fit: its whole wall time minus the loop's
    measured seconds, plus that loop's seconds per step x `total` (the report times the loop alone)."""
    seconds, params, steps, loop = run_advi(model, family, k)
    per_step = loop / steps
    return (seconds - loop + total * per_step, params, steps,
            f"projected from {steps} steps ({per_step * 1e3:.3g} ms/step of the compiled loop)")


def run(kinds, ns, ds, families, skip, numpyro_steps, project_from_n=10**6, timed_steps=200, log=print,
        repeat_second=1):
    rows = []
    for kind in kinds:
        for n in ns:
            for d in ds:
                model = make_model(kind, n, d)
                for fam_name in families:
                    family = aj.families.get_family(fam_name)
                    ref = reference(kind, n, d, family)
                    base = {"kind": kind, "N": n, "D": d, "family": fam_name}
                    t0 = time.perf_counter()
                    params, passes = fit_exact(model, family)
                    first = time.perf_counter() - t0
                    seconds = []
                    for _ in range(max(1, repeat_second)):  # the least of k second calls (timing noise)
                        t1 = time.perf_counter()
                        params, passes = fit_exact(model, family)
                        seconds.append(time.perf_counter() - t1)
                    second = min(seconds)
                    me, se = errors(*summary(family, params), ref)
                    rows.append({**base, "method": "glm_exact", "first s": first, "second s": second,
                                 "passes": passes, "timing": "measured", "mean err": me, "sd err": se})
                    log(rows[-1])
                    project = n >= project_from_n
                    if "advi" not in skip:
                        if project:
                            seconds, p, steps, timing = projected_advi(model, family, 2 * timed_steps)
                        else:
                            (seconds, p, steps, _), timing = run_advi(model, family), "measured"
                        me, se = errors(*summary(family, p), ref)
                        rows.append({**base, "method": "advi", "first s": seconds, "passes": steps, "timing": timing,
                                     "mean err": me, "sd err": se, "ratio": seconds / first,
                                     "ratio 2nd": seconds / second})
                        log(rows[-1])
                    if "numpyro" not in skip:
                        if project:
                            seconds, (_, mean, sd), timing = projected(
                                lambda s: (lambda r: (r[0], r))(run_numpyro(model, fam_name, s)), timed_steps,
                                numpyro_steps)
                            steps = 2 * timed_steps
                        else:
                            (seconds, mean, sd), timing = run_numpyro(model, fam_name, numpyro_steps), "measured"
                            steps = numpyro_steps
                        me, se = errors(mean, sd, ref)
                        rows.append({**base, "method": "numpyro svi.run", "first s": seconds, "passes": steps,
                                     "timing": timing, "mean err": me, "sd err": se, "ratio": seconds / first,
                                     "ratio 2nd": seconds / second})
                        log(rows[-1])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 1e4, D = 10 only, 2,000 NumPyro steps")
    p.add_argument("--kinds", default="logistic,poisson")
    p.add_argument("--n", default="10000,100000,1000000")
    p.add_argument("--d", default="10,100")
    p.add_argument("--families", default="meanfield,fullrank")
    p.add_argument("--skip", default="", help="comma list of peers to skip: advi,numpyro")
    p.add_argument("--numpyro-steps", type=int, default=10_000)
    p.add_argument("--project-from-n", type=float, default=1e6,
                   help="from this N on, time the peers for --timed-steps and twice that, and project "
                   "10,000 steps (reported as projected, never as measured)")
    p.add_argument("--timed-steps", type=int, default=200, help="k of the projection (k and 2k steps are run)")
    p.add_argument("--repeat-second", type=int, default=1,
                   help="time this many second calls of glm_exact and report the least (a loaded machine's noise)")
    p.add_argument("--out", default="results/bench_time_to_answer.json")
    a = p.parse_args(argv)
    ns, ds = [int(float(v)) for v in a.n.split(",")], [int(v) for v in a.d.split(",")]
    steps = a.numpyro_steps
    if a.quick:
        ns, ds, steps = [10_000], [10], 2000
    rows = run(a.kinds.split(","), ns, ds, a.families.split(","), set(filter(None, a.skip.split(","))), steps,
               int(a.project_from_n), a.timed_steps, repeat_second=a.repeat_second)
    print(markdown_table(rows, COLUMNS))
    print(f"\nratio = peer seconds / glm_exact first call (compilation included). Rows with timing 'projected' "
          f"extrapolate {steps:,} steps and were NOT run that long: svi.run from runs of k and 2k steps, ADVI from "
          f"one 2k-step fit (its compiled loop's seconds per step x 10,000, plus its compilation and start); their "
          f"errors are after 2k steps. Load average {os.getloadavg()[0]:.1f} at the end.")
    write_json(a.out, {"rows": rows, "machine": machine(), "versions": versions(),
                       "load average": os.getloadavg()})


if __name__ == "__main__":
    main()
