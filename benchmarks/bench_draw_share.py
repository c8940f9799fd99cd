"""How heavy-tailed the per-draw contributions to the default's natural step are, per suite posterior.

The default `aj.fit` (Pathfinder -> BaM start, whitened, then constant-step natural-gradient ADVI with 4
antithetic STL draws per step, `advi_jax.vi._advi_averaged`) averages its iterates; the constant step's
bias grows with the size of the step's noise, and where single draws of q's tail carry enormous
gradients (reg_horseshoe, benchmarks/PERFORMANCE.md "reg_horseshoe at the cap") one draw's kick
dominates a step. This script runs the default's first phase (its step, control variate and trust
region; no stop, no halving, no transit, no heavy-draw switch: `AutoStop.heavy_draws`) from the
default's start for `--steps` steps and, at every step, recomputes the step's draws (same key) and each draw's own natural direction d_s = (u_s,
Phi(sym(u_s eps_s^T))), u_s = C^T grad log p(zeta_s) + eps_s, and its length l_s in the Fisher metric
(`advi_jax.vi._natural`). Over the steps after `--burn` it prints candidate statistics of heaviness:

* `top1%`: the share of sum_s l_s^2 that the largest 1% of the draws carry (light tails: a few %);
* `kurt`: E[l^4] / E[l^2]^2 over the draws (a chi-square-like length: about 1);
* `mean/med`: E[l^2] / median(l^2);
* `share`: the mean over steps of max_s l_s^2 / sum_s l_s^2 (4 draws: 0.25 to 1);
* `clip`: the fraction of steps the trust region shrank;
* `l50` ... `l99.9`, `rms`: quantiles and root mean square of l itself (absolute, in the Fisher metric);
* `kick>t`: the fraction of draws whose own deviation from the step's mean direction, d_s - mean_s d,
  moves q by more than t (in the Fisher metric, about sd of q) at the default's step: rho |d_s - mean d| / S.

Usage:
  python -m benchmarks.bench_draw_share --models reg_horseshoe,radon_centered --steps 1200 --burn 200
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
from advi_jax.vi._natural import antithetic_noise, phi  # noqa: E402
from benchmarks.suite import available_models  # noqa: E402


def per_draw_lengths(log_density, loc, scale_tril, eps):
    """(2, S) each draw's natural direction's length in the Fisher metric, and the length of its
    deviation from the step's mean direction (module docstring)."""
    zeta = loc[None, :] + eps @ scale_tril.T
    grads = jax.vmap(jax.grad(log_density))(zeta)
    u = grads @ scale_tril + eps

    def direction(u_s, e_s):
        a = jnp.outer(u_s, e_s)
        return u_s, phi(0.5 * (a + a.T))

    def length(m, x):
        return jnp.sqrt(jnp.sum(m ** 2) + jnp.sum(jnp.tril(x, -1) ** 2) + 2.0 * jnp.sum(jnp.diagonal(x) ** 2))

    dm, dx = jax.vmap(direction)(u, eps)
    own = jax.vmap(length)(dm, dx)
    deviation = jax.vmap(length)(dm - jnp.mean(dm, axis=0), dx - jnp.mean(dx, axis=0))
    return jnp.stack([own, deviation])


def run(begun, steps: int, seed: int):
    """(steps, 2, S) per-draw lengths (own, deviation) and (steps,) clipped flags along the default's first phase."""
    family = aj.FullRankGaussian()
    auto = choose.AUTO_ADVI
    stop = auto.stop._replace(tol_mcse=-1.0, max_halvings=0, transit_growth=1.0, heavy_draws=1)
    init, step = averaged.advi_averaged(begun.run_model, family, stop=stop, estimator="stl",
                                        num_samples=auto.num_samples,
                                        init_scale=1.0 if begun.whitening is not None else 0.1)
    key = jax.random.key(1000 + seed)
    k = begun.run_model.dim

    @jax.jit
    def go(state):
        def body(s, i):
            sub = jax.random.fold_in(key, i)
            p = s.fit.params
            eps = antithetic_noise(sub, auto.num_samples, k, p.loc.dtype)
            lengths = per_draw_lengths(begun.run_model.log_density, p.loc, family.scale_tril(p), eps)
            new, _ = step(sub, s)
            return new, (lengths, new.clipped_steps - s.clipped_steps)

        return jax.lax.scan(body, state, jnp.arange(steps))[1]

    lengths, clipped = go(init(key, begun.loc))
    return np.asarray(lengths, np.float64), np.asarray(clipped)


def statistics(both: np.ndarray, clipped: np.ndarray) -> dict:
    lengths, deviation = both[:, 0], both[:, 1]
    kick = choose.AUTO_ADVI.stop.learning_rate * deviation / choose.AUTO_ADVI.num_samples
    kicks = {f"kick>{t}": float(np.mean(kick > t)) for t in (0.125, 0.25, 0.5)}
    sq = lengths ** 2
    flat = np.sort(sq[np.isfinite(sq)].ravel())
    top = max(1, int(round(0.01 * flat.size)))
    per_step = sq / np.sum(sq, axis=1, keepdims=True)
    return {"top1%": float(flat[-top:].sum() / flat.sum()), "kurt": float(np.mean(flat ** 2) / np.mean(flat) ** 2),
            "mean/med": float(np.mean(flat) / np.median(flat)), "share": float(np.nanmean(per_step.max(axis=1))),
            "clip": float(np.mean(clipped)), "l50": float(np.sqrt(np.median(flat))),
            "l90": float(np.sqrt(np.quantile(flat, 0.9))), "l99": float(np.sqrt(np.quantile(flat, 0.99))),
            "l99.9": float(np.sqrt(np.quantile(flat, 0.999))), "rms": float(np.sqrt(np.mean(flat))), **kicks}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="reg_horseshoe")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--burn", type=int, default=200)
    parser.add_argument("--windows", default="400,800,1200", help="also the statistics over burn..W for each W")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    windows = [int(w) for w in args.windows.split(",") if w]
    for name, suite_model in available_models(args.models.split(",")).items():
        model = aj.from_numpyro(suite_model.fn, *suite_model.args)
        begun = resolve_start(model, aj.FullRankGaussian(), "bam", key=jax.random.key(args.seed), whiten=True,
                              init_scale=1.0, num_init_draws=10, init_radius=2.0, check=True)
        lengths, clipped = run(begun, args.steps, args.seed)
        for w in windows:
            if w > args.burn and w <= args.steps:
                st = statistics(lengths[args.burn:w], clipped[args.burn:w])
                print(f"{name:26s} K {model.dim:3d} s{args.seed} steps {args.burn}-{w}: "
                      + ", ".join(f"{k} {v:.3g}" for k, v in st.items()), flush=True)
        for w in windows:
            if w <= args.steps:
                st = statistics(lengths[:w], clipped[:w])
                print(f"{name:26s} K {model.dim:3d} s{args.seed} steps 0-{w}: "
                      + ", ".join(f"{k} {v:.3g}" for k, v in st.items()), flush=True)


if __name__ == "__main__":
    main()
