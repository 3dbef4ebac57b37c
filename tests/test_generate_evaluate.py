"""End to end: `python -m ecgan_jax.generate` / `ecgan_jax.evaluate` on the synthetic dataset.

A fresh TrainState (EMA made different from the raw parameters) is saved with the training
`Checkpointer` at step 0, so no training runs; the FID and DRN weights are random `.npz` files
written in the test in the converters' format. Inception runs on a handful of images only.
The commands are called in-process through their `main(argv)` (absl flags parsed into a fresh
`FlagValues` per call, `ecgan_jax.cli.flags`). The other datasets' protocols:
tests/test_eval_datasets.py.
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

from ecgan_jax import config_lib, inference
from ecgan_jax.cli import evaluate, generate
from ecgan_jax.eval import drn, fid, inception
from ecgan_jax.eval.quality import to_uint8
from ecgan_jax.interop import state_dict as sd_lib
from ecgan_jax.models.encoding import encode_labels
from ecgan_jax.sharding import local_mesh
from ecgan_jax.training.checkpointing import Checkpointer
from ecgan_jax.training.state import build_models, create_train_state, make_optimizers

CONFIG = "configs/synthetic.py:smoke"
# One worker runs this module, so the module fixture (a compiled initialiser) is made once.
pytestmark = pytest.mark.xdist_group("generate_evaluate")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config, workdir, state): a step-0 checkpoint of a fresh state whose EMA != raw."""
    config = config_lib.load_config(os.path.join(ROOT, CONFIG))
    models = build_models(config)
    tx_g, tx_d, _ = make_optimizers(config, 8)
    state = create_train_state(config, models, tx_g, tx_d, mesh=None)
    ema = jax.tree_util.tree_map(lambda x: x * 0.9, state.g_params["generator"])
    state = state.replace(ema_params=ema)
    workdir = str(tmp_path_factory.mktemp("workdir"))
    ckpt = Checkpointer(workdir, every=1, keep=2, async_save=False)
    ckpt.save(0, state, {}, force=True)
    ckpt.close()
    return config, workdir, jax.device_get(state), models.generator


def reference(generator, params, g_stats, config, label, instance):
    """(I', I'', I'_e) as uint8 of the in-process generator on one batch."""
    seg = encode_labels(jnp.asarray(label), jnp.asarray(instance), config)
    fn = jax.jit(lambda v, s: generator.apply(v, s, train=False))
    return [to_uint8(o) for o in fn({"params": params, **g_stats}, seg)]


def write_maps(directory, stems, size=(32, 64), seed=0, label_nc=8):
    """Random blocky label and instance PNGs; returns {stem: (label, instance)}."""
    rng = np.random.default_rng(seed)
    lab_dir, inst_dir = directory / "labels", directory / "instances"
    lab_dir.mkdir(exist_ok=True)
    inst_dir.mkdir(exist_ok=True)
    maps = {}
    for stem in stems:
        h, w = size
        label = np.repeat(np.repeat(rng.integers(0, label_nc, (h // 4, w // 4)), 4, 0), 4, 1)
        inst = np.repeat(np.repeat(rng.integers(0, 3, (h // 8, w // 8)), 8, 0), 8, 1)
        Image.fromarray(label.astype(np.uint8)).save(lab_dir / f"{stem}.png")
        Image.fromarray(inst.astype(np.uint8)).save(inst_dir / f"{stem}.png")
        maps[stem] = (label.astype(np.int32), inst.astype(np.int32))
    return lab_dir, inst_dir, maps


def read_png(path):
    return np.asarray(Image.open(path))


def test_generate_matches_in_process_generator(run, tmp_path):
    config, workdir, state, generator = run
    lab_dir, inst_dir, maps = write_maps(tmp_path, ["a", "b", "c"])
    # A half-size label map: resized to image_size by nearest (an exact 2x repeat here).
    _, _, small = write_maps(tmp_path, ["d"], size=(16, 32), seed=1)
    maps.update(
        {k: tuple(np.repeat(np.repeat(m, 2, 0), 2, 1) for m in v) for k, v in small.items()}
    )
    out = tmp_path / "out"
    common = [f"--config={os.path.join(ROOT, CONFIG)}", f"--labels={lab_dir}"]
    common += [f"--instances={inst_dir}", "--num_devices=1", "--batch_size=2"]
    generate.main([*common, f"--workdir={workdir}", f"--out={out}", "--save_first", "--save_edge"])
    names = sorted(os.listdir(out))
    assert len(names) == 12 and {n.split("_")[0].removesuffix(".png") for n in names} == set("abcd")
    stems = sorted(maps)
    for start in (0, 2):  # the CLI's batches of 2
        part = stems[start : start + 2]
        label = np.stack([maps[s][0] for s in part])
        inst = np.stack([maps[s][1] for s in part])
        first, final, edge = reference(
            generator, state.ema_params, state.g_stats, config, label, inst
        )
        for i, s in enumerate(part):
            got = read_png(out / f"{s}.png")
            assert got.shape == (32, 64, 3) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, final[i])
            np.testing.assert_array_equal(read_png(out / f"{s}_first.png"), first[i])
            np.testing.assert_array_equal(read_png(out / f"{s}_edge.png"), edge[i])

    # --raw: the raw parameters (different from the EMA here), from --checkpoint=STEP.
    raw_out = tmp_path / "raw"
    generate.main([*common, f"--workdir={workdir}", "--checkpoint=0", f"--out={raw_out}", "--raw"])
    label = np.stack([maps[s][0] for s in stems[:2]])
    inst = np.stack([maps[s][1] for s in stems[:2]])
    _, final_raw, _ = reference(
        generator, state.g_params["generator"], state.g_stats, config, label, inst
    )
    np.testing.assert_array_equal(read_png(raw_out / "a.png"), final_raw[0])
    assert not np.array_equal(read_png(raw_out / "a.png"), read_png(out / "a.png"))
    assert sorted(os.listdir(raw_out)) == [f"{s}.png" for s in stems]

    # A converted checkpoint directory (python -m ecgan_jax.convert's layout) is recognised.
    from ecgan_jax.interop.authors import save_converted

    conv = tmp_path / "converted"
    save_converted(str(conv), {"params": state.g_params["generator"], **state.g_stats})
    conv_out = tmp_path / "conv_out"
    generate.main([*common, f"--workdir={conv}", f"--out={conv_out}"])
    np.testing.assert_array_equal(read_png(conv_out / "a.png"), final_raw[0])


def test_generate_never_overwrites_inputs_or_outputs(run, tmp_path):
    config, workdir, state, generator = run
    lab_dir, inst_dir, maps = write_maps(tmp_path, ["a", "b"])
    labels_before = {p.name: p.read_bytes() for p in lab_dir.iterdir()}
    common = [f"--config={os.path.join(ROOT, CONFIG)}", f"--workdir={workdir}"]
    common += [f"--labels={lab_dir}", f"--instances={inst_dir}", "--num_devices=1"]

    # --out is, lies inside or contains an input folder: refused before any compute, with
    # --overwrite too, and the label maps are untouched.
    for out, what in (
        (lab_dir, r"is an input folder \(the label maps folder: "),
        (lab_dir / "sub", r"lies inside an input folder \(the label maps folder: "),
        (inst_dir, r"is an input folder \(the instance maps folder: "),
        (tmp_path, r"contains an input folder \(the label maps folder: "),
        (os.path.join(workdir, "checkpoints", "x"), r"lies inside an input folder \(the checkp"),
    ):
        with pytest.raises(ValueError, match=rf"--out={out} {what}.*choose an --out"):
            generate.main([*common, f"--out={out}", "--overwrite"])
    # The dataset root (e.g. --out=<root>/val/images) is an input too.
    root = tmp_path / "dataset"
    (root / "val").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"lies inside an input folder \(dataset\.root="):
        generate.main([*common, f"--config.dataset.root={root}", f"--out={root / 'val' / 'i'}"])
    assert {p.name: p.read_bytes() for p in lab_dir.iterdir()} == labels_before
    assert not (lab_dir / "sub").exists()

    # Existing outputs: refused unless --overwrite, which replaces them; no temporary file
    # is left behind.
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"1 output file\(s\) exist already: .*out/b\.png; pass"):
        generate.main([*common, f"--out={out}"])
    assert sorted(os.listdir(out)) == ["b.png"]
    generate.main([*common, f"--out={out}", "--overwrite"])
    assert sorted(os.listdir(out)) == ["a.png", "b.png"]
    label = np.stack([maps[s][0] for s in "ab"])
    inst = np.stack([maps[s][1] for s in "ab"])
    _, final, _ = reference(generator, state.ema_params, state.g_stats, config, label, inst)
    np.testing.assert_array_equal(read_png(out / "b.png"), final[1])

    # Two outputs of one name (stem "a_first" and a's --save_first image): refused.
    (lab_dir / "a_first.png").write_bytes((lab_dir / "a.png").read_bytes())
    (inst_dir / "a_first.png").write_bytes((inst_dir / "a.png").read_bytes())
    with pytest.raises(ValueError, match=r"a_first\.png would be written for both"):
        generate.main([*common, f"--out={tmp_path / 'o2'}", "--save_first"])


def test_generate_finds_instances_beside_the_labels(run, tmp_path):
    config, workdir, _, _ = run
    # The custom layout: <split>/labels and <split>/instances side by side.
    lab_dir, inst_dir, _ = write_maps(tmp_path, ["a"])
    files = generate.list_label_files(config, str(lab_dir))
    assert files == [("a", str(lab_dir / "a.png"), str(inst_dir / "a.png"))]
    # COCO-Stuff: <split>_inst beside <split>_label; Cityscapes: the same gtFine folder.
    coco = config_lib.load_config(os.path.join(ROOT, "configs/coco_stuff.py:smoke"))
    assert generate.default_instance_dirs(coco, "/d/val_label")[0][0] == "/d/val_inst"
    city = config_lib.load_config(os.path.join(ROOT, "configs/cityscapes.py:smoke"))
    assert generate.default_instance_dirs(city, "/d/gtFine/val")[0][0] == "/d/gtFine/val"

    # Required and absent: the error says where it looked and what to pass.
    os.rename(inst_dir, tmp_path / "elsewhere")
    with pytest.raises(
        FileNotFoundError, match=r"uses instance maps .*looked beside the labels for .*instances"
    ):
        generate.main(
            [
                f"--config={os.path.join(ROOT, CONFIG)}",
                f"--workdir={workdir}",
                f"--labels={lab_dir}",
                f"--out={tmp_path / 'o'}",
            ]
        )
    # A config without instances needs none.
    no_inst = config_lib.load_config(os.path.join(ROOT, CONFIG))
    no_inst.dataset.no_instance = True
    assert generate.list_label_files(no_inst, str(lab_dir)) == [("a", str(lab_dir / "a.png"), None)]


def write_weights(tmp_path):
    incep = tmp_path / "inception_fid.npz"
    sd_lib.save_variables(incep, inception.init_inception(seed=0), inception.FORMAT)
    seg = tmp_path / "drn.npz"
    sd_lib.save_variables(seg, drn.init_drn(seed=0, num_classes=8), f"{drn.FORMAT}/8")
    return incep, seg


def rank1_frechet(mu1, sigma1, mu2, sigma2):
    """The Fréchet distance of two rank-1 covariances S = a aᵀ (two images each), exactly:
    Tr sqrt(S1 S2) = |a1ᵀ a2|, with a read off a column of S. Stands in for scipy's 2048-d
    sqrtm (minutes on a shared 2-core CPU; `fid.frechet_distance` is tested in test_fid.py)."""

    def vector(s):
        j = int(np.argmax(np.diag(s)))
        return s[:, j] / np.sqrt(s[j, j])

    a1, a2 = vector(np.asarray(sigma1)), vector(np.asarray(sigma2))
    diff = np.asarray(mu1) - np.asarray(mu2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * abs(a1 @ a2))


def test_evaluate_metrics_and_protocol(run, tmp_path, monkeypatch, capsys):
    config, workdir, state, generator = run
    monkeypatch.setattr(fid, "frechet_distance", rank1_frechet)
    incep, seg = write_weights(tmp_path)
    out, real = tmp_path / "eval", tmp_path / "real_stats.npz"
    n = 2
    report = evaluate.main(
        [
            f"--config={os.path.join(ROOT, CONFIG)}",
            f"--workdir={workdir}",
            f"--fid_weights={incep}",
            "--segmenter=drn_d_105",
            f"--segmenter_weights={seg}",
            f"--out={out}",
            f"--max_images={n}",
            f"--save_real_stats={real}",
            "--save_images",
            "--batch_size=2",
            "--num_devices=1",
        ]
    )
    printed = capsys.readouterr().out
    assert printed.index("protocol:") < printed.index("FID ")  # the protocol before any number
    with open(out / "metrics.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(report))
    m, p = saved["metrics"], saved["protocol"]
    assert np.isfinite(m["fid"]) and m["fid"] > 0
    assert 0 <= m["miou"] <= 1 and 0 <= m["pixel_accuracy"] <= 1
    assert m["num_images"] == n and m["num_pixels"] == n * 32 * 64  # identity: no pixel ignored
    assert p["num_images"] == n and p["resolution"] == [32, 64] and p["split"] == "val"
    assert p["generator"]["parameters"] == "ema" and p["generator"]["checkpoint"]["step"] == 0
    assert p["generator"]["output"].startswith("I''")
    assert p["config"] == {"file": os.path.join(ROOT, CONFIG), "overrides": {}}
    assert p["fid"]["weights"] == str(incep) and "InceptionV3" in p["fid"]["network"]
    assert p["fid"]["reference"]["kind"] == "real images" and p["fid"]["reference"]["count"] == n
    assert p["fid"]["weights_sha256"] == hashlib.sha256(incep.read_bytes()).hexdigest()
    ps = p["segmentation"]
    assert ps["weights"] == str(seg) and ps["name"] == "drn_d_105" and ps["num_classes"] == 8
    assert ps["weights_sha256"] == hashlib.sha256(seg.read_bytes()).hexdigest()
    assert ps["label_mapping"].startswith("identity") and not ps["conventional"]

    # The statistics saved are those of the first n eval images and of I'' made here, and the
    # FID is recomputed from these features another way: with n < 2048 the covariances are
    # low rank, S = AᵀA / (n - 1) for the centred features A, and Tr sqrt(S1 S2) is the
    # nuclear norm of A1 A2ᵀ / (n - 1).
    from ecgan_jax.data import make_eval_iterator

    fake_stats = fid.load_statistics(out / "fake_stats.npz")
    real_stats = fid.load_statistics(real)
    batch = next(iter(make_eval_iterator(config, batch_size=n, process_index=0, process_count=1)))
    label, inst = batch["label"][:n], batch["instance"][:n]
    _, fake_u8, _ = reference(generator, state.ema_params, state.g_stats, config, label, inst)
    real_u8 = np.rint((batch["image"][:n] + 1.0) * 127.5).astype(np.uint8)
    feats = fid.extract_features(
        inception.load_inception(str(incep)),
        np.concatenate([fake_u8, real_u8]),
        batch_size=n,  # the command's batch: its compiled feature function is reused
        mesh=local_mesh(1),
    ).astype(np.float64)
    f1, f2 = feats[:n], feats[n:]
    for got, want in zip(fake_stats + real_stats, fid.compute_statistics(f1)
                         + fid.compute_statistics(f2), strict=True):  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    nuclear = np.linalg.svd(a1 @ a2.T / (n - 1), compute_uv=False).sum()
    diff = f1.mean(0) - f2.mean(0)
    want = diff @ diff + ((a1**2).sum() + (a2**2).sum()) / (n - 1) - 2 * nuclear
    assert m["fid"] == pytest.approx(want, rel=1e-3)
    stems = [str(x) for x in batch["stem"][:n]]
    assert sorted(os.listdir(out / "images")) == sorted(f"{x}.png" for x in stems)
    for stem, image in zip(stems, fake_u8, strict=True):
        np.testing.assert_array_equal(read_png(out / "images" / f"{stem}.png"), image)

    # --fid_stats: the given statistics are the reference.
    seen = []

    def fake_distance(mu1, sigma1, mu2, sigma2):
        seen.append((mu1, sigma1, mu2, sigma2))
        return 123.0

    monkeypatch.setattr(fid, "frechet_distance", fake_distance)
    again = [
        f"--config={os.path.join(ROOT, CONFIG)}",
        f"--workdir={workdir}",
        f"--fid_weights={incep}",
        f"--fid_stats={real}",
        f"--out={tmp_path / 'eval2'}",
        f"--max_images={n}",
        "--batch_size=2",
        "--num_devices=1",
    ]
    report2 = evaluate.main([*again, "--raw"])
    assert report2["metrics"]["fid"] == 123.0 and len(seen) == 1
    np.testing.assert_array_equal(seen[0][2], real_stats[0])
    np.testing.assert_array_equal(seen[0][3], real_stats[1])
    p2 = report2["protocol"]
    assert p2["fid"]["reference"]["kind"] == "statistics file"
    assert p2["fid"]["reference"]["path"] == str(real)
    assert p2["generator"]["parameters"] == "raw"
    assert p2["segmentation"] is None and "miou" not in report2["metrics"]

    # The same --out again (without --raw): refused (metrics.json exists), replaced with
    # --overwrite.
    with pytest.raises(ValueError, match=r"eval2/metrics\.json.*pass --overwrite"):
        evaluate.main(again)
    assert evaluate.main([*again, "--overwrite"])["protocol"]["generator"]["parameters"] == "ema"

    # --real alone: the segmenter on the real images only (no generator, no FID).
    only = evaluate.main(
        [
            f"--config={os.path.join(ROOT, CONFIG)}",
            "--real",
            "--segmenter=drn_d_105",
            f"--segmenter_weights={seg}",
            f"--out={tmp_path / 'real_only'}",
            f"--max_images={n}",
            "--batch_size=2",
            "--num_devices=1",
        ]
    )
    assert only["metrics"] is None and only["real"]["num_images"] == n
    assert only["real"]["num_pixels"] == n * 32 * 64 and 0 <= only["real"]["miou"] <= 1
    assert only["protocol"]["generator"] is None and only["protocol"]["fid"] is None
    assert only["protocol"]["segmentation"]["name"] == "drn_d_105"


def test_errors_name_the_file_and_the_fix(run, tmp_path):
    config, workdir, _, _ = run
    cfg = f"--config={os.path.join(ROOT, CONFIG)}"
    lab_dir, inst_dir, _ = write_maps(tmp_path, ["x"])
    base = [cfg, f"--labels={lab_dir}", f"--instances={inst_dir}", f"--out={tmp_path / 'o'}"]

    # No checkpoint: the path and how to make one.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint found in .*empty.*ecgan_jax\.main"):
        generate.main([*base, f"--workdir={empty}"])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 .*steps there: \[0\]"):
        generate.main([*base, f"--workdir={workdir}", "--checkpoint=7"])

    # Checkpoint references: a step directory, a checkpoints directory, a converted directory.
    from ecgan_jax.interop.authors import save_converted

    step_dir = os.path.join(workdir, "checkpoints", "0")
    for ref in (inference.resolve_checkpoint(checkpoint=step_dir),
                inference.resolve_checkpoint(workdir, os.path.dirname(step_dir)),
                inference.resolve_checkpoint(workdir)):  # fmt: skip
        assert (ref.kind, ref.path, ref.step) == ("train_state", step_dir, 0)
    save_converted(str(tmp_path / "conv"), {"params": {"w": np.zeros(2, np.float32)}})
    ref = inference.resolve_checkpoint(checkpoint=str(tmp_path / "conv"))
    assert ref.kind == "converted" and ref.step is None

    # Missing FID weights: the path and the converter command.
    with pytest.raises(
        FileNotFoundError, match=r"(?s)nope\.npz.*python -m ecgan_jax\.eval\.inception"
    ):
        evaluate.main([cfg, f"--workdir={workdir}", f"--fid_weights={tmp_path / 'nope.npz'}"])
    incep, _ = write_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"stats\.npz.*--save-stats"):
        evaluate.main(
            [cfg, f"--workdir={workdir}", f"--fid_weights={incep}", "--fid_stats=stats.npz"]
        )

    # The synthetic dataset has no conventional segmenter: one must be named; --real needs one.
    with pytest.raises(ValueError, match=r"'synthetic' has no conventional segmenter: pass --se"):
        evaluate.main([cfg, f"--workdir={workdir}", f"--segmenter_weights={incep}"])
    with pytest.raises(ValueError, match=r"--real scores the segmenter .*--segmenter_weights"):
        evaluate.main([cfg, "--real", "--out=o"])
    with pytest.raises(ValueError, match=r"--segmenter=upernet101 needs --segmenter_weights"):
        evaluate.main([cfg, f"--workdir={workdir}", "--segmenter=upernet101"])
    with pytest.raises(ValueError, match=r"nothing to measure: give --fid_weights"):
        evaluate.main([cfg, f"--workdir={workdir}"])

    # A label value >= label_nc: the file and the values.
    Image.fromarray(np.full((32, 64), 9, np.uint8)).save(lab_dir / "y.png")
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(inst_dir / "y.png")
    with pytest.raises(ValueError, match=r"labels/y\.png.*values 9"):
        generate.main([*base, f"--workdir={workdir}"])

    # A label without its instance file: named.
    os.remove(inst_dir / "y.png")
    with pytest.raises(FileNotFoundError, match=r"no instance file .*labels/y\.png"):
        generate.main([*base, f"--workdir={workdir}"])

    # Config overrides: a wrong field is named (tests/test_cli_flags.py has the rest).
    with pytest.raises(ValueError, match="no field 'dataset.nope'"):
        generate.main([*base, f"--workdir={workdir}", "--config.dataset.nope=1"])
