"""SPADE's multi-scale PatchGAN discriminator as ECGAN uses it (docs/DESIGN.md §3). NHWC.

`MultiscaleDiscriminator.apply(variables, seg, image, train=...)` concatenates
[seg, image] on channels and returns, per scale (full size, then each 3×3/2 average-pooled
copy), the list of every layer's output: n_layers_D post-LeakyReLU features and, last, the
patch logit map. Layers 1..n_layers_D-1 are spectral-norm convs without bias followed by
InstanceNorm(affine=False); the first and last are plain convs with bias. Kernel 4, padding 2.

The first conv is one conv of [seg, image] written per input part (`ConcatConv`): the
generator's gradient then flows into the 3 image channels only.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecgan_jax.models.layers import (
    ConcatConv,
    SpectralConv,
    avg_pool_exclude_pad,
    conv,
    instance_norm,
)

Dtype = Any


class NLayerDiscriminator(nn.Module):
    """NLayerDiscriminator (discriminator.py l.74-100); submodules model0 .. model{n_layers}."""

    ndf: int = 64
    n_layers: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, seg, image, train: bool):
        """Layer outputs for the input concat(seg, image) (channels last)."""
        lrelu = lambda t: nn.leaky_relu(t, 0.2)
        outs = []
        nf = self.ndf
        kw = dict(dtype=self.dtype)
        x = lrelu(ConcatConv(nf, 4, stride=2, padding=2, name="model0", **kw)(seg, image))
        outs.append(x)
        for n in range(1, self.n_layers):
            nf = min(nf * 2, 512)
            stride = 1 if n == self.n_layers - 1 else 2
            x = SpectralConv(
                nf, 4, stride=stride, padding=2, use_bias=False, name=f"model{n}", **kw
            )(x, update_stats=train)
            x = lrelu(instance_norm(x))
            outs.append(x)
        x = conv(1, 4, stride=1, padding=2, name=f"model{self.n_layers}", **kw)(x)
        outs.append(x)
        return outs


class MultiscaleDiscriminator(nn.Module):
    """num_D NLayerDiscriminators `discriminator_i` on successively avg-pooled inputs.

    Attributes: input_nc (semantic_nc + 3, checked), ndf, num_D, n_layers, dtype.
    """

    input_nc: int
    ndf: int = 64
    num_D: int = 2
    n_layers: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, seg, image, train: bool = False):
        seg, image = seg.astype(self.dtype), image.astype(self.dtype)
        if seg.ndim != 4 or seg.shape[:3] != image.shape[:3]:
            raise ValueError(
                f"discriminator inputs seg and image must be NHWC maps of one batch and size, "
                f"got shapes {tuple(seg.shape)} and {tuple(image.shape)}"
            )
        if seg.shape[-1] + image.shape[-1] != self.input_nc:
            raise ValueError(
                f"discriminator input concat(seg, image) must have {self.input_nc} channels "
                f"(semantic_nc + 3), got shapes {tuple(seg.shape)} and {tuple(image.shape)}"
            )
        results = []
        for i in range(self.num_D):
            d = NLayerDiscriminator(self.ndf, self.n_layers, self.dtype, name=f"discriminator_{i}")
            results.append(d(seg, image, train))
            if i != self.num_D - 1:  # channel-wise, so pooling the parts pools the concatenation
                seg, image = avg_pool_exclude_pad(seg), avg_pool_exclude_pad(image)
        return results
