"""The dataset scan before training (ecgan_jax/data/scan.py): every problem once, in one error;
clean examples cached by their files' mtimes; nothing but the cache file written."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from ecgan_jax.config_lib import base_config
from ecgan_jax.data import scan
from ecgan_jax.data.fake_trees import snapshot, write_split
from ecgan_jax.data.layouts import DatasetError

CS = [f"aachen_000000_0000{i:02d}" for i in range(6)]


def _config(root, **dataset):
    c = base_config()
    c.dataset.update(name="cityscapes", root=str(root), image_size=(8, 16), label_nc=35)
    c.dataset.update(**dataset)
    return c


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    written = write_split("cityscapes", root, "train", CS, size=(8, 16), label_nc=34)
    return root, {s: w["paths"] for s, w in written.items()}, tmp_path / "workdir"


class _Counter:
    """Counts decode_record calls (what the cache saves)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = scan.decode_record

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(scan, "decode_record", counted)


def test_clean_split_is_scanned_once_then_only_changed_files(tree, monkeypatch):
    root, paths, workdir = tree
    counter = _Counter(monkeypatch)
    c = _config(root)
    data_before = snapshot(root)
    report = scan.scan_dataset(c, "train", cache_dir=workdir)
    assert report.ok and report.num_examples == 6 and report.num_cached == 0
    assert counter.calls == 6
    assert report.cache_file == str(workdir / "dataset_scan" / "cityscapes-train.json")
    assert sorted(snapshot(workdir)) == ["dataset_scan", "dataset_scan/cityscapes-train.json"]
    assert snapshot(root) == data_before  # the dataset is only read
    assert len(json.loads(open(report.cache_file).read())["clean"]) == 6

    again = scan.scan_dataset(c, "train", cache_dir=workdir)
    assert again.ok and again.num_cached == 6 and counter.calls == 6
    # A rewritten file (new mtime) is checked again, alone.
    st = os.stat(paths[CS[2]]["label"])
    os.utime(paths[CS[2]]["label"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = scan.scan_dataset(c, "train", cache_dir=workdir)
    assert third.num_cached == 5 and counter.calls == 7
    # A field the checks read (label_nc) invalidates the cache; flip does not.
    c.dataset.flip = False
    assert scan.scan_dataset(c, "train", cache_dir=workdir).num_cached == 6
    c.dataset.label_nc = 36
    assert scan.scan_dataset(c, "train", cache_dir=workdir).num_cached == 0
    # No cache_dir: nothing is written anywhere.
    before = snapshot(root.parent)
    assert scan.scan_dataset(c, "train").num_cached == 0
    assert snapshot(root.parent) == before


def test_every_problem_once_in_one_error(tree):
    root, paths, workdir = tree
    # 1 label of another size, 2 label values out of range, 3 an unreadable image,
    # 4 an RGB instance map, 5 an image without a label.
    Image.fromarray(np.zeros((20, 48), np.uint8)).save(paths[CS[0]]["label"])
    bad = np.full((8, 16), 3, np.uint8)
    bad[0, :3] = (35, 40, 255)
    Image.fromarray(bad).save(paths[CS[1]]["label"])
    with open(paths[CS[2]]["image"], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n cut short")
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(paths[CS[3]]["instance"])
    os.remove(paths[CS[4]]["label"])
    before = snapshot(root)
    with pytest.raises(DatasetError) as e:
        scan.scan_dataset(_config(root), "train", cache_dir=workdir)
    assert snapshot(root) == before
    msg = str(e.value)
    lines = msg.splitlines()
    assert lines[0].startswith("dataset scan: 5 problem(s) in split 'train' of cityscapes")
    assert len(lines) == 6 and len(e.value.problems) == 5
    files = [p.file for p in e.value.problems]
    assert len(set(files)) == 5
    assert f"{paths[CS[0]]['label']}: label map of (H, W) = (20, 48)" in msg
    assert f"its image {paths[CS[0]]['image']}: (8, 16)" in msg
    assert f"{paths[CS[1]]['label']}: label values 35, 40, 255; allowed: [0, 34]" in msg
    assert f"{paths[CS[2]]['image']}: cannot read image" in msg
    assert f"{paths[CS[3]]['instance']}: instance image of PIL mode 'RGB'" in msg
    assert f"{paths[CS[4]]['image']}: no label file of stem '{CS[4]}'" in msg
    # The good example is remembered; the bad ones are checked again next time.
    cached = json.loads((workdir / "dataset_scan" / "cityscapes-train.json").read_text())
    assert len(cached["clean"]) == 1


def test_many_problems_are_capped_with_a_count(tree, monkeypatch):
    root, paths, _ = tree
    monkeypatch.setattr(scan, "MAX_LISTED", 4)
    for s in CS:
        Image.fromarray(np.full((8, 16), 200, np.uint8)).save(paths[s]["label"])
    # Too few label classes for every file: one problem per file, 4 listed.
    with pytest.raises(DatasetError) as e:
        scan.scan_dataset(_config(root), "train")
    assert len(e.value.problems) == 6
    lines = str(e.value).splitlines()
    assert len(lines) == 1 + 4 + 1 and "and 2 more" in lines[-1] and "--all" in lines[-1]
    report = scan.scan_dataset(_config(root), "train", raise_on_problems=False)
    assert len(report.problems) == 6 and not report.ok


def test_pairing_instances_and_edges_follow_the_config(tmp_path):
    root = tmp_path / "mine"
    write_split("custom", root, "train", ["a", "b"], size=(8, 16), label_nc=5)
    c = base_config()
    c.dataset.update(name="custom", root=str(root), image_size=(8, 16), label_nc=5)
    with pytest.raises(FileNotFoundError, match=r"mine/train/instances.*dataset\.no_instance"):
        scan.scan_dataset(c, "train")
    c.dataset.no_instance = True
    assert scan.scan_dataset(c, "train").num_examples == 2
    c.dataset.edges = "precomputed"
    with pytest.raises(FileNotFoundError, match=r"mine/train/edges.*ecgan_jax\.data\.edges"):
        scan.scan_dataset(c, "train")
    from ecgan_jax.data.edges import write_edge_tree

    edges = write_edge_tree("custom", str(root), splits=("train",), image_size=(8, 16))
    assert scan.scan_dataset(c, "train").ok
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(edges[1])
    with pytest.raises(DatasetError, match=f"{edges[1]}: edge map of"):
        scan.scan_dataset(c, "train")


def test_progress_bar_on_stderr_for_large_splits(tree, monkeypatch, capsys):
    root, _, _ = tree
    scan.scan_dataset(_config(root), "train", workers=1)
    assert capsys.readouterr().err == ""  # 6 examples: below PROGRESS_MIN
    monkeypatch.setattr(scan, "PROGRESS_MIN", 5)
    scan.scan_dataset(_config(root), "train", workers=2)
    err = capsys.readouterr().err
    assert "scanning cityscapes split 'train'" in err and "6/6" in err


def test_synthetic_needs_no_scan(tmp_path):
    c = base_config()
    report = scan.scan_dataset(c, cache_dir=tmp_path)
    assert report.ok and report.skipped and report.num_examples == 256
    assert os.listdir(tmp_path) == []


def test_cli_lists_every_problem_and_exits_1(tree, capsys):
    root, paths, _ = tree
    cfg = root.parent / "tiny.py"
    cfg.write_text(
        "from ecgan_jax.config_lib import base_config\n\n\ndef get_config(arg=None):\n"
        "    c = base_config()\n"
        f"    c.dataset.update(name='cityscapes', root={str(root)!r}, image_size=(32, 64),\n"
        "                     label_nc=35)\n"
        "    return c\n"
    )
    assert scan.main([f"--config={cfg}", "--split=train"]) == 0
    assert "6 examples, no problem" in capsys.readouterr().out
    os.remove(paths[CS[5]]["instance"])
    assert scan.main([f"--config={cfg}", "--split=train", "--all"]) == 1
    err = capsys.readouterr().err
    assert f"{paths[CS[5]]['image']}: no instance file of stem" in err


def test_tfds_split_is_scanned_and_cached(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    from ecgan_jax.data.tfds_builder import EcganBuilderConfig, prepare

    tfds.disable_progress_bar()
    root, data_dir = tmp_path / "cs", tmp_path / "tfds"
    write_split("cityscapes", root, "train", CS[:3], size=(8, 16), label_nc=34)
    write_split("cityscapes", root, "val", CS[:1], size=(8, 16), label_nc=34)
    cfg = EcganBuilderConfig(name="cs_scan", dataset="cityscapes", image_size=(8, 16))
    prepare(cfg, str(root), str(data_dir))
    c = _config(data_dir, source="tfds", tfds_name="ecgan_dataset/cs_scan", edges="precomputed")
    counter = _Counter(monkeypatch)
    first = scan.scan_dataset(c, "train", cache_dir=tmp_path / "wd")
    assert first.ok and first.num_examples == 3 and counter.calls == 3
    again = scan.scan_dataset(c, "train", cache_dir=tmp_path / "wd")
    assert again.num_cached == 3 and counter.calls == 3
    c.dataset.label_nc = 10  # the fake labels go up to 33
    with pytest.raises(DatasetError, match=r"label of TFDS ecgan_dataset/cs_scan\[train\]"):
        scan.scan_dataset(c, "train", cache_dir=tmp_path / "wd")
