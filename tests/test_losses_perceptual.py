"""VGG perceptual loss over feature lists vs numpy (docs/DESIGN.md §4.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ecgan_jax.losses as L


def features(rng):
    shapes = [(2, 8, 8, 4), (2, 4, 4, 8), (2, 2, 2, 16), (2, 1, 1, 16), (2, 1, 1, 16)]
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


def test_matches_reference_and_weights():
    rng = np.random.default_rng(0)
    x, y = features(rng), features(rng)
    want = 0.0
    for w, a, b in zip((1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), x, y, strict=True):
        want += w * np.mean(np.abs(a.astype(np.float64) - b))
    got = L.vgg_perceptual_loss(
        x_features=[jnp.asarray(a) for a in x], y_features=[jnp.asarray(b) for b in y]
    )
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    assert L.VGG_LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    custom = L.vgg_perceptual_loss(x_features=x[:1], y_features=y[:1], weights=(2.0,))
    np.testing.assert_allclose(float(custom), 2 * np.mean(np.abs(x[0] - y[0])), rtol=1e-5)


def test_target_features_get_no_gradient():
    rng = np.random.default_rng(1)
    x, y = features(rng), features(rng)
    gx, gy = jax.grad(
        lambda a, b: L.vgg_perceptual_loss(x_features=a, y_features=b), argnums=(0, 1)
    )([jnp.asarray(a) for a in x], [jnp.asarray(b) for b in y])
    assert all(float(jnp.abs(g).max()) == 0 for g in gy)
    # d/dx of w·mean|x − y| = w·sign(x − y)/size
    np.testing.assert_allclose(np.asarray(gx[4]), np.sign(x[4] - y[4]) / x[4].size, rtol=1e-6)


def test_mismatches_are_rejected():
    rng = np.random.default_rng(2)
    x, y = features(rng), features(rng)
    with pytest.raises(ValueError, match="same length"):
        L.vgg_perceptual_loss(x_features=x, y_features=y[:4])
    with pytest.raises(ValueError, match="shapes differ"):
        L.vgg_perceptual_loss(x_features=x, y_features=[y[1]] + y[1:])
