"""Shared helpers for the benchmarks: timing, machine and library info, synthetic GLM data."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata

import numpy as np


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    import advi_jax

    out["advi_jax"] = advi_jax.__version__
    for name in ("jax", "jaxlib", "numpyro", "blackjax", "optax", "flax"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict:
    import jax

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "jax_devices": [str(d) for d in jax.devices()]}


def block(tree):
    import jax

    return jax.block_until_ready(tree)


def timed(fn, *args, repeat: int = 1, **kwargs) -> tuple[float, object]:
    """Best wall time of `repeat` calls of fn (results blocked on), and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = block(fn(*args, **kwargs))
        best = min(best, time.perf_counter() - start)
    return best, out


def logistic_data(n: int, d: int, seed: int = 0, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic logistic-regression data: standard-normal features, true coefficients ~ N(0, 1/d)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32).astype(dtype)
    beta = rng.normal(0.0, 1.0 / np.sqrt(d), size=d)
    p = 1.0 / (1.0 + np.exp(-(x @ beta)))
    y = (rng.random(n) < p).astype(dtype)
    return x, y


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
    print(f"wrote {path}")


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def poisson_data(n: int, d: int, seed: int = 0, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic Poisson-regression data: standard-normal features, coefficients ~ N(0, 0.25/d), log link."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32).astype(dtype)
    beta = rng.normal(0.0, 0.5 / np.sqrt(d), size=d)
    y = rng.poisson(np.exp(x @ beta)).astype(dtype)
    return x, y
