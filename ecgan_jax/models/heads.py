"""Projection heads of the contrastive loss and the label head of the similarity loss.

`ProjectionHead` (docs/DESIGN.md §D.3.2): 1×1 conv C→C, ReLU, 1×1 conv C→D, L2 normalisation
over channels, all in float32 (also under `model.dtype = "bfloat16"`). The 1×1 convs are
`nn.Dense` over the (B·h·w, C) rows: the same map as a 1×1 convolution. Params:
`Dense_0` kernel (C, C) + bias, `Dense_1` kernel (C, D) + bias; Flax default init (LeCun
normal, zero bias) rather than the generator's xavier(0.02), which would start the embeddings
near zero where the L2 normalisation has huge gradients.

`LabelHead` (docs/DESIGN.md §D.1, optional G_l branch): I″ (B, H, W, 3) -> class logits
(B, H, W, K) through two 3×3 conv + ReLU layers and a 1×1 conv.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecgan_jax.losses import l2_normalize


class ProjectionHead(nn.Module):
    """(B, h, w, C) features -> (B, h, w, dim) float32 unit-norm embeddings (§D.3.2).

    Attributes:
      dim: output dim D (`contrastive.dim`, 128).
      hidden: width of the first 1×1 conv; default C (the input channels).
    """

    dim: int = 128
    hidden: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ProjectionHead: expected (B, h, w, C) features; got {x.shape}")
        b, h, w, c = x.shape
        x = jnp.asarray(x, jnp.float32).reshape(b * h * w, c)
        x = nn.Dense(self.hidden or c, dtype=jnp.float32, param_dtype=jnp.float32)(x)
        x = nn.relu(x)
        x = nn.Dense(self.dim, dtype=jnp.float32, param_dtype=jnp.float32)(x)
        return l2_normalize(x).reshape(b, h, w, self.dim)


class LabelHead(nn.Module):
    """(B, H, W, 3) image -> (B, H, W, num_classes) float32 logits (§D.1 similarity loss).

    Attributes:
      num_classes: K.
      hidden: width of the two 3×3 conv layers (default 64).
    """

    num_classes: int
    hidden: int = 64

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        if image.ndim != 4:
            raise ValueError(f"LabelHead: expected (B, H, W, 3) images; got {image.shape}")
        x = jnp.asarray(image, jnp.float32)
        for _ in range(2):
            x = nn.Conv(self.hidden, (3, 3), padding=1, dtype=jnp.float32)(x)
            x = nn.relu(x)
        return nn.Conv(self.num_classes, (1, 1), dtype=jnp.float32)(x)
