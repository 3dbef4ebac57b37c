"""Building blocks with the authors' PyTorch semantics (docs/DESIGN.md §2.2, §3, §D.2).

* `nearest_resize`: PyTorch's `F.interpolate(mode="nearest")` index rule, src = floor(dst·in/out).
* `conv`: a conv with PyTorch-style symmetric padding and Xavier-normal(0.02) init.
* `SpectralConv`: spectral norm with PyTorch's semantics in both modes: a training call runs one
  power iteration on the stored (u, v) and stores them; an eval call uses σ = uᵀ W v from the
  stored vectors with no iteration. u and v live in the `spectral` collection, in PyTorch's
  layout (u: [O], v: [I·kh·kw] in OIHW flattening order) so that conversion is a copy.
* `SyncBatchNorm`: parameter-free BatchNorm (SPADE's `SynchronizedBatchNorm2d(affine=False)`):
  batch statistics over every axis but channels, i.e. over the *global* batch under a jit whose
  batch is sharded; running statistics with PyTorch's momentum 0.1 and unbiased variance.
* `instance_norm`, `avg_pool_exclude_pad`: the discriminator's InstanceNorm2d(affine=False) and
  AvgPool2d(3, 2, 1, count_include_pad=False).

All tensors are NHWC. Statistics and σ are float32 whatever the activation dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax.losses import l2_normalize

Dtype = Any

# Xavier-normal with gain 0.02 (base_network.py init_weights): var = 0.02² · 2 / (fan_in + fan_out).
xavier_002 = nn.initializers.variance_scaling(0.02**2, "fan_avg", "normal")


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of PyTorch's nearest rule: floor(dst · in/out), clipped to in-1."""
    scale = in_size / out_size
    idx = np.floor(np.arange(out_size, dtype=np.float32) * np.float32(scale)).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def nearest_resize(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Resizes (B,H,W,C) to (B,h,w,C) with PyTorch's nearest rule (docs/DESIGN.md §D.2).

    Integer up/down factors become repeats/strided slices (identical indices, cheaper than a
    gather); other ratios gather the computed indices.
    """
    out = x
    for axis, new in ((1, int(size[0])), (2, int(size[1]))):
        old = out.shape[axis]
        if new == old:
            continue
        if new % old == 0:
            out = jnp.repeat(out, new // old, axis=axis)
        elif old % new == 0:
            out = jax.lax.slice_in_dim(out, 0, old, stride=old // new, axis=axis)
        else:
            out = jnp.take(out, jnp.asarray(nearest_indices(old, new)), axis=axis)
    return out


def upsample2x(x: jax.Array) -> jax.Array:
    """nn.Upsample(scale_factor=2) (nearest) on NHWC."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


class Conv2d(nn.Module):
    """nn.Conv2d (symmetric padding, default k // 2) with Xavier-normal(0.02) init; params
    `kernel` (HWIO) and `bias`, as flax's nn.Conv names them. Computed in `dtype`."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int | None = None
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return self.add_bias(self.convolve(x, self.make_kernel(x.shape[-1])))

    def make_kernel(self, in_channels: int):
        k = self.kernel_size
        return self.param("kernel", xavier_002, (k, k, in_channels, self.features), jnp.float32)

    def add_bias(self, y):
        if not self.use_bias:
            return y
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y + bias.astype(self.dtype)

    def convolve(self, x, kernel, divisor=None):
        """conv(x, kernel / divisor) in `dtype`, with this layer's stride and padding (no bias)."""
        if divisor is not None:
            kernel = kernel / divisor
        pad = self.kernel_size // 2 if self.padding is None else self.padding
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


def conv(
    features: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int | None = None,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> Conv2d:
    """A plain conv as PyTorch's nn.Conv2d (symmetric padding), Xavier-normal(0.02) init."""
    return Conv2d(features, kernel_size, stride, padding, use_bias, dtype, name=name)


class ConcatConv(Conv2d):
    """`Conv2d` of the channel concatenation of its inputs, as the sum of one conv per input
    (its kernel split on input channels; the parameters are those of the one conv).

    Used where some inputs need no gradient: the gradient of each part flows into its own
    input only, so the backward pass never computes the input gradient of the others.
    """

    @nn.compact
    def __call__(self, *parts):
        kernel = self.make_kernel(sum(p.shape[-1] for p in parts))
        y, start = None, 0
        for p in parts:
            stop = start + p.shape[-1]
            term = self.convolve(p, kernel[:, :, start:stop])
            y, start = (term if y is None else y + term), stop
        return self.add_bias(y)


def _unit_normal(key, shape):
    return l2_normalize(jax.random.normal(key, shape, jnp.float32))


def spectral_sigma(kernel: jax.Array, u: jax.Array, v: jax.Array, update: bool):
    """σ of a HWIO kernel by PyTorch's rule; returns (σ, u, v) (u, v updated if `update`).

    W_mat is the kernel in PyTorch's (O, I·kh·kw) layout. One power iteration when `update`
    (under stop-gradient, as torch's no_grad), then σ = uᵀ W_mat v with gradients through W only.
    W_mat is never materialised: the HWIO kernel read as a (kh·kw·I, O) matrix is W_matᵀ with
    its rows in (h, w, i) order, so only the small vector v is permuted between PyTorch's
    (i, h, w) order and that one, instead of a transposed copy of the kernel at every call.
    """
    kh, kw, cin, cout = kernel.shape
    k2 = kernel.reshape(kh * kw * cin, cout)  # = W_matᵀ, rows in (h, w, i) order

    def to_hwi(vec):
        return jnp.transpose(vec.reshape(cin, kh, kw), (1, 2, 0)).reshape(-1)

    if update:
        k_sg = jax.lax.stop_gradient(k2)
        v_hwi = (k_sg @ u).reshape(kh, kw, cin)  # W_matᵀ u
        v = l2_normalize(jnp.transpose(v_hwi, (2, 0, 1)).reshape(-1))
        u = l2_normalize(to_hwi(v) @ k_sg)  # W_mat v
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    sigma = jnp.dot(to_hwi(v) @ k2, u)
    return sigma, u, v


class SpectralConv(Conv2d):
    """nn.Conv2d wrapped in torch.nn.utils.spectral_norm (docs/DESIGN.md §D.2, §8.10).

    Attributes as `Conv2d`. Parameters: `kernel` (HWIO, the raw `weight_orig`), optional
    `bias`. Collection `spectral`:
    `u` [O] and `v` [I·kh·kw]. `update_stats=True` (training) runs one power iteration and
    stores u, v (the collection must be mutable); False (eval) uses the stored vectors.
    """

    @nn.compact
    def __call__(self, x, update_stats: bool):
        k = self.kernel_size
        cin = x.shape[-1]
        kernel = self.make_kernel(cin)
        u_var = self.variable(
            "spectral", "u", lambda: _unit_normal(self.make_rng("params"), (self.features,))
        )
        v_var = self.variable(
            "spectral", "v", lambda: _unit_normal(self.make_rng("params"), (cin * k * k,))
        )
        sigma, u, v = spectral_sigma(kernel, u_var.value, v_var.value, update_stats)
        if update_stats and not self.is_initializing():
            u_var.value, v_var.value = u, v
        return self.add_bias(self.convolve(x, kernel, divisor=sigma))


class SyncBatchNorm(nn.Module):
    """Parameter-free BatchNorm over the global batch (SPADE's SyncBN, affine=False).

    Train: normalise with the batch mean and biased variance over (B, H, W), and update
    `batch_stats` {mean, var} with momentum 0.1 and the *unbiased* variance, as PyTorch does.
    Eval: use the running statistics. Computed in float32, returned in `dtype`.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, use_running_average: bool):
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean, var = batch_moments(x)
            if not self.is_initializing():
                n = int(np.prod([x.shape[a] for a in axes]))
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * unbiased
        return normalize(x, mean, var, self.epsilon, self.dtype)


def batch_moments(x: jax.Array):
    """Float32 mean and biased variance over every axis but the last (channels)."""
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(xf, axis=axes)
    return mean, jnp.mean(jnp.square(xf - mean), axis=axes)


def normalize(x: jax.Array, mean, var, epsilon: float, dtype) -> jax.Array:
    """(x − mean) / sqrt(var + epsilon), computed in float32, returned in `dtype`."""
    return ((x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + epsilon)).astype(dtype)


def instance_norm(x: jax.Array, epsilon: float = 1e-5) -> jax.Array:
    """InstanceNorm2d(affine=False): per sample and channel over H, W; float32 statistics."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
    return normalize(x, mean, var, epsilon, x.dtype)


def avg_pool_exclude_pad(x: jax.Array, window: int = 3, stride: int = 2, pad: int = 1):
    """AvgPool2d(window, stride, pad, count_include_pad=False) on NHWC."""
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, padding)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strides, padding)
    return total / count
