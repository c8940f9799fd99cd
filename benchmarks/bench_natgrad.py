"""Natural-gradient vs Adam preconditioning of the default's averaged ADVI: distance to the family
limit against gradient evaluations (issue 15, `natgrad`).

The default `aj.fit` (method="auto") runs the Pathfinder -> Batch-and-Match start and then the
averaged, self-stopping ADVI (`advi_jax.vi._advi_averaged`) in the start's whitened coordinates.
This script runs the same start once per seed, then the averaged ADVI from it with each
preconditioner / step size given, in chunks of `--every` steps, and after every chunk measures the
average the fit would return (its later-half batch mean) against the stored full-rank family
limit: max |mean - mean_limit| / sd_NUTS over the scalar parameters (constrained space, antithetic
draws), with the gradients spent so far (the start's included), the stopping rule's state and the
steps whose natural update was clipped (`--trace`). The run freezes where the rule passes (as the
driver stops there) and a SUMMARY line gives the fit at that point or at the cap: gradients,
distance, the halving's change and the stop warning `aj.fit` would give ("cap", or "halving" for a
change over 0.05; k-hat is not computed here: `bench_auto` does that).

Usage:
  python -m benchmarks.bench_natgrad --models radon_noncentered --seeds 0,1,2 \
      --variants adam:0.01,natural:0.01,natural:0.02 --steps 12000 --every 500
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import advi_jax as aj  # noqa: E402
from advi_jax.run import choose  # noqa: E402
from advi_jax.run.start import start as resolve_start  # noqa: E402
from advi_jax.vi._advi_averaged import advi_averaged, averaged_params  # noqa: E402
from benchmarks.bench_auto import against_limit, antithetic  # noqa: E402
from benchmarks.family_limit import load_family_limit  # noqa: E402
from benchmarks.make_references import load_reference  # noqa: E402
from benchmarks.suite import available_models, flatten_draws  # noqa: E402

NUM_DRAWS = 16384


def distance(model, family, params, shift, scale, limit, reference, key) -> dict:
    """The fit's distance to the family limit (`bench_auto.against_limit`) for whitened `params`."""
    if limit is None:
        return {"limit max|dmean|/sd": float("nan"), "limit med|log sd|": float("nan")}
    q = family.transform(params, shift, scale)
    zeta = antithetic(family.sample(q, key, NUM_DRAWS // 2), family.mean(q))
    draws = flatten_draws(jax.device_get(jax.vmap(model.to_constrained)(zeta)))
    return against_limit(draws, limit, reference)


def run_variant(model, begun, limit, reference, stop, seed: int, steps: int, every: int) -> list[dict]:
    family = aj.FullRankGaussian()
    auto = choose.AUTO_ADVI
    whitening = begun.whitening
    # as `aj.fit`: q starts at N(0, I) in whitened coordinates, at N(loc, 0.1^2 I) where the start fell back
    init, step = advi_averaged(begun.run_model, family, stop=stop, estimator=auto.estimator,
                               num_samples=auto.num_samples, init_scale=1.0 if whitening is not None else 0.1)
    if whitening is None:
        shift, scale = jnp.zeros(model.dim), jnp.eye(model.dim)
    else:
        shift, scale = whitening
    key = jax.random.key(1000 + seed)
    state = init(key, begun.loc)

    @jax.jit
    def chunk(state, start):
        def body(s, i):  # frozen once the rule has passed (the driver stops there)
            new, info = step(jax.random.fold_in(key, i), s)
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(s.converged, b, a), new, s)
            return new, new.converged

        return jax.lax.scan(body, state, start + jnp.arange(every))

    rows, passed_at, tick = [], None, time.perf_counter()
    for c in range(steps // every):
        state, conv = chunk(state, c * every)
        conv = np.asarray(conv)
        if passed_at is None and conv.any():
            passed_at = c * every + int(np.argmax(conv)) + 1
        done = (c + 1) * every
        params = averaged_params(family)(state)
        d = distance(model, family, params, shift, scale, limit, reference, jax.random.key(seed + 7))
        done = passed_at or done
        rows.append({"steps": done, "grads": begun.num_grad_evals + done * auto.num_samples,
                     "limit": d["limit max|dmean|/sd"], "log sd": d["limit med|log sd|"],
                     "lr": float(state.lr), "halvings": int(state.halvings), "mcse": float(state.mcse),
                     "drift": float(state.drift), "change": float(state.change),
                     "clipped": int(state.clipped_steps), "nonfinite": int(state.fit.num_nonfinite),
                     "passed": passed_at is not None and passed_at <= done})
        if passed_at is not None:
            break
    rows[-1]["seconds"] = time.perf_counter() - tick
    rows[-1]["passed_at"] = passed_at
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="radon_noncentered")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default="adam:0.01,natural:0.05",
                        help="comma-separated preconditioner:step, e.g. adam:0.01,natural:0.05")
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--trace", action="store_true", help="print every chunk, not only the summary")
    parser.add_argument("--stop", default="", help="extra AutoStop fields, e.g. max_halvings=0,max_step=0.5")
    args = parser.parse_args(argv)
    extra = {}
    for item in filter(None, args.stop.split(",")):
        k, v = item.split("=")
        default = getattr(choose.AUTO_ADVI.stop, k)
        extra[k] = type(default)(float(v)) if not isinstance(default, (bool, str)) else (
            v == "True" if isinstance(default, bool) else v)
    for name, suite_model in available_models(args.models.split(",")).items():
        reference, limit = load_reference(name), load_family_limit(name)
        model = aj.from_numpyro(suite_model.fn, *suite_model.args)
        for seed in [int(s) for s in args.seeds.split(",")]:
            begun = resolve_start(model, aj.FullRankGaussian(), "bam", key=jax.random.key(seed), whiten=True,
                                  init_scale=1.0, num_init_draws=10, init_radius=2.0, check=True)
            for variant in args.variants.split(","):
                precond, rate = variant.split(":")
                stop = choose.AUTO_ADVI.stop._replace(preconditioner=precond, learning_rate=float(rate), **extra)
                rows = run_variant(model, begun, limit, reference, stop, seed, args.steps, args.every)
                for r in rows if args.trace else []:
                    print(f"{name} s{seed} {variant:13s} steps {r['steps']:6d} grads {r['grads']:6d} "
                          f"limit {r['limit']:.3f} logsd {r['log sd']:.3f} lr {r['lr']:.4f} halv {r['halvings']} "
                          f"mcse {r['mcse']:.4f} drift {r['drift']:.3f} change {r['change']:.3f} "
                          f"clip {r['clipped']} nonfin {r['nonfinite']}{' PASSED' if r['passed'] else ''}",
                          flush=True)
                last = rows[-1]
                warn = ("cap" if last["passed_at"] is None else
                        "halving" if last["halvings"] > 0 and last["change"] > 0.05 else "-")
                print(f"SUMMARY {name:26s} K {model.dim:3d} s{seed} {variant:13s} "
                      f"{'passed' if last['passed_at'] else 'CAP   '} grads {last['grads']:6d} limit {last['limit']:.3f} "
                      f"change {last['change']:.3f} halvings {last['halvings']} clipped {last['clipped']} "
                      f"nonfinite {last['nonfinite']} stop-warning {warn} ({last['seconds']:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
