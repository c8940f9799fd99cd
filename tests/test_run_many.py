"""fit_many (advi_jax/run/many.py): batched datasets and restarts in one compiled, vmapped loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import advi_jax as aj
from advi_jax.run import many as many_module


# --- fit_many ------------------------------------------------------------------------------------

def _normal_mean_log_joint(params, y):
    return -0.5 * jnp.sum(params["mu"] ** 2) - 0.5 * jnp.sum((y - params["mu"][None, :]) ** 2)


_MU_SUPPORT = {"mu": aj.real((2,))}


def _normal_mean_models(num):
    rng = np.random.default_rng(3)
    return [aj.Model(_normal_mean_log_joint, _MU_SUPPORT,
                     data=jnp.asarray(rng.normal(loc=i, size=(50, 2)), jnp.float32)) for i in range(num)]


def test_fit_many_over_datasets_recovers_each_exact_posterior(key):
    models = _normal_mean_models(5)
    many = aj.fit_many(models, key=key, num_steps=3000, family="fullrank")
    assert len(many) == 5 and many.elbo.shape == (5, 3000) and np.all(many.num_steps == 3000)
    for model, result in zip(models, many.results):
        exact_mean = np.asarray(model.data.sum(0) / 51)
        np.testing.assert_allclose(result.family.mean(result.params), exact_mean, atol=0.05)
        np.testing.assert_allclose(np.sqrt(result.family.variance(result.params)), 1 / np.sqrt(51), rtol=0.15)
        assert result.stop_reason == "reached num_steps"
    # the same through an explicitly stacked model
    stacked = aj.stack_models(models)
    assert stacked.data.shape == (5, 50, 2)
    again = aj.fit_many(stacked, key=key, batched=True, num_steps=3000, family="fullrank")
    np.testing.assert_allclose(again.means(), many.means(), rtol=1e-6)


@pytest.mark.parametrize("batched", [True, False])
def test_fit_many_fit_i_is_aj_fit_with_key_fold_in_i(key, batched):
    """Each fit follows aj.fit exactly, with its own stopping step (tol_rel_obj)."""
    models = _normal_mean_models(3)
    opt = optax.adam(0.01)
    kwargs = dict(num_steps=1500, optimizer=opt, tol_rel_obj=0.01, eval_every=50, window=3, family="meanfield")
    if batched:
        many = aj.fit_many(models, key=key, chunk_size=400, **kwargs)
    else:
        many = aj.fit_many(models[2], key=key, num_fits=3, chunk_size=400, **kwargs)
    assert len(set(many.num_steps.tolist())) > 1 or many.converged.any()
    for i in range(3):
        single = aj.fit(models[i] if batched else models[2], key=jax.random.fold_in(key, i), progress=False,
                        chunk_size=400, init=None, **kwargs)  # fit_many starts at zero, like init=None
        assert many[i].num_steps == single.num_steps and many[i].stop_reason == single.stop_reason
        np.testing.assert_allclose(many[i].params.loc, single.params.loc, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(many[i].elbo, single.elbo, rtol=1e-4, atol=1e-3)
        assert np.all(np.isnan(many.elbo[i, many[i].num_steps:]))


def test_fit_many_over_ready_glms_keeps_them_glms(key):
    """A list of ready GLMs stacks into a ready GLM (not a plain Model), so `method="glm_exact"` runs
    batched and fit b equals `aj.fit` of model b with the same key (the exact objective has no noise)."""
    rng = np.random.default_rng(0)
    models = []
    for _ in range(3):
        x = rng.normal(size=(200, 3))
        models.append(aj.models.logistic_regression(x, (x[:, 0] + rng.normal(size=200) > 0) * 1.0))
    from advi_jax.run.many import stack_models

    assert type(stack_models(models)) is type(models[0])
    many = aj.fit_many(models, key=key, method="glm_exact", family="meanfield", progress=False)
    for b, model in enumerate(models):
        one = aj.fit(model, key=key, method="glm_exact", family="meanfield", progress=False)
        np.testing.assert_allclose(many.params.loc[b], one.params.loc, atol=1e-5)
        np.testing.assert_allclose(many.params.raw_scale[b], one.params.raw_scale, atol=1e-5)


def test_fit_many_over_negbin_glms_with_different_distinct_counts(key):
    """Negative-binomial GLMs whose distinct-count tables differ in length (`glm_more.distinct_counts`)
    stack (tables padded with zero counts) and each batched glm_exact fit equals its own `aj.fit`."""
    rng = np.random.default_rng(1)
    models = []
    for scale in (0.5, 6.0):  # few distinct counts, then many
        x = rng.normal(size=(150, 2))
        mu = scale * np.exp(0.4 * x[:, 0])
        models.append(aj.models.negbin_regression(x, rng.negative_binomial(2.0, 2.0 / (2.0 + mu))))
    sizes = [m.data["y_distinct"].shape[0] for m in models]
    assert sizes[0] < sizes[1]
    from advi_jax.run.many import stack_models

    stacked = stack_models(models)
    assert stacked.data["y_count"].shape == (2, sizes[1]) and int(stacked.data["y_count"][0].sum()) == 150
    many = aj.fit_many(models, key=key, method="glm_exact", family="fullrank", progress=False, diagnostics=False)
    for b, model in enumerate(models):
        one = aj.fit(model, key=key, method="glm_exact", family="fullrank", progress=False, diagnostics=False)
        np.testing.assert_allclose(many.params.loc[b], one.params.loc, atol=1e-4)


def test_fit_many_stops_a_nonfinite_fit_and_finishes_the_others(key):
    models = _normal_mean_models(3)
    bad = models[1].data.at[0, 0].set(jnp.nan)
    models[1] = aj.Model(_normal_mean_log_joint, _MU_SUPPORT, data=bad)
    with pytest.raises(ValueError, match=r"fits \[1\]"):
        aj.fit_many(models, key=key, num_steps=200)
    many = aj.fit_many(models, key=key, num_steps=200, max_consecutive_nonfinite=20, check=False)
    assert many.num_steps.tolist() == [200, 20, 200]
    assert many.stop_codes.tolist() == [0, 3, 0] and "non-finite" in many[1].stop_reason
    assert many[1].num_nonfinite == 20 and np.all(np.isfinite(many[1].params.loc))


def test_fit_many_compiles_once(key):
    models = _normal_mean_models(4)
    opt = optax.adam(0.01)
    aj.fit_many(models, key=key, num_steps=300, optimizer=opt, chunk_size=100)
    size = aj.run.num_traces()
    checks = many_module._log_density_many._cache_size()  # the initial-point check's program
    other = [aj.Model(_normal_mean_log_joint, _MU_SUPPORT, data=m.data + 1.0) for m in models]
    aj.fit_many(other, key=jax.random.fold_in(key, 1), num_steps=500, optimizer=opt, chunk_size=100)
    assert aj.run.num_traces() == size
    assert many_module._log_density_many._cache_size() == checks >= 1


def test_fit_many_rejects_bad_arguments(key):
    models = _normal_mean_models(2)
    with pytest.raises(ValueError, match="num_fits"):
        aj.fit_many(models[0], key=key)
    with pytest.raises(ValueError, match="num_fits=3"):
        aj.fit_many(models, key=key, num_fits=3)
    short = aj.Model(_normal_mean_log_joint, _MU_SUPPORT, data=jnp.zeros((10, 2)))
    with pytest.raises(ValueError, match="shapes"):
        aj.stack_models([models[0], short])
    with pytest.raises(ValueError, match="log_joint or support"):
        aj.stack_models([models[0], aj.Model(lambda p, y: 0.0, _MU_SUPPORT, data=models[0].data)])
