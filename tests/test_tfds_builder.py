"""TFDS builder (ecgan_jax/data/tfds_builder.py): build a tiny fake dataset, read it back
through the same pipeline as the files source, and get identical batches."""

import numpy as np
import pytest

from ecgan_jax.config_lib import base_config
from ecgan_jax.data import make_eval_iterator, make_train_iterator
from ecgan_jax.data.fake_trees import write_split

tfds = pytest.importorskip("tensorflow_datasets")


def _config(name, root, source, **dataset):
    c = base_config()
    c.dataset.update(name=name, root=str(root), source=source, read_threads=1, **dataset)
    c.batch_size = 2
    return c


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("edges", ["precomputed", "on_the_fly"])
def test_cityscapes_tfds_equals_files(tmp_path, edges):
    from ecgan_jax.data.tfds_builder import EcganBuilderConfig, prepare

    tfds.disable_progress_bar()
    root, data_dir = tmp_path / "cityscapes", tmp_path / "tfds"
    stems = [f"aachen_000000_0000{i:02d}" for i in range(4)]
    write_split("cityscapes", root, "train", stems, size=(8, 16), label_nc=34)
    write_split("cityscapes", root, "val", stems[:3], size=(8, 16), label_nc=34, seed=1)
    cfg = EcganBuilderConfig(name="cityscapes_tiny", dataset="cityscapes", image_size=(8, 16))
    builder = prepare(cfg, str(root), str(data_dir))
    assert builder.info.splits["train"].num_examples == 4
    kw = dict(image_size=(8, 16), label_nc=35, edges=edges)
    files = _config("cityscapes", root, "files", **kw)
    if edges == "precomputed":
        from ecgan_jax.data.edges import write_edge_tree

        write_edge_tree("cityscapes", str(root), image_size=(8, 16))
    tf = _config("cityscapes", data_dir, "tfds", tfds_name="ecgan_dataset/cityscapes_tiny", **kw)

    # Eval: same examples; TFDS keeps its own record order, so compare by stem.
    def by_stem(config):
        out = {}
        for b in make_eval_iterator(config, process_index=0, process_count=1):
            for i, s in enumerate(b["stem"]):
                if b["valid"][i]:
                    out[str(s)] = {k: v[i] for k, v in b.items()}
        return out

    ef, et = by_stem(files), by_stem(tf)
    assert sorted(ef) == sorted(et) == stems[:3]
    for s in stems[:3]:
        _same(ef[s], et[s])
    # Train: crops/flips follow the element position, so compare per stem over two epochs.
    it = make_train_iterator(tf, process_index=0, process_count=1)
    assert it.num_examples == 4
    tfds_train = {}
    for _ in range(2):
        b = next(it)
        for i, s in enumerate(b["stem"]):
            tfds_train[str(s)] = {k: v[i] for k, v in b.items()}
    assert sorted(tfds_train) == stems
    ff = {}
    fit = make_train_iterator(files, process_index=0, process_count=1)
    for _ in range(2):
        b = next(fit)
        for i, s in enumerate(b["stem"]):
            ff[str(s)] = {k: v[i] for k, v in b.items()}
    for s in stems:  # equal up to the (position-dependent) flip
        a, t = ff[s], tfds_train[s]
        flip = not np.array_equal(a["label"], t["label"])
        for k in ("label", "instance", "image", "edge"):
            np.testing.assert_array_equal(a[k], t[k][:, ::-1] if flip else t[k], err_msg=k)


def test_custom_tfds_resume_and_missing_dataset(tmp_path):
    from ecgan_jax.data.tfds_builder import EcganBuilderConfig, prepare

    tfds.disable_progress_bar()
    root, data_dir = tmp_path / "mine", tmp_path / "tfds"
    write_split("custom", root, "train", [f"t{i}" for i in range(5)], size=(8, 8), label_nc=5,
                with_instances=True)  # fmt: skip
    write_split("custom", root, "val", ["v0"], size=(8, 8), label_nc=5, with_instances=True)
    # Built for the size it is read at (records stored resized; another size is refused).
    prepare(EcganBuilderConfig(name="custom8", image_size=(8, 8)), str(root), str(data_dir))
    c = _config("custom", data_dir, "tfds", image_size=(8, 8), label_nc=5, preprocess="fixed",
                load_size=8, edges="precomputed", tfds_name="ecgan_dataset/custom8")  # fmt: skip
    it = make_train_iterator(c, process_index=0, process_count=1)
    next(it)
    state = it.get_state()
    want = next(it)
    again = make_train_iterator(c, process_index=0, process_count=1)
    again.set_state(state)
    _same(want, next(again))
    c.dataset.tfds_name = "ecgan_dataset/cityscapes"
    with pytest.raises(ValueError, match="ecgan_dataset/cityscapes"):
        make_train_iterator(c, process_index=0, process_count=1)


def _by_stem(config):
    """{stem: example} of the eval iterator (TFDS keeps its own record order)."""
    out = {}
    for b in make_eval_iterator(config, process_index=0, process_count=1):
        for i, s in enumerate(b["stem"]):
            if b["valid"][i]:
                out[str(s)] = {k: v[i] for k, v in b.items()}
    return out


def _record_hw(config, train):
    """(H, W) of every stored image, label and instance of the training or eval split."""
    from ecgan_jax.data.sources import make_source
    from ecgan_jax.data.transforms import open_image

    src = make_source(config, train=train)
    return {
        open_image(src[i][k], k).size[::-1]
        for i in range(len(src))
        for k in ("image", "label", "instance")
        if src[i][k] is not None
    }


@pytest.mark.parametrize("stored", ["resized", "original"])
def test_stored_modes_equal_files_fixed(tmp_path, stored):
    # Files larger than image_size, so that the builder (resized) or the pipeline (original)
    # really resizes: BICUBIC images, NEAREST 8-bit labels and 16-bit instances.
    from ecgan_jax.data.tfds_builder import EcganBuilderConfig, prepare

    tfds.disable_progress_bar()
    root, data_dir = tmp_path / "cityscapes", tmp_path / "tfds"
    stems = [f"aachen_000000_0000{i:02d}" for i in range(4)]
    write_split("cityscapes", root, "train", stems, size=(24, 40), label_nc=34)
    write_split("cityscapes", root, "val", stems[:3], size=(24, 40), label_nc=34, seed=1)
    cfg = EcganBuilderConfig(name=f"cs_{stored}", dataset="cityscapes", image_size=(8, 16),
                             stored=stored)  # fmt: skip
    prepare(cfg, str(root), str(data_dir))
    kw = dict(image_size=(8, 16), label_nc=35)
    files = _config("cityscapes", root, "files", edges="on_the_fly", **kw)
    tf = _config("cityscapes", data_dir, "tfds", tfds_name=f"ecgan_dataset/cs_{stored}", **kw)
    assert _record_hw(tf, True) == {(8, 16) if stored == "resized" else (24, 40)}

    ef = _by_stem(files)
    assert sorted(ef) == stems[:3]
    for edges in ("on_the_fly", "precomputed"):
        tf.dataset.edges = edges
        et = _by_stem(tf)
        assert sorted(et) == stems[:3]
        for s in stems[:3]:
            _same(ef[s], et[s])
    # Train ("fixed": no crop): per stem over two epochs, up to the position-dependent flip.
    got = {}
    for config in (files, tf):
        it = make_train_iterator(config, process_index=0, process_count=1)
        rows = got.setdefault(config.dataset.source, {})
        for _ in range(2):
            b = next(it)
            for i, s in enumerate(b["stem"]):
                rows[str(s)] = {k: v[i] for k, v in b.items()}
    assert sorted(got["files"]) == sorted(got["tfds"]) == stems
    for s in stems:
        a, t = got["files"][s], got["tfds"][s]
        flip = not np.array_equal(a["label"], t["label"])
        for k in ("label", "instance", "image", "edge"):
            np.testing.assert_array_equal(a[k], t[k][:, ::-1] if flip else t[k], err_msg=k)


@pytest.mark.parametrize("stored", ["resized", "original"])
def test_stored_modes_equal_files_resize_and_crop(tmp_path, stored):
    # ADE20K (JPEG images): the training split is stored at load_size^2 and cropped by the
    # pipeline, the eval split at image_size. Training examples are compared through the
    # transform with the same rng, so the crops and flips are the same ones.
    from ecgan_jax.data.sources import make_source
    from ecgan_jax.data.tfds_builder import EcganBuilderConfig, prepare
    from ecgan_jax.data.transforms import DataSpec, ExampleTransform

    tfds.disable_progress_bar()
    root, data_dir = tmp_path / "ade", tmp_path / "tfds"
    stems = [f"ADE_train_{i:08d}" for i in range(3)]
    write_split("ade20k", root, "training", stems, size=(20, 30), label_nc=5)
    write_split("ade20k", root, "validation", stems[:2], size=(18, 14), label_nc=5, seed=1)
    cfg = EcganBuilderConfig(name=f"ade_{stored}", dataset="ade20k", image_size=(8, 8),
                             splits=("training", "validation"), train_split="training",
                             preprocess="resize_and_crop", load_size=12, stored=stored)  # fmt: skip
    prepare(cfg, str(root), str(data_dir))
    kw = dict(image_size=(8, 8), label_nc=5, contain_dontcare_label=True, no_instance=True,
              preprocess="resize_and_crop", load_size=12, train_split="training",
              eval_split="validation", edges="on_the_fly")  # fmt: skip
    files = _config("ade20k", root, "files", **kw)
    tf = _config("ade20k", data_dir, "tfds", tfds_name=f"ecgan_dataset/ade_{stored}", **kw)
    if stored == "resized":
        assert _record_hw(tf, True) == {(12, 12)} and _record_hw(tf, False) == {(8, 8)}

    ef, et = _by_stem(files), _by_stem(tf)
    assert sorted(ef) == sorted(et) == stems[:2]
    for s in stems[:2]:
        _same(ef[s], et[s])
    for edges in ("on_the_fly", "precomputed"):
        tf.dataset.edges = edges
        fsrc, tsrc = make_source(files, train=True), make_source(tf, train=True)
        frec = {str(fsrc[i]["stem"]): fsrc[i] for i in range(len(fsrc))}
        assert sorted(frec) == stems and len(tsrc) == len(stems)
        f_tr = ExampleTransform(DataSpec.from_config(files), train=True)
        t_tr = ExampleTransform(DataSpec.from_config(tf), train=True)
        for i in range(len(tsrc)):
            rec = tsrc[i]
            for seed in range(4):
                a = f_tr(frec[rec["stem"]], np.random.default_rng(seed))
                _same(a, t_tr(rec, np.random.default_rng(seed)))


def test_stored_mode_is_checked_and_mismatched_maps_fail_the_build(tmp_path):
    from ecgan_jax.data.layouts import DatasetError
    from ecgan_jax.data.tfds_builder import EcganBuilderConfig, prepare

    with pytest.raises(ValueError, match="'stored' = 'small' is invalid; allowed: resized, orig"):
        EcganBuilderConfig(name="x", stored="small")
    # A label of another (H, W) than its image is a DatasetError of the files source; resizing
    # both in the builder must not hide it.
    tfds.disable_progress_bar()
    root = tmp_path / "mine"
    written = write_split("custom", root, "train", ["a", "b"], size=(8, 8), label_nc=5)
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(written["b"]["paths"]["label"])
    cfg = EcganBuilderConfig(name="mismatch", dataset="custom", splits=("train",),
                             image_size=(4, 4))  # fmt: skip
    with pytest.raises(DatasetError, match=r"b\.png.*\(H, W\) = \(8, 6\)"):
        prepare(cfg, str(root), str(tmp_path / "tfds"))


def test_records_stored_for_other_sizes_are_refused(tmp_path):
    """A dataset stored resized records what for (metadata.json); reading it with other
    sizes would resize the small stored copy again: refused, naming the fields."""
    from ecgan_jax.data.sources import make_source
    from ecgan_jax.data.tfds_builder import EcganBuilderConfig, prepare

    tfds.disable_progress_bar()
    root, data_dir = tmp_path / "cityscapes", tmp_path / "tfds"
    stems = [f"aachen_000000_0000{i:02d}" for i in range(2)]
    for split in ("train", "val"):
        write_split("cityscapes", root, split, stems, size=(24, 40), label_nc=34)
    cfg = EcganBuilderConfig(name="cs_sizes", dataset="cityscapes", image_size=(8, 16))
    prepare(cfg, str(root), str(data_dir))
    name = "ecgan_dataset/cs_sizes"
    good = _config("cityscapes", data_dir, "tfds", tfds_name=name, image_size=(8, 16), label_nc=35)
    assert len(make_source(good, train=True)) == 2
    bad = _config("cityscapes", data_dir, "tfds", tfds_name=name, image_size=(16, 32), label_nc=35)
    with pytest.raises(
        ValueError, match=r"dataset.image_size = \[16, 32\] \(built for \[8, 16\]\)"
    ):
        make_source(bad, train=False)
