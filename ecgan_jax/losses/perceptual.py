"""VGG19 perceptual loss over precomputed feature lists (docs/DESIGN.md §4.1).

The features come from `ecgan_jax.models.vgg.VGG19Features` (relu1_1 … relu5_1), or any other
extractor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def vgg_perceptual_loss(
    *,
    x_features: Sequence[jax.Array],
    y_features: Sequence[jax.Array],
    weights: Sequence[float] = VGG_LAYER_WEIGHTS,
    abs_fn: Callable[[jax.Array], jax.Array] = jnp.abs,
) -> jax.Array:
    """Σ_i w_i · mean|x_i − sg(y_i)| (SPADE's `VGGLoss`, docs/DESIGN.md §4.1).

    Args:
      x_features: features of the generated image, one `(B, h_i, w_i, C_i)` array per layer
        (relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 for VGG19).
      y_features: features of the target image, same shapes; stop-gradient is applied here.
      weights: per-layer weights, default (1/32, 1/16, 1/8, 1/4, 1).
      abs_fn: |·| of the float32 differences; any function with the same values may be passed
        (the train step passes one whose backward pass stores less on XLA:CPU).

    Returns:
      float32 scalar. λ_vgg is applied by the caller.
    """
    if not (len(x_features) == len(y_features) == len(weights)):
        raise ValueError(
            "vgg_perceptual_loss: x_features, y_features and weights must have the same length; "
            f"got {len(x_features)}, {len(y_features)} and {len(weights)}"
        )
    total = jnp.zeros((), jnp.float32)
    for w, x, y in zip(weights, x_features, y_features, strict=True):
        if x.shape != y.shape:
            raise ValueError(f"vgg_perceptual_loss: feature shapes differ: {x.shape} vs {y.shape}")
        diff = jnp.asarray(x, jnp.float32) - jax.lax.stop_gradient(jnp.asarray(y, jnp.float32))
        total = total + float(w) * jnp.mean(abs_fn(diff))
    return total
