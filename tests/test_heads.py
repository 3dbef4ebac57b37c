"""Projection head (§D.3.2) and label head (§D.1) against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from ecgan_jax.models.heads import LabelHead, ProjectionHead


def test_projection_head_matches_numpy_and_is_unit_norm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    head = ProjectionHead(dim=5)
    params = head.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.bfloat16))["params"]
    assert params["Dense_0"]["kernel"].shape == (6, 6)
    assert params["Dense_1"]["kernel"].shape == (6, 5)
    # non-zero biases so that the bias path is checked too
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    out = head.apply({"params": params}, jnp.asarray(x))
    assert out.shape == (2, 3, 4, 5) and out.dtype == jnp.float32
    p = jax.tree_util.tree_map(np.asarray, params)
    h = np.maximum(x.reshape(-1, 6) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    z = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out).reshape(-1, 5), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=-1), 1.0, rtol=1e-5)
    # bfloat16 input is computed in float32
    assert head.apply({"params": params}, jnp.asarray(x, jnp.bfloat16)).dtype == jnp.float32


def test_projection_head_zero_vector_has_finite_gradient():
    head = ProjectionHead(dim=3)
    x = jnp.zeros((1, 1, 1, 4))
    params = jax.tree_util.tree_map(jnp.zeros_like, head.init(jax.random.PRNGKey(0), x))
    grads = jax.grad(lambda v: head.apply(v, x).sum())(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


def test_label_head_matches_scipy_convolutions():
    rng = np.random.default_rng(1)
    img = rng.uniform(-1, 1, size=(1, 5, 6, 3)).astype(np.float32)
    head = LabelHead(num_classes=4, hidden=3)
    params = head.init(jax.random.PRNGKey(1), img)["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.05, params)
    out = np.asarray(head.apply({"params": params}, img))
    assert out.shape == (1, 5, 6, 4)
    p = jax.tree_util.tree_map(np.asarray, params)

    def conv(x, kernel, bias):  # x (H, W, Cin), kernel (kh, kw, Cin, Cout), zero 'same' pad
        out = np.zeros(x.shape[:2] + (kernel.shape[-1],))
        for o in range(kernel.shape[-1]):
            for i in range(kernel.shape[2]):
                out[..., o] += signal.correlate2d(x[..., i], kernel[..., i, o], mode="same")
        return out + bias

    x = np.maximum(conv(img[0], p["Conv_0"]["kernel"], p["Conv_0"]["bias"]), 0)
    x = np.maximum(conv(x, p["Conv_1"]["kernel"], p["Conv_1"]["bias"]), 0)
    want = conv(x, p["Conv_2"]["kernel"], p["Conv_2"]["bias"])
    np.testing.assert_allclose(out[0], want, rtol=1e-4, atol=1e-5)


def test_heads_reject_bad_shapes():
    with pytest.raises(ValueError, match="ProjectionHead"):
        ProjectionHead(dim=2).init(jax.random.PRNGKey(0), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="LabelHead"):
        LabelHead(num_classes=2).init(jax.random.PRNGKey(0), jnp.zeros((2, 3)))
