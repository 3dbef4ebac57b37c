"""Element-wise ops whose backward pass keeps 1 bit per element instead of a float32 copy.

ReLU, the 2×2 max-pool and |x| need only a sign or a position to differentiate, but XLA keeps
their float32 input (or output) alive from the forward to the backward pass and recomputes
the comparison there: a bool residual alone does not help, since XLA fuses the comparison
into the backward consumer and reads the float32 array again. Here the comparison is packed
8 elements to a byte along the last axis (a reduction, which XLA does not copy into its
consumers) and the forward result is computed *from the packed bits*, so the bits exist
before the float32 input can be freed. In the perceptual loss of the train step (VGG19 on
three generated images per sample) this keeps 1/32 of the bytes (BENCHMARKS.md, "Fifth
session").

Values and gradients equal `jax.nn.relu`, `x.reshape(...).max(...)` and `jnp.abs` (ties of a
max-pool window share the gradient equally, as JAX's own rule; NaN inputs give NaN values),
except that the gradient of `max_pool_2x2` at a window holding a NaN is 0 here, not NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_BITS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_bits(mask: jax.Array) -> jax.Array:
    """bool (..., C) -> uint8 (..., ceil(C/8)), element 8·j + k in bit k of byte j."""
    c = mask.shape[-1]
    pad = -c % 8
    if pad:
        mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, pad)])
    grouped = mask.reshape(mask.shape[:-1] + ((c + pad) // 8, 8)).astype(jnp.uint8)
    return jnp.sum(grouped * jnp.asarray(_BITS, jnp.uint8), axis=-1, dtype=jnp.uint8)


def unpack_bits(packed: jax.Array, channels: int) -> jax.Array:
    """Inverse of `pack_bits`: uint8 (..., ceil(C/8)) -> bool (..., C)."""
    bits = (packed[..., None] & jnp.asarray(_BITS, jnp.uint8)) != 0
    return bits.reshape(packed.shape[:-1] + (packed.shape[-1] * 8,))[..., :channels]


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
    """max(x, 0); its backward pass keeps the sign bits of x only."""
    return jnp.maximum(x, jnp.zeros_like(x))


def _relu_fwd(x):
    packed = pack_bits(x > 0)
    positive = unpack_bits(packed, x.shape[-1])
    keep_nan = jnp.where(jnp.isnan(x), x, jnp.zeros_like(x))  # max(NaN, 0) is NaN in XLA
    return jnp.where(positive, x, keep_nan), packed


def _relu_bwd(packed, g):
    return (jnp.where(unpack_bits(packed, g.shape[-1]), g, jnp.zeros_like(g)),)


relu.defvjp(_relu_fwd, _relu_bwd)


def _windows(x):
    """(B, H, W, C) -> (B, H/2, 2, W/2, 2, C), odd edges dropped (PyTorch's floor rule)."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2, floor rule; its backward pass keeps the argmax bits only."""
    return _windows(x).max(axis=(2, 4))


def _pool_fwd(x):
    win = _windows(x)
    top = win.max(axis=(2, 4))
    packed = pack_bits(win == top[:, :, None, :, None, :])
    at_max = unpack_bits(packed, x.shape[-1])
    # The max of the window's maxima: the same value, but computed from the bits (a window
    # holding a NaN has no maximum bit set and keeps its NaN).
    out = jnp.where(at_max, win, -jnp.inf).max(axis=(2, 4))
    return jnp.where(jnp.isnan(top), top, out), (packed, x.shape)


def _pool_bwd(res, g):
    packed, shape = res
    b, h, w, c = shape
    at_max = unpack_bits(packed, c)
    count = jnp.sum(at_max, axis=(2, 4), keepdims=True, dtype=g.dtype)
    share = jnp.where(at_max, g[:, :, None, :, None, :] / count, jnp.zeros((), g.dtype))
    dx = share.reshape(b, h // 2 * 2, w // 2 * 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_pool_fwd, _pool_bwd)


@jax.custom_vjp
def abs_(x: jax.Array) -> jax.Array:
    """|x|; its backward pass keeps the bits of x >= 0 (JAX's derivative: +1 at 0)."""
    return jnp.abs(x)


def _abs_fwd(x):
    packed = pack_bits(x >= 0)
    return jnp.where(unpack_bits(packed, x.shape[-1]), x, -x), packed


def _abs_bwd(packed, g):
    return (jnp.where(unpack_bits(packed, g.shape[-1]), g, -g),)


abs_.defvjp(_abs_fwd, _abs_bwd)
