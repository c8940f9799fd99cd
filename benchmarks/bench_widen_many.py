"""The widened moment check's cost in `aj.fit_many` and `aj.fit_minibatch` (issue 15, helper `widenmany`).

One fresh process per run (`--tree` says which checkout it imports: compare this tree against the
start tree by alternating processes). Each process times:

* ``many``: `aj.fit_many` of the non-centred eight schools, 8 seeds (mean-field, 3,000 steps, Adam's
  default), its first call (compile included) and a second call with another key (compiles
  nothing in the loop); how many fits the widened check ran for, and their extra draws;
* ``minibatch``: `aj.fit_minibatch` of the same model with its 8 schools as the data (batches of 4,
  400 epochs), first and second call; and a logistic regression with N = 8,192 rows, D = 5
  (batches of 1,024, 200 epochs, 8 draws a step: silent but grey, so the check runs);
* ``many_logistic``: `aj.fit_many` of a list of 8 logistic regressions (N = 500, D = 5, one dataset
  per fit: the batched form), 3,000 steps, first and second call; then 64 of them (one call: its
  loop and diagnostics compile again for B = 64, so it is a first call of that shape).

Usage:
  PYTHONPATH=. python -m benchmarks.bench_widen_many --out benchmarks/results/widen_many_new.jsonl
  PYTHONPATH=/work/wt/base python benchmarks/bench_widen_many.py --out benchmarks/results/widen_many_base.jsonl
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

Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)


def _normal(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - jnp.log(sd)


def log_joint(p, data):
    y, sigma = data
    theta = p["mu"] + p["tau"] * p["theta_tilde"]
    return (_normal(p["mu"], 0.0, 5.0) - jnp.log1p((p["tau"] / 5.0) ** 2) + jnp.sum(_normal(p["theta_tilde"], 0.0, 1.0))
            + jnp.sum(_normal(y, theta, sigma)))


SUPPORT = {"mu": aj.real(), "tau": aj.positive(), "theta_tilde": aj.real((8,))}


def mb_prior(p):
    return _normal(p["mu"], 0.0, 5.0) - jnp.log1p((p["tau"] / 5.0) ** 2) + jnp.sum(_normal(p["theta_tilde"], 0.0, 1.0))


def mb_likelihood(p, rows):
    theta = p["mu"] + p["tau"] * p["theta_tilde"]
    school = rows[:, 0].astype(jnp.int32)
    return _normal(rows[:, 1], theta[school], rows[:, 2])


def logistic_prior(p):
    return -0.5 * jnp.sum(p["beta"] ** 2)


def logistic_likelihood(p, rows):
    z = (2.0 * rows[:, -1] - 1.0) * (rows[:, :-1] @ p["beta"])
    return jnp.minimum(z, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(z)))


BETA = np.array([1.0, -0.5, 0.25, 0.0, 2.0])


def logistic_joint(p, rows):
    return logistic_prior(p) + jnp.sum(logistic_likelihood(p, rows))


def _widened(diags) -> list[int]:
    return [int(getattr(d.moments, "widened_draws", 0)) for d in diags]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    row = {"label": args.label, "tree": os.path.dirname(os.path.dirname(aj.__file__))}
    model = aj.Model(log_joint, SUPPORT, data=(jnp.asarray(Y), jnp.asarray(SIGMA)))
    for call in ("first", "second"):
        tick = time.perf_counter()
        many = aj.fit_many(model, key=jax.random.key(0 if call == "first" else 1), num_fits=8, num_steps=3000)
        row[f"many_{call}_s"] = time.perf_counter() - tick
        row[f"many_{call}_diag_s"] = many.diagnostics_seconds
        row[f"many_{call}_widened"] = _widened([many[i].report.diagnostics for i in range(8)])
        row[f"many_{call}_khat"] = np.round(many.khat, 2).tolist()
    rng = np.random.default_rng(1)
    models = []
    for _ in range(64):  # logistic regressions (N = 500, D = 5), one dataset per fit: the list form
        x = rng.standard_normal((500, 5)).astype(np.float32)
        y = (rng.random(500) < 1 / (1 + np.exp(-x @ BETA))).astype(np.float32)
        models.append(aj.Model(logistic_joint, {"beta": aj.real((5,))}, data=np.concatenate([x, y[:, None]], axis=1)))
    for name, count, calls in (("many_logistic", 8, ("first", "second")), ("many_logistic64", 64, ("second",))):
        for call in calls:
            tick = time.perf_counter()
            many = aj.fit_many(models[:count], key=jax.random.key(0 if call == "first" else 1), num_steps=3000)
            row[f"{name}_{call}_s"] = time.perf_counter() - tick
            row[f"{name}_{call}_diag_s"] = many.diagnostics_seconds
            row[f"{name}_{call}_widened"] = _widened([many[i].report.diagnostics for i in range(count)])
            row[f"{name}_{call}_khat"] = np.round(many.khat, 2).tolist()
    rows = np.stack([np.arange(8, dtype=np.float32), Y, SIGMA], axis=1)
    schools = aj.MinibatchModel(mb_prior, mb_likelihood, SUPPORT, data=rows)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8192, 5)).astype(np.float32)
    y = (rng.random(8192) < 1 / (1 + np.exp(-x @ BETA))).astype(np.float32)
    logistic = aj.MinibatchModel(logistic_prior, logistic_likelihood, {"beta": aj.real((5,))},
                                 data=np.concatenate([x, y[:, None]], axis=1))
    for name, mb, batch, epochs, draws in (("mb_schools", schools, 4, 400, 1), ("mb_logistic", logistic, 1024, 200, 8)):
        for call in ("first", "second"):
            tick = time.perf_counter()
            fitted = aj.fit_minibatch(mb, key=jax.random.key(0 if call == "first" else 1), batch_size=batch,
                                      num_epochs=epochs, num_samples=draws, progress=False,
                                      warn=False)
            row[f"{name}_{call}_s"] = time.perf_counter() - tick
            row[f"{name}_{call}_diag_s"] = fitted.report.diagnostics_seconds
            row[f"{name}_{call}_widened"] = _widened([fitted.report.diagnostics])
            row[f"{name}_{call}_khat"] = round(float(fitted.khat), 2)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
