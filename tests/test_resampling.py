"""PyTorch-exact resampling (ecgan_jax/eval/resampling.py) against torch's own ops."""

import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax.eval import inception, resampling


def test_bilinear_matrix_without_scale_is_inceptions_rule():
    for n_in, n_out in ((7, 13), (13, 7), (299, 256), (5, 5)):
        np.testing.assert_array_equal(
            resampling.bilinear_matrix(n_in, n_out), inception.bilinear_matrix(n_in, n_out)
        )


def test_adaptive_pool_matrix_by_hand():
    # AdaptiveAvgPool of 5 -> 3: bins [0, 2), [1, 4), [3, 5).
    want = np.array([[1, 1, 0, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 1]]) / [[2], [3], [2]]
    np.testing.assert_allclose(resampling.adaptive_pool_matrix(5, 3), want, rtol=1e-6)


def test_pool_output_size_and_errors():
    # ceil mode drops a last window that would start in the right padding.
    assert resampling.pool_output_size(3, 2, 2, 1, ceil_mode=True) == 2
    assert resampling.pool_output_size(4, 3, 2, 1, ceil_mode=True) == 3
    assert resampling.pool_output_size(6, 3, 2, 1, ceil_mode=False) == 3
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        resampling.resize_bilinear(jnp.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="is empty"):
        resampling.resize_bilinear(jnp.zeros((1, 1, 4, 1)), scale_factor=0.5)


@pytest.mark.torch
def test_ops_match_torch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    F = torch.nn.functional
    rng = np.random.default_rng(0)

    def nchw(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2)

    def nhwc(t):
        return t.permute(0, 2, 3, 1).numpy()

    for h, w in ((9, 13), (37, 50), (16, 16)):
        x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        for size in ((5, 7), (h, w + 3), (2 * h + 1, 3 * w)):
            want = nhwc(F.interpolate(nchw(x), size=size, mode="bilinear", align_corners=False))
            got = resampling.resize_bilinear(jnp.asarray(x), size)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
            want = nhwc(F.interpolate(nchw(x), size=size, mode="bilinear", antialias=True))
            got = resampling.resize_antialiased(jnp.asarray(x), size)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
        for s in (0.5, 0.75):
            t = F.interpolate(nchw(x), scale_factor=s, mode="bilinear", align_corners=False)
            got = resampling.resize_bilinear(jnp.asarray(x), scale_factor=s)
            np.testing.assert_allclose(np.asarray(got), nhwc(t), rtol=1e-5, atol=1e-5)
        for s in (1, 2, 3, 6):
            want = nhwc(F.adaptive_avg_pool2d(nchw(x), s))
            got = resampling.adaptive_avg_pool(jnp.asarray(x), s)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
        for ceil in (False, True):
            want = nhwc(F.max_pool2d(nchw(x), 3, 2, 1, ceil_mode=ceil))
            got = resampling.max_pool(jnp.asarray(x), 3, 2, 1, ceil_mode=ceil)
            np.testing.assert_array_equal(np.asarray(got), want)
        want = nhwc(F.max_pool2d(nchw(x), 2, 2, 1, ceil_mode=True))  # last window dropped
        got = resampling.max_pool(jnp.asarray(x), 2, 2, 1, ceil_mode=True)
        np.testing.assert_array_equal(np.asarray(got), want)
        want = nhwc(F.max_pool2d(nchw(x), 2, 3, 0))  # floor mode cropping trailing rows
        np.testing.assert_array_equal(np.asarray(resampling.max_pool(jnp.asarray(x), 2, 3)), want)
