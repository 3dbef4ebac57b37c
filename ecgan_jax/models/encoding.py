"""The generator input: one-hot labels (+ dontcare) (+ instance boundaries) (docs/DESIGN.md §2.1).

`encode_labels(label_map, instance_map, config)` turns integer maps (B,H,W) into the float32
(B,H,W,semantic_nc) tensor the authors' `preprocess_input` builds, in NHWC. Channel order: the
`label_nc (+1)` one-hot channels, then the instance-boundary channel when instances are used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax import config_lib


def instance_edges(instance_map: jax.Array) -> jax.Array:
    """Instance boundaries (B,H,W) -> float32 (B,H,W): 1 where an id differs from a 4-neighbour.

    Both pixels of a differing pair are marked, as the authors' `get_edges` does (§2.1).
    """
    t = jnp.asarray(instance_map)
    dh = t[:, 1:, :] != t[:, :-1, :]
    dw = t[:, :, 1:] != t[:, :, :-1]
    edge = jnp.zeros(t.shape, bool)
    edge = edge.at[:, 1:, :].set(edge[:, 1:, :] | dh)
    edge = edge.at[:, :-1, :].set(edge[:, :-1, :] | dh)
    edge = edge.at[:, :, 1:].set(edge[:, :, 1:] | dw)
    edge = edge.at[:, :, :-1].set(edge[:, :, :-1] | dw)
    return edge.astype(jnp.float32)


def _check_concrete_labels(label_map, num_channels: int) -> None:
    if isinstance(label_map, jax.core.Tracer):
        return  # inside jit: the input pipeline validated the values on read
    arr = np.asarray(label_map)
    if arr.ndim != 3:
        raise ValueError(f"label_map must be (B,H,W) integers, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"label_map must hold integers, got dtype {arr.dtype}")
    bad = np.unique(arr[(arr < 0) | (arr >= num_channels)])
    if bad.size:
        raise ValueError(
            f"label_map holds values {bad[:10].tolist()} outside the allowed range "
            f"0..{num_channels - 1} (dataset.label_nc plus the dontcare channel)"
        )


def encode_labels_typed(
    label_map: jax.Array,
    instance_map: jax.Array | None,
    *,
    num_label_channels: int,
    use_instance: bool,
) -> jax.Array:
    """One-hot over `num_label_channels` (+ the instance-boundary channel); float32 NHWC."""
    _check_concrete_labels(label_map, num_label_channels)
    seg = jax.nn.one_hot(jnp.asarray(label_map), num_label_channels, dtype=jnp.float32)
    if use_instance:
        if instance_map is None:
            raise ValueError(
                "this config uses instance maps (dataset.no_instance=False), "
                "but instance_map is None"
            )
        if tuple(np.shape(instance_map)) != tuple(np.shape(label_map)):
            raise ValueError(
                f"instance_map shape {np.shape(instance_map)} differs from label_map shape "
                f"{np.shape(label_map)}"
            )
        seg = jnp.concatenate([seg, instance_edges(instance_map)[..., None]], axis=-1)
    return seg


def encode_labels(label_map, instance_map, config) -> jax.Array:
    """The generator input (B,H,W,semantic_nc) float32 from integer maps, per the config.

    Args:
      label_map: (B,H,W) integer class ids in 0..label_nc-1 (0..label_nc with a dontcare
        channel); a value outside raises ValueError when the array is concrete.
      instance_map: (B,H,W) integer instance ids, or None when `dataset.no_instance`.
      config: the project config (reads `dataset.label_nc`, `contain_dontcare_label`,
        `no_instance`).
    """
    d = config.dataset
    return encode_labels_typed(
        label_map,
        instance_map,
        num_label_channels=int(d.label_nc) + int(bool(d.contain_dontcare_label)),
        use_instance=not d.no_instance,
    )


def contrastive_labels(label_map: jax.Array, config) -> jax.Array:
    """Class ids for the contrastive/similarity losses: unknown pixels become -1 (§D.3)."""
    unknown = int(config.dataset.get("unknown_label", -1))
    labels = jnp.asarray(label_map, jnp.int32)
    if unknown >= 0:
        labels = jnp.where(labels == unknown, -1, labels)
    return labels


def num_contrastive_classes(config) -> int:
    """Class slots of the memory banks: every one-hot label channel (semantic_nc w/o instance)."""
    return config_lib.semantic_nc(config) - int(not config.dataset.no_instance)
