"""The constant step's bias of the default's averaged natural-gradient ADVI, read from long runs at fixed steps.

The default `aj.fit` averages constant-step iterates (`advi_jax.vi._advi_averaged`); where the ELBO is not
quadratic their stationary mean is biased by O(rho), and the rule's halving (RABVI) reads that bias as the
change between the averages at rho and rho / 2. This script checks such a change independently: from the
default's start (Pathfinder -> BaM, whitened), it runs the natural step at each `--rates` value for
`--steps` steps (4 antithetic draws, the control variate, no stop, no halving, no transit), discards
`--burn` steps and prints, for successive rates, the largest changes of the stationary means in the
whitened coordinates (in sd of q, with standard errors from 20 batch means) and the same change mapped
to the parameters' own unconstrained marginals (x = shift + L z; in q's marginal sd of x), with the
parameter a whitened coordinate belongs to.

Usage:
  python -m benchmarks.bench_step_bias --models births_lognormal_ts --rates 0.02,0.01 --steps 14000 --burn 4000
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax.run import choose  # noqa: E402
from advi_jax.run.start import start as resolve_start  # noqa: E402
from benchmarks.bench_cv_noise import trace as cv_trace  # noqa: E402
from benchmarks.suite import available_models  # noqa: E402


def flat_names(model) -> list[str]:
    """The label of each entry of the flat unconstrained vector."""
    names: list[str] = []
    for name, where in model.slices().items():
        size = where.stop - where.start
        names += [f"{name}[{i}]" for i in range(size)] if size > 1 else [name]
    return names


def stationary(begun, rate: float, steps: int, burn: int, seed: int):
    """(mean of the iterates' means, its standard error, the mean log sd), whitened coordinates, at step `rate`."""
    control_rate = choose.AUTO_ADVI.stop.control_rate
    trace = cv_trace(begun, control_rate, steps, seed, transit_growth=1.0, learning_rate=rate)[burn:]
    k = trace.shape[1] // 2
    batches = 20
    length = len(trace) // batches
    means = trace[: length * batches].reshape(batches, length, -1).mean(1)
    return means[:, :k].mean(0), means[:, :k].std(0, ddof=1) / np.sqrt(batches), means[:, k:].mean(0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="births_lognormal_ts")
    parser.add_argument("--rates", default="0.02,0.01")
    parser.add_argument("--steps", type=int, default=14000)
    parser.add_argument("--burn", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    for name, suite_model in available_models(args.models.split(",")).items():
        model = aj.from_numpyro(suite_model.fn, *suite_model.args)
        names = flat_names(model)
        begun = resolve_start(model, aj.FullRankGaussian(), "bam", key=jax.random.key(args.seed), whiten=True,
                              init_scale=1.0, num_init_draws=10, init_radius=2.0, check=True)
        shift, whiten = [np.asarray(a, np.float64) for a in begun.whitening]
        runs = {rate: stationary(begun, rate, args.steps, args.burn, args.seed) for rate in rates}
        for big, small in zip(rates[:-1], rates[1:]):
            (m1, se1, ls1), (m2, se2, ls2) = runs[big], runs[small]
            sd = np.exp(ls2)
            change, se = (m2 - m1) / sd, np.sqrt(se1 ** 2 + se2 ** 2) / sd
            top = np.argsort(-np.abs(change))[:4]
            # q's marginal sd of x = shift + L z, with q's whitened covariance taken as diagonal (its sds)
            sd_x = np.sqrt((whiten ** 2) @ sd ** 2)
            dx = whiten @ (m2 - m1) / sd_x
            top_x = np.argsort(-np.abs(dx))[:4]
            print(f"{name} rho {big} -> {small}: whitened means (sd of q, +- se): "
                  + ", ".join(f"z{i} ({names[i]}) {change[i]:+.3f} +- {se[i]:.3f}" for i in top)
                  + f"; log sds: largest {np.max(np.abs(ls2 - ls1)):.3f} at z{int(np.argmax(np.abs(ls2 - ls1)))}"
                  + "; parameters' marginal means (sd of q): "
                  + ", ".join(f"{names[j]} {dx[j]:+.3f}" for j in top_x), flush=True)


if __name__ == "__main__":
    main()
