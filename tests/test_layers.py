"""Tests of ecgan_jax.models.layers against hand-made cases and independent numpy references.

PyTorch semantics being checked (docs/DESIGN.md §2.2, §3, §D.2): the nearest-neighbour index rule
src = floor(dst · in/out), nn.Upsample(scale_factor=2), SyncBatchNorm(affine=False) with momentum
0.1 and the unbiased running variance (over the global batch), spectral norm with σ = uᵀ W_mat v
on the OIHW-flattened weight and one power iteration per training call, InstanceNorm2d and
AvgPool2d(3, 2, 1, count_include_pad=False).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ecgan_jax.models import layers

# ---------------------------------------------------------------------------------------------
# Independent numpy references.


def np_conv_nhwc_oihw(x, w_oihw, stride=1, pad=0):
    """PyTorch's Conv2d (cross-correlation, symmetric zero padding) on NHWC x, OIHW weight."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    w = np.asarray(w_oihw, np.float64)
    o, _, kh, kw = w.shape
    b, h, wd, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((b, ho, wo, o))
    for a in range(kh):
        for c in range(kw):
            rows = slice(a, a + stride * (ho - 1) + 1, stride)
            cols = slice(c, c + stride * (wo - 1) + 1, stride)
            patch = x[:, rows, cols]
            out += np.einsum("bhwi,oi->bhwo", patch, w[:, :, a, c])
    return out


def np_normalize(v):
    return v / max(np.linalg.norm(v), 1e-12)


def np_avg_pool_exclude_pad(x, k=3, s=2, p=1):
    """AvgPool2d(k, s, p, count_include_pad=False) by explicit window loops, NHWC."""
    b, h, w, c = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((b, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * s - p, j * s - p
            rows = [r for r in range(r0, r0 + k) if 0 <= r < h]
            cols = [q for q in range(c0, c0 + k) if 0 <= q < w]
            out[:, i, j] = x[:, rows][:, :, cols].mean(axis=(1, 2))
    return out


# ---------------------------------------------------------------------------------------------
# nearest_resize / upsample2x

# (in, out) -> source indices, written out by hand from floor(dst · in / out).
HAND_INDICES = {
    (5, 3): [0, 1, 3],
    (3, 5): [0, 0, 1, 1, 2],
    (4, 2): [0, 2],
    (2, 4): [0, 0, 1, 1],
    (7, 3): [0, 2, 4],
    (6, 4): [0, 1, 3, 4],
    (3, 3): [0, 1, 2],
    (1, 3): [0, 0, 0],
    (4, 1): [0],
    (5, 10): [0, 0, 1, 1, 2, 2, 3, 3, 4, 4],
    (8, 3): [0, 2, 5],
}


def _coords(h, w):
    """(1,h,w,2) float array whose channels are the row and the column index."""
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([r, c], -1)[None].astype(np.float32)


@pytest.mark.parametrize(("n_in", "n_out"), sorted(HAND_INDICES))
def test_nearest_resize_hand_cases_each_axis(n_in, n_out):
    expected = np.asarray(HAND_INDICES[(n_in, n_out)])
    # The exact-rational formula gives the same lists (a check on the hand-written table).
    np.testing.assert_array_equal(expected, (np.arange(n_out) * n_in) // n_out)
    other = 3
    # Along H only.
    out = np.asarray(layers.nearest_resize(jnp.asarray(_coords(n_in, other)), (n_out, other)))
    assert out.shape == (1, n_out, other, 2)
    np.testing.assert_array_equal(out[0, :, 0, 0], expected)
    np.testing.assert_array_equal(out[0, 0, :, 1], np.arange(other))
    # Along W only.
    out = np.asarray(layers.nearest_resize(jnp.asarray(_coords(other, n_in)), (other, n_out)))
    assert out.shape == (1, other, n_out, 2)
    np.testing.assert_array_equal(out[0, 0, :, 1], expected)
    np.testing.assert_array_equal(out[0, :, 0, 0], np.arange(other))


def test_nearest_resize_both_axes_and_batch_channels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 5, 3)).astype(np.float32)
    out = np.asarray(layers.nearest_resize(jnp.asarray(x), (3, 10)))
    rows, cols = HAND_INDICES[(7, 3)], HAND_INDICES[(5, 10)]
    np.testing.assert_array_equal(out, x[:, rows][:, :, cols])
    # Integer dtype (label maps) passes through unchanged in kind.
    lab = jnp.asarray(rng.integers(0, 9, size=(1, 6, 4, 1)), jnp.int32)
    out = layers.nearest_resize(lab, (4, 2))
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), np.asarray(lab)[:, [0, 1, 3, 4]][:, :, [0, 2]])


@pytest.mark.torch
def test_nearest_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch", reason="torch compares F.interpolate(mode='nearest')")
    interp = torch.nn.functional.interpolate
    sizes = list(range(1, 25)) + [36, 64, 100, 256]
    # The index rule over a wide sweep (cheap: no JAX compile per shape) ...
    for n_in in sizes:
        for n_out in sizes:
            src = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in)
            ref = interp(src, size=n_out, mode="nearest").numpy().ravel().astype(np.int64)
            np.testing.assert_array_equal(
                layers.nearest_indices(n_in, n_out), ref, err_msg=f"{n_in}->{n_out}"
            )
    # ... and the resize itself on both axes, covering the repeat, strided-slice and gather paths.
    rng = np.random.default_rng(1)
    pairs = [(5, 3), (3, 5), (4, 2), (2, 4), (7, 3), (6, 4), (14, 20), (36, 8), (64, 256), (9, 9)]
    for n_in, n_out in pairs:
        x = rng.normal(size=(1, n_in, n_out, 2)).astype(np.float32)
        # H goes n_in -> n_out, W goes n_out -> n_in.
        ref = interp(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(n_out, n_in), mode="nearest")
        out = np.asarray(layers.nearest_resize(jnp.asarray(x), (n_out, n_in)))
        np.testing.assert_array_equal(
            out, ref.numpy().transpose(0, 2, 3, 1), err_msg=f"{n_in}->{n_out}"
        )


def test_upsample2x():
    x = np.arange(2 * 2 * 3 * 2, dtype=np.float32).reshape(2, 2, 3, 2)
    out = np.asarray(layers.upsample2x(jnp.asarray(x)))
    np.testing.assert_array_equal(out, np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))
    # Hand case: one 2x2 channel.
    small = jnp.asarray([[[[1.0], [2.0]], [[3.0], [4.0]]]])
    expected = [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    np.testing.assert_array_equal(np.asarray(layers.upsample2x(small))[0, :, :, 0], expected)


# ---------------------------------------------------------------------------------------------
# SyncBatchNorm


def _np_bn_train(x, mean0, var0, momentum=0.1, eps=1e-5):
    x = np.asarray(x, np.float64)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mean = x.mean(axis=(0, 1, 2))
    var_biased = ((x - mean) ** 2).mean(axis=(0, 1, 2))
    var_unbiased = var_biased * n / (n - 1)
    y = (x - mean) / np.sqrt(var_biased + eps)
    new_mean = (1 - momentum) * mean0 + momentum * mean
    new_var = (1 - momentum) * var0 + momentum * var_unbiased
    return y, new_mean, new_var


def _bn_stats(rng, c):
    return {
        "mean": rng.normal(size=c).astype(np.float32) * 0.3,
        "var": rng.uniform(0.5, 2.0, size=c).astype(np.float32),
    }


def test_sync_batchnorm_train_and_eval_match_numpy():
    rng = np.random.default_rng(2)
    # Small n = 2·2·3 = 12 so that biased and unbiased variance differ by 12/11.
    x = (rng.normal(size=(2, 2, 3, 4)) * 3 + 1.5).astype(np.float32)
    bn = layers.SyncBatchNorm()
    variables = bn.init(jax.random.key(0), jnp.asarray(x), use_running_average=False)
    assert set(variables) == {"batch_stats"}  # parameter-free (affine=False)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(4))
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(4))
    stats = _bn_stats(rng, 4)

    y, upd = bn.apply(
        {"batch_stats": stats}, jnp.asarray(x), use_running_average=False, mutable=["batch_stats"]
    )
    ref_y, ref_mean, ref_var = _np_bn_train(x, stats["mean"], stats["var"])
    np.testing.assert_allclose(np.asarray(y), ref_y, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["var"], ref_var, rtol=1e-5, atol=1e-6)
    # The biased variance would be visibly different.
    biased_update = 0.9 * stats["var"] + 0.1 * x.astype(np.float64).var(axis=(0, 1, 2))
    assert np.abs(biased_update - np.asarray(upd["batch_stats"]["var"])).max() > 1e-2

    # Eval uses the running statistics, and does not touch them.
    y_eval = bn.apply({"batch_stats": stats}, jnp.asarray(x), use_running_average=True)
    ref_eval = (x - stats["mean"]) / np.sqrt(stats["var"].astype(np.float64) + 1e-5)
    np.testing.assert_allclose(np.asarray(y_eval), ref_eval, atol=1e-5)


def test_sync_batchnorm_bfloat16_keeps_float32_stats():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 3, 5)).astype(np.float32)
    bn = layers.SyncBatchNorm(dtype=jnp.bfloat16)
    stats = _bn_stats(rng, 5)
    y, upd = bn.apply(
        {"batch_stats": stats},
        jnp.asarray(x, jnp.bfloat16),
        use_running_average=False,
        mutable=["batch_stats"],
    )
    assert y.dtype == jnp.bfloat16
    assert upd["batch_stats"]["var"].dtype == jnp.float32
    ref_y, _, ref_var = _np_bn_train(
        x.astype(jnp.bfloat16).astype(np.float32), stats["mean"], stats["var"]
    )
    np.testing.assert_allclose(np.asarray(y, np.float32), ref_y, atol=5e-2)
    np.testing.assert_allclose(upd["batch_stats"]["var"], ref_var, rtol=1e-4)


def test_sync_batchnorm_sharded_batch_equals_single_device():
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 (fake) devices; conftest sets 8")
    rng = np.random.default_rng(4)
    # Each device's shard has a different mean: per-device statistics would differ.
    x = rng.normal(size=(8, 3, 4, 6)).astype(np.float32)
    x += np.repeat(np.arange(4), 2).astype(np.float32)[:, None, None, None] * 2.0
    bn = layers.SyncBatchNorm()
    stats = _bn_stats(rng, 6)

    def train(stats, x):
        return bn.apply(
            {"batch_stats": stats}, x, use_running_average=False, mutable=["batch_stats"]
        )

    mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
    xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))
    stats_r = jax.device_put(stats, NamedSharding(mesh, P()))
    assert len(xs.sharding.device_set) == 4
    y_sh, upd_sh = jax.jit(train)(stats_r, xs)
    y_1, upd_1 = jax.jit(train)(stats, jnp.asarray(x))

    np.testing.assert_allclose(np.asarray(y_sh), np.asarray(y_1), atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(upd_sh["batch_stats"][k], upd_1["batch_stats"][k], rtol=1e-5)
    ref_y, ref_mean, ref_var = _np_bn_train(x, stats["mean"], stats["var"])
    np.testing.assert_allclose(np.asarray(y_sh), ref_y, atol=1e-5)
    np.testing.assert_allclose(upd_sh["batch_stats"]["mean"], ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upd_sh["batch_stats"]["var"], ref_var, rtol=1e-5)
    # Per-shard statistics would not be this.
    per_shard_mean = x[:2].mean(axis=(0, 1, 2))
    assert np.abs(per_shard_mean - x.mean(axis=(0, 1, 2))).max() > 1.0


# ---------------------------------------------------------------------------------------------
# SpectralConv


def _spectral_case(rng, cin, cout, k):
    w_oihw = rng.normal(size=(cout, cin, k, k)).astype(np.float32)
    u = np_normalize(rng.normal(size=cout)).astype(np.float32)
    v = np_normalize(rng.normal(size=cin * k * k)).astype(np.float32)
    bias = rng.normal(size=cout).astype(np.float32)
    variables = {
        "params": {"kernel": jnp.asarray(w_oihw.transpose(2, 3, 1, 0)), "bias": jnp.asarray(bias)},
        "spectral": {"u": jnp.asarray(u), "v": jnp.asarray(v)},
    }
    return w_oihw, u, v, bias, variables


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "pad"), [(3, 5, 3, 1, 1), (4, 6, 4, 2, 2)])
def test_spectral_conv_eval_uses_stored_u_v(cin, cout, k, stride, pad):
    rng = np.random.default_rng(5)
    w, u, v, bias, variables = _spectral_case(rng, cin, cout, k)
    x = rng.normal(size=(2, 7, 6, cin)).astype(np.float32)
    mod = layers.SpectralConv(cout, k, stride=stride, padding=pad)
    init_vars = mod.init(jax.random.key(0), jnp.asarray(x), update_stats=False)
    assert init_vars["params"]["kernel"].shape == (k, k, cin, cout)
    assert init_vars["spectral"]["u"].shape == (cout,)
    assert init_vars["spectral"]["v"].shape == (cin * k * k,)

    y = mod.apply(variables, jnp.asarray(x), update_stats=False)
    sigma = u.astype(np.float64) @ w.reshape(cout, -1).astype(np.float64) @ v
    ref = np_conv_nhwc_oihw(x, w / sigma, stride, pad) + bias
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
    # σ really depends on the stored vectors (no hidden power iteration in eval mode).
    assert abs(sigma - np.linalg.svd(w.reshape(cout, -1), compute_uv=False)[0]) > 1e-2
    # Flattening the kernel in HWIO order instead of OIHW would give another σ.
    wrong = u @ w.transpose(0, 2, 3, 1).reshape(cout, -1) @ v
    assert abs(wrong - sigma) > 1e-3


def test_spectral_conv_train_does_one_power_iteration():
    rng = np.random.default_rng(6)
    cin, cout, k = 3, 4, 3
    w, u, v, bias, variables = _spectral_case(rng, cin, cout, k)
    x = rng.normal(size=(1, 5, 5, cin)).astype(np.float32)
    mod = layers.SpectralConv(cout, k)
    y, upd = mod.apply(variables, jnp.asarray(x), update_stats=True, mutable=["spectral"])
    w_mat = w.reshape(cout, -1).astype(np.float64)
    v1 = np_normalize(w_mat.T @ u)
    u1 = np_normalize(w_mat @ v1)
    np.testing.assert_allclose(upd["spectral"]["v"], v1, atol=1e-6)
    np.testing.assert_allclose(upd["spectral"]["u"], u1, atol=1e-6)
    sigma1 = u1 @ w_mat @ v1
    ref = np_conv_nhwc_oihw(x, w / sigma1, 1, 1) + bias
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
    # A second training call continues from the stored vectors (one more iteration).
    _, upd2 = mod.apply(
        {"params": variables["params"], **upd}, jnp.asarray(x), update_stats=True, mutable=True
    )
    v2 = np_normalize(w_mat.T @ u1)
    np.testing.assert_allclose(upd2["spectral"]["u"], np_normalize(w_mat @ v2), atol=1e-6)
    # Two iterations from the start would not equal one.
    assert np.abs(np_normalize(w_mat @ v2) - u1).max() > 1e-4


def test_spectral_conv_no_bias_and_gradient_flows_through_sigma():
    rng = np.random.default_rng(7)
    w, u, v, _, variables = _spectral_case(rng, 2, 3, 1)
    del variables["params"]["bias"]
    mod = layers.SpectralConv(3, 1, use_bias=False)
    x = jnp.asarray(rng.normal(size=(1, 2, 2, 2)).astype(np.float32))
    assert "bias" not in mod.init(jax.random.key(0), x, update_stats=False)["params"]

    def loss(kernel):
        out = mod.apply(
            {"params": {"kernel": kernel}, "spectral": variables["spectral"]}, x, update_stats=False
        )
        return out.sum()

    # d/dW of sum(conv(x, W/σ(W))) with σ = uᵀWv: finite differences in float64 numpy.
    def np_loss(w_oihw):
        s = u @ w_oihw.reshape(3, -1) @ v
        return np_conv_nhwc_oihw(np.asarray(x), w_oihw / s).sum()

    g = np.asarray(jax.grad(loss)(variables["params"]["kernel"])).transpose(3, 2, 0, 1)
    w64 = w.astype(np.float64)
    num = np.zeros_like(w64)
    for idx in np.ndindex(w64.shape):
        d = np.zeros_like(w64)
        d[idx] = 1e-6
        num[idx] = (np_loss(w64 + d) - np_loss(w64 - d)) / 2e-6
    np.testing.assert_allclose(g, num, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# instance_norm, avg_pool_exclude_pad


def test_instance_norm_matches_numpy_with_borders():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 4, 5, 2)).astype(np.float32) * 2 + 3
    x[1, :, :, 0] = 7.0  # constant channel: output 0, not NaN
    x[2, :, :, 1] *= 1e-3  # variance ~4e-6, comparable to eps = 1e-5
    out = np.asarray(layers.instance_norm(jnp.asarray(x)))
    xd = x.astype(np.float64)
    mean = xd.mean(axis=(1, 2), keepdims=True)
    var = xd.var(axis=(1, 2), keepdims=True)
    ref = (xd - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    np.testing.assert_array_equal(out[1, :, :, 0], 0.0)
    no_eps = (xd[2] - mean[2]) / np.sqrt(var[2])
    assert np.abs(out[2, :, :, 1] - no_eps[:, :, 1]).max() > 0.1  # eps matters here
    # 1x1 maps: everything normalises to 0.
    np.testing.assert_array_equal(np.asarray(layers.instance_norm(jnp.ones((2, 1, 1, 3)))), 0.0)


@pytest.mark.parametrize("hw", [(5, 6), (4, 7), (1, 1), (2, 3), (9, 9)])
def test_avg_pool_exclude_pad_matches_numpy(hw):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, *hw, 3)).astype(np.float32)
    out = np.asarray(layers.avg_pool_exclude_pad(jnp.asarray(x)))
    ref = np_avg_pool_exclude_pad(x)
    assert out.shape == ref.shape == (2, (hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1, 3)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_avg_pool_exclude_pad_hand_case():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = np.asarray(layers.avg_pool_exclude_pad(jnp.asarray(x)))[0, :, :, 0]
    # Corner (0,0): window rows/cols {0,1}: mean(0,1,4,5) = 2.5 (count_include_pad=True: 10/9).
    # (0,1): rows {0,1}, cols {1,2,3}: mean(1,2,3,5,6,7) = 4.
    # (1,0): rows {1,2,3}, cols {0,1}: mean(4,5,8,9,12,13) = 8.5. (1,1): rows/cols {1,2,3}: 10.
    np.testing.assert_allclose(out, [[2.5, 4.0], [8.5, 10.0]])


@pytest.mark.torch
def test_avg_pool_exclude_pad_matches_torch():
    torch = pytest.importorskip("torch", reason="torch compares AvgPool2d(count_include_pad=False)")
    rng = np.random.default_rng(10)
    for hw in [(6, 10), (7, 5), (3, 3)]:
        x = rng.normal(size=(1, *hw, 2)).astype(np.float32)
        ref = torch.nn.functional.avg_pool2d(
            torch.from_numpy(x.transpose(0, 3, 1, 2)), 3, 2, 1, count_include_pad=False
        ).numpy()
        out = np.asarray(layers.avg_pool_exclude_pad(jnp.asarray(x)))
        np.testing.assert_allclose(out, ref.transpose(0, 2, 3, 1), atol=1e-6)
