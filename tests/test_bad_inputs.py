"""A catalogue of bad inputs and faults across the commands (`main`, `generate`, `evaluate`,
`convert`, the edge tool), each run as a user runs it: the exit code, one message that names
the file or field, no traceback, and nothing outside the intended output changed (the whole
tree hashed before and after). Every case fails before any compile, so each takes seconds."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ecgan_jax.data.fake_trees import snapshot, write_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=configs/synthetic.py:smoke"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A user's tree: a custom dataset, a training workdir with a run record, weight files."""
    base = tmp_path_factory.mktemp("user")
    data = base / "data"
    for split in ("train", "val"):
        write_split("custom", str(data), split, ["a", "b"], size=(32, 64), label_nc=5)
    # A dataset whose image and label differ in size, one with a label out of range.
    for name, mutate in (("sizes", "size"), ("range", "range")):
        for split in ("train", "val"):
            write_split("custom", str(base / name), split, ["a", "b"], size=(32, 64), label_nc=5)
        path = base / name / "train" / ("images" if mutate == "size" else "labels") / "a.png"
        if mutate == "size":
            Image.fromarray(np.zeros((20, 48, 3), np.uint8)).save(path)
        else:
            Image.fromarray(np.full((32, 64), 9, np.uint8)).save(path)
    labels = base / "labels"
    labels.mkdir()
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(labels / "x.png")
    Image.fromarray(np.zeros((32, 64), np.uint16)).save(base / "x_instance.png")
    from serve_checkpoint import make_converted_checkpoint

    make_converted_checkpoint(str(base / "converted"))  # a generator (random, numpy-drawn)
    work = base / "work"
    work.mkdir()
    (work / "run.json").write_text("{ truncated")
    (base / "weights").mkdir()
    (base / "weights" / "G.pth").write_bytes(b"not a checkpoint")
    np.savez(base / "weights" / "G.npz", **{"fc.weight": np.zeros((2, 2), np.float32)})
    (base / "weights" / "trunc.npz").write_bytes(b"PK\x03\x04trunc")
    (base / "existing").mkdir()
    (base / "existing" / "mine.txt").write_text("a user's file")
    return base


def _custom(root, *extra):
    return [
        "--config.dataset.name=custom",
        f"--config.dataset.root={root}",
        "--config.dataset.label_nc=5",
        "--config.dataset.image_size=(32, 64)",
        *extra,
    ]


def _cases(w):
    """(id, argv after `python -m`, exit code, substrings of stderr)."""
    main = ["ecgan_jax.main", SMOKE, f"--workdir={w / 'runs' / 'new'}", "--config.num_devices=1"]
    gen = ["ecgan_jax.generate", SMOKE]
    ev = ["ecgan_jax.evaluate", SMOKE]
    conv = ["ecgan_jax.convert", SMOKE]
    data = w / "data"
    return [
        ("main-typo", [*main, "--config.batch_sizee=4"], 2, ["--config.batch_size"]),
        ("main-nested-typo", [*main, "--config.model.ngff=4"], 2, ["--config.model.ngf"]),
        ("main-lr", [*main, "--config.lr=-1e-4"], 2, ["'lr'", "> 0"]),
        ("main-beta", [*main, "--config.beta2=1.5"], 2, ["'beta2'", "[0, 1)"]),
        ("main-log-every", [*main, "--config.log_every=0"], 2, ["'log_every'", ">= 1"]),
        ("main-ckpt-every", [*main, "--config.checkpoint_every=0"], 2, ["'checkpoint_every'"]),
        ("main-dtype", [*main, "--config.model.dtype=float16"], 2, ["model.dtype", "bfloat16"]),
        ("main-dataset", [*main, "--config.dataset.name=kitti"], 2, ["dataset.name", "ade20k"]),
        ("main-cpu-kernels", [*main, "--config.runtime.cpu_kernels=yes"], 2, ["auto, on, off"]),
        ("main-temperature", [*main, "--config.contrastive.temperature=0"], 2, ["temperature"]),
        ("main-steps", [*main, "--config.num_train_steps=0"], 2, ["num_train_steps"]),
        ("main-no-config", ["ecgan_jax.main", "--config=configs/nope.py", "--workdir=x"], 2,
         ["configs/nope.py"]),
        ("main-missing-root", [*main, *_custom(w / "absent")], 2, [str(w / "absent")]),
        ("main-size-mismatch", [*main, *_custom(w / "sizes"), "--config.dataset.no_instance=True"],
         2, ["a.png", "20"]),
        ("main-label-range", [*main, *_custom(w / "range"), "--config.dataset.no_instance=True"],
         2, ["a.png", "9"]),
        ("main-no-instances", [*main, *_custom(data)], 2, ["instances", "dataset.no_instance"]),
        ("main-bad-run-record", ["ecgan_jax.main", SMOKE, f"--workdir={w / 'work'}"], 2,
         ["run.json"]),
        ("main-vgg-missing", [*main, "--config.perceptual.enabled=True",
                              "--config.perceptual.random_weights=False"], 2,
         ["perceptual.weights_path"]),
        ("gen-out-is-labels", [*gen, f"--workdir={w / 'converted'}", f"--labels={w / 'labels'}",
                               f"--out={w / 'labels'}", "--config.dataset.no_instance=True"], 2,
         [str(w / "labels")]),
        ("gen-no-instances", [*gen, f"--workdir={w / 'converted'}", f"--labels={w / 'labels'}",
                              f"--out={w / 'gen_out'}"], 2, ["--instances"]),
        ("gen-no-labels", [*gen, f"--workdir={w / 'converted'}", f"--labels={w / 'nolabels'}",
                           f"--out={w / 'gen_out'}"], 2, ["nolabels"]),
        ("gen-typo", [*gen, "--config.dataset.nope=1", f"--labels={w / 'labels'}"], 2,
         ["dataset.nope"]),
        ("eval-no-checkpoint", [*ev, f"--workdir={w / 'work'}", f"--fid_weights={w / 'no.npz'}",
                                f"--out={w / 'ev_out'}"], 2, ["no checkpoint found", "work"]),
        ("eval-nothing", [*ev, f"--workdir={w / 'work'}", f"--out={w / 'ev_out'}"], 2,
         ["nothing to measure"]),
        ("eval-real-no-seg", [*ev, "--real", f"--out={w / 'ev_out'}"], 2, ["--segmenter_weights"]),
        ("convert-exists", [*conv, f"--generator={w / 'weights' / 'G.npz'}",
                            f"--out={w / 'existing'}"], 2, [str(w / "existing")]),
        ("convert-missing", [*conv, f"--generator={w / 'weights' / 'absent.pth'}",
                             f"--out={w / 'conv_out'}"], 2, ["absent.pth"]),
        ("convert-not-torch", [*conv, f"--generator={w / 'weights' / 'G.pth'}",
                               f"--out={w / 'conv_out'}"], 2, ["G.pth"]),
        ("convert-truncated", [*conv, f"--generator={w / 'weights' / 'trunc.npz'}",
                               f"--out={w / 'conv_out'}"], 2, ["trunc.npz"]),
        ("convert-keys", [*conv, f"--generator={w / 'weights' / 'G.npz'}",
                          f"--out={w / 'conv_out'}"], 2, ["G.npz"]),
        ("convert-out-holds-input", [*conv, f"--generator={w / 'weights' / 'G.npz'}",
                                     f"--out={w / 'weights'}", "--overwrite"], 2,
         [str(w / "weights")]),
        ("edges-missing-root", ["ecgan_jax.data.edges", "--dataset=custom",
                                f"--root={w / 'absent'}"], 2, [str(w / "absent")]),
    ]  # fmt: skip


def _run(argv):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=300,
    )  # fmt: skip
    return done.returncode, done.stderr


def test_bad_inputs_catalogue(world):
    cases = _cases(world)
    assert len(cases) >= 25
    before = snapshot(world)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: _run(case[1]), cases))
    failures = []
    for (name, _, code, expected), (rc, stderr) in zip(cases, results, strict=True):
        problems = []
        if rc != code:
            problems.append(f"exit {rc}, expected {code}")
        if "Traceback" in stderr:
            problems.append("a traceback")
        problems += [f"no {e!r}" for e in expected if e not in stderr]
        if problems:
            failures.append(f"{name}: {', '.join(problems)}\n{stderr[-800:]}")
    assert not failures, "\n\n".join(failures)
    after = snapshot(world)
    # Training may create its new workdir (and the dataset scan cache in it); nothing else.
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert all(k.startswith("runs") for k in changed), sorted(changed)
