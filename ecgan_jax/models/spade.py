"""SPADE normalisation and the SPADE residual block (ECGAN_SPEC.md §2.2).

SPADE(x, seg) = BN(x)·(1 + γ(seg)) + β(seg), with BN the parameter-free synchronized BatchNorm
and γ, β two 3×3 convs on a shared ReLU(3×3 conv(seg → hidden)). With `recompute=True`
(training only) SPADE and the LeakyReLU after it keep only their input for the backward pass and
recompute BN, γ and β there (`recompute_in_backward`): at 256×512 that drops five 128-channel
maps per SPADE from the memory held between the passes, for one more SPADE forward in the
backward pass; the gradient into x leaves a SPADE only once its conv weight gradients exist
(`release_after`), so XLA finishes one SPADE's backward pass before recomputing the next.
Values and gradients are the same either way. The residual block is
shortcut(x) + conv_1(lrelu(SPADE_1(conv_0(lrelu(SPADE_0(x)))))), spectral norm on conv_0,
conv_1 and the learned 1×1 shortcut (no bias, no activation), LeakyReLU slope 0.2.
Submodule names follow the authors' state-dict keys so conversion is a renaming.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecgan_jax.models.layers import (
    ConvParams,
    SpectralConv,
    SyncBatchNorm,
    apply_conv,
    batch_moments,
    nearest_resize,
    normalize,
)
from ecgan_jax.xla_cpu.recompute import recompute_in_backward

Dtype = Any


class SPADE(nn.Module):
    """SPADE (normalization.py l.66-110) with `spadesyncbatch3x3`; NHWC.

    Args:
      x: (B,h,w,norm_nc). seg: (B,H,W,semantic_nc) float one-hot, resized here to (h, w) by
      PyTorch's nearest rule. train: batch statistics (True) or running statistics (False).
      leaky: apply the LeakyReLU(0.2) that follows every SPADE in the residual block.
    Attributes: recompute: in training, recompute everything in the backward pass from x
      (see the module docstring); ignored in eval mode.
    """

    norm_nc: int
    hidden: int = 128
    dtype: Dtype = jnp.float32
    conv_impl: str | None = None
    recompute: bool = False

    @nn.compact
    def __call__(self, x, seg, train: bool, leaky: bool = False):
        seg = nearest_resize(seg, x.shape[1:3]).astype(self.dtype)
        bn = SyncBatchNorm(dtype=self.dtype, name="param_free_norm")
        weights = [
            ConvParams(self.hidden, name="mlp_shared")(seg.shape[-1]),
            ConvParams(self.norm_nc, name="mlp_gamma")(self.hidden),
            ConvParams(self.norm_nc, name="mlp_beta")(self.hidden),
        ]
        dtype, impl, eps = self.dtype, self.conv_impl, bn.epsilon

        def modulate(normalized, seg, weights):
            def conv3(t, kb):
                return apply_conv(t, *kb, padding=1, dtype=dtype, impl=impl)

            actv = nn.relu(conv3(seg, weights[0]))
            out = normalized * (1 + conv3(actv, weights[1])) + conv3(actv, weights[2])
            return lrelu(out) if leaky else out

        if not (train and self.recompute):
            return modulate(bn(x, use_running_average=not train), seg, weights)

        def spade(x, seg, weights):
            mean, var = batch_moments(x)
            return modulate(normalize(x, mean, var, eps, dtype), seg, weights), mean, var

        out, mean, var = recompute_in_backward(spade, release_after=(2,))(x, seg, weights)
        bn(x, use_running_average=False, moments=(mean, var))  # running statistics only
        return out


def lrelu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, 0.2)


class SPADEResnetBlock(nn.Module):
    """SPADEResnetBlock(fin, fout) (architecture.py l.21-68); fin is read from the input."""

    fout: int
    hidden: int = 128
    dtype: Dtype = jnp.float32
    conv_impl: str | None = None
    recompute: bool = False  # SPADE.recompute

    @nn.compact
    def __call__(self, x, seg, train: bool):
        fin = x.shape[-1]
        fmiddle = min(fin, self.fout)
        seg = nearest_resize(seg, x.shape[1:3])
        kw = dict(
            hidden=self.hidden, dtype=self.dtype, conv_impl=self.conv_impl, recompute=self.recompute
        )
        ckw = dict(dtype=self.dtype, impl=self.conv_impl)
        if fin != self.fout:
            xs = SPADE(fin, name="norm_s", **kw)(x, seg, train)
            xs = SpectralConv(self.fout, 1, use_bias=False, name="conv_s", **ckw)(
                xs, update_stats=train
            )
        else:
            xs = x
        dx = SPADE(fin, name="norm_0", **kw)(x, seg, train, leaky=True)
        dx = SpectralConv(fmiddle, 3, name="conv_0", **ckw)(dx, update_stats=train)
        dx = SPADE(fmiddle, name="norm_1", **kw)(dx, seg, train, leaky=True)
        dx = SpectralConv(self.fout, 3, name="conv_1", **ckw)(dx, update_stats=train)
        return xs + dx
