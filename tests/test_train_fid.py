"""Periodic FID during training and the best checkpoint (`config.fid_every`, `train_fid`).

The Inception weights are a random `.npz` written in the test (the converter's format); the
2048-d Fréchet distance (scipy sqrtm, seconds on CPU; checked in test_generate_evaluate) is
replaced by scripted values, so which step is "best" is known in advance.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from train_configs import demo_config

from ecgan_jax import config_lib, inference
from ecgan_jax.eval import fid, inception
from ecgan_jax.interop import state_dict as sd_lib
from ecgan_jax.training.fid_tracker import BEST_DIR, BEST_JSON, FidTracker, check_fid_config
from ecgan_jax.training.loop import train_and_evaluate
from ecgan_jax.training.state import build_models


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "inception_fid.npz"
    sd_lib.save_variables(path, inception.init_inception(seed=0), inception.FORMAT)
    return str(path)


def test_fid_fields_are_validated(tmp_path):
    config = demo_config()
    assert config.fid_every == 0 and config.keep_best_fid  # off by default
    config_lib.validate_config(config)
    check_fid_config(config)  # nothing to check when off

    for field, value, allowed in (
        ("fid_every", -1, "an integer >= 0"),
        ("fid_num_images", 1, "0 .* or an integer >= 2"),
    ):
        bad = demo_config(**{field: value})
        with pytest.raises(ValueError, match=rf"config field '{field}' = {value} .*{allowed}"):
            config_lib.validate_config(bad)

    on = demo_config(fid_every=10)
    with pytest.raises(
        ValueError,
        match=r"(?s)config field 'fid_weights' = '' .*fid_every = 10.*"
        r"python -m ecgan_jax\.eval\.inception --convert .*--config\.fid_weights=",
    ):
        config_lib.validate_config(on)

    # Files are checked when training starts, before any compute.
    on.fid_weights = str(tmp_path / "nope.npz")
    config_lib.validate_config(on)
    with pytest.raises(
        FileNotFoundError,
        match=r"(?s)config field 'fid_weights' = '.*nope\.npz'.*python -m ecgan_jax\.eval\.inc",
    ):
        check_fid_config(on, process_count=1)
    with pytest.raises(FileNotFoundError, match=r"config field 'fid_weights'"):
        train_and_evaluate(on, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")

    on.fid_weights = str(tmp_path / "w.npz")
    (tmp_path / "w.npz").write_bytes(b"")
    on.fid_stats = str(tmp_path / "stats.npz")
    with pytest.raises(FileNotFoundError, match=r"config field 'fid_stats' = .*stats\.npz"):
        check_fid_config(on, process_count=1)
    on.fid_stats = ""
    check_fid_config(on, process_count=1)
    with pytest.raises(ValueError, match=r"config field 'fid_every' = 10 .*multi-process"):
        check_fid_config(on, process_count=2)


class Recorder:
    """Stands in for the clu writer: keeps the scalars, ignores the rest."""

    def __init__(self):
        self.scalars = []

    def write_scalars(self, step, values):
        self.scalars.append((int(step), dict(values)))

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def fids(self):
        return [(s, v["fid"]) for s, v in self.scalars if "fid" in v]


def test_fid_is_due_on_the_interval_and_at_the_last_step():
    tracker = FidTracker.__new__(FidTracker)
    tracker.every = 3
    assert [s for s in range(1, 8) if tracker.due(s, num_steps=7)] == [3, 6, 7]


@pytest.mark.xdist_group("train_step")
def test_periodic_fid_keeps_best_across_restarts(tmp_path, weights, monkeypatch):
    from ecgan_jax.training import loop as train_loop

    config = demo_config(
        num_train_steps=2, checkpoint_every=100, fid_every=1, fid_num_images=2, fid_weights=weights
    )
    workdir = str(tmp_path / "run")
    script, seen, given = [], [], []

    def scripted_distance(mu1, sigma1, mu2, sigma2):
        seen.append((mu2, sigma2))
        return script.pop(0)

    evaluate = inference.evaluate_generator

    def spy(*args, **kwargs):
        given.append(kwargs["real_stats"])
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(fid, "frechet_distance", scripted_distance)
    monkeypatch.setattr(inference, "evaluate_generator", spy)
    writer = Recorder()
    monkeypatch.setattr(train_loop, "_writer", lambda *a, **k: writer)

    # Training: FID at steps 1 and 2 (the last); the second is better and replaces the first.
    script[:] = [5.0, 3.0]
    final = train_and_evaluate(config, workdir)
    assert int(final.step) == 2
    assert writer.fids() == [(1, 5.0), (2, 3.0)] and not script
    # The real statistics are computed at the first FID, cached, and given to the second.
    cached = [n for n in os.listdir(workdir) if n.startswith("fid_real_stats_")]
    assert len(cached) == 1 and cached[0].startswith("fid_real_stats_val_2_"), cached
    cache = os.path.join(workdir, cached[0])
    mu, sigma = fid.load_statistics(cache)  # pytorch-fid's format
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    assert given[0] is None and len(given) == 2
    for got in (given[1], *seen):
        np.testing.assert_array_equal(got[0], mu)
        np.testing.assert_array_equal(got[1], sigma)
    best = json.loads((tmp_path / "run" / BEST_JSON).read_text())
    assert (best["step"], best["fid"], best["parameters"]) == (2, 3.0, "ema")
    assert best["checkpoint"] == os.path.join(os.path.abspath(workdir), BEST_DIR, "2")
    assert sorted(os.listdir(os.path.join(workdir, BEST_DIR))) == ["2"]

    # A resumed run's tracker (what train_and_evaluate makes at start) reads the record and
    # the cache: a worse FID keeps the best, the cache is not rewritten.
    mtime = os.stat(cache).st_mtime_ns
    tracker = FidTracker(config, workdir, build_models(config).generator, make_mesh(final))
    try:
        assert (tracker.best["step"], tracker.best["fid"]) == (2, 3.0)
        np.testing.assert_array_equal(tracker.real_stats[1], sigma)
        given.clear()
        script[:] = [4.0, 1.0]
        assert tracker(final, 3, writer) == 4.0
        assert json.loads((tmp_path / "run" / BEST_JSON).read_text()) == best
        # A run resumed from a checkpoint older than the best: a better FID at step 1 replaces
        # the best of step 2 (orbax alone would skip a step below its latest).
        assert tracker(final, 1, writer) == 1.0
        assert given[0] is not None and os.stat(cache).st_mtime_ns == mtime
    finally:
        tracker.close()
    best = json.loads((tmp_path / "run" / BEST_JSON).read_text())
    assert (best["step"], best["fid"]) == (1, 1.0)
    assert sorted(os.listdir(os.path.join(workdir, BEST_DIR))) == ["1"]

    # The best checkpoint restores as `--checkpoint=<workdir>/best` would (EMA parameters).
    loaded = inference.restore_generator(config, checkpoint=os.path.join(workdir, BEST_DIR))
    assert loaded.checkpoint.step == 1 and loaded.params == "ema"
    got = jax.tree_util.tree_leaves(jax.device_get(loaded.variables["params"]))
    want = jax.tree_util.tree_leaves(jax.device_get(final.ema_params))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def make_mesh(state):
    """The training mesh of a state returned by train_and_evaluate."""
    from ecgan_jax.sharding import make_mesh as mesh_of

    return mesh_of(jax.tree_util.tree_leaves(state)[0].sharding.mesh.devices.reshape(-1))
