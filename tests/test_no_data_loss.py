"""Converted weights files are written whole or not at all, and a damaged one is named
(ecgan_jax/interop/state_dict.py `write_npz` / `read_npz`, used by the InceptionV3 and DRN
converters and loaders)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ecgan_jax.data.fake_trees import snapshot
from ecgan_jax.eval import drn, inception
from ecgan_jax.interop import state_dict as sd_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WRITE_UNDER_LIMIT = """
import resource, signal, sys
import numpy as np
from ecgan_jax.interop.state_dict import save_variables
# SIGXFSZ ignored: a write past RLIMIT_FSIZE then fails with EFBIG, as one fails on a full disk.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # the disk is full at 200 kB
try:
    save_variables(sys.argv[1], {"params": {"w": np.ones(1_000_000, np.float32)}}, "fmt")
except OSError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
"""


def test_full_disk_leaves_the_previous_file(tmp_path):
    out = tmp_path / "weights.npz"
    sd_lib.save_variables(out, {"params": {"w": np.arange(4, dtype=np.float32)}}, "fmt")
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", _WRITE_UNDER_LIMIT, str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert f"cannot write {out}" in proc.stderr and "unchanged" in proc.stderr
    assert snapshot(tmp_path) == before  # the old file intact, no temporary file left
    w = sd_lib.load_variables(out, {"params": {"w": np.zeros(4)}}, "fmt", "MAKE IT")
    np.testing.assert_array_equal(w["params"]["w"], np.arange(4))


def test_failed_write_of_a_new_file_leaves_nothing(tmp_path, monkeypatch):
    def half_then_full(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sd_lib.np, "savez", half_then_full)
    with pytest.raises(OSError, match=r"cannot write .*new\.npz \(No space left on device\)"):
        sd_lib.write_npz(tmp_path / "sub" / "new.npz", {"a": np.zeros(3)})
    assert snapshot(tmp_path) == {"sub": "dir"}


@pytest.mark.parametrize(
    "module, load, fmt",
    [
        (inception, inception.load_inception, inception.FORMAT),
        (drn, drn.load_drn, f"{drn.FORMAT}/19"),
    ],
    ids=["inception", "drn"],
)
def test_damaged_weights_name_the_file_and_the_converter(tmp_path, module, load, fmt):
    path = tmp_path / "w.npz"
    sd_lib.write_npz(path, {"_format": np.array(fmt), "params/x": np.ones(50_000, np.float32)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what an in-place write cut short leaves
    with pytest.raises(ValueError) as e:
        load(str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "BadZipFile" in msg
    assert module.CONVERT_COMMAND in msg
    # A bit flipped inside the data: the CRC check fails when the array is read.
    corrupt = bytearray(data)
    corrupt[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match=f"cannot read {path}.*{module.CONVERT_COMMAND[:30]}"):
        load(str(path))


def test_damaged_state_dict_inputs_are_named(tmp_path):
    path = tmp_path / "sd.npz"
    np.savez(path, w=np.ones(10_000, np.float32))
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ValueError, match=f"cannot read {path} .*numpy.savez") as e:
        sd_lib.read_state_dict(path)
    assert "\n" not in str(e.value)


@pytest.mark.torch
def test_truncated_pth_is_named(tmp_path):
    torch = pytest.importorskip("torch", reason="writes a .pth with torch.save")
    path = tmp_path / "latest_net_G.pth"
    torch.save({"w": torch.ones(10_000)}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=f"cannot read {path} .*damaged") as e:
        sd_lib.read_state_dict(path)
    assert "\n" not in str(e.value)
