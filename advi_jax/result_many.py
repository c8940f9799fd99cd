"""The batched result of `fit_many`: B fits with batched parameters and per-fit diagnostics."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from advi_jax._types import Array, PyTree
from advi_jax.base import Family

__all__ = ["ManyResult"]


@dataclasses.dataclass(frozen=True)
class ManyResult:
    """The outcome of `fit_many`: B fits with batched parameters and per-fit diagnostics.

    Index it (`many[i]`, a `Result` with fit i's diagnostics) or iterate over `many.results`;
    `summary()` prints one line per fit (steps, stop reason, final ELBO, k-hat, IW-ELBO).

    Attributes:
      model: the (batched when `batched`) `Model`.
      family: the variational `Family`.
      params: the variational parameters, every leaf with a leading axis B.
      elbo: (B, max steps run) per-step ELBO estimates, NaN-padded after each fit's last step.
      num_steps: (B,) steps each fit ran.
      num_nonfinite: (B,) steps each fit skipped as non-finite.
      stop_codes: (B,) the driver's stop codes (`advi_jax.run.STOP_REASONS`).
      stop_reasons: B strings, in words.
      converged: (B,) whether a convergence test stopped the fit.
      batched: whether fit i used dataset i of the model's batched data.
      seconds: wall time of the whole call (compilation included).
      num_grad_evals, num_logp_evals: (B,) per-fit costs.
      diagnostics: a `Diagnostics` whose fields are (B,) arrays, or None.
      diagnostics_note: why there are none.
      compile_seconds, run_seconds, diagnostics_seconds: the split of `seconds`.
      disagreement: for restarts of one model (not batched), the largest distance between the
        fits' means in units of their mean posterior sd (NaN otherwise); a value above ~1 says
        the restarts found different optima (a missed mode, a multimodal posterior).
    """

    model: Any
    family: Family
    params: PyTree
    elbo: np.ndarray
    num_steps: np.ndarray
    num_nonfinite: np.ndarray
    stop_codes: np.ndarray
    stop_reasons: list[str]
    converged: np.ndarray
    batched: bool
    seconds: float
    estimator: str = "reparam"
    num_samples: int = 1
    num_grad_evals: np.ndarray | None = None
    num_logp_evals: np.ndarray | None = None
    diagnostics: Any = None
    diagnostics_note: str = "not computed (diagnostics=False)"
    method: str = "advi"
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    diagnostics_seconds: float = 0.0
    disagreement: float = float("nan")

    def __len__(self) -> int:
        return int(self.num_steps.shape[0])

    def __getitem__(self, i: int):
        from advi_jax.result import Diagnostics, Report, Result

        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index a ManyResult with an int (use .results for all), got {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"fit index {i} out of range for {n} fits")
        i = int(i) % n
        steps = int(self.num_steps[i])
        diag = None
        if self.diagnostics is not None:
            d = self.diagnostics
            values = d[:Diagnostics._fields.index("num_draws")]  # the per-fit arrays
            moments = None if d.moments is None else d.moments[i]
            diag = Diagnostics(*(float(np.asarray(v)[i]) for v in values), d.num_draws, moments)
        grads = steps * self.num_samples if self.num_grad_evals is None else int(self.num_grad_evals[i])
        report = Report(
            elbo=self.elbo[i, :steps], num_steps=steps, num_grad_evals=grads,
            num_logp_evals=0 if self.num_logp_evals is None else int(self.num_logp_evals[i]),
            num_nonfinite=int(self.num_nonfinite[i]), converged=bool(self.converged[i]),
            stop_reason=self.stop_reasons[i], stop_code=int(self.stop_codes[i]), method=self.method,
            method_reason="fit_many", estimator=self.estimator, num_samples=self.num_samples, seconds=self.seconds,
            compile_seconds=self.compile_seconds, run_seconds=self.run_seconds,
            diagnostics_seconds=self.diagnostics_seconds, diagnostics=diag,
            diagnostics_note=self.diagnostics_note)
        model = jax.tree_util.tree_map(lambda x: x[i], self.model) if self.batched else self.model
        return Result(model, self.family, jax.tree_util.tree_map(lambda x: x[i], self.params), report)

    @property
    def results(self) -> list:
        """One `Result` per fit (`seconds` is the whole call's wall time in each)."""
        return [self[i] for i in range(len(self))]

    @property
    def khat(self) -> np.ndarray:
        """(B,) PSIS k-hat per fit (NaN without diagnostics)."""
        return np.full(len(self), np.nan) if self.diagnostics is None else np.asarray(self.diagnostics.khat)

    @property
    def iw_elbo(self) -> np.ndarray:
        """(B,) importance-weighted ELBO per fit (NaN without diagnostics)."""
        return np.full(len(self), np.nan) if self.diagnostics is None else np.asarray(self.diagnostics.iw_elbo)

    def means(self) -> Array:
        """(B, K) means of q in the unconstrained space R^K."""
        return jax.vmap(self.family.mean)(self.params)

    def summary(self) -> str:
        """One line per fit: steps, final ELBO, k-hat and its verdict, IW-ELBO, stop reason."""
        from advi_jax.result import verdict

        lines = [f"{len(self)} fits, method={self.method}, family={self.family.name}, {self.seconds:.2f} s "
                 f"(compile {self.compile_seconds:.2f}, run {self.run_seconds:.2f}, diagnostics "
                 f"{self.diagnostics_seconds:.2f})"]
        if self.diagnostics is None:
            lines.append(f"diagnostics: {self.diagnostics_note}")
        if np.isfinite(self.disagreement) and self.disagreement > 1.0:
            lines.append(f"warning: the restarts disagree: their means differ by up to {self.disagreement:.2g} "
                         "posterior sd (different optima: a missed mode or a multimodal posterior)")
        for i in range(len(self)):
            steps = int(self.num_steps[i])
            tail = self.elbo[i, max(steps - 100, 0):steps]
            final = float(np.mean(tail)) if steps and np.isfinite(tail).all() else float("nan")
            text = f"fit {i}: steps={steps} ELBO={final:.4g}"
            if self.diagnostics is not None:
                r = self[i]
                text += f" k-hat={r.khat:.3f} ({verdict(r.report.diagnostics).split(' ')[0].rstrip(':')})" \
                        f" IW-ELBO={r.iw_elbo:.4g}"
            lines.append(f"{text}; {self.stop_reasons[i]}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"ManyResult(num_fits={len(self)}, family={self.family.name}, dim={self.model.dim}, "
                f"num_steps min/max={int(self.num_steps.min())}/{int(self.num_steps.max())}, "
                f"converged={int(self.converged.sum())}, seconds={self.seconds:.3g})")
