"""The blocked weight-gradient convolution equals XLA's convolution VJP (xla_cpu/conv.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax.xla_cpu.conv import conv2d


@pytest.mark.parametrize(
    "batch,h,w,cin,cout,k,stride,pad,block",
    [
        (2, 37, 29, 5, 7, 3, 1, 1, 64),  # rows not dividing the block: padded blocks
        (2, 37, 29, 7, 5, 3, 1, 1, 64),  # fewer outputs than inputs: windows of dy
        (3, 20, 20, 5, 3, 4, 1, 2, 1),  # windows of dy, 4x4 with padding 2, one row per block
        (2, 12, 10, 6, 2, 3, 1, 0, 16),  # windows of dy, no padding (dy padded by 2)
        (1, 33, 65, 6, 4, 4, 2, 2, 100),  # the discriminator's 4x4 stride-2 layers
        (3, 20, 20, 3, 5, 4, 1, 2, 1),  # 4x4 stride 1, one row per block
        (2, 16, 16, 8, 8, 1, 1, 0, 8192),  # 1x1 (SPADE shortcut), a single block
    ],
)
def test_blocked_gradients_equal_xla(batch, h, w, cin, cout, k, stride, pad, block):
    kx, kw_, kt = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, h, w, cin))
    kernel = jax.random.normal(kw_, (k, k, cin, cout))

    def grads(impl):
        def loss(x, kern):
            y = conv2d(x, kern, stride=stride, padding=pad, impl=impl, block_pixels=block)
            t = jax.random.normal(kt, y.shape)
            return jnp.sum(jnp.sin(y) * t)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)

    (v_ref, (dx_ref, dw_ref)), (v, (dx, dw)) = grads("xla"), grads("blocked")
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(dw_ref).max()))


@pytest.mark.parametrize(
    "k,cin,cout,s,p",
    [(4, 3, 2, 2, 2), (3, 5, 2, 1, 1), (4, 5, 2, 1, 2), (3, 2, 5, 1, 1)],
    ids=["stride2", "dy_windows_3x3", "dy_windows_4x4", "x_windows_3x3"],
)
def test_weight_gradient_against_numpy(k, cin, cout, s, p):
    """dW[i,j,c,o] = Σ_{b,y,x} xpad[b, y*s+i, x*s+j, c] · dy[b,y,x,o], written as loops."""
    from ecgan_jax.xla_cpu.conv import _use_dy_windows

    assert _use_dy_windows((k, k, cin, cout), s, p) == (s == 1 and cout < cin)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 9, cin)).astype(np.float32)
    kernel = rng.normal(size=(k, k, cin, cout)).astype(np.float32)
    y, vjp = jax.vjp(
        lambda kern: conv2d(x, kern, stride=s, padding=p, impl="blocked", block_pixels=3), kernel
    )
    dy = rng.normal(size=y.shape).astype(np.float32)
    (dw,) = vjp(jnp.asarray(dy))
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    ref = np.zeros_like(kernel, dtype=np.float64)
    for i in range(k):
        for j in range(k):
            win = xp[:, i : i + s * y.shape[1] : s, j : j + s * y.shape[2] : s, :]
            ref[i, j] = np.einsum("byxc,byxo->co", win, dy)
    np.testing.assert_allclose(dw, ref, rtol=1e-4, atol=1e-4)


def test_bad_impl():
    with pytest.raises(ValueError, match="allowed: xla, blocked"):
        conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="fast")


@pytest.mark.parametrize("cin,cout", [(6, 4), (4, 6)], ids=["dy_windows", "x_windows"])
def test_wide_layers_use_smaller_blocks_with_the_same_gradient(monkeypatch, cin, cout):
    # BLOCK_ELEMENTS caps kh·kw·C × pixels per block (C the windowed side's channels); a tiny
    # cap forces one row per block here (9·4 = 36 window rows × 11 pixels > 64), which must not
    # change the result.
    from ecgan_jax.xla_cpu import conv as conv_mod

    x = jax.random.normal(jax.random.key(0), (1, 9, 11, cin))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))

    def dw():
        return jax.grad(
            lambda k: jnp.sum(jnp.sin(conv2d(x, k, padding=1, impl="blocked", block_pixels=8192)))
        )(kernel)

    full = dw()
    monkeypatch.setattr(conv_mod, "BLOCK_ELEMENTS", 64)
    np.testing.assert_allclose(dw(), full, rtol=1e-5, atol=1e-5)
    ref = jax.grad(lambda k: jnp.sum(jnp.sin(conv2d(x, k, padding=1, impl="xla"))))(kernel)
    np.testing.assert_allclose(dw(), ref, rtol=1e-4, atol=1e-4)
