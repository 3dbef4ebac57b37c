"""Test-wide JAX settings: 8 fake CPU devices, fast compiles, a persistent compile cache.

Set before jax is imported anywhere. `ECGAN_REQUIRE_FIXTURES=1` (set by `.ci/run`) turns the
skip of tests that read ../shared/fixtures into a failure.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
_ROOT = pathlib.Path(__file__).resolve().parent.parent
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

FIXTURES = pathlib.Path(os.environ.get("ECGAN_FIXTURES", str(_ROOT.parent / "shared" / "fixtures")))


def fixture_path(name: str) -> pathlib.Path:
    """Path of a file in ../shared/fixtures; skips (or fails under .ci/run) when absent."""
    path = FIXTURES / name
    if not path.exists():
        message = f"fixture {path} is absent (it ships in ../shared/fixtures, not in the repo)"
        if os.environ.get("ECGAN_REQUIRE_FIXTURES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def authors_fixture():
    """Loads an authors' fixture .npz by short name ('cityscapes' or 'ade20k')."""
    import numpy as np

    def load(name):
        with np.load(fixture_path(f"authors_{name}_tiny.npz"), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    return load


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    has_accel = jax.default_backend() != "cpu"
    skip = pytest.mark.skip(reason="needs a GPU/TPU (accelerator marker)")
    for item in items:
        if "accelerator" in item.keywords and not has_accel:
            item.add_marker(skip)
    # Under --dist=loadgroup pytest-xdist marks grouped tests by a "@group" suffix of their
    # node id, which is what keeps them in one worker (see setup.cfg's pin of pytest).
    grouped = [i for i in items if i.get_closest_marker("xdist_group") is not None]
    if getattr(config.option, "loadgroup", False) and grouped and "@" not in grouped[0].nodeid:
        import warnings

        warnings.warn(
            "pytest-xdist's --dist=loadgroup did not group the tests marked xdist_group under "
            f"pytest {pytest.__version__}: tests sharing a compiled step will compile it twice",
            stacklevel=1,
        )
