"""The varying-intercept Poisson GLM on US births: NUTS reference, accuracy and time to answer.

Model (`aj.models.grouped_poisson_regression`): daily births of a state on a day, on a fixed
seeded subsample of `ROWS` rows of `birthdays.npz` (all years; found with
`aj.data.find_data_file`), with log rate = intercept + weekday (Tue..Sun) + month (Feb..Dec)
dummies (standardised) + u_state, u ~ N(0, tau) over the 51 states (50 + DC), tau ~ HalfNormal(1),
intercept ~ N(0, 10), coefficients ~ N(0, 1). K = 1 + 17 + 51 + 1 = 70.

* `--reference`: NumPyro NUTS (float64, 4 chains x 1000 warm-up + 2000 draws, the same joint
  written in NumPyro on the model's own standardised design, sampled in the coordinates
  a_g = intercept + u_g: see `numpyro_model_totals`) through
  `benchmarks.make_references.run_nuts`, stored as `benchmarks/references/births_poisson_grouped.json`.
* default: in one run, the time to answer and the error against that reference of
  `aj.fit(model)` (auto: `glm_grouped`, full-rank and mean-field; first call with compilation and a
  second call) and of NumPyro `SVI.run` with `AutoMultivariateNormal` and `AutoNormal` (10,000
  Adam steps, lr 0.01, as a user would write it), each timed twice. Errors: mean error in
  reference sds (max and mean over the 70 scalars) and |sd / reference sd - 1| (mean and max),
  from 100,000 draws of each approximation (constrained space, so `tau` is compared as tau).

* `--scaling`: `aj.fit` time to answer on simulated data (N = 1e5, D = 10, G = 100, K = 112),
  logistic and Poisson, full-rank and mean-field.

Usage:
  python -m benchmarks.grouped_births --reference      # ~3 minutes on 2 cores
  python -m benchmarks.grouped_births                  # the comparison table
  python -m benchmarks.grouped_births --scaling
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import advi_jax as aj  # noqa: E402

NAME = "births_poisson_grouped"
ROWS = 2000
SEED = 23
REFERENCE = os.path.join(os.path.dirname(__file__), "references", f"{NAME}.json")


def births_design(rows: int = ROWS, seed: int = SEED):
    """(X (rows, 17) weekday and month dummies, births, state codes, state names) of the seeded subsample."""
    b = np.load(aj.data.find_data_file("birthdays.npz"), allow_pickle=False)
    idx = np.sort(np.random.default_rng(seed).choice(b["births"].shape[0], size=rows, replace=False))
    wday, month = b["wday"][idx].astype(int), b["month"][idx].astype(int) - 1
    x = np.concatenate([np.eye(7)[wday][:, 1:], np.eye(12)[month][:, 1:]], axis=1)
    names = [f"wday{j}" for j in range(1, 7)] + [f"month{j}" for j in range(2, 13)]
    return x, b["births"][idx].astype(np.float64), b["state"][idx].astype(np.int32), tuple(b["state_names"]), names


def build_births_grouped():
    """The ready grouped Poisson model of the module docstring (dtype from jax's x64 setting)."""
    x, y, state, state_names, names = births_design()
    return aj.models.grouped_poisson_regression(x, y, group=state, num_groups=len(state_names),
                                                group_names=state_names, feature_names=names)


def numpyro_model(x, y, group, num_groups, prior_scale=1.0, intercept_scale=10.0, group_scale=1.0):
    """The same joint in NumPyro (x already standardised as the ready model does)."""
    import numpyro
    import numpyro.distributions as dist

    c = numpyro.sample("intercept", dist.Normal(0.0, intercept_scale))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), prior_scale).to_event(1))
    tau = numpyro.sample("tau", dist.HalfNormal(group_scale))
    u = numpyro.sample("u", dist.Normal(jnp.zeros(num_groups), tau).to_event(1))
    with numpyro.plate("rows", y.shape[0]):
        numpyro.sample("y", dist.Poisson(jnp.exp(c + x @ beta + u[group])), obs=y)


def numpyro_model_totals(x, y, group, num_groups, prior_scale=1.0, intercept_scale=10.0, group_scale=1.0):
    """The same joint in the coordinates a_g = intercept + u_g (unit Jacobian), which NUTS samples well.

    The data pin down each state's total a_g tightly but the intercept only through the prior
    u ~ N(0, tau) (sd ~ tau / sqrt(G)): in (intercept, u) that is a narrow ridge (NUTS on it: R-hat
    1.016, min ESS 198 in 4 x 2000 draws); in (intercept, a) the coordinates are nearly independent.
    """
    import numpyro
    import numpyro.distributions as dist

    c = numpyro.sample("intercept", dist.Normal(0.0, intercept_scale))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), prior_scale).to_event(1))
    tau = numpyro.sample("tau", dist.HalfNormal(group_scale))
    a = numpyro.sample("a", dist.Normal(c * jnp.ones(num_groups), tau).to_event(1))
    with numpyro.plate("rows", y.shape[0]):
        numpyro.sample("y", dist.Poisson(jnp.exp(a[group] + x @ beta)), obs=y)


def _u_from_totals(samples, *args):
    out = {k: v for k, v in samples.items() if k != "a"}
    out["u"] = samples["a"] - samples["intercept"][..., None]
    return out


def numpyro_args(model):
    d = model.data
    return (np.asarray(d["x"]), np.asarray(d["y"]), np.asarray(d["group"]), model.num_groups)


def _summaries(draws: dict) -> dict:
    from benchmarks.suite import flatten_draws

    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in flatten_draws(draws).items()}


def errors_from_draws(draws: dict, ref: dict) -> dict:
    """Mean error in reference sds and sd ratio errors over every scalar of the reference."""
    ours = _summaries(draws)
    mean_err, sd_err = [], []
    for label, r in ref["params"].items():
        m, s = ours[label]
        mean_err.append(abs(m - r["mean"]) / r["sd"])
        sd_err.append(abs(s / r["sd"] - 1.0))
    mean_err, sd_err = np.asarray(mean_err), np.asarray(sd_err)
    return {"max_mean_error_sd": float(mean_err.max()), "mean_mean_error_sd": float(mean_err.mean()),
            "mean_sd_ratio_error": float(sd_err.mean()), "max_sd_ratio_error": float(sd_err.max())}


def compare_to_reference(model, result, ref: dict, num_draws: int = 100_000) -> dict:
    """`errors_from_draws` for an `aj.fit` result (constrained draws)."""
    draws = jax.device_get(result.sample(jax.random.key(1), num_draws))
    return errors_from_draws(draws, ref)


def make_reference(chains: int = 4, warmup: int = 1000, draws: int = 2000, seed: int = 0) -> dict:
    from benchmarks import make_references
    from benchmarks.suite import SuiteModel

    jax.config.update("jax_enable_x64", True)
    model = build_births_grouped()
    sm = SuiteModel(numpyro_model, numpyro_args(model),
                    f"US births 1969-88, {ROWS} seeded state-days (seed {SEED}): grouped Poisson, state varying "
                    "intercept (centred, tau ~ HalfNormal(1)) + standardised weekday and month dummies (K = 70); "
                    "built by benchmarks/grouped_births.py")
    make_references.DERIVED[NAME] = (numpyro_model_totals, _u_from_totals,
                                     "NUTS on a_g = intercept + u_g, then u = a - intercept")
    ref = make_references.run_nuts(NAME, sm, chains=chains, warmup=warmup, draws=draws, seed=seed)
    with open(REFERENCE, "w") as f:
        json.dump(ref, f, indent=1)
    print(f"{NAME}: max R-hat {ref['max_rhat']:.4f}, min ESS {ref['min_ess']:.0f}, "
          f"{ref['divergences']} divergences, {ref['seconds']:.0f} s -> {REFERENCE}")
    return ref


def _svi(model, guide_name: str, num_steps: int = 10_000):
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO, autoguide

    guide = getattr(autoguide, guide_name)(numpyro_model)
    svi = SVI(numpyro_model, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
    t0 = time.perf_counter()
    out = svi.run(jax.random.key(0), num_steps, *numpyro_args(model), progress_bar=False)
    jax.block_until_ready(out.params)
    seconds = time.perf_counter() - t0
    draws = guide.sample_posterior(jax.random.key(1), out.params, sample_shape=(100_000,))
    return seconds, {k: np.asarray(v) for k, v in draws.items() if k in ("intercept", "beta", "u", "tau")}


def compare(repeats: int = 2) -> list[dict]:
    ref = json.load(open(REFERENCE))
    model = build_births_grouped()
    rows = []
    for family in ("fullrank", "meanfield"):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = aj.fit(model, key=jax.random.key(0), family=family, progress=False, diagnostics=False)
            jax.block_until_ready(res.params)
            times.append(time.perf_counter() - t0)
        rows.append({"method": f"aj.fit auto ({res.method}, {family})", "first s": times[0],
                     "later s": min(times[1:]), "steps": res.report.num_steps,
                     **compare_to_reference(model, res, ref)})
    for guide in ("AutoMultivariateNormal", "AutoNormal"):
        times = []
        for _ in range(repeats):
            seconds, draws = _svi(model, guide)
            times.append(seconds)
        rows.append({"method": f"numpyro svi.run {guide} 10k", "first s": times[0], "later s": min(times[1:]),
                     "steps": 10_000, **errors_from_draws(draws, ref)})
    for r in rows:
        print(f"{r['method']:48s} first {r['first s']:7.2f} s  later {r['later s']:7.2f} s  steps {r['steps']:6d}  "
              f"mean err max {r['max_mean_error_sd']:.3f} / mean {r['mean_mean_error_sd']:.3f} sd  "
              f"sd ratio err mean {r['mean_sd_ratio_error']:.3f} / max {r['max_sd_ratio_error']:.3f}", flush=True)
    return rows


def scaling(n: int = 100_000, d: int = 10, g: int = 100, repeats: int = 2) -> list[dict]:
    """Time to answer of `aj.fit` (auto -> glm_grouped) on simulated data: N rows, D features, G groups."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    group = rng.integers(0, g, n)
    eta = 0.2 + x @ rng.normal(0, 0.3, d) + rng.normal(0, 0.5, g)[group]
    models = {"logistic": aj.models.grouped_logistic_regression(
                  x, (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float), group=group),
              "poisson": aj.models.grouped_poisson_regression(x, rng.poisson(np.exp(eta)), group=group)}
    rows = []
    for kind, model in models.items():
        for family in ("fullrank", "meanfield"):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                res = aj.fit(model, key=jax.random.key(0), family=family, progress=False, diagnostics=False)
                jax.block_until_ready(res.params)
                times.append(time.perf_counter() - t0)
            rows.append({"kind": kind, "family": family, "first s": times[0], "later s": min(times[1:]),
                         "steps": res.report.num_steps, "converged": res.report.converged})
            print(f"{kind:9s} {family:9s} N={n} D={d} G={g} (K={model.dim}): first {times[0]:6.2f} s, "
                  f"later {min(times[1:]):6.3f} s, {res.report.num_steps} passes, converged={res.report.converged}",
                  flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", action="store_true", help="compute and store the NUTS reference")
    parser.add_argument("--scaling", action="store_true", help="simulated N = 1e5, D = 10, G = 100 timings instead")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if args.reference:
        make_reference()
    elif args.scaling:
        scaling(repeats=args.repeats)
    else:
        compare(args.repeats)


if __name__ == "__main__":
    main()
