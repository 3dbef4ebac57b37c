"""Per-class FIFO memory banks of pixel and region embeddings (docs/DESIGN.md §D.3.10).

The bank is state, not parameters: a `MemoryBank` NamedTuple (a plain pytree, no flax) that
lives in the train state, is checkpointed with it and is replicated over the mesh. All layers
share one bank. `update_memory_bank` is a pure function with static shapes (one masked
scatter per queue), applied after each G step with stop-gradient.

Each class c owns a ring buffer of `S` slots; `*_ptr[c]` is the next slot to write, which is
the oldest entry once the queue is full (first in, first out).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MemoryBank(NamedTuple):
    """Memory-bank state (all arrays; K classes, P pixel slots, R region slots, dim D).

    pixel: `(K, P, D)` float32 pixel embeddings.
    pixel_valid: `(K, P)` bool, slot holds an embedding.
    pixel_ptr: `(K,)` int32 next slot to write per class.
    region: `(K, R, D)` float32 region embeddings.
    region_valid: `(K, R)` bool.
    region_ptr: `(K,)` int32.
    """

    pixel: jax.Array
    pixel_valid: jax.Array
    pixel_ptr: jax.Array
    region: jax.Array
    region_valid: jax.Array
    region_ptr: jax.Array


def init_memory_bank(
    *, num_classes: int, dim: int, pixel_bank_size: int, region_bank_size: int
) -> MemoryBank:
    """An empty bank: zeros, every slot invalid, pointers at 0 (docs/DESIGN.md §D.3.10).

    Args:
      num_classes: K (classes 0..K−1).
      dim: embedding dim D (`contrastive.dim`).
      pixel_bank_size: P slots per class (`contrastive.pixel_bank_size`, default 64).
      region_bank_size: R slots per class (`contrastive.region_bank_size`, default 16).
    """
    for name, value in (
        ("num_classes", num_classes),
        ("dim", dim),
        ("pixel_bank_size", pixel_bank_size),
        ("region_bank_size", region_bank_size),
    ):
        if int(value) < 1:
            raise ValueError(f"init_memory_bank: {name} = {value!r}; allowed: an integer >= 1")
    k, d, p, r = int(num_classes), int(dim), int(pixel_bank_size), int(region_bank_size)
    return MemoryBank(
        pixel=jnp.zeros((k, p, d), jnp.float32),
        pixel_valid=jnp.zeros((k, p), bool),
        pixel_ptr=jnp.zeros((k,), jnp.int32),
        region=jnp.zeros((k, r, d), jnp.float32),
        region_valid=jnp.zeros((k, r), bool),
        region_ptr=jnp.zeros((k,), jnp.int32),
    )


def _contrast(queue, valid):
    k, s, d = queue.shape
    labels = jnp.repeat(jnp.arange(k, dtype=jnp.int32), s)
    return jax.lax.stop_gradient(queue.reshape(k * s, d)), labels, valid.reshape(k * s)


def bank_pixel_contrast(bank: MemoryBank) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pixel bank as a contrast set: `(K·P, D)` float32, labels `(K·P,)` int32, valid `(K·P,)`."""
    return _contrast(bank.pixel, bank.pixel_valid)


def bank_region_contrast(bank: MemoryBank) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Region bank as a contrast set: `(K·R, D)` float32, labels `(K·R,)` int32, valid `(K·R,)`."""
    return _contrast(bank.region, bank.region_valid)


def push_to_queue(
    queue: jax.Array,
    queue_valid: jax.Array,
    ptr: jax.Array,
    *,
    items: jax.Array,
    item_labels: jax.Array,
    item_valid: jax.Array,
    push_per_class: int | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pushes items into per-class ring buffers in item order (one masked scatter).

    Class c takes its first `n_c = min(#valid items of class c, push_per_class)` items (all of
    them when `push_per_class` is None) in row order, writes them at slots ptr[c], ptr[c]+1, …
    (mod S) and advances ptr[c] by n_c; when n_c > S only the last S are kept, as a FIFO would.

    Args:
      queue: `(K, S, D)` float32; queue_valid `(K, S)` bool; ptr `(K,)` int32.
      items: `(N, D)`; item_labels `(N,)` int32; item_valid `(N,)` bool (labels outside
        `[0, K)` are never pushed).
      push_per_class: static cap per class and push, or None.

    Returns:
      The new `(queue, queue_valid, ptr)`.
    """
    k, s, d = queue.shape
    labels = jnp.asarray(item_labels, jnp.int32)
    ok = jnp.asarray(item_valid, bool) & (labels >= 0) & (labels < k)
    member = ok[:, None] & (labels[:, None] == jnp.arange(k, dtype=jnp.int32)[None, :])  # (N, K)
    rank = jnp.sum(jnp.where(member, jnp.cumsum(member, axis=0) - 1, 0), axis=1)  # (N,)
    total = jnp.sum(member, axis=0).astype(jnp.int32)  # (K,)
    n_push = total if push_per_class is None else jnp.minimum(total, int(push_per_class))
    cls = jnp.clip(labels, 0, k - 1)
    n_item = n_push[cls]
    keep = ok & (rank < n_item) & (rank >= n_item - s)
    slot = (ptr[cls] + rank) % s
    target = jnp.where(keep, cls * s + slot, k * s)  # k·s is out of bounds: dropped
    items = jax.lax.stop_gradient(jnp.asarray(items, jnp.float32))
    new_queue = queue.reshape(k * s, d).at[target].set(items, mode="drop").reshape(k, s, d)
    new_valid = queue_valid.reshape(k * s).at[target].set(True, mode="drop").reshape(k, s)
    new_ptr = ((ptr + n_push) % s).astype(jnp.int32)
    return new_queue, new_valid, new_ptr


def update_memory_bank(
    bank: MemoryBank,
    fields,
    *,
    push_per_class: int,
    region_push_per_class: int | None = None,
) -> MemoryBank:
    """Pushes this step's sampled pixels and region embeddings (docs/DESIGN.md §D.3.10).

    Args:
      bank: the current `MemoryBank`.
      fields: a `ContrastiveAux` from `multiscale_contrastive_loss`, or any object with the
        attributes `pixels (N, D)`, `pixel_labels (N,)`, `pixel_valid (N,)`, `regions (M, D)`,
        `region_labels (M,)`, `region_valid (M,)`.
      push_per_class: at most this many sampled pixels per class and step
        (`contrastive.bank_push_per_class`, default 8), taken in row order (anchor-major over
        the layers for a `ContrastiveAux`).
      region_push_per_class: cap on region embeddings per class and step; None (default)
        pushes the regions of every image that contains the class (every layer), the FIFO
        keeping the newest `R`.

    Returns:
      The new `MemoryBank` (stop-gradient contents).
    """
    pixel, pixel_valid, pixel_ptr = push_to_queue(
        bank.pixel,
        bank.pixel_valid,
        bank.pixel_ptr,
        items=fields.pixels,
        item_labels=fields.pixel_labels,
        item_valid=fields.pixel_valid,
        push_per_class=push_per_class,
    )
    region, region_valid, region_ptr = push_to_queue(
        bank.region,
        bank.region_valid,
        bank.region_ptr,
        items=fields.regions,
        item_labels=fields.region_labels,
        item_valid=fields.region_valid,
        push_per_class=region_push_per_class,
    )
    return MemoryBank(pixel, pixel_valid, pixel_ptr, region, region_valid, region_ptr)
