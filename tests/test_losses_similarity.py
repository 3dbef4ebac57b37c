"""Similarity (label-branch cross-entropy) loss vs numpy (docs/DESIGN.md §D.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ecgan_jax.losses as L


def test_matches_reference_with_ignore_pixels():
    rng = np.random.default_rng(0)
    logits = (3 * rng.normal(size=(2, 4, 5, 6))).astype(np.float32)
    labels = rng.integers(-1, 6, size=(2, 4, 5)).astype(np.int32)
    terms = []
    for idx in np.ndindex(labels.shape):
        if labels[idx] >= 0:
            z = logits[idx].astype(np.float64)
            terms.append(-(z[labels[idx]] - np.log(np.exp(z).sum())))
    got = L.similarity_loss(
        logits=jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), labels=labels
    )
    np.testing.assert_allclose(
        float(L.similarity_loss(logits=logits, labels=labels)), np.mean(terms), rtol=1e-5
    )
    assert got.dtype == jnp.float32


def test_all_ignore_is_zero_with_finite_grad():
    logits = jnp.ones((1, 2, 2, 3))
    labels = -jnp.ones((1, 2, 2), jnp.int32)
    value, grad = jax.value_and_grad(lambda z: L.similarity_loss(logits=z, labels=labels))(logits)
    assert float(value) == 0.0 and float(jnp.abs(grad).max()) == 0.0


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\(B, H, W, K\)"):
        L.similarity_loss(logits=jnp.zeros((1, 2, 2, 3)), labels=jnp.zeros((1, 2, 3), jnp.int32))
