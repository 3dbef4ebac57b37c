"""The ECGAN generator (docs/DESIGN.md §2.2-2.4): SPADE backbone, edge branch with
attention-guided edge transfer, and the semantic-preserving module. NHWC throughout.

`Generator.apply(variables, seg, train=...)` returns (I′, I″, I′_e), each (B,H,W,3) float32:
the first image, the final image (the model's output, §D.1) and the edge map. With
`return_features=True` a fourth element maps backbone block names (`head_0` ... `up_3`) to their
outputs, for the contrastive projection heads (§D.3). Variable collections: `params`,
`batch_stats` (SPADE BatchNorm running statistics) and `spectral` (u, v of spectral norm); in
training both statistics collections must be mutable.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecgan_jax.config_lib import UPSAMPLING_LAYERS  # the one table: ×2 steps per choice
from ecgan_jax.models.layers import conv, nearest_resize, upsample2x
from ecgan_jax.models.spade import SPADEResnetBlock, lrelu

Dtype = Any
BRANCH_WIDTHS = (32, 16, 8, 3)


class Generator(nn.Module):
    """SPADEGenerator of the authors' code (generator.py l.15-183), without VAE.

    Attributes:
      label_nc: classes K (conv_comb1's output width; excludes dontcare and instance).
      semantic_nc: input channels S of `seg`.
      ngf: base width (64 in the paper): blocks are 16/16/16/8/4/2/1 × ngf wide.
      num_upsampling_layers: "normal" (5 ×2 steps), "more" (6) or "most" (7).
      spade_hidden: width of SPADE's shared conv (128).
      dtype: activation dtype (float32 or bfloat16); parameters and statistics are float32.
    """

    label_nc: int
    semantic_nc: int
    ngf: int = 64
    num_upsampling_layers: str = "normal"
    spade_hidden: int = 128
    dtype: Dtype = jnp.float32

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        if self.num_upsampling_layers not in UPSAMPLING_LAYERS:
            raise ValueError(
                f"num_upsampling_layers={self.num_upsampling_layers!r}; allowed: normal, more, most"
            )
        f = 2 ** UPSAMPLING_LAYERS[self.num_upsampling_layers]
        if height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} cannot be reached by num_upsampling_layers="
                f"'{self.num_upsampling_layers}': H and W must be multiples of {f}"
            )
        return height // f, width // f

    @nn.compact
    def __call__(self, seg, train: bool = False, return_features: bool = False):
        if seg.ndim != 4 or seg.shape[-1] != self.semantic_nc:
            raise ValueError(
                f"generator input must be (B,H,W,{self.semantic_nc}) (semantic_nc channels), "
                f"got shape {tuple(seg.shape)}"
            )
        seg = seg.astype(jnp.float32)
        nf, dt = self.ngf, self.dtype
        blk = dict(hidden=self.spade_hidden, dtype=dt)
        ckw = dict(dtype=dt)
        features = {}

        def block(name, fout, x):
            y = SPADEResnetBlock(fout, name=name, **blk)(x, seg, train)
            features[name] = y
            return y

        x = nearest_resize(seg, self.latent_size(*seg.shape[1:3])).astype(dt)
        x = conv(16 * nf, name="fc", **ckw)(x)
        x = block("head_0", 16 * nf, x)
        x = block("G_middle_0", 16 * nf, upsample2x(x))
        if self.num_upsampling_layers in ("more", "most"):
            x = upsample2x(x)
        x = block("G_middle_1", 16 * nf, x)
        x = block("up_0", 8 * nf, upsample2x(x))
        x = block("up_1", 4 * nf, upsample2x(x))
        x = block("up_2", 2 * nf, upsample2x(x))
        x = block("up_3", 1 * nf, upsample2x(x))
        if self.num_upsampling_layers == "most":
            x = block("up_4", nf // 2, upsample2x(x))
        feat = x

        # Edge branch and image branch with attention-guided edge transfer (§2.3).
        e, g = feat, feat
        for k, width in enumerate(BRANCH_WIDTHS, start=1):
            e = conv(width, name=f"conv_edge{k}", **ckw)(lrelu(e))
            g = conv(width, name=f"conv_img{k}", **ckw)(lrelu(g))
            if k < len(BRANCH_WIDTHS):
                g = g * nn.sigmoid(e) + g
        edge = jnp.tanh(e)
        image_first = jnp.tanh(g) * (1 + nn.sigmoid(edge))

        # Semantic-preserving module (§2.4).
        c_cat = feat.shape[-1] + 3 + 3 + self.semantic_nc
        xcat = jnp.concatenate([feat, image_first, edge, seg.astype(dt)], axis=-1)
        f_c = conv(self.label_nc, name="conv_comb1", **ckw)(lrelu(xcat))
        gate = nn.sigmoid(jnp.mean(f_c.astype(jnp.float32), axis=(1, 2), keepdims=True))
        f_c = f_c + f_c * gate.astype(dt)
        f_r = conv(c_cat, name="conv_comb2", **ckw)(lrelu(f_c))
        image_final = jnp.tanh(conv(3, name="conv_comb", **ckw)(lrelu(f_r)))

        outs = tuple(o.astype(jnp.float32) for o in (image_first, image_final, edge))
        if return_features:
            return (*outs, features)
        return outs
