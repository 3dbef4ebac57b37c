"""Label resizing, class-balanced anchor sampling and region embeddings (docs/DESIGN.md §D.3).

Everything here is global-batch math with static shapes: under `jax.jit` with the batch sharded
over a device mesh, the sampled anchors and the regions span the whole global batch, and the
results equal the single-device ones (the Gumbel noise is drawn with the partitionable
threefry PRNG, so it does not depend on the sharding). The anchors' top-k runs per device
shard under the mesh and merges the small candidate sets, so that no device sorts the scores
of the whole global batch; it selects exactly what one global top-k would (`select_top_pixels`)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def resize_labels_nearest(labels: jax.Array, *, size: tuple[int, int]) -> jax.Array:
    """Nearest resize of an integer label map with PyTorch's rule (docs/DESIGN.md §D.2, §D.3.3).

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


ANCHOR_SELECTIONS = ("auto", "global", "per_shard")


def anchor_scores(*, labels: jax.Array, key: jax.Array, num_classes: int) -> jax.Array:
    """Gumbel-top-k scores log(weight) + Gumbel noise of every pixel (docs/DESIGN.md §D.3.4).

    The weight of a pixel is 1 / (number of pixels of its class in its image); ignore pixels
    (labels outside `[0, num_classes)`) score −inf. Elementwise per image, so under `jax.jit`
    the scores stay sharded like the batch; the noise is drawn for the global `(B, h·w)` shape
    (partitionable threefry), so it does not depend on the sharding.

    Args:
      labels: `(B, h, w)` int32 label map at the layer's resolution.
      key: PRNG key.
      num_classes: K.

    Returns:
      `(B, h·w)` float32 scores.
    """
    labels = jnp.asarray(labels, jnp.int32)
    flat = labels.reshape(labels.shape[0], -1)
    valid = valid_labels(flat, num_classes)
    counts = class_counts(flat, num_classes=num_classes)  # (B, K)
    pixel_count = jnp.take_along_axis(counts, jnp.clip(flat, 0, num_classes - 1), axis=1)
    log_w = -jnp.log(jnp.maximum(pixel_count, 1.0))
    gumbel = jax.random.gumbel(key, flat.shape, jnp.float32)
    return jnp.where(valid, log_w + gumbel, -jnp.inf)


def _pad_candidates(values, payload, k):
    """Pads 1-D candidate arrays with −inf scores up to length k (static)."""
    short = k - values.shape[0]
    if short <= 0:
        return values, payload
    return (
        jnp.concatenate([values, jnp.full((short,), -jnp.inf, values.dtype)]),
        jnp.concatenate([payload, jnp.zeros((short,), payload.dtype)]),
    )


def _merge(values, index, payload, k):
    """Top-k of a 1-D candidate set whose order is the order of `index` among equal values.

    `jax.lax.top_k` puts the lower position first among equal values; the candidates are laid
    out so that position order is flat-index order, hence the ties break as one global top-k.
    """
    values, payload = _pad_candidates(values, payload, k)
    top, pos = jax.lax.top_k(values, k)
    pos = jnp.minimum(pos, index.shape[0] - 1)  # a padding slot (−inf) points anywhere
    return top, index[pos], payload[pos]


def _select_global(scores, payload, k):
    """One top-k over all `B·n` scores (every device sorts the whole global batch)."""
    values, payload = _pad_candidates(scores.reshape(-1), payload.reshape(-1), k)
    top, index = jax.lax.top_k(values, k)
    return top, index, payload[index]


def _select_per_shard(scores, payload, k, mesh, axis_name):
    """Top-k within each device's shard of the batch (`shard_map`), then a top-k over the
    all-gathered `num_shards·min(k, B_local·n)` candidates, the same on every device."""
    b, n = scores.shape
    shards = int(mesh.shape[axis_name])
    local = (b // shards) * n
    k_shard = min(k, local)

    def per_shard(scores, payload):
        top, pos = jax.lax.top_k(scores.reshape(-1), k_shard)
        picked = payload.reshape(-1)[pos]
        index = pos.astype(jnp.int32) + jax.lax.axis_index(axis_name).astype(jnp.int32) * local
        # Shard-major gather: position order is flat-index order, as `_merge` needs.
        top, index, picked = (
            jax.lax.all_gather(x, axis_name, tiled=True, to="invarying")
            for x in (top, index, picked)
        )
        return _merge(top, index, picked, k)

    return jax.shard_map(
        per_shard,
        mesh=mesh,
        in_specs=(P(axis_name), P(axis_name)),
        out_specs=(P(), P(), P()),
    )(scores, payload)


def _data_axis(mesh, axis_name):
    """`(mesh, size of axis_name)` of `mesh` (None: the context mesh), or `(None, 1)`."""
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or axis_name not in mesh.axis_names:
        return None, 1
    return mesh, int(mesh.shape[axis_name])


def select_top_pixels(
    *,
    scores: jax.Array,
    payload: jax.Array,
    k: int,
    selection: str = "auto",
    mesh=None,
    axis_name: str = "data",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Exactly `jax.lax.top_k(scores.reshape(-1), k)`, without sorting the global batch.

    Both strategies return the same values and indices (among equal scores the lower flat
    index comes first, as in `jax.lax.top_k`); if `B·n < k` the scores are padded with −inf.

    * `"global"`: one top-k over all `B·n` scores. Under `jax.jit` with the batch sharded, XLA
      all-gathers every score and each device runs the whole top-k (XLA's partitioner does
      not split a top-k, not even along a batch dimension).
    * `"per_shard"`: top-k within each device's shard under `jax.shard_map` over `axis_name`
      of `mesh`, an all-gather of `min(k, B_local·n)` candidates per device and a top-k over
      those `num_shards·min(k, B_local·n)` (docs/DESIGN.md §D.3.4). The batch must divide
      evenly over the axis.
    * `"auto"`: `"per_shard"` when `mesh` (default: the context mesh,
      `jax.sharding.get_abstract_mesh()`, set by `jax.set_mesh` or
      `jax.sharding.use_abstract_mesh`) has `axis_name` of size > 1 dividing B; otherwise
      `"global"` (no mesh, one device, or a jit that was not traced under its mesh).

    Args:
      scores: `(B, n)` float32 scores (−inf = never drawn).
      payload: `(B, n)` array carried along with the scores (e.g. the labels).
      k: static number of items to select.
      selection: one of `ANCHOR_SELECTIONS`.
      mesh: a `jax.sharding.Mesh` or `AbstractMesh`, or None for the context mesh.
      axis_name: the mesh axis the batch is sharded on.

    Returns:
      `(values, index, picked)`: `(k,)` float32 scores in decreasing order, `(k,)` int32 flat
      indices into `B·n`, `(k,)` payload at those indices (arbitrary where values are −inf).
    """
    if selection not in ANCHOR_SELECTIONS:
        raise ValueError(
            f"select_top_pixels: selection={selection!r}; allowed: {', '.join(ANCHOR_SELECTIONS)}"
        )
    if scores.ndim != 2 or payload.shape != scores.shape:
        raise ValueError(
            f"select_top_pixels: scores and payload must be the same (B, n); got {scores.shape} "
            f"and {payload.shape}"
        )
    if selection == "global":
        return _select_global(scores, payload, k)
    found, shards = _data_axis(mesh, axis_name)
    batch = scores.shape[0]
    if selection == "per_shard":
        if found is None:
            raise ValueError(
                f"select_top_pixels: selection='per_shard' needs a mesh with axis {axis_name!r} "
                "(pass mesh= or trace under jax.set_mesh); got none"
            )
        if batch % shards:
            raise ValueError(
                f"select_top_pixels: batch {batch} does not divide over the {shards} devices "
                f"of mesh axis {axis_name!r}"
            )
        return _select_per_shard(scores, payload, k, found, axis_name)
    if selection == "auto" and shards > 1 and batch % shards == 0:
        return _select_per_shard(scores, payload, k, found, axis_name)
    return _select_global(scores, payload, k)


def sample_anchors(
    *,
    labels: jax.Array,
    key: jax.Array,
    num_anchors: int,
    num_classes: int,
    selection: str = "auto",
    mesh=None,
    axis_name: str = "data",
) -> AnchorSample:
    """Class-balanced sampling without replacement by Gumbel-top-k (docs/DESIGN.md §D.3.4).

    The weight of a pixel is 1 / (number of pixels of its class in its image); ignore pixels
    (labels outside `[0, num_classes)`) have weight 0 and are never drawn. The draw is
    top-k of log(weight) + Gumbel noise (`anchor_scores`) over all `B·h·w` pixels of the global
    batch, which is sequential weighted sampling without replacement. If fewer than
    `num_anchors` valid pixels exist, the remaining slots are marked invalid (label −1).

    The top-k is `select_top_pixels`: every `selection` gives the same anchors; by default it
    runs per device shard under a mesh with the data axis, so that no device sorts the pixels
    of the whole global batch.

    Args:
      labels: `(B, h, w)` int32 label map at the layer's resolution.
      key: PRNG key.
      num_anchors: static number of anchors A for the global batch.
      num_classes: K.
      selection, mesh, axis_name: how the top-k runs (`select_top_pixels`).

    Returns:
      `AnchorSample` with `(A,)` arrays, sorted by decreasing score (a random order).
    """
    labels = jnp.asarray(labels, jnp.int32)
    scores = anchor_scores(labels=labels, key=key, num_classes=num_classes)
    top, index, picked = select_top_pixels(
        scores=scores,
        payload=labels.reshape(scores.shape),
        k=num_anchors,
        selection=selection,
        mesh=mesh,
        axis_name=axis_name,
    )
    ok = jnp.isfinite(top)
    index = jnp.where(ok, index, 0).astype(jnp.int32)
    picked = jnp.where(ok, picked, -1).astype(jnp.int32)
    return AnchorSample(index=index, labels=picked, valid=ok)


def l2_normalize(x: jax.Array, *, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(‖x‖₂, eps) along `axis` in float32 (as `torch.nn.functional.normalize`)."""
    x = jnp.asarray(x, jnp.float32)
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def region_embeddings(
    *, embeddings: jax.Array, labels: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array]:
    """Normalised mean embedding per (image, class) by one one-hot matmul (docs/DESIGN.md §D.3.5).

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
