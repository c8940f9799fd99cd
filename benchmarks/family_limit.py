"""Family limits of the accuracy suite: the full-rank Gaussian ADVI optimum, by a very long many-draw run.

A fit's error against NUTS has two parts: the optimiser's (how far the fit is from the best member
of its family) and the family's (how far the best full-rank Gaussian in the unconstrained space is
from the posterior). This script estimates the best member: `aj.fit(family="fullrank")` from the
Laplace-whitened start (`init="auto"`, or zero with `--init zero`; `--keep-best` keeps the higher
ELBO of several runs) with `--steps` steps of `--draws` draws each (the gradient
noise is 1/draws of a one-draw run) and advi_jax's default Adam with cosine decay to the end, in
float64. It then stores, per scalar parameter (constrained space, the labels of the NUTS
reference), the mean and sd over `--moment-draws` draws of q, with the settings, the ELBO
(mean of log p - log q over those draws, with its standard error and the count of draws where log p
was not finite), k-hat and the wall time, in
`benchmarks/references/family_limit/<model>.json`.

The moments carry Monte Carlo error sd/sqrt(moment-draws) (0.006 sd at the default 32768), well
under the 0.05 sd tolerance they are used for. How converged the run is, is recorded: the ELBO of
the last 10% of steps against the previous 10% (`elbo_drift`).

`--averaged` fits instead with the default fit's averaged, self-stopping ADVI
(`advi_jax.vi.advi.AutoStop`) at tight tolerances (MCSE < 0.004 sd of q, drift < 0.02, distance
< 0.01), `--draws` draws per step and at most `--steps` steps, from the default Pathfinder -> BaM
start: the average of constant-step iterates, not the last iterate of a decayed run (whose end
drift is partly the decay's noise reduction); its stop reason says whether the rule passed.

`--newton` (an optimiser independent of ADVI, to check a stored limit or replace it) solves the
full-rank Gaussian family's own stationarity conditions, E_q[grad log p] = 0 and
-E_q[Hessian log p] = Sigma^-1 (Opper & Archambeau 2009), by the Gaussian variational Newton
fixed-point iteration (the natural-gradient step of unit length; Khan & Rue's Bayesian learning
rule): from `--newton-draws` fresh antithetic draws z = mu + L eps per iteration, with the
Hessian's expectation from gradients alone by Stein's lemma, E_q[Hessian] = E_q[grad eps^T] L^-1
(E_q[grad eps^T] estimated by regressing the gradients on the draws, exact for a Gaussian target),

    Lambda <- (1 - rho) Lambda + rho sym(-E_q[grad eps^T] L^-1),  mu <- mu + rho Lambda^-1 E_q[grad],

damped (rho = 0.5: an undamped step puts the precision's whole Monte Carlo error, about
sqrt(K / draws) in q's units, into every iterate, and the mean follows it) for `--newton-iters`
iterations from the default fit's q, with fresh draws each time; the mean of the later half (of
mu and of the precision) is the limit. Its Monte Carlo error (`mean_mcse_max` / `_median`, over
the unconstrained coordinates, in sd of q) is the spread of those iterates over sqrt(their
count) times sqrt((2 - rho) / rho) (the damping's AR(1) autocorrelation 1 - rho). The iteration
updates mean and precision each given the other, so along a direction where they are coupled it
converges only linearly (radon's log sigma_a: ~0.9 per iteration, flat after ~40 iterations;
16-32 iterations left 0.03-0.05 sd of error that this MCSE does not see): use >= 96 iterations
for hierarchical posteriors and two `--seed`s (different starts and draws) to confirm. No
Adam, no step size, no Monte Carlo bias from a constant step (the averaged ADVI's iterates carry
one of order the step size). Where -E_q[Hessian] is not positive definite (far from a mode of a
non-log-concave target, or heavy-tailed gradients) the iteration is skipped (mean and precision
kept; moving the mean by the old covariance there diverged on stochastic_volatility).
`--newton --fixed-draws` solves the same conditions with ONE set of `--newton-draws` antithetic
draws for every iteration (common random numbers): the map is deterministic, so its fixed point
(the sample-average conditions' solution) is found to `--tol` by Anderson acceleration (mixing
`--rho`) in 10-20 iterations where the damped fresh-draw iteration needs ~100; its error is the
one draw set's Monte Carlo error (run two `--seed`s, or compare on fresh draws). Each Newton limit
stores its `stationarity` residuals on the `--moment-draws` summary draws (the mean's Newton step
in sd of q, and the largest |eigenvalue| of L^T (-E_q[Hessian]) L - I; both carry that draw
set's own noise, ~0.01 and ~sqrt(K / draws) at 32,768 draws). `--save-q FILE.npz` keeps a limit's
q (mu, L; unconstrained), `--start FILE.npz` starts Newton from it, and `--compare A.npz,B.npz`
evaluates saved q's on one common set of `--moment-draws` draws: ELBOs, the pairwise ELBO
difference with the standard error of the per-draw differences (a 0.02 sd shift of one mean
costs ~2e-4 nats, resolvable at ~10^5 draws), the residuals and the pairwise distances.
Gradients go through the fastest `lax.map` batch for the model (`_grad_batch`), and through a
mathematically identical, faster form of the log joint where one exists (`FAST_EQUIVALENTS`,
checked against the suite's model before use); the stored moments and ELBOs are always those of
the suite's own model.
`--check` prints the new limit's distance from the stored one (max |dmean| / sd of NUTS and of
the limit, as `benchmarks.bench_auto` measures) and does not replace it; `--out-dir` writes the
new limits to another folder.

Usage:
  python -m benchmarks.family_limit --models radon_noncentered --newton --seed 5 --check
  python -m benchmarks.family_limit --models radon_noncentered --newton --seed 4      # stores it
  python -m benchmarks.family_limit --models births_lognormal_ts --newton --fixed-draws --newton-draws 262144 \
      --tol 1e-4 --newton-iters 40 --seed 12 --save-q /tmp/b12.npz
  python -m benchmarks.family_limit --models births_lognormal_ts --compare /tmp/b4.npz,/tmp/b12.npz \
      --moment-draws 131072 --seed 11
  python -m benchmarks.family_limit --models radon_noncentered,neals_funnel
  python -m benchmarks.family_limit --models radon_centered --averaged --draws 16 --steps 20000 --keep-best
  python -m benchmarks.family_limit --steps 50000 --draws 32           # every model
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import advi_jax as aj  # noqa: E402
from benchmarks.common import versions  # noqa: E402
from benchmarks.family_newton import (CHUNK, FAST_EQUIVALENTS, _antithetic,  # noqa: E402,F401
                                      _gaussian_draws, _grad_batch, limit_model, newton_limit, stationarity)
from benchmarks.suite import SuiteModel, available_models, flatten_draws  # noqa: E402

FAMILY_LIMIT_DIR = os.path.join(os.path.dirname(__file__), "references", "family_limit")


def family_limit_path(name: str) -> str:
    return os.path.join(FAMILY_LIMIT_DIR, f"{name}.json")


def load_family_limit(name: str) -> dict | None:
    """The stored family limit of `name`, or None when it has not been computed."""
    path = family_limit_path(name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


AVERAGED_STOP = dict(tol_mcse=0.004, tol_drift=0.02, tol_distance=0.01)
"""`--averaged`: the default fit's stopping rule at tolerances 3-5x tighter than the default's."""


def _fit_averaged(model, seed: int, steps: int, draws: int):
    """The default fit's averaged ADVI with `AVERAGED_STOP`, `draws` per step, at most `steps` steps."""
    from advi_jax.run import choose
    from advi_jax.vi.advi import AutoStop

    saved = choose.AUTO_ADVI
    choose.AUTO_ADVI = saved._replace(num_samples=draws, max_grad_evals=steps * draws,
                                      stop=AutoStop(**AVERAGED_STOP))
    try:
        return aj.fit(model, key=jax.random.key(seed), family="fullrank", progress=False, num_diagnostic_draws=4096)
    finally:
        choose.AUTO_ADVI = saved


def _moments(model, u, log_q) -> dict:
    """ELBO (log p - log q over the draws u), k-hat and the constrained means and sds."""
    from advi_jax.diagnostics import psis

    # In chunks: a log density with a T x T intermediate (stochastic volatility's AR filter) over
    # 32768 draws at once needs tens of GB.
    log_p = jax.lax.map(model.log_density, u, batch_size=CHUNK)
    gap = np.asarray(log_p - log_q, np.float64)
    finite = np.isfinite(gap)  # log p can overflow far in q's tails; counted, and left out of the ELBO
    khat = float(psis(np.where(finite, gap, -np.inf)).khat)
    gap = gap[finite]
    constrained = jax.device_get(jax.lax.map(model.to_constrained, u, batch_size=CHUNK))
    params = {}
    for label, x in flatten_draws(constrained).items():
        x = np.asarray(x, np.float64)
        params[label] = {"mean": float(x.mean()), "sd": float(x.std())}
    return {"elbo": float(gap.mean()), "elbo_se": float(gap.std() / np.sqrt(gap.size)),
            "elbo_nonfinite_draws": int((~finite).sum()), "khat": khat, "params": params}


def compute_newton_limit(name: str, suite_model: SuiteModel, *, iters: int, draws: int, moment_draws: int,
                         seed: int, fixed_draws: bool = False, rho: float = 0.5, tol: float = 0.0,
                         start: tuple | None = None, start_note: str = "the default aj.fit") -> tuple[dict, tuple]:
    """`--newton`: the family limit by the variational Newton fixed point, summarised like the others.

    Returns (the summary, (mu, L) of q in the unconstrained space).
    """
    model, fast = limit_model(name, suite_model)
    batch = _grad_batch(fast)
    tick = time.perf_counter()
    mu, L, info = newton_limit(fast, seed, iters, draws, start=start, fixed_draws=fixed_draws, rho=rho, tol=tol,
                               batch=batch)
    seconds = time.perf_counter() - tick
    eps = _antithetic(jax.random.key(seed + 1), moment_draws, mu.shape[0], mu.dtype)
    out = _moments(model, *_gaussian_draws(mu, L, eps))
    residual = stationarity(fast, mu, L, eps, batch)
    mcse = info["mean_mcse"]
    start_grads = int(getattr(info["start"], "num_grad_evals", 0))
    run = info["iterations"]
    return {
        "model": name,
        "note": suite_model.note,
        "method": ("advi_jax full-rank Gaussian, variational Newton fixed point (family_limit --newton: "
                   "E_q[grad] = 0, -E_q[Hessian] = Sigma^-1, Stein's-lemma Hessian), float64"
                   + (", one fixed draw set (common random numbers)" if fixed_draws else "")),
        "settings": {"family": "fullrank", "newton_iters": iters, "newton_draws": draws, "num_samples": draws,
                     "fixed_draws": fixed_draws, "rho": rho, "tol": tol, "moment_draws": moment_draws,
                     "seed": seed, "init": start_note,
                     "gradient_model": FAST_EQUIVALENTS[name].__name__ if name in FAST_EQUIVALENTS else "the suite's"},
        "dim": int(model.dim),
        **{k: out[k] for k in ("elbo", "elbo_se", "elbo_nonfinite_draws", "khat")},
        "mean_mcse_max": float(np.max(mcse)) if mcse is not None else None,
        "mean_mcse_median": float(np.median(mcse)) if mcse is not None else None,
        "stationarity": {**residual, "draws": moment_draws, "seed": seed + 1},
        "start_grad_evals": start_grads,
        "num_grad_evals": start_grads + run * draws,
        "stop_reason": (f"{run} iterations on one draw set (tol {tol})" if fixed_draws else
                        f"{iters} iterations, the later {iters - iters // 2} averaged"),
        "seconds": seconds,
        "versions": versions(),
        "params": out["params"],
    }, (mu, L)


def compare_candidates(name: str, suite_model: SuiteModel, paths: list[str], draws: int, seed: int) -> None:
    """Print each saved q's ELBO on ONE set of antithetic draws (common random numbers: the pairwise
    ELBO difference's standard error is that of the per-draw differences), its stationarity residuals,
    and the pairwise distances in the constrained moments (max |dmean| / sd_NUTS, max |log sd ratio|)."""
    import jax.numpy as jnp

    from benchmarks.make_references import load_reference

    model, fast = limit_model(name, suite_model)
    batch = _grad_batch(fast)
    reference = load_reference(name)
    rows = {}
    for path in paths:
        q = np.load(path)
        mu, L = jnp.asarray(q["mu"], jnp.float64), jnp.asarray(q["L"], jnp.float64)
        eps = _antithetic(jax.random.key(seed), draws, mu.shape[0], mu.dtype)
        u, log_q = _gaussian_draws(mu, L, eps)
        gap = np.asarray(jax.lax.map(model.log_density, u, batch_size=CHUNK) - log_q, np.float64)
        rows[path] = {"gap": gap, "moments": _moments(model, u, log_q), "res": stationarity(fast, mu, L, eps, batch)}
        r = rows[path]
        print(f"{path}: ELBO {r['moments']['elbo']:.4f} +- {r['moments']['elbo_se']:.4f}, "
              f"khat {r['moments']['khat']:.2f}, stationarity {r['res']}", flush=True)
    for i, a in enumerate(paths):
        for b in paths[i + 1:]:
            d = rows[a]["gap"] - rows[b]["gap"]
            d = d[np.isfinite(d)]
            pa, pb = rows[a]["moments"]["params"], rows[b]["moments"]["params"]
            log_sd = max(abs(np.log(pa[k]["sd"] / pb[k]["sd"])) for k in pa if pa[k]["sd"] > 1e-8)
            print(f"{a} - {b}: ELBO {d.mean():+.5f} +- {d.std() / np.sqrt(d.size):.5f}; "
                  f"{limit_distance(rows[a]['moments'], rows[b]['moments'], reference)}, "
                  f"max |log sd ratio| {log_sd:.4f}", flush=True)


def limit_distance(new: dict, old: dict, reference: dict | None) -> dict:
    """max |mean_new - mean_old| over the scalars, in sd of NUTS (as bench_auto) and of the old limit."""
    by_nuts, by_limit, worst = [], [], None
    for label, lim in old["params"].items():
        if label not in new["params"] or not lim["sd"] > 1e-8:
            continue
        d = abs(new["params"][label]["mean"] - lim["mean"])
        by_limit.append(d / lim["sd"])
        if reference is not None and label in reference["params"] and reference["params"][label]["sd"] > 1e-8:
            by_nuts.append(d / reference["params"][label]["sd"])
            if worst is None or by_nuts[-1] > worst[1]:
                worst = (label, by_nuts[-1])
    return {"max|dmean|/sd_nuts": max(by_nuts) if by_nuts else None, "max|dmean|/sd_limit": max(by_limit),
            "worst": worst}


def compute_family_limit(name: str, suite_model: SuiteModel, *, steps: int, draws: int, moment_draws: int,
                         seed: int, init: str = "auto", averaged: bool = False) -> tuple[dict, tuple]:
    """Fit the full-rank family for a long time with many draws per step; summarise q in the constrained space.

    Returns (the summary, (mu, L) of q in the unconstrained space).
    """
    model, fast = limit_model(name, suite_model)  # fitted on the fast equivalent, summarised on the suite's model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-hat is recorded below
        if averaged:
            result = _fit_averaged(fast, seed, steps, draws)
        else:
            result = aj.fit(fast, key=jax.random.key(seed), family="fullrank", num_steps=steps, num_samples=draws,
                            init=None if init == "zero" else init, tol_rel_obj=None, progress=False,
                            num_diagnostic_draws=4096)
    u = result.sample_unconstrained(jax.random.key(seed + 1), moment_draws)
    moments = _moments(model, u, result.family.log_prob(result.params, u))
    trace = np.asarray(result.elbo, np.float64)
    tenth = max(len(trace) // 10, 1)
    return {
        "model": name,
        "note": suite_model.note,
        "method": ("advi_jax full-rank Gaussian, aj.fit's averaged self-stopping ADVI (AutoStop "
                   f"{AVERAGED_STOP}), float64" if averaged else
                   "advi_jax full-rank Gaussian, aj.fit, default Adam + cosine decay, float64"),
        "settings": {"family": "fullrank", "num_steps": steps, "num_samples": draws, "moment_draws": moment_draws,
                     "seed": seed, "init": "bam" if averaged else init, "tol_rel_obj": None, "averaged": averaged},
        "dim": int(model.dim),
        **{k: moments[k] for k in ("elbo", "elbo_se", "elbo_nonfinite_draws")},
        "elbo_drift": (float(np.nanmean(trace[-tenth:]) - np.nanmean(trace[-2 * tenth:-tenth]))
                       if len(trace) >= 2 else None),
        "khat": float(result.khat),
        "num_steps_run": int(result.num_steps),
        "stop_reason": result.stop_reason,
        "seconds": float(result.seconds),
        "versions": versions(),
        "params": moments["params"],
    }, (result.family.mean(result.params), result.family.scale_tril(result.params))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--draws", type=int, default=32, help="draws per step")
    parser.add_argument("--moment-draws", type=int, default=32768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default="auto", choices=("auto", "zero"),
                        help="fit's Laplace-whitened start, or zero in R^K (where the posterior has no mode, e.g. the funnel)")
    parser.add_argument("--averaged", action="store_true",
                        help="the default fit's averaged, self-stopping ADVI at tight tolerances (module docstring)")
    parser.add_argument("--keep-best", action="store_true",
                        help="overwrite a stored family limit only if the new ELBO is higher (the better optimum)")
    parser.add_argument("--skip-existing", action="store_true", help="keep family limits already stored")
    parser.add_argument("--newton", action="store_true",
                        help="the variational Newton fixed point, independent of ADVI (module docstring)")
    parser.add_argument("--newton-iters", type=int, default=96, help="--newton: iterations (the later half averaged)")
    parser.add_argument("--newton-draws", type=int, default=65536, help="--newton: draws per iteration")
    parser.add_argument("--fixed-draws", action="store_true",
                        help="--newton: one draw set for every iteration, stopped at --tol (newton_limit)")
    parser.add_argument("--rho", type=float, default=0.5, help="--newton: damping (1 = undamped)")
    parser.add_argument("--tol", type=float, default=1e-6, help="--newton --fixed-draws: stop when no step exceeds it")
    parser.add_argument("--start", default=None, help="--newton: start from the q saved (--save-q) in this .npz")
    parser.add_argument("--save-q", default=None, help="save the limit's unconstrained q (mu, L) to this .npz")
    parser.add_argument("--compare", default=None,
                        help="comma-separated --save-q files: ELBOs on common draws, residuals, distances")
    parser.add_argument("--out-dir", default=None, help="write the limits here instead of the references")
    parser.add_argument("--check", action="store_true",
                        help="print the distance of the new limit from the stored one; write nothing")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    os.makedirs(FAMILY_LIMIT_DIR, exist_ok=True)
    for name, suite_model in available_models(args.models.split(",") if args.models else None).items():
        if args.skip_existing and os.path.exists(family_limit_path(name)):
            continue
        if args.compare:
            compare_candidates(name, suite_model, args.compare.split(","), args.moment_draws, args.seed)
            continue
        start = time.perf_counter()
        if args.newton:
            q0, note = None, "the default aj.fit"
            if args.start:
                q0, note = tuple(np.load(args.start)[k] for k in ("mu", "L")), f"q of {os.path.basename(args.start)}"
            out, q = compute_newton_limit(name, suite_model, iters=args.newton_iters, draws=args.newton_draws,
                                          moment_draws=args.moment_draws, seed=args.seed,
                                          fixed_draws=args.fixed_draws, rho=args.rho, tol=args.tol,
                                          start=q0, start_note=note)
        else:
            out, q = compute_family_limit(name, suite_model, steps=args.steps, draws=args.draws,
                                          moment_draws=args.moment_draws, seed=args.seed, init=args.init,
                                          averaged=args.averaged)
        if args.save_q:
            np.savez(args.save_q, mu=np.asarray(q[0]), L=np.asarray(q[1]))
        stored = load_family_limit(name)
        if args.out_dir:  # instead of the references (it wrote both before)
            os.makedirs(args.out_dir, exist_ok=True)
            with open(os.path.join(args.out_dir, f"{name}.json"), "w") as f:
                json.dump(out, f, indent=1)
            print(f"{name}: K={out['dim']}, ELBO {out['elbo']:.3f} +- {out['elbo_se']:.3f}, drift "
                  f"{out.get('elbo_drift')}, k-hat {out['khat']:.2f}; written to {args.out_dir}", flush=True)
            if not args.check:
                continue
        if args.check:
            from benchmarks.make_references import load_reference

            dist = limit_distance(out, stored, load_reference(name)) if stored is not None else None
            print(f"{name}: new ELBO {out['elbo']:.3f} +- {out['elbo_se']:.3f} (stored "
                  f"{stored['elbo'] if stored else float('nan'):.3f}), k-hat {out['khat']:.2f}, "
                  f"MCSE of the means max {out.get('mean_mcse_max') or float('nan'):.4f} sd, "
                  f"stationarity {out.get('stationarity')}; "
                  f"from the stored limit: {dist}; {time.perf_counter() - start:.0f} s", flush=True)
            continue
        if args.keep_best and stored is not None and stored["elbo"] >= out["elbo"]:
            print(f"{name}: ELBO {out['elbo']:.3f} not above the stored {stored['elbo']:.3f}; kept the stored one")
            continue
        with open(family_limit_path(name), "w") as f:
            json.dump(out, f, indent=1)
        print(f"{name}: K={out['dim']}, ELBO {out['elbo']:.3f} +- {out['elbo_se']:.3f}, drift {out.get('elbo_drift')}, "
              f"k-hat {out['khat']:.2f}, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
