"""Supervised pixel/region contrastive losses, multi-scale (docs/DESIGN.md §D.3).

`supervised_contrastive_loss` is the core (§D.3.6). `pixel_contrastive_loss` (§D.3.7) and
`class_contrastive_loss` (§D.3.8) build its contrast sets; `multiscale_contrastive_loss` is
the one entry point of the train step: label resizing, anchor sampling, region embeddings,
cross-scale contrast (§D.3.9), memory banks (§D.3.10) and the total L_cl (§D.3.11). It returns
everything `update_memory_bank` needs, under stop-gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ecgan_jax.losses.memory_bank import MemoryBank, bank_pixel_contrast, bank_region_contrast
from ecgan_jax.losses.sampling import region_embeddings, resize_labels_nearest, sample_anchors

_HI = jax.lax.Precision.HIGHEST


def supervised_contrastive_loss(
    anchors: jax.Array,
    anchor_labels: jax.Array,
    contrast: jax.Array,
    contrast_labels: jax.Array,
    *,
    temperature: float,
    anchor_valid: jax.Array | None = None,
    contrast_valid: jax.Array | None = None,
    self_mask: jax.Array | None = None,
) -> jax.Array:
    """Supervised contrastive loss with one positive per term (docs/DESIGN.md §D.3.6).

    For each valid anchor a, with P(a) the valid contrast items of the same label and N(a) the
    valid items of other labels (pairs in `self_mask` dropped from both):

        L_a = −(1/|P(a)|) Σ_{p∈P(a)} log( e^{s_ap} / (e^{s_ap} + Σ_{n∈N(a)} e^{s_an}) ),
        s_ij = z_i·z_j / τ.

    Anchors with empty P(a) or empty N(a) are left out; the result is the mean of L_a over the
    others, 0 if there are none. Label −1 (any negative label) is never valid. Computed in
    float32 with a max-shifted log-sum-exp over the negatives; values and gradients stay finite
    even when every anchor or every contrast item is invalid.

    Args:
      anchors: `(N_a, D)` anchor embeddings z_a (assumed L2-normalised; not normalised here).
      anchor_labels: `(N_a,)` int32 labels y_a.
      contrast: `(N_c, D)` contrast embeddings z_c.
      contrast_labels: `(N_c,)` int32 labels y_c.
      temperature: τ > 0.
      anchor_valid: optional `(N_a,)` bool mask (default: all True; labels < 0 always invalid).
      contrast_valid: optional `(N_c,)` bool mask (same convention).
      self_mask: optional `(N_a, N_c)` bool, True for pairs to drop (an anchor against its own
        copy in the contrast set).

    Returns:
      float32 scalar.
    """
    if anchors.ndim != 2 or contrast.ndim != 2 or anchors.shape[1] != contrast.shape[1]:
        raise ValueError(
            "supervised_contrastive_loss: expected anchors (N_a, D) and contrast (N_c, D) with "
            f"the same D; got {anchors.shape} and {contrast.shape}"
        )
    n_a, n_c = anchors.shape[0], contrast.shape[0]
    if anchor_labels.shape != (n_a,) or contrast_labels.shape != (n_c,):
        raise ValueError(
            f"supervised_contrastive_loss: anchor_labels {anchor_labels.shape} / contrast_labels "
            f"{contrast_labels.shape} must be ({n_a},) / ({n_c},)"
        )
    if self_mask is not None and self_mask.shape != (n_a, n_c):
        raise ValueError(
            f"supervised_contrastive_loss: self_mask must be ({n_a}, {n_c}); got {self_mask.shape}"
        )
    if isinstance(temperature, int | float) and temperature <= 0:  # traced values unchecked
        raise ValueError(f"supervised_contrastive_loss: temperature must be > 0; got {temperature}")

    y_a = jnp.asarray(anchor_labels, jnp.int32)
    y_c = jnp.asarray(contrast_labels, jnp.int32)
    va = y_a >= 0
    vc = y_c >= 0
    if anchor_valid is not None:
        va = va & jnp.asarray(anchor_valid, bool)
    if contrast_valid is not None:
        vc = vc & jnp.asarray(contrast_valid, bool)

    pair = va[:, None] & vc[None, :]
    if self_mask is not None:
        pair = pair & ~jnp.asarray(self_mask, bool)
    same = y_a[:, None] == y_c[None, :]
    pos = pair & same
    neg = pair & ~same

    sim = (
        jnp.matmul(
            jnp.asarray(anchors, jnp.float32), jnp.asarray(contrast, jnp.float32).T, precision=_HI
        )
        / temperature
    )
    return _loss_from_similarities(sim, va, pos, neg)


@jax.checkpoint
def _loss_from_similarities(sim, va, pos, neg):
    """The loss from the (N_a, N_c) similarities. Rematerialised: the backward pass keeps only
    `sim` and the masks and recomputes the exponentials, which XLA otherwise keeps as three
    more (N_a, N_c) float32 arrays per call (22 MB each for 1024 anchors; the ngf 16 step's
    temp-buffer peak is in this loss's forward pass, BENCHMARKS.md)."""
    # log Σ_n e^{s_an}, shifted by the (constant, stop-gradient) row max over the negatives;
    # every intermediate is kept finite so that masked rows get a zero, not NaN, gradient.
    neg_sim = jnp.where(neg, sim, -jnp.inf)
    row_max = jax.lax.stop_gradient(jnp.max(neg_sim, axis=1, keepdims=True))
    has_neg = jnp.any(neg, axis=1)
    row_max = jnp.where(has_neg[:, None], row_max, 0.0)
    neg_exp = jnp.exp(jnp.where(neg, sim - row_max, -jnp.inf))
    neg_sum = jnp.sum(neg_exp, axis=1, keepdims=True)
    neg_lse = jnp.log(jnp.where(has_neg[:, None], neg_sum, 1.0)) + row_max
    # log(e^{s_ap} / (e^{s_ap} + e^{neg_lse})) for every pair; only positives are summed.
    log_prob = sim - jnp.logaddexp(sim, neg_lse)
    num_pos = jnp.sum(pos, axis=1)
    mean_log_prob = jnp.sum(jnp.where(pos, log_prob, 0.0), axis=1) / jnp.maximum(num_pos, 1)
    use = va & (num_pos > 0) & has_neg
    count = jnp.sum(use.astype(jnp.float32))
    return -jnp.sum(jnp.where(use, mean_log_prob, 0.0)) / jnp.maximum(count, 1.0)


def pixel_contrastive_loss(
    *,
    anchors: jax.Array,
    anchor_labels: jax.Array,
    anchor_valid: jax.Array,
    pixels: jax.Array,
    pixel_labels: jax.Array,
    pixel_valid: jax.Array,
    anchor_offset: int,
    bank: MemoryBank | None,
    temperature: float,
) -> jax.Array:
    """Pixel-to-pixel loss L_pix of one layer (docs/DESIGN.md §D.3.7).

    Contrast = the sampled pixels `pixels` (of this layer, or of all layers with cross-scale)
    plus the pixel memory bank. The anchors are the rows `anchor_offset : anchor_offset + A` of
    `pixels`; those self pairs are masked.

    Args:
      anchors: `(A, D)`, anchor_labels `(A,)` int32, anchor_valid `(A,)` bool.
      pixels: `(M, D)` sampled pixel embeddings of the contrast layers, with pixel_labels
        `(M,)` and pixel_valid `(M,)`.
      anchor_offset: static row of the first anchor inside `pixels`.
      bank: `MemoryBank` or None (no bank items).
      temperature: τ.

    Returns:
      float32 scalar.
    """
    a, m = anchors.shape[0], pixels.shape[0]
    self_mask = jnp.arange(m)[None, :] == (jnp.arange(a) + anchor_offset)[:, None]
    contrast, labels, valid = pixels, pixel_labels, pixel_valid
    if bank is not None:
        b_emb, b_lab, b_val = bank_pixel_contrast(bank)
        contrast = jnp.concatenate([contrast, b_emb], axis=0)
        labels = jnp.concatenate([labels, b_lab], axis=0)
        valid = jnp.concatenate([valid, b_val], axis=0)
        self_mask = jnp.concatenate([self_mask, jnp.zeros((a, b_emb.shape[0]), bool)], axis=1)
    return supervised_contrastive_loss(
        anchors,
        anchor_labels,
        contrast,
        labels,
        temperature=temperature,
        anchor_valid=anchor_valid,
        contrast_valid=valid,
        self_mask=self_mask,
    )


def class_contrastive_loss(
    *,
    anchors: jax.Array,
    anchor_labels: jax.Array,
    anchor_valid: jax.Array,
    regions: jax.Array,
    region_labels: jax.Array,
    region_valid: jax.Array,
    bank: MemoryBank | None,
    temperature: float,
) -> jax.Array:
    """Pixel-to-region loss L_cls of one layer (docs/DESIGN.md §D.3.8).

    Contrast = the region embeddings `regions` (`(R, D)`, labels `(R,)`, valid `(R,)`: of this
    layer, or of all layers with cross-scale, over the whole global batch) plus the region
    memory bank. No self mask.

    Returns:
      float32 scalar.
    """
    contrast, labels, valid = regions, region_labels, region_valid
    if bank is not None:
        b_emb, b_lab, b_val = bank_region_contrast(bank)
        contrast = jnp.concatenate([contrast, b_emb], axis=0)
        labels = jnp.concatenate([labels, b_lab], axis=0)
        valid = jnp.concatenate([valid, b_val], axis=0)
    return supervised_contrastive_loss(
        anchors,
        anchor_labels,
        contrast,
        labels,
        temperature=temperature,
        anchor_valid=anchor_valid,
        contrast_valid=valid,
    )


class ContrastiveAux(NamedTuple):
    """Side outputs of `multiscale_contrastive_loss` (a pytree; fields under stop-gradient).

    terms: dict of float32 scalars: `pixel_{l}` and `class_{l}` per layer index l, and their
      layer means `pixel` and `class`.
    pixel_index: `(L, A)` int32 flat index (into that layer's `B·h·w`) of each sampled anchor.
    pixels: `(L·A, D)` float32 sampled pixel embeddings, anchor-major (row `i·L + l` is anchor i
      of layer l), so that a per-class FIFO push mixes the layers.
    pixel_labels: `(L·A,)` int32, −1 where invalid.
    pixel_valid: `(L·A,)` bool.
    regions: `(B·L·K, D)` float32 region embeddings, image-major (row `(b·L + l)·K + c`).
    region_labels: `(B·L·K,)` int32 class c of each row (−1 where the class is absent).
    region_valid: `(B·L·K,)` bool, class c present in image b.
    """

    terms: dict
    pixel_index: jax.Array
    pixels: jax.Array
    pixel_labels: jax.Array
    pixel_valid: jax.Array
    regions: jax.Array
    region_labels: jax.Array
    region_valid: jax.Array


def multiscale_contrastive_loss(
    *,
    embeddings: Sequence[jax.Array],
    labels: jax.Array,
    bank: MemoryBank | None,
    key: jax.Array,
    num_classes: int,
    num_anchors: int,
    temperature: float,
    cross_scale: bool = True,
    lambda_pixel: float = 1.0,
    lambda_class: float = 1.0,
    anchor_selection: str = "auto",
    mesh=None,
    axis_name: str = "data",
) -> tuple[jax.Array, ContrastiveAux]:
    """L_cl = λ_pix · mean_l L_pix,l + λ_cls · mean_l L_cls,l (docs/DESIGN.md §D.3).

    Per layer l: the labels are resized to (h_l, w_l) by the PyTorch nearest rule; `num_anchors`
    pixels of the global batch are drawn class-balanced (key `fold_in(key, l)`); region
    embeddings are computed for every (image, class). L_pix,l contrasts the anchors with the
    sampled pixels (self pairs masked) and the pixel bank, L_cls,l with the regions and the
    region bank. With `cross_scale` the contrast sets hold the sampled pixels / regions of all
    layers, otherwise of layer l only. Bank items are constants (stop-gradient); the current
    batch's contrast items carry gradients.

    Args:
      embeddings: list over layers of `(B, h_l, w_l, D)` L2-normalised projected features
        (cast to float32).
      labels: `(B, H, W)` int32 full-resolution class map, classes 0..K−1, −1 = ignore.
      bank: `MemoryBank` from `init_memory_bank` (or None for no banks).
      key: PRNG key of this step.
      num_classes: K (static).
      num_anchors: anchors per layer for the global batch (static).
      temperature: τ.
      cross_scale: §D.3.9 switch (static).
      lambda_pixel, lambda_class: λ_pix, λ_cls.
      anchor_selection, mesh, axis_name: how the anchors' top-k runs (`select_top_pixels`:
        the same anchors for every choice; by default per device shard under the context mesh,
        so that no device sorts every pixel of the global batch).

    Returns:
      `(loss, aux)`: float32 scalar and a `ContrastiveAux` (pass it to `update_memory_bank`).
    """
    _check_multiscale_inputs(
        embeddings=embeddings, labels=labels, bank=bank, num_classes=num_classes
    )
    labels = jnp.asarray(labels, jnp.int32)
    layers = [
        _sample_layer(
            embedding=emb,
            labels=labels,
            key=jax.random.fold_in(key, l),
            num_classes=num_classes,
            num_anchors=num_anchors,
            anchor_selection=anchor_selection,
            mesh=mesh,
            axis_name=axis_name,
        )
        for l, emb in enumerate(embeddings)
    ]
    terms = {}
    for l in range(len(layers)):
        pixels, offset = _pixel_contrast_set(
            layers=layers, layer=l, cross_scale=cross_scale, num_anchors=num_anchors
        )
        regions = _region_contrast_set(layers=layers, layer=l, cross_scale=cross_scale)
        terms[f"pixel_{l}"], terms[f"class_{l}"] = _layer_terms(
            layer=layers[l],
            pixels=pixels,
            anchor_offset=offset,
            regions=regions,
            bank=bank,
            temperature=temperature,
        )
    terms["pixel"] = sum(terms[f"pixel_{l}"] for l in range(len(layers))) / len(layers)
    terms["class"] = sum(terms[f"class_{l}"] for l in range(len(layers))) / len(layers)
    loss = lambda_pixel * terms["pixel"] + lambda_class * terms["class"]
    return jnp.asarray(loss, jnp.float32), _assemble_aux(layers=layers, terms=terms)


def _check_multiscale_inputs(
    *, embeddings: Sequence[jax.Array], labels: jax.Array, bank: MemoryBank | None, num_classes: int
) -> None:
    """One-line errors for the shapes `multiscale_contrastive_loss` needs: a non-empty list of
    `(B, h_l, w_l, D)` embeddings with one B and one D, `(B, H, W)` labels, a bank of K classes."""
    if len(embeddings) == 0:
        raise ValueError("multiscale_contrastive_loss: embeddings is an empty list")
    if labels.ndim != 3:
        raise ValueError(
            f"multiscale_contrastive_loss: labels must be (B, H, W); got {labels.shape}"
        )
    batch = labels.shape[0]
    dims = {e.shape[-1] for e in embeddings}
    for e in embeddings:
        if e.ndim != 4 or e.shape[0] != batch:
            raise ValueError(
                f"multiscale_contrastive_loss: every embedding must be (B={batch}, h, w, D); got "
                f"{[tuple(x.shape) for x in embeddings]}"
            )
    if len(dims) != 1:
        raise ValueError(
            f"multiscale_contrastive_loss: embedding dims differ across layers: {dims}"
        )
    if bank is not None and bank.pixel.shape[0] != num_classes:
        raise ValueError(
            f"multiscale_contrastive_loss: bank has {bank.pixel.shape[0]} classes, "
            f"num_classes={num_classes}"
        )


class _LayerSample(NamedTuple):
    """What one layer contributes to the contrast (docs/DESIGN.md §D.3.4, §D.3.5).

    anchors: `(A, D)` float32 embeddings of the sampled anchors; anchor_labels `(A,)` int32
      (−1 where invalid); anchor_valid `(A,)` bool; index `(A,)` int32 flat index into `B·h·w`.
    regions: `(B, K, D)` float32 region embeddings; region_valid `(B, K)` bool (class present);
      region_labels `(B·K,)` int32, class c of row `b·K + c`, −1 where absent.
    """

    anchors: jax.Array
    anchor_labels: jax.Array
    anchor_valid: jax.Array
    index: jax.Array
    regions: jax.Array
    region_valid: jax.Array
    region_labels: jax.Array


def _sample_layer(
    *,
    embedding: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    num_classes: int,
    num_anchors: int,
    anchor_selection: str,
    mesh,
    axis_name: str,
) -> _LayerSample:
    """Anchors and regions of one layer: `embedding` `(B, h, w, D)`, the full-resolution int32
    `labels` `(B, H, W)` (resized here by the PyTorch nearest rule), this layer's `key`."""
    emb = jnp.asarray(embedding, jnp.float32)
    lab = resize_labels_nearest(labels, size=emb.shape[1:3])
    sample = sample_anchors(
        labels=lab,
        key=key,
        num_anchors=num_anchors,
        num_classes=num_classes,
        selection=anchor_selection,
        mesh=mesh,
        axis_name=axis_name,
    )
    # The anchors are gathered before the regions are summed: in this order XLA:CPU's
    # scheduler frees the layer's embedding sooner (BENCHMARKS.md, "Ninth session").
    anchors = emb.reshape(-1, emb.shape[-1])[sample.index]
    reg, present = region_embeddings(embeddings=emb, labels=lab, num_classes=num_classes)
    class_ids = jnp.arange(num_classes, dtype=jnp.int32)
    return _LayerSample(
        anchors=anchors,
        anchor_labels=sample.labels,
        anchor_valid=sample.valid,
        index=sample.index,
        regions=reg,
        region_valid=present,
        region_labels=jnp.where(present, class_ids[None, :], -1).reshape(-1),
    )


def _pixel_contrast_set(
    *, layers: Sequence[_LayerSample], layer: int, cross_scale: bool, num_anchors: int
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], int]:
    """The sampled pixels that layer `layer`'s anchors contrast with (docs/DESIGN.md §D.3.9):
    `((M, D) embeddings, (M,) labels, (M,) valid)` of every layer with `cross_scale`
    (M = L·A, layer-major), of this layer only otherwise (M = A); and the static row of this
    layer's first anchor in them."""
    if not cross_scale:
        own = layers[layer]
        return (own.anchors, own.anchor_labels, own.anchor_valid), 0
    pixels = tuple(
        jnp.concatenate([getattr(x, f) for x in layers], axis=0)
        for f in ("anchors", "anchor_labels", "anchor_valid")
    )
    return pixels, layer * num_anchors


def _region_contrast_set(
    *, layers: Sequence[_LayerSample], layer: int, cross_scale: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The regions that layer `layer`'s anchors contrast with (docs/DESIGN.md §D.3.9):
    `((R, D) embeddings, (R,) labels, (R,) valid)`, of every layer with `cross_scale`
    (R = L·B·K, layer-major, then image-major), of this layer only otherwise (R = B·K)."""
    chosen = layers if cross_scale else [layers[layer]]
    d = chosen[0].regions.shape[-1]
    return (
        jnp.concatenate([x.regions.reshape(-1, d) for x in chosen], axis=0),
        jnp.concatenate([x.region_labels for x in chosen], axis=0),
        jnp.concatenate([x.region_valid.reshape(-1) for x in chosen], axis=0),
    )


def _layer_terms(
    *,
    layer: _LayerSample,
    pixels: tuple[jax.Array, jax.Array, jax.Array],
    anchor_offset: int,
    regions: tuple[jax.Array, jax.Array, jax.Array],
    bank: MemoryBank | None,
    temperature: float,
) -> tuple[jax.Array, jax.Array]:
    """`(L_pix, L_cls)` of one layer's anchors, float32 scalars, against the contrast sets
    `pixels` and `regions` (each `(embeddings, labels, valid)`) and the bank."""
    anchors = {
        "anchors": layer.anchors,
        "anchor_labels": layer.anchor_labels,
        "anchor_valid": layer.anchor_valid,
    }
    pixel_loss = pixel_contrastive_loss(
        **anchors,
        pixels=pixels[0],
        pixel_labels=pixels[1],
        pixel_valid=pixels[2],
        anchor_offset=anchor_offset,
        bank=bank,
        temperature=temperature,
    )
    class_loss = class_contrastive_loss(
        **anchors,
        regions=regions[0],
        region_labels=regions[1],
        region_valid=regions[2],
        bank=bank,
        temperature=temperature,
    )
    return pixel_loss, class_loss


def _assemble_aux(*, layers: Sequence[_LayerSample], terms: dict) -> ContrastiveAux:
    """The `ContrastiveAux` of the layers: pixels interleaved anchor-major (row `i·L + l`),
    regions image-major (row `(b·L + l)·K + c`), embeddings under stop-gradient."""
    sg = jax.lax.stop_gradient
    d = layers[0].anchors.shape[-1]
    batch, num_classes = layers[0].region_valid.shape
    class_ids = jnp.arange(num_classes, dtype=jnp.int32)
    region_valid = jnp.stack([x.region_valid for x in layers], axis=1).reshape(-1)
    return ContrastiveAux(
        terms=terms,
        pixel_index=jnp.stack([x.index for x in layers], axis=0),
        pixels=sg(jnp.stack([x.anchors for x in layers], axis=1).reshape(-1, d)),
        pixel_labels=jnp.stack([x.anchor_labels for x in layers], axis=1).reshape(-1),
        pixel_valid=jnp.stack([x.anchor_valid for x in layers], axis=1).reshape(-1),
        # (B, L, K, D) -> rows
        regions=sg(jnp.stack([x.regions for x in layers], axis=1).reshape(-1, d)),
        region_labels=jnp.where(region_valid, jnp.tile(class_ids, batch * len(layers)), -1).astype(
            jnp.int32
        ),
        region_valid=region_valid,
    )
