"""The noise that sets the default's stopping cost: the asymptotic variance of the averaged natural-gradient
iterates, per coordinate, with and without the quadratic control variate (issue 15, `hiercost`).

The default `aj.fit`'s averaged ADVI (`advi_jax.vi._advi_averaged`) stops when the Monte Carlo standard
error (MCSE) of its average is under `AutoStop.tol_mcse` (0.012 sd of q) in every coordinate, so the
steps it needs are ~ sigma^2 / 0.012^2 for the coordinate with the largest asymptotic variance per step
sigma^2 (twice that, as it averages the later half). This script runs the default's start once, then the
natural step (rho 0.02, 4 antithetic draws, no stop, no halving) for `--steps` steps with each
`--control-rates` value (0: no control variate), records q's mean (in sd of q) and log sd in the start's
whitened coordinates after every step, discards `--burn` steps, and estimates sigma^2 per coordinate by
batch means (20 batches). Printed: the largest sigma^2, its coordinate, the steps and gradients it implies
for MCSE 0.012, the five largest, and the sums over the means and over the log sds (less noisy than
any one coordinate's estimate).

`--oracle-draws N` replaces the mean direction (or, with `--oracle factor`, the factor direction) by an
estimate from N extra draws, to tell which direction's noise drives the binding coordinate.

Usage:
  python -m benchmarks.bench_cv_noise --models radon_noncentered --control-rates 0,0.002
  python -m benchmarks.bench_cv_noise --models radon_noncentered --control-rates 0 --oracle mean --oracle-draws 64
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import advi_jax as aj  # noqa: E402
import advi_jax.vi._advi_averaged as averaged  # noqa: E402
from advi_jax.run import choose  # noqa: E402
from advi_jax.run.start import start as resolve_start  # noqa: E402
from advi_jax.vi import _natural  # noqa: E402
from benchmarks.suite import available_models  # noqa: E402


def oracle_step(which: str, draws: int):
    """A `natural_draws` whose mean ("mean") or factor ("factor") direction comes from `draws` extra draws."""

    def step(log_density, loc, scale_tril, key, num_samples, finite_rate, control=None):
        k1, k2 = jax.random.split(key)
        eps = _natural.antithetic_noise(k1, num_samples, loc.shape[-1], loc.dtype)
        big = _natural.antithetic_noise(k2, draws, loc.shape[-1], loc.dtype)
        elbo, u, x, finite = _natural._directions(log_density, loc, scale_tril, eps, True)
        _, u_big, x_big, finite_big = _natural._directions(log_density, loc, scale_tril, big, True)
        mean_dir = jnp.mean(u_big if which == "mean" else u, axis=0)
        x = x_big if which == "factor" else x
        return _natural.NaturalDraws(elbo, finite & finite_big, mean_dir, x,
                                     jnp.zeros((2,) + (loc.shape[-1],) * 2, loc.dtype),
                                     _natural.draw_deviations(u, eps))

    return step


def trace(begun, control_rate: float, steps: int, seed: int, **stop_changes) -> np.ndarray:
    """(steps, 2K) q's mean and log sd after every natural step (whitened coordinates), the default's
    stop settings without its test and halvings (`stop_changes`: more fields of them replaced)."""
    family = aj.FullRankGaussian()
    # without the heavy-draw switch too: these traces are of the 4-draw step itself
    stop = choose.AUTO_ADVI.stop._replace(tol_mcse=-1.0, max_halvings=0, control_rate=control_rate,
                                          **{"heavy_draws": 1, **stop_changes})
    init, step = averaged.advi_averaged(begun.run_model, family, stop=stop, estimator="stl",
                                        num_samples=choose.AUTO_ADVI.num_samples,
                                        init_scale=1.0 if begun.whitening is not None else 0.1)
    key = jax.random.key(1000 + seed)

    @jax.jit
    def run(state):
        def body(s, i):
            new, _ = step(jax.random.fold_in(key, i), s)
            p = new.fit.params
            return new, jnp.concatenate([family.mean(p), 0.5 * jnp.log(family.variance(p))])

        return jax.lax.scan(body, state, jnp.arange(steps))

    return np.asarray(run(init(key, begun.loc))[1], np.float64)


def asymptotic_variance(tr: np.ndarray, burn: int, batches: int = 20) -> np.ndarray:
    """Per coordinate, sigma^2 per step of q's mean (in sd of q) and log sd after `burn` steps (batch means)."""
    k = tr.shape[1] // 2
    x = tr[burn:]
    sd = np.exp(x[:, k:].mean(0))
    s = np.concatenate([x[:, :k] / sd, x[:, k:]], axis=1)
    length = len(s) // batches
    means = s[: length * batches].reshape(batches, length, -1).mean(1)
    return length * means.var(0, ddof=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="radon_noncentered")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--control-rates", default="0,0.002")
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--burn", type=int, default=4000)
    parser.add_argument("--oracle", choices=["mean", "factor"], default=None)
    parser.add_argument("--oracle-draws", type=int, default=64)
    args = parser.parse_args(argv)
    if args.oracle:
        averaged.natural_draws = oracle_step(args.oracle, args.oracle_draws)
    num_samples = choose.AUTO_ADVI.num_samples
    for name, suite_model in available_models(args.models.split(",")).items():
        model = aj.from_numpyro(suite_model.fn, *suite_model.args)
        k = model.dim
        for seed in [int(s) for s in args.seeds.split(",")]:
            begun = resolve_start(model, aj.FullRankGaussian(), "bam", key=jax.random.key(seed), whiten=True,
                                  init_scale=1.0, num_init_draws=10, init_radius=2.0, check=True)
            for rate in [float(r) for r in args.control_rates.split(",")]:
                v = asymptotic_variance(trace(begun, rate, args.steps, seed), args.burn)
                i = int(np.argmax(v))
                need = v[i] / choose.AUTO_ADVI.stop.tol_mcse ** 2
                print(f"{name:24s} K {k:3d} s{seed} control_rate {rate:<6g}"
                      f"{' oracle ' + args.oracle + ' x' + str(args.oracle_draws) if args.oracle else ''}: "
                      f"max sigma^2/step {v[i]:.3f} at {'mean' if i < k else 'log sd'}[{i % k}], MCSE 0.012 after "
                      f"{need:.0f} averaged steps ({need * num_samples:.0f} gradients); top 5 "
                      f"{np.round(np.sort(v)[-5:], 3).tolist()}; sum over means {v[:k].sum():.2f}, over log sds "
                      f"{v[k:].sum():.2f}", flush=True)


if __name__ == "__main__":
    main()
