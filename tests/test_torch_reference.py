"""benchmarks/torch_reference.py: the PyTorch ECGAN used as a same-machine timing baseline.

* The authors' state dicts in ../shared/fixtures load into its G and D with
  `load_state_dict(strict=True)`, its preprocessing reproduces `seg_nchw` exactly, and in eval
  mode it reproduces the stored I′, I″, I′_e and every D layer of both scales to 1e-4.
* Its CLI runs one tiny authors'-style training iteration (configs/cityscapes.py:smoke).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed")

pytestmark = pytest.mark.torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "torch_reference.py"
CASES = {
    "cityscapes": ("configs/cityscapes.py", (64, 128)),
    "ade20k": ("configs/ade20k.py", (64, 64)),
}
TOL = 1e-4


def _module():
    spec = importlib.util.spec_from_file_location("torch_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.fixtures
@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_state_dicts_reproduce_authors_outputs(name, authors_fixture):
    from ecgan_jax.config_lib import load_config

    tr = _module()
    torch.set_num_threads(1)
    data = authors_fixture(name)
    spec, size = CASES[name]
    config = load_config(spec)
    config.dataset.image_size = size
    config.model.ngf = config.model.ndf = 4
    gen, disc = tr.build_models(config)
    g_sd = {k[2:]: v for k, v in data.items() if k.startswith("G/")}
    d_sd = {k[2:]: v for k, v in data.items() if k.startswith("D/")}
    tr.load_numpy_state_dict(gen, g_sd)  # strict: no missing/unexpected key, shapes equal
    tr.load_numpy_state_dict(disc, d_sd)
    assert set(gen.state_dict()) == set(g_sd) and set(disc.state_dict()) == set(d_sd)
    gen.eval()
    disc.eval()

    instance = torch.from_numpy(data["instance"]) if "instance" in data else None
    seg, _ = tr.preprocess(torch.from_numpy(data["label"]), instance, config)
    np.testing.assert_array_equal(seg.numpy(), data["seg_nchw"])

    with torch.no_grad():
        outs = gen(seg)
        keys = ("out_first_nchw", "out_final_nchw", "out_edge_nchw")
        for out, key in zip(outs, keys, strict=True):
            ref = data[key]
            assert ref.std() > 0.05, key
            assert out.shape == ref.shape, key
            diff = np.abs(out.numpy() - ref).max()
            assert diff <= TOL, (key, diff)

        d_outs = disc(torch.cat([seg, torch.from_numpy(data["out_final_nchw"])], dim=1))
    keys = sorted(k for k in data if k.startswith("d_out/"))
    assert keys == [f"d_out/{s}/{layer}" for s in range(2) for layer in range(5)]
    assert len(d_outs) == 2 and all(len(o) == 5 for o in d_outs)
    for key in keys:
        _, scale, layer = key.split("/")
        ref = data[key]
        got = d_outs[int(scale)][int(layer)].numpy()
        assert got.shape == ref.shape, key
        assert ref.std() > 0.01, key
        diff = np.abs(got - ref).max()
        assert diff <= TOL, (key, diff)


def test_cli_runs_one_tiny_train_iteration():
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--config=configs/cityscapes.py:smoke",
        "--case=train",
        "--batch=1",
        "--repeats=1",
        "--threads=1",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[0])
    assert result["case"] == "train" and result["batch"] == 1
    assert result["image_size"] == [64, 128] and result["threads"] == 1
    assert result["step_s"] > 0 and result["peak_rss_gb"] > 0
    assert "no contrastive loss" in result["notes"]
    assert lines[-1].startswith("| torch train | configs/cityscapes.py:smoke")
