"""The evaluation protocol (ecgan_jax/eval/protocol.py): label mappings, per-dataset choices,
the protocol block, and the real-image scores against a numpy reference."""

from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ecgan_jax import config_lib
from ecgan_jax.eval import protocol, upernet
from ecgan_jax.eval.segmentation import Segmenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
    return config_lib.load_config(os.path.join(ROOT, f"configs/{name}.py:smoke"))


def test_label_mappings_by_hand():
    m = protocol.LABEL_MAPPINGS
    # Cityscapes: road 7 -> 0, sidewalk 8 -> 1, bicycle 33 -> 18, car 26 -> 13; unlabeled 0,
    # the license plate -1, out-of-range 255 and the non-evaluated 9 -> 255.
    got = m["cityscapes_train_id"](np.array([7, 8, 0, 33, -1, 255, 26, 9]))
    np.testing.assert_array_equal(got, [0, 1, 255, 18, 255, 255, 13, 255])
    # ADE20K: 0 "other" ignored, 1..150 -> 0..149.
    np.testing.assert_array_equal(
        m["ade20k_minus_one"](np.array([0, 1, 150, 75])), [255, 0, 149, 74]
    )
    # COCO-Stuff: 0..181 kept; 182 (the pipeline's dontcare for raw 255) and 255 ignored.
    np.testing.assert_array_equal(m["coco_stuff"](np.array([0, 181, 182, 255])), [0, 181, 255, 255])
    np.testing.assert_array_equal(m["identity"](np.array([[3, 255]])), [[3, 255]])
    assert m["ade20k_minus_one"](np.zeros((2, 3), np.uint8)).dtype == np.int32
    # The ADE20K rule agrees with the UperNet module's own (which ignores "other" as -1).
    ids = np.arange(151)
    ours, theirs = m["ade20k_minus_one"](ids), np.asarray(upernet.ade20k_targets(ids))
    np.testing.assert_array_equal(ours[1:], theirs[1:])
    assert ours[0] == 255 and theirs[0] < 0


def test_each_dataset_has_its_protocol():
    want = {
        "cityscapes": ("drn_d_105", "cityscapes_train_id", 19),
        "ade20k": ("upernet101", "ade20k_minus_one", 150),
        "coco_stuff": ("deeplabv2_resnet101", "coco_stuff", 182),
    }
    for name, (seg, mapping, classes) in want.items():
        config = load(name)
        p = protocol.for_config(config)
        assert (p.segmenter, p.label_mapping) == (seg, mapping)
        assert protocol.default_num_classes(config, seg) == classes
        assert protocol.SEGMENTERS[seg].num_classes == classes
    synthetic = load("synthetic")
    assert protocol.for_config(synthetic).segmenter is None
    assert protocol.default_num_classes(synthetic, "drn_d_105") == 8  # its label_nc
    # Another dataset's network keeps its own classes.
    assert protocol.default_num_classes(load("ade20k"), "drn_d_105") == 19
    bad = ml_collections.ConfigDict({"dataset": {"name": "kitti"}})
    with pytest.raises(ValueError, match=r"'dataset.name' = 'kitti' .*allowed: cityscapes"):
        protocol.for_config(bad)
    with pytest.raises(ValueError, match=r"--segmenter='fcn' is unknown; allowed: drn_d_105"):
        protocol.segmenter_spec("fcn")
    with pytest.raises(ValueError, match=r"multiples of 8; .*dataset.image_size' is \(60, 64\)"):
        protocol.SEGMENTERS["drn_d_105"].check_size(60, 64)


def test_protocol_block(tmp_path):
    weights = tmp_path / "w.npz"
    weights.write_bytes(b"segmenter weights")
    stats = tmp_path / "stats.npz"
    stats.write_bytes(b"statistics")
    config = load("ade20k")
    upernet_kw = dict(
        segmenter="upernet101",
        weights=str(weights),
        num_classes=150,
        label_mapping="ade20k_minus_one",
    )
    drn_kw = dict(
        segmenter="drn_d_105", weights=str(weights), num_classes=19, label_mapping="identity"
    )
    seg = protocol.segmentation_block(config, **upernet_kw)
    assert seg["weights_sha256"] == hashlib.sha256(b"segmenter weights").hexdigest()
    assert seg["conventional"] and "note" not in seg and seg["resolution"] == [64, 64]
    assert "300, 375, 450, 525, 600" in seg["input"] and "'other'" in seg["ignored"]
    assert "non-ignored" in seg["accuracy"] and "42.00 mIoU" in seg["real_reference"]
    single = protocol.segmentation_block(config, **upernet_kw, scales="single")
    assert not single["conventional"] and "single-scale" in single["note"]
    assert single["input"].startswith("single scale")
    # Off-protocol network: said so.
    off = protocol.segmentation_block(config, **drn_kw, scales="single")
    assert off["scales"] == "protocol"  # DRN's protocol is single scale
    assert not off["conventional"] and "UperNet-101" in off["note"]
    with pytest.raises(ValueError, match=r"--segmenter_scales='multi'; allowed: protocol, single"):
        protocol.segmentation_block(config, **drn_kw, scales="multi")

    from_file = protocol.fid_block(
        weights=str(weights), stats_file=str(stats), num_images=5, resolution=(64, 64), split="v"
    )
    assert from_file["reference"]["kind"] == "statistics file"
    assert from_file["reference"]["sha256"] == hashlib.sha256(b"statistics").hexdigest()
    real = protocol.fid_block(
        weights=str(weights), stats_file=None, num_images=5, resolution=(64, 64), split="v"
    )
    assert real["reference"]["count"] == 5 and real["reference"]["resolution"] == [64, 64]

    block = protocol.protocol_block(config, num_images=5, segmentation=seg, fid=real)
    assert (block["dataset"], block["split"], block["generator"]) == ("ade20k", "validation", None)
    text = protocol.format_block(block)
    lines = text.splitlines()
    assert lines[0] == "protocol:" and "  dataset: ade20k" in lines
    assert "  segmentation:" in lines and "    name: upernet101" in lines
    assert "    reference:" in lines and "      count: 5" in lines
    assert "  generator:" not in text and "None" not in text  # absent fields are left out


def test_load_segmenter_passes_the_scale_rule(monkeypatch):
    calls = []
    monkeypatch.setattr(upernet, "load_upernet", lambda path, k: calls.append((path, k)) or "v")
    monkeypatch.setattr(
        upernet, "upernet_segmenter", lambda v, **kw: calls.append((v, kw)) or "segmenter"
    )
    assert protocol.load_segmenter("upernet101", "w.npz") == "segmenter"
    assert calls == [("w.npz", 150), ("v", {"num_classes": 150})]
    calls.clear()
    protocol.load_segmenter("upernet101", "w.npz", num_classes=7, scales="single")
    assert calls == [("w.npz", 7), ("v", {"num_classes": 7, "test_sizes": None})]
    assert protocol.SEGMENTERS["deeplabv2_resnet101"].scale_kwargs["single"] == {"scales": ()}
    assert "ecgan_jax.eval.upernet --convert" in protocol.SEGMENTERS["upernet101"].convert_command


def _class_of(u8_red):
    return u8_red.astype(np.int32) // 32  # 0..7 from the red channel


def test_score_real_images_against_numpy(tmp_path):
    """A fake 8-class segmenter (class = red // 32) on the synthetic eval split: scores equal a
    numpy confusion matrix of the same rule over the first 3 images (batches 2 + 1 padded)."""
    config = load("synthetic")
    k = 8

    def apply_fn(_, images):
        u8 = jnp.round((images[..., 0] + 1.0) * 127.5).astype(jnp.int32)
        return jax.nn.one_hot(u8 // 32, k)

    seg = Segmenter(apply_fn, {}, k, name="fake")
    got = protocol.score_real_images(
        config, seg, protocol.LABEL_MAPPINGS["identity"], max_images=3, batch_size=2
    )

    from ecgan_jax.data import make_eval_iterator

    batch = next(iter(make_eval_iterator(config, batch_size=3, process_index=0, process_count=1)))
    u8 = np.clip(np.rint((np.asarray(batch["image"][:3]) + 1.0) * 127.5), 0, 255)
    pred = _class_of(u8[..., 0]).reshape(-1)
    label = np.asarray(batch["label"][:3]).reshape(-1)
    confusion = np.bincount(label * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
    tp, gt, pr = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    union = gt + pr - tp
    assert got["num_images"] == 3 and got["num_pixels"] == label.size
    assert got["pixel_accuracy"] == pytest.approx(tp.sum() / label.size)
    assert got["miou"] == pytest.approx((tp[union > 0] / union[union > 0]).mean())
