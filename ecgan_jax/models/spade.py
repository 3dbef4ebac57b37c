"""SPADE normalisation and the SPADE residual block (docs/DESIGN.md §2.2).

SPADE(x, seg) = BN(x)·(1 + γ(seg)) + β(seg), with BN the parameter-free synchronized BatchNorm
and γ, β two 3×3 convs on a shared ReLU(3×3 conv(seg → hidden)). The residual block is
shortcut(x) + conv_1(lrelu(SPADE_1(conv_0(lrelu(SPADE_0(x)))))), spectral norm on conv_0,
conv_1 and the learned 1×1 shortcut (no bias, no activation), LeakyReLU slope 0.2.
Submodule names follow the authors' state-dict keys so conversion is a renaming.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecgan_jax.models.layers import SpectralConv, SyncBatchNorm, conv, nearest_resize

Dtype = Any


def lrelu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, 0.2)


class SPADE(nn.Module):
    """SPADE (normalization.py l.66-110) with `spadesyncbatch3x3`; NHWC.

    Args:
      x: (B,h,w,norm_nc). seg: (B,H,W,semantic_nc) float one-hot, resized here to (h, w) by
      PyTorch's nearest rule. train: batch statistics (True) or running statistics (False).
      leaky: apply the LeakyReLU(0.2) that follows this SPADE in the residual block.
    """

    norm_nc: int
    hidden: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, seg, train: bool, leaky: bool = False):
        normalized = SyncBatchNorm(dtype=self.dtype, name="param_free_norm")(
            x, use_running_average=not train
        )
        seg = nearest_resize(seg, x.shape[1:3]).astype(self.dtype)
        actv = nn.relu(conv(self.hidden, dtype=self.dtype, name="mlp_shared")(seg))
        gamma = conv(self.norm_nc, dtype=self.dtype, name="mlp_gamma")(actv)
        beta = conv(self.norm_nc, dtype=self.dtype, name="mlp_beta")(actv)
        out = normalized * (1 + gamma) + beta
        return lrelu(out) if leaky else out


class SPADEResnetBlock(nn.Module):
    """SPADEResnetBlock(fin, fout) (architecture.py l.21-68); fin is read from the input."""

    fout: int
    hidden: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, seg, train: bool):
        fin = x.shape[-1]
        fmiddle = min(fin, self.fout)
        seg = nearest_resize(seg, x.shape[1:3])
        norm = dict(hidden=self.hidden, dtype=self.dtype)
        if fin != self.fout:
            xs = SPADE(fin, name="norm_s", **norm)(x, seg, train)
            xs = SpectralConv(self.fout, 1, use_bias=False, dtype=self.dtype, name="conv_s")(
                xs, update_stats=train
            )
        else:
            xs = x
        dx = SPADE(fin, name="norm_0", **norm)(x, seg, train, leaky=True)
        dx = SpectralConv(fmiddle, 3, dtype=self.dtype, name="conv_0")(dx, update_stats=train)
        dx = SPADE(fmiddle, name="norm_1", **norm)(dx, seg, train, leaky=True)
        dx = SpectralConv(self.fout, 3, dtype=self.dtype, name="conv_1")(dx, update_stats=train)
        return xs + dx
