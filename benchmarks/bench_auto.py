"""Candidate default pipelines on the accuracy suite, against NUTS and the full-rank family limit.

This is the measurement behind `aj.fit`'s defaults (`family="auto"`, `method="auto"`, the policy
in `advi_jax.run.choose`). For every suite posterior and every candidate, in one process:

* against the NUTS reference (`benchmarks/references/<model>.json`): max |Δmean| / sd and the
  median |log sd ratio| over the scalar parameters (constrained space, `NUM_DRAWS` antithetic
  draws of q);
* against the stored full-rank family limit (`benchmarks/references/family_limit/`, the
  full-rank Gaussian's own optimum): max |mean_q - mean_limit| / sd_NUTS, the median
  |log(sd_q / sd_limit)|, and ELBO(q) - ELBO(limit) (the limit's ELBO is the better optimum,
  so a gap well below -0.1 nats means the fit has not reached it);
* k-hat, gradient evaluations (the start's included), wall time of the first call (compiles
  included) and of a second call with another key (caches warm).

Candidates are `aj.fit` calls (`CANDIDATES`, selected with `--candidates`); the peers are NumPyro's
`SVI(AutoMultivariateNormal).run` (Adam 1e-2 with advi_jax's cosine decay, `--svi-steps` steps)
and Blackjax's `pathfinder.approximate` (its default maxiter=30), run in the same process.

The machine these numbers come from is a shared 2-core box: wall times are noisy (compare
columns of one run, not runs).

Each candidate's `DiagnosticWarning`s are recorded ("warned": k-hat, cap, halving), so a miss of
the family limit (more than 0.05 sd) can be told from a silent one. `--seeds 0,1,2,3,4` repeats
every candidate over seeds (the default's stopping rule is random, a miss at one seed may not be
at another); `--no-second` skips the warm-cache timing call when only accuracy is wanted.
Experiments: `--stop` overrides fields of the default's `AutoStop`, `--draws` its draws per step (same
gradient cap), and `--worst N` prints the N parameters furthest from the family limit.

Usage:
  python -m benchmarks.bench_auto --models eight_schools_noncentered,neals_funnel --candidates auto,svi
  python -m benchmarks.bench_auto --models radon_noncentered --candidates auto --seeds 0,1,2,3,4 --no-second
  python -m benchmarks.bench_auto --models reg_horseshoe --candidates auto --no-second --draws 32 --worst 5
  python -m benchmarks.bench_auto --out results/bench_auto.json      # every model, every candidate
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import advi_jax as aj  # noqa: E402
from benchmarks.accuracy import compare  # noqa: E402
from benchmarks.common import machine, markdown_table, versions, write_json  # noqa: E402
from benchmarks.family_limit import load_family_limit  # noqa: E402
from benchmarks.make_references import load_reference  # noqa: E402
from benchmarks.suite import MODELS, available_models, flatten_draws  # noqa: E402

NUM_DRAWS = 32768
"""Draws of q per comparison, in antithetic pairs (zeta, 2 mean - zeta): the Monte Carlo error of
the means is then zero for parameters with an affine bijector and small for the others, so that
the comparison's own noise (about 0.006 sd from the family limit's 32768 draws) stays well under
the 0.05 sd tolerance."""

# name -> aj.fit keyword arguments (progress=False, key= are added).
CANDIDATES: dict[str, dict] = {
    "auto": {},
    "advi fr laplace 1000x4": dict(family="fullrank", method="advi", num_steps=1000, num_samples=4, init="laplace"),
    "advi fr pathfinder 500x8": dict(family="fullrank", method="advi", num_steps=500, num_samples=8,
                                     init="pathfinder"),
    "advi fr pathfinder 1000x4": dict(family="fullrank", method="advi", num_steps=1000, num_samples=4,
                                      init="pathfinder"),
    "advi fr pathfinder lr0.05 500x8": dict(family="fullrank", method="advi", num_steps=500, num_samples=8,
                                           init="pathfinder", learning_rate=0.05),
    "advi fr pathfinder stl lr0.05 500x8": dict(family="fullrank", method="advi", num_steps=500, num_samples=8,
                                               init="pathfinder", learning_rate=0.05, estimator="stl"),
    "advi fr pathfinder stl lr0.05 1000x4": dict(family="fullrank", method="advi", num_steps=1000, num_samples=4,
                                                init="pathfinder", learning_rate=0.05, estimator="stl"),
    "advi fr bam stl 300x8": dict(family="fullrank", method="advi", num_steps=300, num_samples=8, init="bam",
                                  estimator="stl"),
    "advi fr bam stl lr0.02 300x8": dict(family="fullrank", method="advi", num_steps=300, num_samples=8,
                                         init="bam", estimator="stl", learning_rate=0.02),
    "advi fr bam stl lr0.05 300x8": dict(family="fullrank", method="advi", num_steps=300, num_samples=8,
                                         init="bam", estimator="stl", learning_rate=0.05),
    "advi fr bam 300x8": dict(family="fullrank", method="advi", num_steps=300, num_samples=8, init="bam"),
    "bam pathfinder 100x16": dict(family="fullrank", method="bam", num_steps=100, init="pathfinder"),
    "advi fr pathfinder stl 500x8": dict(family="fullrank", method="advi", num_steps=500, num_samples=8,
                                         init="pathfinder", estimator="stl"),
    "bam pathfinder 200x16": dict(family="fullrank", method="bam", num_steps=200, init="pathfinder"),
    "pathfinder 4 paths": dict(family="fullrank", method="pathfinder", options={"num_paths": 4}),
    "advi mf (old default)": dict(family="meanfield", method="advi"),
    # The default with its averaged ADVI's natural-gradient preconditioner at step rho (`_stop`:
    # fields of `AUTO_ADVI.stop` for this candidate; `advi_jax.vi._natural`).
    "auto natural 0.02": dict(_stop=dict(preconditioner="natural", learning_rate=0.02)),
    "auto natural 0.05": dict(_stop=dict(preconditioner="natural", learning_rate=0.05)),
    "auto natural 0.1": dict(_stop=dict(preconditioner="natural", learning_rate=0.1)),
    "auto adam": dict(_stop=dict(preconditioner="adam", learning_rate=0.01)),
    # The default with / without the quadratic control variate of the natural step's mean direction
    # (`AutoStop.control_rate`, `advi_jax.vi._natural.square_control`; hiercost).
    "auto cv 0.002": dict(_stop=dict(control_rate=0.002)),
    "auto cv 0.001": dict(_stop=dict(control_rate=0.001)),
    "auto no cv": dict(_stop=dict(control_rate=0.0)),
    # The default with the transit rule: the step grows while the first phase drifts far and
    # significantly after 2,000 steps (`AutoStop.transit_growth`; transit).
    "auto transit": dict(_stop=dict(transit_growth=2.0)),
    "auto transit late": dict(_stop=dict(transit_growth=2.0, transit_after=4000)),
    "auto transit strict": dict(_stop=dict(transit_growth=2.0, transit_drift=0.3)),
}
PEERS = ("svi", "blackjax pathfinder", "blackjax fullrank", "blackjax meanfield")
BLACKJAX_VI_STEPS = 2000
"""Steps of Blackjax's `fullrank_vi` / `meanfield_vi` peers (8 STL draws each, advi_jax's default Adam
schedule, from its own N(0, I) start): 16,000 gradients, the order of the default's budget on the hard
posteriors."""


def against_limit(draws: dict, limit: dict, reference: dict) -> dict:
    """Mean error in NUTS sds and log sd ratio against the family limit's moments."""
    mean_err, log_sd = [], []
    for label, ref in reference["params"].items():
        if not ref["sd"] > 1e-8 or label not in limit["params"]:
            continue
        x = np.asarray(draws[label], np.float64)
        lim = limit["params"][label]
        mean_err.append(abs(x.mean() - lim["mean"]) / ref["sd"])
        log_sd.append(abs(np.log(x.std() / lim["sd"])))
    return {"limit max|dmean|/sd": float(np.max(mean_err)), "limit med|log sd|": float(np.median(log_sd))}


def worst_labels(draws: dict, limit: dict, reference: dict, n: int) -> list[tuple[str, float, float]]:
    """The `n` labels furthest from the family limit's means: (label, signed dmean / sd_NUTS, log sd ratio)."""
    rows = []
    for label, ref in reference["params"].items():
        if not ref["sd"] > 1e-8 or label not in limit["params"]:
            continue
        x = np.asarray(draws[label], np.float64)
        lim = limit["params"][label]
        rows.append((label, (x.mean() - lim["mean"]) / ref["sd"], float(np.log(x.std() / lim["sd"]))))
    return sorted(rows, key=lambda r: -abs(r[1]))[:n]


def antithetic(zeta, mean):
    """(n, K) draws of a Gaussian with the given mean -> (2n, K): the draws and their reflections."""
    return jnp.concatenate([zeta, 2.0 * mean[None, :] - zeta], axis=0)


def elbo_of(model, zeta: np.ndarray, log_q: np.ndarray) -> float:
    log_p = np.asarray(jax.vmap(model.log_density)(jnp.asarray(zeta)), np.float64)
    gap = log_p - np.asarray(log_q, np.float64)
    return float(np.mean(gap[np.isfinite(gap)]))


def warned_why(caught) -> str:
    """The fit's `DiagnosticWarning`s in a word each: "k-hat", "cap", "halving", or "other"."""
    why = []
    for w in caught:
        if not issubclass(w.category, aj.DiagnosticWarning):
            continue
        text = str(w.message)
        word = ("k-hat" if text.startswith("PSIS k-hat") else "cap" if "within its cap" in text
                else "halving" if "halving ADVI's step size" in text else "other")
        if word not in why:
            why.append(word)
    return ",".join(why)


def run_fit(model, kwargs: dict, seed: int, second_call: bool = True) -> dict:
    """`aj.fit` with `kwargs`; a `_stop` entry overrides fields of the default's `AutoStop` for this call."""
    from advi_jax.run import choose

    kwargs = dict(kwargs)
    fields = kwargs.pop("_stop", None)
    saved = choose.AUTO_ADVI
    if fields:
        choose.AUTO_ADVI = saved._replace(stop=saved.stop._replace(**fields))
    try:
        return _run_fit(model, kwargs, seed, second_call)
    finally:
        choose.AUTO_ADVI = saved


def _run_fit(model, kwargs: dict, seed: int, second_call: bool = True) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tick = time.perf_counter()
        result = aj.fit(model, key=jax.random.key(seed), progress=False, **kwargs)
        first = time.perf_counter() - tick
    second = float("nan")
    if second_call:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tick = time.perf_counter()
            aj.fit(model, key=jax.random.key(seed + 100), progress=False, **kwargs)
            second = time.perf_counter() - tick
    zeta = antithetic(result.sample_unconstrained(jax.random.key(seed + 1), NUM_DRAWS // 2),
                      result.family.mean(result.params))
    log_q = result.family.log_prob(result.params, zeta)
    draws = flatten_draws(jax.device_get(jax.vmap(model.to_constrained)(zeta)))
    return {"draws": draws, "elbo": elbo_of(model, zeta, log_q), "khat": float(result.khat),
            "grad evals": int(result.num_grad_evals), "first s": first, "second s": second,
            "warned": warned_why(caught),
            "ran": (f"{result.report.method}/{result.family.name}/{result.init_method.split(' (')[0]}/"
                    f"{result.num_steps} steps/{result.stop_reason.split(':')[0]}"
                    + (f"/halving moved {float(result.report.extras['auto_stop_change']):.3f}"
                       f" (se {float(result.report.extras.get('auto_stop_change_se', np.nan)):.3f}, means "
                       f"{float(result.report.extras.get('auto_stop_change_mean', np.nan)):.3f})"
                       if int(result.report.extras.get("auto_stop_halvings", 0)) else "")  # no halving: no change
                    + (f"/clipped {int(result.report.extras['auto_stop_clipped_steps'])} steps"
                       if int(result.report.extras.get("auto_stop_clipped_steps", 0)) else "")
                    + (f"/heavy draws {int(result.report.extras['auto_stop_heavy_draws'])}, updates of "
                       f"{int(result.report.extras['auto_stop_update_group'])} steps"
                       if "auto_stop_heavy_draws" in result.report.extras else ""))}


def run_svi(suite_model, model, steps: int, seed: int) -> dict:
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoMultivariateNormal

    from advi_jax.optim import default_optimizer

    def once(key):
        guide = AutoMultivariateNormal(suite_model.fn)
        svi = SVI(suite_model.fn, guide, default_optimizer(0.01, steps), Trace_ELBO())
        out = svi.run(key, steps, *suite_model.args, progress_bar=False)
        return guide, jax.block_until_ready(out.params)

    tick = time.perf_counter()
    guide, params = once(jax.random.key(seed))
    first = time.perf_counter() - tick
    tick = time.perf_counter()
    once(jax.random.key(seed + 100))
    second = time.perf_counter() - tick
    posterior = guide.get_posterior(params)
    latent = antithetic(posterior.sample(jax.random.key(seed + 2), (NUM_DRAWS // 2,)), posterior.mean)
    constrained = jax.vmap(lambda z: guide._unpack_and_constrain(z, params))(latent)
    draws = flatten_draws(jax.device_get({k: v for k, v in constrained.items() if k in set(model.names)}))
    log_q_latent = posterior.log_prob(latent)
    # ELBO and k-hat in NumPyro's own unconstrained space (its potential includes its Jacobians;
    # the ELBO is the same in any parameterisation).
    from numpyro.infer.util import potential_energy
    log_p = jax.vmap(lambda z: -potential_energy(suite_model.fn, suite_model.args, {}, guide._unpack_latent(z)))(latent)
    gap = np.asarray(log_p - log_q_latent, np.float64)
    return {"draws": draws, "elbo": float(np.mean(gap[np.isfinite(gap)])), "khat": float(aj.psis(gap).khat),
            "grad evals": steps, "first s": first, "second s": second, "ran": f"svi.run AutoMVN {steps}"}


def run_blackjax_pathfinder(model, seed: int) -> dict:
    from blackjax.vi import pathfinder as bj

    @jax.jit
    def go(key, x0):
        state, _ = bj.approximate(key, model.log_density, x0)
        draws, log_q = bj.sample(jax.random.fold_in(key, 1), state, NUM_DRAWS)
        return draws, log_q

    tick = time.perf_counter()
    zeta, log_q = jax.block_until_ready(go(jax.random.key(seed), jnp.zeros(model.dim)))
    first = time.perf_counter() - tick
    tick = time.perf_counter()
    jax.block_until_ready(go(jax.random.key(seed + 100), jnp.zeros(model.dim)))
    second = time.perf_counter() - tick
    log_p = np.asarray(jax.vmap(model.log_density)(zeta), np.float64)
    gap = log_p - np.asarray(log_q, np.float64)
    draws = flatten_draws(jax.device_get(jax.vmap(model.to_constrained)(zeta)))
    return {"draws": draws, "elbo": float(np.mean(gap[np.isfinite(gap)])), "khat": float(aj.psis(gap).khat),
            "grad evals": -1, "first s": first, "second s": second, "ran": "blackjax pathfinder maxiter=30"}


def run_blackjax_vi(model, seed: int, kind: str, steps: int = BLACKJAX_VI_STEPS, draws: int = 8) -> dict:
    import blackjax
    from blackjax.vi.fullrank_vi import _unflatten_cholesky

    from advi_jax.optim import default_optimizer

    k = model.dim
    algorithm = (blackjax.fullrank_vi if kind == "fullrank" else blackjax.meanfield_vi)(
        model.log_density, default_optimizer(0.01, steps), num_samples=draws)

    @jax.jit
    def go(key):
        state = algorithm.init(jnp.zeros(k))

        def body(st, i):
            return algorithm.step(jax.random.fold_in(key, i), st)[0], None

        state, _ = jax.lax.scan(body, state, jnp.arange(steps))
        if kind == "fullrank":
            chol = _unflatten_cholesky(state.chol_params, k)
        else:
            chol = jnp.diag(jnp.exp(state.rho))
        return state.mu, chol

    tick = time.perf_counter()
    mu, chol = jax.block_until_ready(go(jax.random.key(seed)))
    first = time.perf_counter() - tick
    tick = time.perf_counter()
    jax.block_until_ready(go(jax.random.key(seed + 100)))
    second = time.perf_counter() - tick
    fam = aj.FullRankGaussian()
    params = fam.params_type(mu, jnp.log(jnp.expm1(jnp.diagonal(chol))), chol)
    zeta = antithetic(fam.sample(params, jax.random.key(seed + 2), NUM_DRAWS // 2), mu)
    log_q = fam.log_prob(params, zeta)
    log_p = np.asarray(jax.vmap(model.log_density)(zeta), np.float64)
    gap = log_p - np.asarray(log_q, np.float64)
    draws_c = flatten_draws(jax.device_get(jax.vmap(model.to_constrained)(zeta)))
    return {"draws": draws_c, "elbo": float(np.mean(gap[np.isfinite(gap)])), "khat": float(aj.psis(gap).khat),
            "grad evals": steps * draws, "first s": first, "second s": second,
            "ran": f"blackjax {kind}_vi {steps} x {draws}"}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--candidates", default=",".join(list(CANDIDATES) + list(PEERS)))
    parser.add_argument("--svi-steps", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (overrides --seed), e.g. 0,1,2,3,4")
    parser.add_argument("--no-second", action="store_true",
                        help="skip the second (warm-cache) call of each aj.fit candidate (accuracy runs)")
    parser.add_argument("--stop", default="", help="override fields of the default's AutoStop for this run, "
                        "e.g. max_halvings=2,min_batches_halved=8 (experiments)")
    parser.add_argument("--draws", type=int, default=None,
                        help="the default's ADVI draws per step (AUTO_ADVI.num_samples; same gradient cap; experiments)")
    parser.add_argument("--worst", type=int, default=0,
                        help="also print the N labels furthest from the family limit (dmean / sd_NUTS, log sd ratio)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    wanted = [c for c in args.candidates.split(",") if c]
    unknown = sorted(set(wanted) - set(CANDIDATES) - set(PEERS))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; choose from {list(CANDIDATES) + list(PEERS)}")
    if args.stop:
        from advi_jax.run import choose

        fields = {}
        for item in args.stop.split(","):
            key, value = item.split("=")
            default = getattr(choose.AUTO_ADVI.stop, key)
            fields[key] = type(default)(float(value)) if not isinstance(default, bool) else value == "True"
        choose.AUTO_ADVI = choose.AUTO_ADVI._replace(stop=choose.AUTO_ADVI.stop._replace(**fields))
        print(f"AutoStop: {choose.AUTO_ADVI.stop}", flush=True)
    if args.draws is not None:
        from advi_jax.run import choose

        choose.AUTO_ADVI = choose.AUTO_ADVI._replace(num_samples=args.draws)
        print(f"ADVI draws per step: {args.draws}", flush=True)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    rows = []
    for name, suite_model in available_models(args.models.split(",") if args.models else None).items():
        reference, limit = load_reference(name), load_family_limit(name)
        model = aj.from_numpyro(suite_model.fn, *suite_model.args)
        for cand, seed in ((c, s) for c in wanted for s in seeds):
            try:
                if cand == "svi":
                    out = run_svi(suite_model, model, args.svi_steps, seed)
                elif cand == "blackjax pathfinder":
                    out = run_blackjax_pathfinder(model, seed)
                elif cand in ("blackjax fullrank", "blackjax meanfield"):
                    out = run_blackjax_vi(model, seed, cand.split()[1])
                else:
                    out = run_fit(model, CANDIDATES[cand], seed, second_call=not args.no_second)
            except Exception as err:  # noqa: BLE001 - one failing candidate must not end the run
                print(f"{name:26s} {cand:30s} ERROR {type(err).__name__}: {str(err)[:200]}", flush=True)
                rows.append({"model": name, "K": model.dim, "candidate": cand, "seed": seed, "error": str(err)[:300]})
                continue
            row = {"model": name, "K": model.dim, "candidate": cand, "seed": seed, "ran": out["ran"],
                   "warned": out.get("warned", "")}
            row.update(compare(out["draws"], reference))
            if limit is not None:
                row.update(against_limit(out["draws"], limit, reference))
                row["elbo - limit"] = out["elbo"] - limit["elbo"]
            row.update({k: out[k] for k in ("khat", "grad evals", "first s", "second s")})
            rows.append(row)
            lim = (f"limit {row['limit max|dmean|/sd']:6.3f} {row['limit med|log sd|']:6.3f} "
                   f"dELBO {row['elbo - limit']:8.3f}" if limit is not None else "limit   (none)")
            print(f"{name:26s} {cand:30s} s{seed} nuts {row['max |mean err| / sd']:6.3f} "
                  f"{row['med |log sd ratio|']:6.3f} {lim} khat {row['khat']:5.2f} grads {row['grad evals']:6d} "
                  f"{row['first s']:6.2f}s/{row['second s']:5.2f}s warned {row['warned'] or '-'}  [{row['ran']}]",
                  flush=True)
            if args.worst and limit is not None:
                for label, dmean, log_sd in worst_labels(out["draws"], limit, reference, args.worst):
                    print(f"    {label:24s} dmean / sd_NUTS {dmean:+.3f}  log sd ratio {log_sd:+.3f}", flush=True)
    if args.out:
        cols = ["model", "K", "candidate", "seed", "max |mean err| / sd", "med |log sd ratio|", "limit max|dmean|/sd",
                "limit med|log sd|", "elbo - limit", "khat", "grad evals", "first s", "second s", "warned", "ran"]
        write_json(args.out, {"rows": rows, "versions": versions(), "machine": machine(),
                              "markdown": markdown_table(rows, cols)})
    return rows


if __name__ == "__main__":
    main()
