"""Label resizing, class-balanced anchor sampling and region embeddings (ECGAN_SPEC.md §D.3).

Everything here is global-batch math with static shapes: under `jax.jit` with the batch sharded
over a device mesh, the sampled anchors and the regions span the whole global batch, and the
results equal the single-device ones (the Gumbel noise is drawn with the partitionable
threefry PRNG, so it does not depend on the sharding).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def resize_labels_nearest(labels: jax.Array, *, size: tuple[int, int]) -> jax.Array:
    """Nearest resize of an integer label map with PyTorch's rule (ECGAN_SPEC.md §D.2, §D.3.3).

    Output pixel (i, j) takes input pixel (floor(i·H/h), floor(j·W/w)), computed in exact
    integer arithmetic (`F.interpolate(mode="nearest")`; `jax.image.resize` differs).

    Args:
      labels: `(B, H, W)` integer label map.
      size: target `(h, w)`.

    Returns:
      `(B, h, w)` array of the input dtype.
    """
    if labels.ndim != 3:
        raise ValueError(f"resize_labels_nearest: labels must be (B, H, W); got {labels.shape}")
    h, w = (int(s) for s in size)
    in_h, in_w = labels.shape[1:]
    if (h, w) == (in_h, in_w):
        return labels
    rows = (jnp.arange(h, dtype=jnp.int32) * in_h) // h
    cols = (jnp.arange(w, dtype=jnp.int32) * in_w) // w
    return labels[:, rows][:, :, cols]


def valid_labels(labels: jax.Array, num_classes: int) -> jax.Array:
    """Boolean mask of labels in `[0, num_classes)`; −1 (ignore) and anything else is invalid."""
    return (labels >= 0) & (labels < num_classes)


def class_counts(labels: jax.Array, *, num_classes: int) -> jax.Array:
    """Pixels per (image, class): `(B, ...)` int labels -> `(B, K)` float32 counts."""
    flat = labels.reshape(labels.shape[0], -1)
    one_hot = jax.nn.one_hot(flat, num_classes, dtype=jnp.float32)  # invalid labels -> 0 row
    return jnp.sum(one_hot, axis=1)


class AnchorSample(NamedTuple):
    """Sampled anchors of one layer (static shapes).

    index: `(A,)` int32 flat pixel index into `B·h·w` (b-major, then row, then column).
    labels: `(A,)` int32 class of each anchor; −1 where `valid` is False.
    valid: `(A,)` bool; False for the slots left over when fewer valid pixels exist.
    """

    index: jax.Array
    labels: jax.Array
    valid: jax.Array


def sample_anchors(
    *, labels: jax.Array, key: jax.Array, num_anchors: int, num_classes: int
) -> AnchorSample:
    """Class-balanced sampling without replacement by Gumbel-top-k (ECGAN_SPEC.md §D.3.4).

    The weight of a pixel is 1 / (number of pixels of its class in its image); ignore pixels
    (labels outside `[0, num_classes)`) have weight 0 and are never drawn. The draw is
    top-k of log(weight) + Gumbel noise over all `B·h·w` pixels of the global batch, which is
    sequential weighted sampling without replacement. If fewer than `num_anchors` valid pixels
    exist, the remaining slots are marked invalid (label −1).

    Args:
      labels: `(B, h, w)` int32 label map at the layer's resolution.
      key: PRNG key.
      num_anchors: static number of anchors A for the global batch.
      num_classes: K.

    Returns:
      `AnchorSample` with `(A,)` arrays, sorted by decreasing score (a random order).
    """
    labels = jnp.asarray(labels, jnp.int32)
    b = labels.shape[0]
    flat = labels.reshape(b, -1)
    valid = valid_labels(flat, num_classes)
    counts = class_counts(flat, num_classes=num_classes)  # (B, K)
    pixel_count = jnp.take_along_axis(counts, jnp.clip(flat, 0, num_classes - 1), axis=1)
    log_w = -jnp.log(jnp.maximum(pixel_count, 1.0))
    gumbel = jax.random.gumbel(key, flat.shape, jnp.float32)
    scores = jnp.where(valid, log_w + gumbel, -jnp.inf).reshape(-1)
    n = scores.shape[0]
    if n < num_anchors:  # static: pad with never-valid slots
        scores = jnp.concatenate([scores, jnp.full((num_anchors - n,), -jnp.inf, jnp.float32)])
    top_scores, index = jax.lax.top_k(scores, num_anchors)
    ok = jnp.isfinite(top_scores)
    index = jnp.where(ok, index, 0).astype(jnp.int32)
    picked = jnp.where(ok, flat.reshape(-1)[index], -1)
    return AnchorSample(index=index, labels=picked.astype(jnp.int32), valid=ok)


def l2_normalize(x: jax.Array, *, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(‖x‖₂, eps) along `axis` in float32 (as `torch.nn.functional.normalize`)."""
    x = jnp.asarray(x, jnp.float32)
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def region_embeddings(
    *, embeddings: jax.Array, labels: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array]:
    """Normalised mean embedding per (image, class) by one one-hot matmul (ECGAN_SPEC.md §D.3.5).

    Args:
      embeddings: `(B, h, w, D)` projected (L2-normalised) embeddings.
      labels: `(B, h, w)` int32 labels at the same resolution (−1 = ignore).
      num_classes: K.

    Returns:
      `(regions, present)`: `(B, K, D)` float32 r_{b,c} = normalise(mean of the embeddings of
      the pixels of class c in image b) (zeros where absent), and `(B, K)` bool presence.
    """
    b, h, w, d = embeddings.shape
    if labels.shape != (b, h, w):
        raise ValueError(
            f"region_embeddings: labels {labels.shape} do not match embeddings {embeddings.shape}"
        )
    classes = jnp.arange(num_classes, dtype=jnp.int32)
    # (B, K, n) one-hot (ignore / out-of-range labels give zero columns); a batched matmul in
    # this layout is ~2x faster forward+backward on XLA:CPU than the (B, n, K) einsum.
    one_hot = (labels.reshape(b, 1, h * w) == classes[None, :, None]).astype(jnp.float32)
    emb = jnp.asarray(embeddings, jnp.float32).reshape(b, h * w, d)
    sums = jnp.matmul(one_hot, emb, precision=jax.lax.Precision.HIGHEST)  # (B, K, D)
    counts = jnp.sum(one_hot, axis=2)  # (B, K)
    present = counts > 0
    means = sums / jnp.maximum(counts, 1.0)[..., None]
    return l2_normalize(means, axis=-1), present
