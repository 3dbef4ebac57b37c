"""A converter's --out (ecgan_jax/interop/weights_out.py): refusal, overwrite, no partial file."""

import numpy as np
import pytest

from ecgan_jax.interop import state_dict, weights_out


def _variables(value):
    return {"params": {"conv": {"kernel": np.full((1, 1, 2, 3), value, np.float32)}}}


def _abstract():
    return _variables(0.0)


def test_existing_out_refused_then_overwritten(tmp_path):
    out = tmp_path / "sub" / "w.npz"
    weights_out.save_variables_atomic(out, _variables(1.0), "fmt/v1")
    with pytest.raises(FileExistsError) as err:
        weights_out.save_variables_atomic(out, _variables(2.0), "fmt/v1")
    assert str(err.value) == f"--out {out} exists; pass --overwrite to replace it"
    got = state_dict.load_variables(out, _abstract(), "fmt/v1", "make it")
    np.testing.assert_array_equal(got["params"]["conv"]["kernel"], 1.0)
    weights_out.save_variables_atomic(out, _variables(2.0), "fmt/v1", overwrite=True)
    got = state_dict.load_variables(out, _abstract(), "fmt/v1", "make it")
    np.testing.assert_array_equal(got["params"]["conv"]["kernel"], 2.0)
    assert sorted(p.name for p in out.parent.iterdir()) == ["w.npz"]


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "w.npz"
    bad = {"params": {"conv": {"kernel": object()}}}  # np.asarray(float32) fails mid-write
    with pytest.raises(TypeError):
        weights_out.save_variables_atomic(out, bad, "fmt/v1")
    assert list(tmp_path.iterdir()) == []
