"""`python -m ecgan_jax.evaluate` per dataset, on fake Cityscapes / ADE20K / COCO-Stuff trees.

Each case writes a 2-image validation split in the dataset's real layout
(`data.fake_trees`), a converted generator checkpoint with random weights (numpy, no init
compile), the dataset's conventional segmenter as a random converted `.npz` (DRN-D-105,
UperNet-101, DeepLab-v2: the full networks, at 64x64) and random FID weights, runs `evaluate`
with `--real` in-process, and checks the protocol block (printed before any number, and in
the JSON) and the numbers: the pixels scored are exactly the non-ignored pixels of the label
files as this test counts them from the raw annotation values, for I″ and for the real images.
Then `generate` on the split's label folder must write the very images `evaluate` scored.
The 2048-d Fréchet distance is stubbed (scipy's sqrtm is tested in test_fid.py).
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ecgan_jax import config_lib
from ecgan_jax.cli import evaluate, generate
from ecgan_jax.data.fake_trees import write_split
from ecgan_jax.eval import deeplab, drn, fid, inception, upernet
from ecgan_jax.interop import state_dict as sd_lib
from ecgan_jax.interop.authors import save_converted
from ecgan_jax.models import build_generator

pytestmark = pytest.mark.xdist_group("eval_datasets")  # one worker: Inception compiles once
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (64, 64)
N = 2

# The 19 evaluated Cityscapes labelIds (cityscapesScripts labels.py, trainId != 255).
CITYSCAPES_EVALUATED = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CASES = {
    # dataset: (config, split, segmenter, classes, random weights, format, counted(raw labels))
    "cityscapes": (
        "configs/cityscapes.py:smoke",
        "val",
        "drn_d_105",
        19,
        lambda: drn.init_drn(seed=0),
        f"{drn.FORMAT}/19",
        lambda raw: np.isin(raw, CITYSCAPES_EVALUATED),
    ),
    "ade20k": (
        "configs/ade20k.py:smoke",
        "validation",
        "upernet101",
        150,
        lambda: upernet.init_upernet(seed=0),
        f"{upernet.FORMAT}/150",
        lambda raw: raw > 0,  # 0 is "other"
    ),
    "coco_stuff": (
        "configs/coco_stuff.py:smoke",
        "val",
        "deeplabv2_resnet101",
        182,
        lambda: deeplab.init_deeplab(seed=0),
        f"{deeplab.FORMAT}/182",
        lambda raw: raw < 182,  # 255 is "unlabeled"
    ),
}


def random_generator_variables(config, seed: int = 0) -> dict:
    """Eval variables of the config's generator in numpy: N(0, 0.02) kernels, zero biases,
    unit running variances, and spectral u, v set to each kernel's top singular vectors (so
    every spectral norm divides by the kernel's σ, as after training)."""
    generator = build_generator(config)
    h, w = (int(v) for v in config.dataset.image_size)
    seg = jax.ShapeDtypeStruct((1, h, w, config_lib.semantic_nc(config)), jnp.float32)
    abstract = jax.eval_shape(lambda x: generator.init(jax.random.key(0), x, train=False), seg)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        keys = tuple(p.key for p in path)
        if keys[-1] == "kernel":
            flat[keys] = rng.normal(0.0, 0.02, leaf.shape).astype(np.float32)
        else:
            flat[keys] = np.full(leaf.shape, 1.0 if keys[-1] == "var" else 0.0, np.float32)
    for keys in [k for k in flat if k[0] == "spectral" and k[-1] == "u"]:
        kernel = flat[("params", *keys[1:-1], "kernel")]
        w_mat = kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[3], -1)  # PyTorch (O, I·h·w)
        u = rng.standard_normal(w_mat.shape[0])
        for _ in range(30):
            v = w_mat.T @ u
            v /= np.linalg.norm(v)
            u = w_mat @ v
            u /= np.linalg.norm(u)
        flat[keys], flat[(*keys[:-1], "v")] = u.astype(np.float32), v.astype(np.float32)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: flat[tuple(p.key for p in path)], abstract
    )


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "inception_fid.npz"
    sd_lib.save_variables(path, inception.init_inception(seed=0), inception.FORMAT)
    return path


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_evaluate_per_dataset_protocol(dataset, fid_weights, tmp_path, monkeypatch, capsys):
    config_file, split, seg_name, classes, init_seg, fmt, counted = CASES[dataset]
    root = tmp_path / dataset
    files = write_split(
        dataset,
        str(root),
        split,
        [f"s{i}" for i in range(N)],
        size=SIZE,
        label_nc={"cityscapes": 35, "ade20k": 150, "coco_stuff": 182}[dataset],
        seed=1,
        unknown_fraction=0.2 if dataset == "coco_stuff" else 0.0,
    )
    overrides = [f"--config.dataset.root={root}", f"--config.dataset.image_size={SIZE}"]
    config = config_lib.load_config(os.path.join(ROOT, config_file))
    config.dataset.root, config.dataset.image_size = str(root), SIZE
    ckpt = save_converted(str(tmp_path / "converted"), random_generator_variables(config))
    seg_weights = tmp_path / f"{seg_name}.npz"
    sd_lib.save_variables(seg_weights, init_seg(), fmt)

    seen = []

    def distance(mu1, sigma1, mu2, sigma2):
        seen.append((np.shape(mu1), np.shape(sigma2)))
        return 42.5

    monkeypatch.setattr(fid, "frechet_distance", distance)
    out = tmp_path / "eval"
    report = evaluate.main(
        [
            f"--config={os.path.join(ROOT, config_file)}",
            *overrides,
            f"--workdir={ckpt}",
            f"--fid_weights={fid_weights}",
            f"--segmenter_weights={seg_weights}",
            "--segmenter_scales=single",  # the networks' multi-scale tests upsample to 600 px
            "--real",
            "--save_images",
            f"--out={out}",
            f"--max_images={N}",
            "--batch_size=2",
            "--num_devices=1",
        ]
    )
    printed = capsys.readouterr().out
    start = printed.index("protocol:")
    assert start < printed.index("FID 42.5") and start < printed.index("real images: mIoU")
    assert f"name: {seg_name}" in printed and f"weights: {seg_weights}" in printed
    with open(out / "metrics.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(report))

    # The protocol block: the dataset's network and weights, its labels, the FID reference.
    p = saved["protocol"]
    assert (p["dataset"], p["split"], p["num_images"], p["resolution"]) == (
        dataset,
        split,
        N,
        list(SIZE),
    )
    ps = p["segmentation"]
    assert ps["name"] == seg_name and ps["num_classes"] == classes
    assert ps["scales"] == ("protocol" if dataset == "cityscapes" else "single")
    assert ps["weights"] == str(seg_weights)
    assert ps["weights_sha256"] == hashlib.sha256(seg_weights.read_bytes()).hexdigest()
    assert ps["conventional"] == (dataset == "cityscapes")  # DRN's protocol is single scale
    assert "non-ignored" in ps["accuracy"] and ps["resolution"] == list(SIZE)
    ref = p["fid"]["reference"]
    assert (ref["kind"], ref["count"], ref["resolution"]) == ("real images", N, list(SIZE))
    assert p["generator"]["parameters"] == "converted"
    assert p["config"]["overrides"] == {"dataset.root": str(root), "dataset.image_size": [64, 64]}

    # The numbers: FID from the (stubbed) distance of two 2048-d statistics; every score over
    # exactly the pixels the protocol counts, for I'' and for the real images.
    m, r = saved["metrics"], saved["real"]
    assert m["fid"] == 42.5 and seen == [((2048,), (2048, 2048))]
    want_pixels = sum(int(counted(files[s]["label"]).sum()) for s in files)
    assert 0 < want_pixels < N * SIZE[0] * SIZE[1] or dataset == "cityscapes"
    for scores in (m, r):
        assert scores["num_images"] == N and scores["num_pixels"] == want_pixels
        assert 0 <= scores["miou"] <= 1 and 0 <= scores["pixel_accuracy"] <= 1
        assert len(scores["per_class_iou"]) == classes
    assert os.path.isfile(out / "fake_stats.npz")

    # `generate` on the same label folder (instance maps found beside the labels, where the
    # layout keeps them) writes the images `evaluate` scored; never inside the dataset root.
    labels_dir = os.path.dirname(files["s0"]["paths"]["label"])
    if dataset == "cityscapes":
        labels_dir = os.path.dirname(labels_dir)  # gtFine/val: the city folders are scanned
    command = [
        f"--config={os.path.join(ROOT, config_file)}",
        *overrides,
        f"--workdir={ckpt}",
        f"--labels={labels_dir}",
        "--batch_size=2",
        "--num_devices=1",
    ]
    with pytest.raises(ValueError, match=r"lies inside an input folder \(dataset\.root="):
        generate.main([*command, f"--out={root / 'generated'}"])
    written = generate.main([*command, f"--out={tmp_path / 'generated'}"])
    assert [os.path.basename(p) for p in written] == ["s0.png", "s1.png"]
    for path in written:
        got = np.asarray(Image.open(path))
        assert got.shape == (*SIZE, 3)
        np.testing.assert_array_equal(
            got, np.asarray(Image.open(out / "images" / os.path.basename(path)))
        )
