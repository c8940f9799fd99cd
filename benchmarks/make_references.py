"""Reference posteriors for the accuracy suite, by NumPyro NUTS; stored as small JSON summaries.

For each model of `benchmarks.suite.MODELS`: NUTS (float64) with `--chains` chains of `--warmup`
warm-up and `--draws` kept draws each, then per scalar parameter (constrained space) the mean,
sd, split R-hat and effective sample size. The file `benchmarks/references/<model>.json` also
records the settings, the number of divergent transitions, the worst R-hat and whether it passed
R-hat < 1.01, library versions and the wall time. These files are committed; the accuracy
benchmark reads them.

Usage:
  python -m benchmarks.make_references                      # every model, 4 chains x 2000 draws
  python -m benchmarks.make_references --models eight_schools_centered --draws 5000
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpyro  # noqa: E402

numpyro.set_host_device_count(min(4, os.cpu_count() or 1))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin  # noqa: E402
from numpyro.infer import MCMC, NUTS, init_to_uniform  # noqa: E402

from benchmarks.common import versions  # noqa: E402
from benchmarks.suite import SuiteModel, available_models, eight_schools_noncentered, flatten_draws  # noqa: E402
from benchmarks.suite_more import neals_funnel_noncentered, radon_noncentered  # noqa: E402
from benchmarks.suite_unseen import ar1_state_space_marginal, ar1_states_given_parameters  # noqa: E402

REFERENCE_DIR = os.path.join(os.path.dirname(__file__), "references")
RHAT_BOUND = 1.01

# Per-model sampler settings where the defaults are not enough.
TARGET_ACCEPT: dict[str, float] = {"stochastic_volatility": 0.95}
DRAWS_FACTOR: dict[str, int] = {}


def _centered_from_noncentered(samples):
    return {"mu": samples["mu"], "tau": samples["tau"],
            "theta": samples["mu"][..., None] + samples["tau"][..., None] * samples["theta_tilde"]}


# Models whose reference is sampled through an equivalent reparameterisation. NUTS on the centred
# eight schools diverges in the funnel's neck (320 divergent transitions of 40,000 with
# target_accept_prob=0.99 in our run) and under-explores small tau; the non-centred model is the
# same joint distribution of (mu, tau, theta) with theta = mu + tau * theta_tilde, and NUTS
# samples it without divergences, so the centred reference is computed from its draws.
def _radon_centered_from_noncentered(samples, log_radon, floor, county, log_uranium):
    out = {k: v for k, v in samples.items() if k != "a_tilde"}
    g = samples["gamma"]
    out["a"] = (g[..., :1] + g[..., 1:] * np.asarray(log_uranium, np.float64)
                + samples["sigma_a"][..., None] * samples["a_tilde"])
    return out


def _funnel_from_noncentered(samples, dim):
    return {"v": samples["v"], "x": np.exp(samples["v"][..., None] / 2) * samples["x_tilde"]}


# Same pattern for the radon intercepts (a_j = g0 + g1 u_j + sigma_a a_tilde_j) and Neal's funnel
# (x = exp(v / 2) x_tilde, where NUTS on the centred funnel cannot reach the neck). The transform
# receives the draws and the model's arguments.
DERIVED = {"eight_schools_centered": (eight_schools_noncentered, lambda s, *args: _centered_from_noncentered(s),
                                      "NUTS on the non-centred model, theta = mu + tau * theta_tilde"),
           "radon_centered": (radon_noncentered, _radon_centered_from_noncentered,
                              "NUTS on the non-centred model, a = g0 + g1 u + sigma_a a_tilde"),
           "neals_funnel": (neals_funnel_noncentered, _funnel_from_noncentered,
                            "NUTS on the non-centred funnel, x = exp(v / 2) x_tilde"),
           "ar1_state_space": (ar1_state_space_marginal, lambda s, y: ar1_states_given_parameters(s, y),
                               "NUTS on the states-marginal model, then x | parameters, y drawn exactly")}


def _funnel_exact(dim: int) -> dict:
    """Neal's funnel moments in closed form: v ~ N(0, 3); x_i has mean 0 and variance E[exp(v)] = exp(9 / 2)."""
    out = {"v": {"mean": 0.0, "sd": 3.0}}
    out.update({f"x[{i}]": {"mean": 0.0, "sd": float(np.exp(9.0 / 4.0))} for i in range(dim - 1)})
    return out


# Closed-form moments stored beside the NUTS summary (the funnel's x_i are so heavy-tailed that
# 4000 draws underestimate their sd by 10-20%; accuracy can compare with either).
EXACT = {"neals_funnel": lambda suite_model: _funnel_exact(*suite_model.args)}


def reference_path(name: str) -> str:
    return os.path.join(REFERENCE_DIR, f"{name}.json")


def load_reference(name: str) -> dict | None:
    """The stored reference summary of `name`, or None when it has not been generated."""
    path = reference_path(name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _deterministic_sites(suite_model) -> set:
    """Names of the model's `numpyro.deterministic` sites (summarised apart from the parameters)."""
    # Latent values from NumPyro's own initialiser (uniform in the unconstrained space), as NUTS starts:
    # an ImproperUniform site has no sampler.
    fn = numpyro.handlers.substitute(numpyro.handlers.seed(suite_model.fn, rng_seed=0), substitute_fn=init_to_uniform)
    trace = numpyro.handlers.trace(fn).get_trace(*suite_model.args)
    return {name for name, site in trace.items() if site["type"] == "deterministic"}


def run_nuts(name, suite_model, *, chains: int, warmup: int, draws: int, seed: int) -> dict:
    target_accept = TARGET_ACCEPT.get(name, 0.9)
    transform, how = (lambda samples, *args: samples), "NumPyro NUTS, float64"
    if name in DERIVED:
        sample_fn, transform, how = DERIVED[name]
        suite_model = SuiteModel(sample_fn, suite_model.args, suite_model.note)
        how = f"{how} (NumPyro NUTS, float64)"
    kernel = NUTS(suite_model.fn, target_accept_prob=target_accept)
    method = "parallel" if jax.local_device_count() >= chains else "sequential"
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method=method,
                progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.key(seed), *suite_model.args, extra_fields=("diverging",))
    samples = transform(jax.device_get(mcmc.get_samples(group_by_chain=True)), *suite_model.args)  # site -> (chains, draws, *shape)
    seconds = time.perf_counter() - start
    divergences = int(np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"]).sum())
    params = {}
    for label, x in flatten_draws(samples, num_leading=2).items():
        x = np.asarray(x, np.float64)
        sd = float(x.std())
        constant = sd < 1e-10  # e.g. the (0, 0) entry of a Cholesky factor of a correlation matrix
        params[label] = {"mean": float(x.mean()), "sd": sd,
                         "rhat": float("nan") if constant else float(split_gelman_rubin(x)),
                         "ess": float("nan") if constant else float(effective_sample_size(x))}
    # Deterministic sites (e.g. log phi of the negative binomial) are recorded under "derived", so
    # that "params" holds exactly the model's sampled parameters.
    det = _deterministic_sites(suite_model) if name not in DERIVED else set()
    derived = {k: v for k, v in params.items() if k.split("[")[0] in det}
    params = {k: v for k, v in params.items() if k not in derived}
    rhats = [p["rhat"] for p in params.values() if np.isfinite(p["rhat"])]
    esses = [p["ess"] for p in params.values() if np.isfinite(p["ess"])]
    return {
        "model": name,
        "note": suite_model.note,
        "method": how,
        "settings": {"chains": chains, "warmup": warmup, "draws": draws, "seed": seed,
                     "target_accept_prob": target_accept, "chain_method": method},
        "max_rhat": max(rhats),
        "min_ess": min(esses),
        "rhat_ok": bool(max(rhats) < RHAT_BOUND),
        "divergences": divergences,
        "seconds": seconds,
        "versions": versions(),
        "params": params,
        **({"derived": derived} if derived else {}),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-existing", action="store_true", help="keep references already stored")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    names = args.models.split(",") if args.models else None
    os.makedirs(REFERENCE_DIR, exist_ok=True)
    for name, suite_model in available_models(names).items():
        if args.skip_existing and os.path.exists(reference_path(name)):
            continue
        factor = DRAWS_FACTOR.get(name, 1)
        ref = run_nuts(name, suite_model, chains=args.chains, warmup=args.warmup * factor,
                       draws=args.draws * factor, seed=args.seed)
        if name in EXACT:
            ref["exact_params"] = EXACT[name](suite_model)
        with open(reference_path(name), "w") as f:
            json.dump(ref, f, indent=1)
        flag = "ok" if ref["rhat_ok"] else f"R-HAT >= {RHAT_BOUND}"
        print(f"{name}: {len(ref['params'])} scalars, max R-hat {ref['max_rhat']:.4f} ({flag}), "
              f"min ESS {ref['min_ess']:.0f}, {ref['divergences']} divergences, {ref['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
