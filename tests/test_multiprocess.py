"""Two JAX processes on localhost (gloo CPU collectives) train like one process on 4 devices.

Each process (tests/multiprocess_worker.py) has 2 fake CPU devices and half of every global
batch, reads its shard through the real input pipeline, and trains 2 steps in one shared
workdir. The reference is `train_and_evaluate` in this process on 4 devices, fed the same
global batches. Checks: losses and parameters agree (sharded == unsharded, across processes),
only process 0 writes TensorBoard events, and both processes write the checkpoint, which
restores (issue 7; STYLE.md: "Only process 0 writes metrics; every process takes part in
checkpoint saves").
"""

from __future__ import annotations

import glob
import os
import pathlib
import socket
import subprocess
import sys

import jax
import multiprocess_worker as worker
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NUM_PROCESSES = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, outs):
    port = _free_port()
    procs = []
    for i, out in enumerate(outs):
        env = dict(os.environ)
        env.update(
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_PLATFORMS="cpu",
            ECGAN_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            ECGAN_NUM_PROCESSES=str(NUM_PROCESSES),
            ECGAN_PROCESS_ID=str(i),
            PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        )
        env.pop("ECGAN_LOCAL_DEVICE_IDS", None)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "multiprocess_worker.py"), workdir, out],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _wait(procs, timeout=600):
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{log[-6000:]}"


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.xdist_group("four_devices")
def test_two_processes_train_like_one(tmp_path, monkeypatch):
    workdir = tmp_path / "shared_workdir"
    outs = [str(tmp_path / f"process_{i}.npz") for i in range(NUM_PROCESSES)]
    procs = _launch(str(workdir), outs)
    try:
        # The single-process reference runs meanwhile (compilation overlaps).
        from ecgan_jax import data as data_lib
        from ecgan_jax.training.loop import train_and_evaluate

        recorded = worker.record_scalars(monkeypatch.setattr)
        monkeypatch.setattr(
            data_lib,
            "make_train_iterator",
            lambda c: worker.interleaved_train_iterator(c, NUM_PROCESSES),
        )
        config = worker.multiprocess_config()
        reference = train_and_evaluate(config, str(tmp_path / "reference"))
    finally:
        _wait(procs)
    ref = {**worker.state_arrays(reference), **worker.metric_arrays(recorded)}
    runs = [dict(np.load(out)) for out in outs]
    assert [int(r["process_index"]) for r in runs] == [0, 1]
    assert all(int(r["process_count"]) == NUM_PROCESSES for r in runs)

    # Both processes hold the same replicated state and saw the same global losses.
    assert set(runs[0]) == set(runs[1])
    for key in (k for k in runs[0] if k.startswith(("state/", "metric/"))):
        np.testing.assert_array_equal(runs[0][key], runs[1][key], err_msg=key)

    # Against one process on 4 devices. Step 1 from identical states: float32 rounding only.
    got = runs[0]
    metric_keys = sorted(k for k in ref if k.startswith("metric/"))
    assert {k for k in got if k.startswith("metric/")} == set(metric_keys)
    assert any(k.startswith("metric/1/g/") for k in metric_keys)
    # Step 2: Adam with beta1 = 0 moves a weight by ~3·lr·sign(gradient); a ~1e-9 gradient
    # element whose sign flips under another reduction order moves it by ~6·lr (as in
    # tests/test_train.py::test_sharded_equals_single_device). The losses then stay within 1%;
    # the G gradient norm (~2e4 here, a few huge elements) is chaotic and only kept within 2×.
    for key in metric_keys:
        if key.startswith("metric/1/"):
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-6, err_msg=key)
        elif "/grad_norm/" in key:
            assert 0.5 < got[key] / ref[key] < 2, (key, got[key], ref[key])
        else:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-2, atol=1e-3, err_msg=key)
    lr = 2 * float(config.lr)
    state_keys = sorted(k for k in ref if k.startswith("state/"))
    assert {k for k in got if k.startswith("state/")} == set(state_keys)
    for key in state_keys:
        if not np.issubdtype(ref[key].dtype, np.floating):
            np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
            continue
        if "opt_state" in key:
            continue  # Adam's moments hold the step-2 gradients (chaotic, see above)
        # Params: a few lr. Batch statistics and the (unit-norm) memory-bank features are
        # outputs of the step-2 weights: looser.
        tol = 3 * 7 * lr if "params" in key else (5e-2 if ".bank." in key else 1e-2)
        diff = float(np.max(np.abs(got[key] - ref[key]), initial=0.0))
        assert diff < tol, f"{key}: differs from the single-process run by {diff}"
    assert int(got["state/.step"]) == worker.STEPS

    # Only process 0 wrote TensorBoard events (clu names the file with the writer's pid).
    events = glob.glob(str(workdir / "**" / "events.out.tfevents.*"), recursive=True)
    assert len(events) == 1, events
    assert f".{procs[0].pid}." in os.path.basename(events[0]), (events, procs[0].pid)
    assert sorted(os.listdir(workdir / "images")) == ["step_0000000.png", "step_0000002.png"]

    # Both processes wrote their part of the checkpoint, and it restores.
    ckpt_dir = workdir / "checkpoints" / str(worker.STEPS)
    assert ckpt_dir.is_dir(), os.listdir(workdir / "checkpoints")
    per_process = sorted(p.name for p in (ckpt_dir / "state").glob("ocdbt.process_*"))
    assert per_process == [f"ocdbt.process_{i}" for i in range(NUM_PROCESSES)], per_process
    _check_restore(config, str(workdir), got)


def _check_restore(config, workdir, expected):
    from ecgan_jax.sharding import make_mesh, replicated
    from ecgan_jax.training.checkpointing import Checkpointer, abstract_with_shardings
    from ecgan_jax.training.state import build_models, create_train_state, make_optimizers

    models = build_models(config)
    tx_g, tx_d, _ = make_optimizers(config, dataset_size=int(config.dataset.synthetic_num_images))
    abstract = jax.eval_shape(lambda: create_train_state(config, models, tx_g, tx_d, mesh=None))
    rep = replicated(make_mesh(jax.devices()[:1]))
    ckpt = Checkpointer(workdir, every=1, keep=0)
    try:
        assert ckpt.latest_step() == worker.STEPS
        state, data_state = ckpt.restore(abstract_with_shardings(abstract, rep))
    finally:
        ckpt.close()
    assert data_state, "the data iterator state was not saved"
    restored = worker.state_arrays(state)
    assert set(restored) == {k for k in expected if k.startswith("state/")}
    for key, value in restored.items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)
