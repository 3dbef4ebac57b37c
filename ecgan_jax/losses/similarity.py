"""Optional similarity loss of the label branch G_l (docs/DESIGN.md §D.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def similarity_loss(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Pixel-wise cross-entropy of class logits against the label map, ignore pixels excluded.

    Args:
      logits: `(B, H, W, K)` class logits (any float dtype; computed in float32).
      labels: `(B, H, W)` int class ids; pixels outside `[0, K)` (the project uses −1 for
        dontcare/unknown) are ignored.

    Returns:
      float32 scalar: mean over the valid pixels of −log softmax(logits)[label]; 0 when no
      pixel is valid (with a finite, zero gradient).
    """
    if logits.ndim != 4 or labels.shape != logits.shape[:3]:
        raise ValueError(
            f"similarity_loss: expected logits (B, H, W, K) and labels (B, H, W); got logits "
            f"{logits.shape} and labels {labels.shape}"
        )
    k = logits.shape[-1]
    labels = jnp.asarray(labels, jnp.int32)
    valid = (labels >= 0) & (labels < k)
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.clip(labels, 0, k - 1)[..., None], axis=-1)[..., 0]
    count = jnp.sum(valid.astype(jnp.float32))
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.maximum(count, 1.0)
