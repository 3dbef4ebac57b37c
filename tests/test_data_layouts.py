"""Directory layouts, decoding and preprocessing (ecgan_jax/data/layouts.py, transforms.py).

Fake trees in tmp_path hold real files of the real modes; the arrays the pipeline produces are
checked value by value against the written arrays (hand-computed resizes, PIL for bicubic).
"""

import os

import numpy as np
import pytest
from PIL import Image

from ecgan_jax.config_lib import base_config
from ecgan_jax.data import canny, make_eval_iterator, make_train_iterator
from ecgan_jax.data.fake_trees import snapshot, write_split
from ecgan_jax.data.layouts import DatasetError

STEMS = [f"s{i:02d}" for i in range(4)]
CS_STEMS = [f"aachen_000000_0000{i:02d}" for i in range(4)]


def _config(name, root, **dataset):
    c = base_config()
    c.dataset.name = name
    c.dataset.root = str(root)
    c.dataset.read_threads = 1
    c.batch_size = 2
    for k, v in dataset.items():
        c.dataset[k] = v
    return c


def _all_train(config, n_batches):
    it = make_train_iterator(config, process_index=0, process_count=1)
    out = {}
    for _ in range(n_batches):
        b = next(it)
        for i, s in enumerate(b["stem"]):
            out[str(s)] = {k: v[i] for k, v in b.items()}
    return out


def _all_eval(config):
    out = {}
    for b in make_eval_iterator(config, process_index=0, process_count=1):
        for i, s in enumerate(b["stem"]):
            if b["valid"][i]:
                out[str(s)] = {k: v[i] for k, v in b.items()}
    return out


def _unit(x):
    return np.asarray(x, np.float32) / 127.5 - 1.0


def test_cityscapes_fixed_values_and_flip(tmp_path):
    written = write_split("cityscapes", tmp_path, "train", CS_STEMS, size=(8, 16), label_nc=34)
    c = _config("cityscapes", tmp_path, image_size=(8, 16), label_nc=35, flip=True)
    got = _all_train(c, 8)  # two epochs: every stem, with flips drawn per epoch
    assert sorted(got) == CS_STEMS
    flips = []
    for stem, ex in got.items():
        w = written[stem]
        flip = not np.array_equal(ex["label"], w["label"])
        f = (lambda x: x[:, ::-1]) if flip else (lambda x: x)
        flips.append(flip)
        np.testing.assert_array_equal(ex["label"], f(w["label"]))
        # 16-bit _instanceIds keep their raw values (class * 1000 + k).
        assert ex["instance"].max() > 255
        np.testing.assert_array_equal(ex["instance"], f(w["instance"]))
        np.testing.assert_allclose(ex["image"], _unit(f(w["image"])), atol=1e-6)
        edge = _unit(f(canny(w["image"])))
        for ch in range(3):
            np.testing.assert_array_equal(ex["edge"][..., ch], edge)
        assert ex["label"].dtype == np.int32 and ex["image"].dtype == np.float32
    assert any(flips) and not all(flips)


def test_cityscapes_32bit_instances_and_nearest_resize(tmp_path):
    written = write_split("cityscapes", tmp_path, "val", CS_STEMS[:2], size=(4, 8), label_nc=34)
    # A 32-bit ('I' mode) instance map: PNG cannot hold it in Pillow, so the file is a TIFF
    # under the layout's name (PIL decodes by content, not extension).
    stem = CS_STEMS[0]
    inst32 = np.arange(32, dtype=np.int32).reshape(4, 8) + 70000
    Image.fromarray(inst32).save(written[stem]["paths"]["instance"], format="TIFF")
    c = _config("cityscapes", tmp_path, image_size=(8, 16), label_nc=35)
    got = _all_eval(c)
    up = lambda x: np.repeat(np.repeat(x, 2, 0), 2, 1)  # PIL NEAREST x2 = repeat
    np.testing.assert_array_equal(got[stem]["instance"], up(inst32))
    for s in CS_STEMS[:2]:
        np.testing.assert_array_equal(got[s]["label"], up(written[s]["label"]))
        ref = Image.fromarray(written[s]["image"]).resize((16, 8), Image.BICUBIC)
        np.testing.assert_allclose(got[s]["image"], _unit(np.asarray(ref)), atol=1e-6)
        np.testing.assert_array_equal(got[s]["edge"][..., 0], _unit(canny(np.asarray(ref))))


def _find_crop(out_label, big_label, h, w):
    """(y0, x0, flip) where out_label is the crop of big_label; must be unique."""
    hits = []
    for y0 in range(big_label.shape[0] - h + 1):
        for x0 in range(big_label.shape[1] - w + 1):
            crop = big_label[y0 : y0 + h, x0 : x0 + w]
            for flip in (False, True):
                if np.array_equal(out_label, crop[:, ::-1] if flip else crop):
                    hits.append((y0, x0, flip))
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("name", ["ade20k", "coco_stuff"])
def test_resize_and_crop_train_and_eval(tmp_path, name):
    split_train, split_eval = ("training", "validation") if name == "ade20k" else ("train", "val")
    label_nc = 150 if name == "ade20k" else 182
    frac = 0.2
    wt = write_split(name, tmp_path, split_train, STEMS, size=(8, 8), label_nc=label_nc,
                     unknown_fraction=frac)  # fmt: skip
    we = write_split(name, tmp_path, split_eval, STEMS[:3], size=(8, 8), label_nc=label_nc,
                     seed=1, unknown_fraction=frac)  # fmt: skip
    c = _config(
        name, tmp_path, image_size=(8, 8), load_size=16, preprocess="resize_and_crop",
        label_nc=label_nc, contain_dontcare_label=True, no_instance=name == "ade20k",
        train_split=split_train, eval_split=split_eval,
    )  # fmt: skip
    mapped = lambda x: np.where(x == 255, 182, x) if name == "coco_stuff" else x
    up = lambda x: np.repeat(np.repeat(x, 2, 0), 2, 1)
    got = _all_train(c, 2)
    assert sorted(got) == STEMS
    for stem, ex in got.items():
        w = wt[stem]
        big = up(mapped(w["label"]))
        y0, x0, flip = _find_crop(ex["label"], big, 8, 8)

        def geo(x, y0=y0, x0=x0, flip=flip):
            x = x[y0 : y0 + 8, x0 : x0 + 8]
            return x[:, ::-1] if flip else x

        img16 = np.asarray(Image.fromarray(w["image"]).resize((16, 16), Image.BICUBIC))
        np.testing.assert_allclose(ex["image"], _unit(geo(img16)), atol=1e-6)
        np.testing.assert_array_equal(ex["edge"][..., 2], _unit(geo(canny(img16))))
        if name == "coco_stuff":
            np.testing.assert_array_equal(ex["instance"], geo(up(w["instance"])))
            assert (ex["label"] == 182).any() and ex["label"].max() <= 182
        else:
            np.testing.assert_array_equal(ex["instance"], np.zeros((8, 8), np.int32))
            assert (ex["label"] == 0).any()  # ADE20K keeps 0 = unknown
    # Eval: straight resize 8x8 -> 4x4 (PIL NEAREST picks pixel 2 i + 1), no flip, no crop.
    c.dataset.image_size = (4, 4)
    ev = _all_eval(c)
    assert sorted(ev) == STEMS[:3]
    for stem, ex in ev.items():
        np.testing.assert_array_equal(ex["label"], mapped(we[stem]["label"])[1::2, 1::2])
        ref = np.asarray(Image.fromarray(we[stem]["image"]).resize((4, 4), Image.BICUBIC))
        np.testing.assert_allclose(ex["image"], _unit(ref), atol=1e-6)


def test_custom_layout_with_instances_and_precomputed_edges(tmp_path):
    from ecgan_jax.data.edges import write_edge_tree

    written = write_split("custom", tmp_path, "train", STEMS, size=(8, 16), label_nc=5,
                          with_instances=True)  # fmt: skip
    write_edge_tree("custom", str(tmp_path), splits=("train",), image_size=(8, 16))
    assert len(os.listdir(tmp_path / "train" / "edges")) == len(STEMS)
    c = _config("custom", tmp_path, image_size=(8, 16), label_nc=5, flip=False,
                edges="precomputed")  # fmt: skip
    got = _all_train(c, 2)
    for stem, ex in got.items():
        np.testing.assert_array_equal(ex["label"], written[stem]["label"])
        np.testing.assert_array_equal(ex["instance"], written[stem]["instance"])
        np.testing.assert_array_equal(ex["edge"][..., 1], _unit(canny(written[stem]["image"])))


def test_custom_without_instances_gives_zeros_only_with_no_instance(tmp_path):
    write_split("custom", tmp_path, "val", STEMS[:2], size=(8, 16), label_nc=5)
    c = _config("custom", tmp_path, image_size=(8, 16), label_nc=5, no_instance=True)
    for ex in _all_eval(c).values():
        np.testing.assert_array_equal(ex["instance"], np.zeros((8, 16), np.int32))
    # A config that uses instance maps is refused rather than fed an all-zero channel.
    c.dataset.no_instance = False
    with pytest.raises(FileNotFoundError) as e:
        make_eval_iterator(c, process_index=0, process_count=1)
    msg = str(e.value)
    assert str(tmp_path / "val" / "instances") in msg and "dataset.no_instance" in msg
    assert "\n" not in msg


# --- bad input: every error names the offending file or directory ---


def _cs(tmp_path, **kw):
    written = write_split("cityscapes", tmp_path, "train", CS_STEMS, size=(8, 16), label_nc=34)
    return written, _config("cityscapes", tmp_path, image_size=(8, 16), label_nc=35, **kw)


def test_missing_label_names_the_image(tmp_path):
    written, c = _cs(tmp_path)
    os.remove(written[CS_STEMS[2]]["paths"]["label"])
    with pytest.raises(ValueError, match=CS_STEMS[2] + "_leftImg8bit.png"):
        make_train_iterator(c)


def test_extra_instance_file_is_named(tmp_path):
    written, c = _cs(tmp_path)
    extra = os.path.join(os.path.dirname(written[CS_STEMS[0]]["paths"]["instance"]),
                         "zurich_000001_000001_gtFine_instanceIds.png")  # fmt: skip
    Image.fromarray(np.zeros((8, 16), np.uint16)).save(extra)
    with pytest.raises(ValueError, match="zurich_000001_000001_gtFine_instanceIds.png"):
        make_train_iterator(c)


def test_missing_precomputed_edge_is_named(tmp_path):
    written, c = _cs(tmp_path, edges="precomputed")
    from ecgan_jax.data.edges import write_edge_tree

    paths = write_edge_tree("cityscapes", str(tmp_path), splits=("train",), image_size=(8, 16))
    os.remove(paths[1])
    stem = os.path.basename(paths[1])[: -len(".png")]
    with pytest.raises(ValueError, match=stem + "_leftImg8bit.png"):
        make_train_iterator(c)


def test_label_out_of_range_names_file_values_and_range(tmp_path):
    written, c = _cs(tmp_path)
    bad = written[CS_STEMS[1]]["label"].copy()
    bad[0, 0], bad[1, 1] = 40, 255  # 255 is not unknown for Cityscapes
    Image.fromarray(bad.astype(np.uint8)).save(written[CS_STEMS[1]]["paths"]["label"])
    it = make_train_iterator(c)
    with pytest.raises(ValueError) as e:
        for _ in range(2):
            next(it)
    msg = str(e.value)
    assert CS_STEMS[1] + "_gtFine_labelIds.png" in msg
    assert "40, 255" in msg and "[0, 34]" in msg


def test_truncated_image_names_the_path(tmp_path):
    written = write_split("ade20k", tmp_path, "validation", STEMS, size=(16, 16), label_nc=150)
    path = written[STEMS[3]]["paths"]["image"]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    c = _config("ade20k", tmp_path, image_size=(8, 8), label_nc=150, no_instance=True,
                contain_dontcare_label=True, eval_split="validation")  # fmt: skip
    with pytest.raises(ValueError, match=STEMS[3] + ".jpg: cannot read image"):
        list(make_eval_iterator(c, process_index=0, process_count=1))


def test_empty_and_missing_split_name_the_directory(tmp_path):
    os.makedirs(tmp_path / "train" / "images")
    os.makedirs(tmp_path / "train" / "labels")
    c = _config("custom", tmp_path, image_size=(8, 16), label_nc=5, no_instance=True)
    with pytest.raises(ValueError, match="empty.*" + str(tmp_path / "train" / "images")):
        make_train_iterator(c)
    c.dataset.train_split = "nope"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope" / "images")):
        make_train_iterator(c)


def test_rgb_label_file_is_rejected_with_its_name(tmp_path):
    written = write_split("custom", tmp_path, "val", STEMS[:1], size=(8, 16), label_nc=5)
    path = written[STEMS[0]]["paths"]["label"]
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(path)
    c = _config("custom", tmp_path, image_size=(8, 16), label_nc=5, no_instance=True)
    with pytest.raises(ValueError, match=f"{path}.*mode 'RGB'"):
        list(make_eval_iterator(c, process_index=0, process_count=1))


# --- sizes: nothing is resized before every modality has been checked against the image ---


def _custom_with_instances(tmp_path, size=(32, 64)):
    written = write_split("custom", tmp_path, "val", STEMS[:2], size=size, label_nc=5,
                          with_instances=True)  # fmt: skip
    c = _config("custom", tmp_path, image_size=(8, 16), label_nc=5)
    return written, c


def _refused(config, tree):
    """The eval pipeline's DatasetError message; the tree is read, never changed."""
    before = snapshot(tree)
    with pytest.raises(DatasetError) as e:
        list(make_eval_iterator(config, process_index=0, process_count=1))
    assert snapshot(tree) == before
    return str(e.value)


def test_image_of_another_size_than_its_label_is_refused(tmp_path):
    written, c = _custom_with_instances(tmp_path)
    paths = written[STEMS[1]]["paths"]
    Image.fromarray(np.zeros((48, 20, 3), np.uint8)).save(paths["image"])
    msg = _refused(c, tmp_path)
    assert "\n" not in msg
    # Both files and both sizes; the instance map (also 32x64) is named too.
    assert f"{paths['label']}: label map of (H, W) = (32, 64)" in msg
    assert f"{paths['image']}: (48, 20)" in msg
    assert f"{paths['instance']}: instance map of (H, W) = (32, 64)" in msg


def test_instance_of_another_size_is_refused(tmp_path):
    written, c = _custom_with_instances(tmp_path)
    paths = written[STEMS[0]]["paths"]
    Image.fromarray(np.zeros((32, 63), np.uint8)).save(paths["instance"])
    msg = _refused(c, tmp_path)
    assert f"{paths['instance']}: instance map of (H, W) = (32, 63)" in msg
    assert f"its image {paths['image']}: (32, 64)" in msg and "label map" not in msg


def test_precomputed_edges_must_have_the_image_or_pre_crop_shape(tmp_path):
    from ecgan_jax.data.edges import write_edge_tree

    written, c = _custom_with_instances(tmp_path)
    c.dataset.edges = "precomputed"
    paths = write_edge_tree("custom", str(tmp_path), splits=("val",), image_size=(8, 16))
    assert len(_all_eval(c)) == 2  # made at the pre-crop size (8, 16): read
    # Edges at the image's own size (the authors' trees) and at twice the pre-crop size: read.
    for shape in ((32, 64), (16, 32)):
        Image.fromarray(np.zeros(shape, np.uint8)).save(paths[0])
        assert len(_all_eval(c)) == 2
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(paths[0])  # squashed: another shape
    msg = _refused(c, tmp_path)
    assert f"{paths[0]}: edge map of (H, W) = (16, 16)" in msg
    assert f"its image {written[STEMS[0]]['paths']['image']} (32, 64)" in msg
    assert "pre-crop size (8, 16)" in msg and "python -m ecgan_jax.data.edges" in msg


def test_layout_without_instances_needs_no_instance(tmp_path):
    write_split("ade20k", tmp_path, "validation", STEMS[:1], size=(8, 8), label_nc=150)
    c = _config("ade20k", tmp_path, image_size=(8, 8), label_nc=150, eval_split="validation",
                contain_dontcare_label=True, no_instance=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"'dataset.no_instance' = False.*ade20k.*= True"):
        make_eval_iterator(c, process_index=0, process_count=1)
