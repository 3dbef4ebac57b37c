"""Segmentation scores of generated images: mIoU and pixel accuracy (docs/DESIGN.md §5, §D.5).

Protocol (state it next to every number): a pretrained segmenter labels the generated images
at the generated resolution; the ground-truth label maps are at the same resolution (resized
by nearest neighbour, §D.5); ignore pixels are excluded from every score.

* `confusion_matrix(labels, predictions, num_classes=K, ignore_label=...)`: (K, K) int32
  counts, rows = ground truth, columns = prediction, in one scatter-add (a bincount) over the
  whole batch. Pixels whose label is the ignore label or outside [0, K) are left out, so 255
  and -1 are both ignored with any setting. Under `jit` with a batch sharded over a mesh the
  counts are of the global batch (XLA adds the per-device partial counts).
* `scores_from_confusion(confusion)`: float64 scores from accumulated counts:
  - IoU_c = TP_c / (GT_c + PRED_c - TP_c);
  - **mIoU = mean of IoU_c over the classes present in the ground truth or the prediction**
    (union > 0), the convention of fyu/drn's `nanmean(per_class_iu(hist))`; classes absent
    from both are left out, so nothing is NaN; their `per_class_iou` entry is 0 and
    `class_present` says which entries count;
  - pixel accuracy = Σ TP / number of non-ignored pixels (the 93.5-style Cityscapes number,
    not the 81.9-style one that counts ignore pixels, §5);
  - mean class accuracy = mean of TP_c / GT_c over classes present in the ground truth.
* `ConfusionMatrixAccumulator`: sums confusion matrices of batches (int64 on the host), batch
  sharded on the `data` axis of a mesh, partial batches padded with label -1.
* `Segmenter` + `SegmentationEvaluator`: the segmenter interface and the loop around it;
  `pad_batch` pads a partial batch to a fixed size (images 0, labels -1) for it.
* `CITYSCAPES_LABEL_TO_TRAIN_ID` / `cityscapes_label_to_train_id`: Cityscapes labelIds
  (0..33, -1 for the license plate) to the 19 train ids that a Cityscapes segmenter predicts
  (255 = ignore).

**The segmenter interface.** A `Segmenter` holds `apply_fn(variables, images) -> logits`
(images (B, H, W, 3) float32 in [-1, 1], NHWC; logits (B, H, W, K) at the image size), its
`variables` and `num_classes`; calling it applies it. It must be traceable by `jax.jit`; each
network does its own input normalisation inside `apply_fn`. DRN-D-105 for Cityscapes is
`ecgan_jax.eval.drn.drn_segmenter(load_drn(path))`; UperNet-101 for ADE20K is
`ecgan_jax.eval.upernet.upernet_segmenter(load_upernet(path))` (it returns softmax
probabilities, whose arg-max is all the metrics use) and DeepLab-v2 for COCO-Stuff
`ecgan_jax.eval.deeplab.deeplab_segmenter(load_deeplab(path))`; `ecgan_jax.eval.protocol`
picks one per dataset with its label mapping.
* A network kept in PyTorch can be wrapped in `apply_fn` with `jax.pure_callback`, or its
  arg-max predictions can be given to `ConfusionMatrixAccumulator.update` directly: the
  metrics do not depend on the segmenter.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ecgan_jax.sharding import DATA_AXIS, local_mesh

PAD_LABEL = -1  # label of padded rows: outside [0, K), so never counted

# --------------------------------------------------------------------------- Cityscapes

# labelId -> trainId of the 19 evaluated Cityscapes classes (cityscapesScripts labels.py);
# every other labelId (0-6, 9, 10, 14-16, 18, 29, 30, and -1) is ignored (255).
_CITYSCAPES_ID_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_TRAIN_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_IGNORE = 255
CITYSCAPES_LABEL_TO_TRAIN_ID = np.full(256, CITYSCAPES_IGNORE, np.int32)
for _label, _train in _CITYSCAPES_ID_TO_TRAIN.items():
    CITYSCAPES_LABEL_TO_TRAIN_ID[_label] = _train


def cityscapes_label_to_train_id(label_ids, *, ignore_label: int = CITYSCAPES_IGNORE):
    """Maps Cityscapes labelIds (any int array, numpy or jax) to train ids 0..18 / ignore."""
    xp = jnp if isinstance(label_ids, jax.Array) else np
    ids = xp.asarray(label_ids).astype(xp.int32)
    inside = (ids >= 0) & (ids < 256)
    train = xp.asarray(CITYSCAPES_LABEL_TO_TRAIN_ID)[xp.clip(ids, 0, 255)]
    train = xp.where(inside & (train != CITYSCAPES_IGNORE), train, ignore_label)
    return train.astype(xp.int32)


# --------------------------------------------------------------------------- metrics


def confusion_matrix(labels, predictions, *, num_classes: int, ignore_label: int = 255):
    """(K, K) int32 counts [ground truth, prediction] of the non-ignored pixels.

    labels: (...) int ground truth; pixels equal to `ignore_label` or outside [0, K) are
    excluded. predictions: same shape, ints in [0, K) (an arg-max of K logits).
    """
    if labels.shape != predictions.shape:
        raise ValueError(
            f"confusion_matrix: labels {labels.shape} and predictions {predictions.shape} differ"
        )
    k = num_classes
    labels = labels.astype(jnp.int32)
    predictions = predictions.astype(jnp.int32)
    valid = (labels >= 0) & (labels < k) & (labels != ignore_label)
    index = jnp.where(valid, labels * k + predictions, 0).reshape(-1)
    counts = jnp.zeros((k * k,), jnp.int32).at[index].add(valid.reshape(-1), mode="drop")
    return counts.reshape(k, k)


def scores_from_confusion(confusion) -> dict:
    """Scores (float64, NaN-free) of a (K, K) [ground truth, prediction] count matrix.

    Returns {miou, pixel_accuracy, mean_class_accuracy, per_class_iou (K,), class_present
    (K,) bool, num_pixels}. mIoU averages over the classes present in the ground truth or
    the prediction. Raises ValueError when no pixel was counted.
    """
    c = np.asarray(confusion, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"scores_from_confusion: need a square matrix, got {c.shape}")
    total = c.sum()
    if total == 0:
        raise ValueError("scores_from_confusion: no non-ignored pixel was counted")
    tp, gt, pred = np.diag(c), c.sum(axis=1), c.sum(axis=0)
    union = gt + pred - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1.0), 0.0)
    in_gt = gt > 0
    return {
        "miou": float(iou[present].mean()),
        "pixel_accuracy": float(tp.sum() / total),
        "mean_class_accuracy": float((tp[in_gt] / gt[in_gt]).mean()),
        "per_class_iou": iou,
        "class_present": present,
        "num_pixels": int(total),
    }


def default_mesh() -> Mesh:
    """A `data` mesh over every local device."""
    return local_mesh()


def _pad_rows(x: np.ndarray, multiple: int, value) -> np.ndarray:
    extra = -x.shape[0] % multiple
    if not extra:
        return x
    return np.concatenate([x, np.full((extra, *x.shape[1:]), value, x.dtype)])


def pad_batch(images, labels, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A partial batch padded to `batch_size` rows, so a jitted segmenter compiles once.

    images (b, H, W, 3) get zero rows (their dtype kept), labels (b, H, W) rows of
    `PAD_LABEL` (int32; never counted); b must be at most `batch_size`.
    """
    images, labels = np.asarray(images), np.asarray(labels, np.int32)
    pad = batch_size - images.shape[0]
    if pad < 0:
        raise ValueError(f"pad_batch: {images.shape[0]} images exceed batch_size={batch_size}")
    if not pad:
        return images, labels
    return (
        np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]),
        np.concatenate([labels, np.full((pad, *labels.shape[1:]), PAD_LABEL, np.int32)]),
    )


@functools.lru_cache(maxsize=16)
def _confusion_fn(mesh: Mesh, num_classes: int, ignore_label: int, from_logits: bool):
    batch = NamedSharding(mesh, P(DATA_AXIS))

    def fn(labels, predictions):
        if from_logits:
            predictions = jnp.argmax(predictions, axis=-1)
        return confusion_matrix(
            labels, predictions, num_classes=num_classes, ignore_label=ignore_label
        )

    return jax.jit(fn, in_shardings=(batch, batch), out_shardings=NamedSharding(mesh, P()))


class ConfusionMatrixAccumulator:
    """Sums [ground truth, prediction] counts over batches; `result()` gives the scores.

    Each batch is sharded on the `data` axis of `mesh` (default: this process's devices),
    padded to a multiple of the device count with label -1.
    """

    def __init__(self, num_classes: int, *, ignore_label: int = 255, mesh: Mesh | None = None):
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrixAccumulator: num_classes={num_classes} must be >= 1")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.mesh = default_mesh() if mesh is None else mesh
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def _add(self, labels, predictions, from_logits: bool):
        labels = np.asarray(labels)
        predictions = np.asarray(predictions)
        want = labels.shape + ((self.num_classes,) if from_logits else ())
        if predictions.shape != want:
            what = "logits" if from_logits else "predictions"
            raise ValueError(f"{what} have shape {predictions.shape}; expected {want}")
        n_dev = self.mesh.devices.size
        labels = _pad_rows(labels.astype(np.int32), n_dev, PAD_LABEL)
        predictions = _pad_rows(predictions, n_dev, 0)
        fn = _confusion_fn(self.mesh, self.num_classes, self.ignore_label, from_logits)
        self.confusion += np.asarray(fn(labels, predictions), np.int64)

    def update(self, labels, predictions) -> None:
        """labels, predictions: (B, H, W) ints."""
        self._add(labels, predictions, from_logits=False)

    def update_logits(self, labels, logits) -> None:
        """labels (B, H, W) ints; logits (B, H, W, K), arg-max taken on device."""
        self._add(labels, logits, from_logits=True)

    def result(self) -> dict:
        return scores_from_confusion(self.confusion)


# --------------------------------------------------------------------------- segmenters


@dataclasses.dataclass(frozen=True, eq=False)
class Segmenter:
    """A segmentation network: images (B, H, W, 3) float32 in [-1, 1] -> logits (B, H, W, K).

    `apply_fn(variables, images)` must be jit-traceable and do its own input normalisation.
    """

    apply_fn: Callable[[Any, jax.Array], jax.Array]
    variables: Any
    num_classes: int
    name: str = "segmenter"

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.apply_fn(self.variables, images)


class SegmentationEvaluator:
    """Runs a `Segmenter` on batches of (generated) images and scores it against labels.

        ev = SegmentationEvaluator(drn_segmenter(load_drn(path)), ignore_label=255, mesh=mesh)
        for images, labels in batches:  # (B, H, W, 3) in [-1, 1], (B, H, W) ints
            ev.update(images, labels)
        scores = ev.result()  # see scores_from_confusion

    Segmenter, arg-max and counting run in one jitted function, the batch sharded on `data`;
    partial batches are padded (images 0, labels -1). The logits must have the labels' size.
    """

    def __init__(self, segmenter: Segmenter, *, ignore_label: int = 255, mesh: Mesh | None = None):
        self.segmenter = segmenter
        self.accumulator = ConfusionMatrixAccumulator(
            segmenter.num_classes, ignore_label=ignore_label, mesh=mesh
        )
        mesh = self.accumulator.mesh
        batch = NamedSharding(mesh, P(DATA_AXIS))
        k = segmenter.num_classes

        def step(variables, images, labels):
            logits = segmenter.apply_fn(variables, images)
            if logits.shape != (*labels.shape, k):
                raise ValueError(
                    f"segmenter {segmenter.name!r} returned logits {logits.shape}; expected "
                    f"{(*labels.shape, k)} (labels at the image size, {k} classes)"
                )
            preds = jnp.argmax(logits, axis=-1)
            return confusion_matrix(labels, preds, num_classes=k, ignore_label=ignore_label)

        self._step = jax.jit(
            step,
            in_shardings=(NamedSharding(mesh, P()), batch, batch),
            out_shardings=NamedSharding(mesh, P()),
        )
        self._variables = jax.device_put(segmenter.variables, NamedSharding(mesh, P()))

    def update(self, images, labels) -> None:
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.shape[-1] != 3 or labels.shape != images.shape[:3]:
            raise ValueError(
                f"SegmentationEvaluator.update: images {images.shape} must be (B, H, W, 3) and "
                f"labels {labels.shape} (B, H, W)"
            )
        n_dev = self.accumulator.mesh.devices.size
        images = _pad_rows(images.astype(np.float32), n_dev, 0.0)
        labels = _pad_rows(labels.astype(np.int32), n_dev, PAD_LABEL)
        counts = self._step(self._variables, images, labels)
        self.accumulator.confusion += np.asarray(counts, np.int64)

    def result(self) -> dict:
        return self.accumulator.result()
