"""A log density with no second derivative in JAX (a censored Gamma's regularised incomplete gamma):
the default start falls back to zero and says why, and methods that need second derivatives fail
with an error that names them and the methods that need gradients only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammaincc, gammaln

import advi_jax as aj


def _censored_gamma():
    # y_i ~ Gamma(shape a, rate b), right-censored at c: log S(c) = log Q(a, b c), whose derivative in a
    # is JAX's 'igamma_grad_a', which has no derivative rule of its own.
    rng = np.random.default_rng(0)
    y = rng.gamma(2.0, 1.0 / 1.5, size=60)
    censored = y > 2.0
    y = np.minimum(y, 2.0)

    def log_density(p, data):
        yy, cens = data
        a, b = p["shape"], p["rate"]
        logpdf = a * jnp.log(b) - gammaln(a) + (a - 1) * jnp.log(yy) - b * yy
        logsurv = jnp.log(gammaincc(a, b * yy))
        prior = -0.5 * (jnp.log(a) ** 2 + jnp.log(b) ** 2)
        return prior + jnp.sum(jnp.where(cens, logsurv, logpdf))

    with pytest.raises(NotImplementedError, match="igamma_grad_a"):  # the premise: no second derivative
        jax.hessian(lambda a: gammaincc(a, 1.0))(2.0)
    return aj.Model(log_density, {"shape": aj.positive(), "rate": aj.positive()},
                    data=(jnp.asarray(y, jnp.float32), jnp.asarray(censored)))


def test_default_start_falls_back_and_second_derivative_methods_say_why():
    model = _censored_gamma()
    result = aj.fit(model, key=jax.random.key(0), method="advi", num_steps=2000, progress=False, diagnostics=False)
    assert result.init_method == ("zero (no Laplace start: the log density has no second derivative in JAX for its "
                                  "Hessian (Differentiation rule for 'igamma_grad_a' not implemented))")
    assert np.all(np.isfinite(np.asarray(result.family.mean(result.params))))
    assert np.isfinite(result.final_elbo)
    for kwargs in ({"method": "dadvi"}, {"method": "laplace"}, {"method": "advi", "init": "laplace"}):
        with pytest.raises(NotImplementedError, match=r"^aj\.fit\(method='\w+', init='\w+'\) differentiated the log "
                                                      r"density twice, and JAX cannot: [^(]*igamma_grad_a.*"
                                                      r"need gradients only") as raised:
            aj.fit(model, key=jax.random.key(0), num_steps=50, progress=False, **kwargs)
        assert "differentiated" not in str(raised.value.__cause__)  # wrapped once, with JAX's own error as cause
    with pytest.raises(NotImplementedError, match=r"^aj\.laplace differentiated the log density twice"):
        aj.laplace(model)
