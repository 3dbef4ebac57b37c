"""ecgan_jax.bitmask: ReLU, 2×2 max-pool and |x| whose backward pass keeps bits, not floats."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax.xla_cpu import bitmask


def _plain_pool(x):
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


PAIRS = {
    "relu": (bitmask.relu, jax.nn.relu),
    "max_pool_2x2": (bitmask.max_pool_2x2, _plain_pool),
    "abs": (bitmask.abs_, jnp.abs),
}


def _tied_input(shape, seed=0):
    """Small integers: many zeros and many tied window maxima."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(-2, 3, size=shape), jnp.float32)


@pytest.mark.parametrize("channels", [1, 7, 8, 13, 64])
def test_pack_unpack_roundtrip(channels):
    rng = np.random.default_rng(channels)
    mask = rng.random((3, 5, channels)) < 0.5
    packed = bitmask.pack_bits(jnp.asarray(mask))
    assert packed.dtype == jnp.uint8 and packed.shape == (3, 5, -(-channels // 8))
    np.testing.assert_array_equal(np.asarray(bitmask.unpack_bits(packed, channels)), mask)


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("shape", [(2, 6, 10, 16), (1, 7, 5, 13)])
def test_values_and_gradients_equal_plain_jax(name, shape):
    ours, plain = PAIRS[name]
    x = _tied_input(shape) + jnp.asarray(
        np.random.default_rng(1).normal(size=shape) * (name == "relu") * 0.1, jnp.float32
    )
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(plain(x)))
    cot = jnp.asarray(np.random.default_rng(2).normal(size=plain(x).shape), jnp.float32)
    (g_ours,) = jax.vjp(ours, x)[1](cot)
    (g_plain,) = jax.vjp(plain, x)[1](cot)
    np.testing.assert_allclose(np.asarray(g_ours), np.asarray(g_plain), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_nan_inputs_give_nan_values(name):
    ours, plain = PAIRS[name]
    x = _tied_input((1, 4, 4, 8)).at[0, 1, 1, 3].set(jnp.nan)
    np.testing.assert_array_equal(np.isnan(ours(x)), np.isnan(plain(x)))
    assert np.isnan(np.asarray(ours(x))).any()


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_backward_keeps_only_bits(name):
    ours, _ = PAIRS[name]
    x = _tied_input((2, 8, 8, 64))
    residuals = jax.tree_util.tree_leaves(jax.vjp(ours, x)[1])
    assert residuals and all(r.dtype == jnp.uint8 for r in residuals)
    assert sum(r.size for r in residuals) <= x.size // 8


def test_compiled_backward_holds_less_than_plain_relu():
    # XLA fuses a bool residual's comparison back into the backward pass and keeps the float32
    # input instead; the packed bits must survive compilation.
    def net(relu):
        def f(w, x):
            return jnp.sum(jnp.sin(relu(relu(x @ w) @ w)))

        return jax.jit(jax.grad(f)).lower(jnp.ones((256, 256)), jnp.ones((1024, 256))).compile()

    def temp(compiled):
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp(net(bitmask.relu)) < temp(net(jax.nn.relu))
