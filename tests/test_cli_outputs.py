"""Output safety of the commands (ecgan_jax/cli/outputs.py): inputs are never written to,
existing outputs need --overwrite, and files appear whole or not at all."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from ecgan_jax.cli import outputs


def test_outputs_may_not_touch_inputs(tmp_path):
    labels = tmp_path / "data" / "labels"
    labels.mkdir(parents=True)
    weights = tmp_path / "w.npz"
    weights.write_bytes(b"w")
    inputs = {"--labels": (str(labels), "dir"), "--fid_weights": (str(weights), "file")}
    refused = {
        str(labels): r"--out=.*labels is an input folder \(--labels=",
        str(labels / "x" / "y"): r"lies inside an input folder \(--labels=",
        str(tmp_path / "data"): r"contains an input folder \(--labels=",
        str(tmp_path): r"contains an input folder",
        str(labels / ".." / "labels"): r"is an input folder",  # the same folder spelt otherwise
    }
    for out, message in refused.items():
        with pytest.raises(outputs.OutputError, match=message):
            outputs.check_not_inputs({"--out": (out, "dir")}, inputs)
    link = tmp_path / "link"
    link.symlink_to(labels, target_is_directory=True)
    with pytest.raises(outputs.OutputError, match=r"--out=.*link is an input folder"):
        outputs.check_not_inputs({"--out": (str(link), "dir")}, inputs)
    # An output file over an input file, or a folder holding one.
    with pytest.raises(outputs.OutputError, match=r"--save_real_stats=.*w\.npz is an input file"):
        outputs.check_not_inputs({"--save_real_stats": (str(weights), "file")}, inputs)
    with pytest.raises(outputs.OutputError, match=r"contains an input file \(--fid_weights="):
        outputs.check_not_inputs(
            {"--out": (str(tmp_path / "data" / ".."), "dir")},
            {"--fid_weights": (str(weights), "file")},
        )
    # Beside the inputs is fine; empty paths are skipped.
    outputs.check_not_inputs(
        {"--out": (str(tmp_path / "data" / "out"), "dir"), "--x": (None, "file")},
        {**inputs, "dataset.root": ("", "dir")},
    )


def test_existing_outputs_need_overwrite(tmp_path):
    paths = [str(tmp_path / f"{i}.png") for i in range(5)]
    outputs.check_absent(paths, overwrite=False)
    for p in paths[1:]:
        open(p, "w").close()
    with pytest.raises(
        outputs.OutputError,
        match=r"4 output file\(s\) exist already: .*1\.png, .*2\.png, .*3\.png \(and 1 more\); "
        r"pass --overwrite to replace them, or choose another --out",
    ):
        outputs.check_absent(paths, overwrite=False)
    outputs.check_absent(paths, overwrite=True)


def test_atomic_writes(tmp_path, monkeypatch):
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    path = tmp_path / "sub" / "a.png"
    outputs.save_png(str(path), img)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
    outputs.save_json(str(tmp_path / "m.json"), {"a": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2]}
    assert sorted(os.listdir(path.parent)) == ["a.png"]  # no temporary file left

    # A write that fails before the rename leaves the old file as it was, and no temporary.
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        outputs.save_png(str(path), np.zeros_like(img))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
    assert sorted(os.listdir(path.parent)) == ["a.png"]
