"""Runs the README section "Using the losses as a library", read from README.md."""

import os
import pathlib
import subprocess
import sys
import textwrap

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    """The python block of the README section "Using the losses as a library"."""
    text = README.read_text()
    section = text.split("## Using the losses as a library", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_runs_without_flax():
    # A fresh interpreter shows the library works without flax/configs/TensorFlow imported.
    code = readme_example() + textwrap.dedent(
        """
        import sys
        assert not [m for m in sys.modules if m.split(".")[0] in
                    ("flax", "tensorflow", "ml_collections")], "losses imported flax/TF/config"
        assert 0 < float(loss) < 20
        assert all(bool(jnp.isfinite(g).all()) for g in grads)
        assert int(bank.pixel_valid.sum()) == 5 * 3 * 8   # 3 pushes of 8 pixels per class
        assert int(bank.region_valid.sum()) == 5 * 16     # every class present: queues full
        """
    )
    # conftest's environment: CPU devices and the persistent compilation cache
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "supervised contrastive:" in result.stdout and "step 2: L_cl" in result.stdout
