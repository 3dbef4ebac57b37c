"""Config overrides from strings (config_lib.apply_override, the benchmarks' --set)."""

import pytest

from ecgan_jax.config_lib import apply_override, load_config


def test_override_parses_the_field_type():
    c = load_config("configs/cityscapes.py")
    for a in ("model.ngf=16", "dataset.image_size=128,256", "contrastive.enabled=false"):
        apply_override(c, a)
    assert c.model.ngf == 16 and isinstance(c.model.ngf, int)
    assert c.dataset.image_size == (128, 256)
    assert c.contrastive.enabled is False
    apply_override(c, "lr=0.001")
    assert c.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "assignment,error,match",
    [
        ("model.nope=1", KeyError, "no config field 'model.nope'"),
        ("model.ngf=wide", ValueError, "'wide' is not a valid int for 'model.ngf'"),
        ("contrastive.enabled=maybe", ValueError, "not a valid bool"),
        ("model.ngf", ValueError, "expected key=value"),
    ],
)
def test_bad_override_names_the_key(assignment, error, match):
    with pytest.raises(error, match=match):
        apply_override(load_config("configs/cityscapes.py"), assignment)
