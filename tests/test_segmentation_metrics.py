"""Segmentation metrics (ecgan_jax/eval/segmentation.py) against a per-class numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from ecgan_jax.eval import segmentation as seg


def reference_scores(labels, preds, k, ignore):
    """Per-class boolean masks; mIoU over classes with a non-empty union."""
    labels, preds = labels.ravel(), preds.ravel()
    valid = (labels != ignore) & (labels >= 0) & (labels < k)
    ious, accs = [], []
    for c in range(k):
        g, p = (labels == c) & valid, (preds == c) & valid
        union = (g | p).sum()
        if union:
            ious.append((g & p).sum() / union)
        if g.sum():
            accs.append((g & p).sum() / g.sum())
    acc = (labels[valid] == preds[valid]).mean()
    return np.mean(ious), acc, np.mean(accs)


def random_case(seed, b=5, h=12, w=10, k=7, ignore=255):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, (b, h, w))
    labels[rng.random((b, h, w)) < 0.2] = ignore
    preds = np.where(rng.random((b, h, w)) < 0.6, labels, rng.integers(0, k, (b, h, w)))
    preds = np.clip(preds, 0, k - 1)
    return labels, preds


@pytest.mark.parametrize("ignore", [255, -1, 0])
def test_scores_match_numpy_reference(ignore):
    k = 7
    labels, preds = random_case(0, k=k, ignore=ignore)
    conf = seg.confusion_matrix(
        jnp.asarray(labels), jnp.asarray(preds), num_classes=k, ignore_label=ignore
    )
    scores = seg.scores_from_confusion(conf)
    miou, acc, macc = reference_scores(labels, preds, k, ignore)
    assert scores["miou"] == pytest.approx(miou, rel=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(acc, rel=1e-12)
    assert scores["mean_class_accuracy"] == pytest.approx(macc, rel=1e-12)
    assert scores["num_pixels"] == int(((labels != ignore) & (labels >= 0) & (labels < k)).sum())


def test_absent_classes_are_excluded_and_nan_free():
    labels = np.array([[0, 0, 1, 255]])
    preds = np.array([[0, 3, 1, 2]])  # class 3 only predicted, class 2 only on an ignore pixel
    scores = seg.scores_from_confusion(
        seg.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), num_classes=5)
    )
    # IoU: class 0 = 1/2, class 1 = 1, class 3 = 0 (present in prediction); 2 and 4 absent.
    assert scores["miou"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(2 / 3)
    np.testing.assert_array_equal(scores["class_present"], [True, True, False, True, False])
    assert np.isfinite(scores["per_class_iou"]).all()
    with pytest.raises(ValueError, match="no non-ignored pixel"):
        seg.scores_from_confusion(np.zeros((3, 3)))


def test_accumulated_sharded_equals_unsharded():
    k = 7
    labels, preds = random_case(1, b=13, k=k)
    mesh8 = Mesh(np.asarray(jax.devices()[:8]), ("data",))
    mesh1 = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    results = []
    for mesh in (mesh8, mesh1):
        acc = seg.ConfusionMatrixAccumulator(k, ignore_label=255, mesh=mesh)
        for start in (0, 5, 8):  # batches of 5, 3 and 5 rows: padded to the device count
            stop = {0: 5, 5: 8, 8: 13}[start]
            acc.update(labels[start:stop], preds[start:stop])
        results.append(acc.confusion)
    np.testing.assert_array_equal(results[0], results[1])
    whole = seg.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), num_classes=k)
    np.testing.assert_array_equal(results[0], np.asarray(whole))
    miou, acc_ref, _ = reference_scores(labels, preds, k, 255)
    scores = seg.scores_from_confusion(results[0])
    assert scores["miou"] == pytest.approx(miou)
    assert scores["pixel_accuracy"] == pytest.approx(acc_ref)

    logits = np.eye(k, dtype=np.float32)[preds] * 3.0
    by_logits = seg.ConfusionMatrixAccumulator(k, mesh=mesh8)
    by_logits.update_logits(labels, logits)
    np.testing.assert_array_equal(by_logits.confusion, results[0])
    with pytest.raises(ValueError, match="logits have shape"):
        by_logits.update_logits(labels, logits[..., :3])


def test_segmenter_interface_and_evaluator():
    """A toy segmenter (class = quantised red channel) through the sharded evaluator."""
    k = 4

    def apply_fn(variables, images):
        cls = jnp.clip(jnp.floor((images[..., 0] + 1.0) / 2.0 * k), 0, k - 1).astype(jnp.int32)
        return jax.nn.one_hot(cls, k) * variables["scale"]

    toy = seg.Segmenter(apply_fn, {"scale": jnp.float32(2.0)}, num_classes=k, name="toy")
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (6, 8, 9, 3)).astype(np.float32)
    labels = rng.integers(0, k, (6, 8, 9))
    labels[:, 0] = 255
    assert toy(jnp.asarray(images)).shape == (6, 8, 9, k)
    ev = seg.SegmentationEvaluator(toy, ignore_label=255)
    ev.update(images[:3], labels[:3])
    ev.update(images[3:], labels[3:])
    preds = np.clip(np.floor((images[..., 0] + 1) / 2 * k), 0, k - 1).astype(int)
    miou, acc, _ = reference_scores(labels, preds, k, 255)
    scores = ev.result()
    assert scores["miou"] == pytest.approx(miou) and scores["pixel_accuracy"] == pytest.approx(acc)
    with pytest.raises(ValueError, match="labels"):
        ev.update(images, labels[:, :4])
    half = seg.Segmenter(lambda v, x: apply_fn(v, x)[:, ::2, ::2], toy.variables, k)
    wrong_k = seg.Segmenter(apply_fn, toy.variables, num_classes=5)
    for bad in (half, wrong_k):
        with pytest.raises(ValueError, match="returned logits"):
            seg.SegmentationEvaluator(bad).update(images, labels)


def test_cityscapes_train_ids():
    table = seg.CITYSCAPES_LABEL_TO_TRAIN_ID
    train = table[table != 255]
    np.testing.assert_array_equal(np.sort(train), np.arange(19))
    assert len(seg.CITYSCAPES_TRAIN_CLASSES) == 19
    ids = np.array([0, 6, 7, 8, 9, 11, 17, 18, 23, 24, 26, 29, 30, 31, 33, 34, -1, 255])
    want = [255, 255, 0, 1, 255, 2, 5, 255, 10, 11, 13, 255, 255, 16, 18, 255, 255, 255]
    np.testing.assert_array_equal(seg.cityscapes_label_to_train_id(ids), want)
    got = seg.cityscapes_label_to_train_id(jnp.asarray(ids), ignore_label=-1)
    np.testing.assert_array_equal(np.asarray(got), np.where(np.array(want) == 255, -1, want))


def test_pad_batch_fills_images_with_zeros_and_labels_with_minus_one():
    images = np.full((2, 3, 4, 3), 0.5, np.float32)
    labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    got_images, got_labels = seg.pad_batch(images, labels, 5)
    assert got_images.shape == (5, 3, 4, 3) and got_images.dtype == np.float32
    assert got_labels.shape == (5, 3, 4) and got_labels.dtype == np.int32
    np.testing.assert_array_equal(got_images[:2], images)
    np.testing.assert_array_equal(got_images[2:], 0.0)
    np.testing.assert_array_equal(got_labels[:2], labels)
    np.testing.assert_array_equal(got_labels[2:], -1)
    full_images, full_labels = seg.pad_batch(images, labels, 2)
    assert full_images is images and full_labels.dtype == np.int32
    with pytest.raises(ValueError, match="3 images exceed batch_size=2"):
        seg.pad_batch(np.zeros((3, 3, 4, 3)), np.zeros((3, 3, 4)), 2)
