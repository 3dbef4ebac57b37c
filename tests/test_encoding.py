"""Tests of ecgan_jax.models.encoding: the generator input of docs/DESIGN.md §2.1.

The reference is an independent numpy loop: one-hot over label_nc (+1 dontcare) channels, then
the instance-boundary channel, where a pixel is 1 if any 4-neighbour has another instance id
(both pixels of a differing pair are marked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax import config_lib
from ecgan_jax.config_lib import load_config
from ecgan_jax.models.encoding import (
    contrastive_labels,
    encode_labels,
    instance_edges,
    num_contrastive_classes,
)


def np_boundaries(inst):
    """Per-pixel loop over the 4 neighbours."""
    b, h, w = inst.shape
    out = np.zeros((b, h, w), np.float32)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    ii, jj = i + di, j + dj
                    if 0 <= ii < h and 0 <= jj < w and inst[n, ii, jj] != inst[n, i, j]:
                        out[n, i, j] = 1.0
    return out


def np_encode(label, inst, num_label_channels, use_instance):
    b, h, w = label.shape
    onehot = np.zeros((b, h, w, num_label_channels), np.float32)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                onehot[n, i, j, label[n, i, j]] = 1.0
    if use_instance:
        onehot = np.concatenate([onehot, np_boundaries(inst)[..., None]], axis=-1)
    return onehot


def _blocky(rng, shape, high, block=3):
    """Random integer map made of blocks (so boundaries are sparse), plus a few single pixels."""
    b, h, w = shape
    coarse = rng.integers(0, high, size=(b, -(-h // block), -(-w // block)))
    out = np.repeat(np.repeat(coarse, block, axis=1), block, axis=2)[:, :h, :w]
    out[:, rng.integers(0, h, 4), rng.integers(0, w, 4)] = rng.integers(0, high, 4)
    return out.astype(np.int32)


def test_instance_edges_hand_case():
    inst = np.zeros((1, 4, 5), np.int32)
    inst[0, 1, 1] = 7  # an isolated pixel: itself and its 4 neighbours are marked
    inst[0, :, 4] = 3  # a column at the right border: it and its left neighbours are marked
    expected = np.array(
        [
            [0, 1, 0, 1, 1],
            [1, 1, 1, 1, 1],
            [0, 1, 0, 1, 1],
            [0, 0, 0, 1, 1],
        ],
        np.float32,
    )
    out = np.asarray(instance_edges(jnp.asarray(inst)))
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out, np_boundaries(inst))
    # No diagonal rule: a diagonal-only contact marks nothing extra.
    diag = np.array([[[1, 0], [0, 1]]], np.int32)
    np.testing.assert_array_equal(np.asarray(instance_edges(jnp.asarray(diag))), np.ones((1, 2, 2)))


def test_encode_labels_cityscapes_matches_numpy():
    config = load_config("configs/cityscapes.py:smoke")
    rng = np.random.default_rng(0)
    label = _blocky(rng, (2, 9, 11), 35)
    label[0, 0, 0], label[1, -1, -1] = 0, 34  # both ends of the range
    inst = _blocky(rng, (2, 9, 11), 4, block=2)
    seg = np.asarray(encode_labels(label, inst, config))
    assert seg.shape == (2, 9, 11, 36) == (2, 9, 11, config_lib.semantic_nc(config))
    assert seg.dtype == np.float32
    np.testing.assert_array_equal(seg, np_encode(label, inst, 35, use_instance=True))
    assert 0 < seg[..., 35].mean() < 1  # the boundary channel is not trivial
    # The same under jit (labels are tracers there; values are not re-checked).
    jitted = jax.jit(lambda lab, ins: encode_labels(lab, ins, config))(label, inst)
    np.testing.assert_array_equal(np.asarray(jitted), seg)


def test_encode_labels_ade20k_dontcare_and_no_instance():
    config = load_config("configs/ade20k.py:smoke")
    rng = np.random.default_rng(1)
    label = _blocky(rng, (2, 6, 7), 151)
    label[0, 0, :3] = [0, 150, 149]  # unknown (0) and the last class are valid
    seg = np.asarray(encode_labels(label, None, config))
    assert seg.shape == (2, 6, 7, 151)
    np.testing.assert_array_equal(seg, np_encode(label, None, 151, use_instance=False))
    assert seg[0, 0, 0, 0] == 1.0 and seg[0, 0, 1, 150] == 1.0
    np.testing.assert_array_equal(seg.sum(-1), 1.0)  # one-hot only, no extra channel


def test_encode_labels_coco_dontcare_then_instance():
    config = load_config("configs/coco_stuff.py:smoke")
    rng = np.random.default_rng(2)
    label = _blocky(rng, (1, 8, 8), 183)
    label[0, 0, 0] = 182  # the dontcare class (255 mapped to 182)
    inst = _blocky(rng, (1, 8, 8), 3)
    seg = np.asarray(encode_labels(label, inst, config))
    assert seg.shape == (1, 8, 8, 184)
    np.testing.assert_array_equal(seg, np_encode(label, inst, 183, use_instance=True))
    assert seg[0, 0, 0, 182] == 1.0
    np.testing.assert_array_equal(seg[..., 183], np_boundaries(inst))


@pytest.mark.parametrize(
    ("spec", "bad", "allowed"),
    [
        ("configs/cityscapes.py:smoke", 35, "0..34"),
        ("configs/ade20k.py:smoke", 151, "0..150"),
        ("configs/coco_stuff.py:smoke", 255, "0..182"),
        ("configs/ade20k.py:smoke", -1, "0..150"),
    ],
)
def test_encode_labels_rejects_out_of_range(spec, bad, allowed):
    config = load_config(spec)
    label = np.zeros((1, 4, 4), np.int32)
    label[0, 2, 1] = bad
    inst = np.zeros((1, 4, 4), np.int32)
    with pytest.raises(ValueError, match=allowed) as err:
        encode_labels(label, None if config.dataset.no_instance else inst, config)
    assert str(bad) in str(err.value)


def test_encode_labels_bad_inputs():
    config = load_config("configs/cityscapes.py:smoke")
    label = np.zeros((1, 4, 4), np.int32)
    with pytest.raises(ValueError, match="instance_map is None"):
        encode_labels(label, None, config)
    with pytest.raises(ValueError, match="instance_map shape"):
        encode_labels(label, np.zeros((1, 4, 5), np.int32), config)
    with pytest.raises(ValueError, match="integers"):
        encode_labels(label.astype(np.float32), label, config)
    with pytest.raises(ValueError, match=r"\(B,H,W\)"):
        encode_labels(label[0], label[0], config)


def test_contrastive_labels_map_unknown_to_minus_one():
    label = np.array([[[0, 1, 150], [182, 5, 0]]], np.int32)
    ade = load_config("configs/ade20k.py:smoke")  # unknown_label 0
    np.testing.assert_array_equal(
        np.asarray(contrastive_labels(label, ade)), [[[-1, 1, 150], [182, 5, -1]]]
    )
    coco = load_config("configs/coco_stuff.py:smoke")  # unknown_label 182
    np.testing.assert_array_equal(
        np.asarray(contrastive_labels(label, coco)), [[[0, 1, 150], [-1, 5, 0]]]
    )
    city = load_config("configs/cityscapes.py:smoke")  # no unknown class: unchanged
    out = contrastive_labels(label, city)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), label)
    # Memory-bank class slots: the one-hot label channels (instance channel excluded).
    assert num_contrastive_classes(city) == 35
    assert num_contrastive_classes(ade) == 151
    assert num_contrastive_classes(coco) == 183
