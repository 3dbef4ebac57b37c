"""The training loop as a user meets it: resume rules, damaged checkpoints, the log, exit codes,
and the README's demo commands end to end (train, generate on the exported maps, evaluate)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from train_configs import demo_config

from ecgan_jax.config_lib import ConfigError
from ecgan_jax.training import run_record
from ecgan_jax.training.loop import train_and_evaluate
from ecgan_jax.training.state import learning_rate_schedules


def _scalars(workdir, tag):
    """{step: [values]} of one scalar in the TensorBoard events of `workdir`."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    out = {}
    for name in sorted(os.listdir(workdir)):
        if not name.startswith("events."):
            continue
        acc = event_accumulator.EventAccumulator(os.path.join(workdir, name), size_guidance={})
        acc.Reload()
        if tag in acc.Tags().get("tensors", []):
            for ev in acc.Tensors(tag):
                value = float(tensor_util.make_ndarray(ev.tensor_proto).reshape(-1)[0])
                out.setdefault(ev.step, []).append(value)
    return out


def test_extension_keeps_the_runs_schedule_unless_asked():
    config = demo_config(num_train_steps=300)
    config.niter, config.niter_decay = 1, 1  # constant for 150 steps, then decay to 0 at 300
    record = {"config": config.copy_and_resolve_references(), "total_steps": 300}
    longer = demo_config(num_train_steps=350)
    longer.niter, longer.niter_decay = 1, 1

    kept = run_record.resumed_schedule(record, longer, 350, start=300)
    lr_g, _ = learning_rate_schedules(longer, 8, kept)
    assert float(lr_g(299)) > 0 and float(lr_g(300)) == 0.0 and float(lr_g(325)) == 0.0
    assert "decay to 0 at step 300" in kept.describe()

    longer.extend_schedule = True
    extended = run_record.resumed_schedule(record, longer, 350, start=290)
    lr_g, _ = learning_rate_schedules(longer, 8, extended)
    original, _ = learning_rate_schedules(config, 8)
    reached = float(original(290))
    assert float(lr_g(100)) == pytest.approx(float(original(100)))  # the run's own past
    assert float(lr_g(290)) == pytest.approx(reached)
    assert float(lr_g(320)) == pytest.approx(reached * 30 / 60, rel=1e-5)  # halfway to 350
    assert float(lr_g(350)) == pytest.approx(0.0, abs=1e-12)
    assert float(lr_g(291)) < reached  # never back up


@pytest.mark.xdist_group("train_step")
def test_resume_writes_one_summary_per_step_and_refuses_another_model(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    config = demo_config(num_train_steps=2, checkpoint_every=100, image_every=1)
    from ecgan_jax.training.progress import quiet_library_logs

    with caplog.at_level(logging.INFO):
        quiet_library_logs()  # what the training command does at the default verbosity
        try:
            train_and_evaluate(config, workdir)
        finally:
            quiet_library_logs(verbose=True)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "compiling the train step" in messages and "compiled the train step in" in messages
    assert "finished at step 2: 2 steps in" in messages
    assert "learning-rate schedule: lr constant" in messages
    assert not [r for r in caplog.records if "/orbax/" in r.pathname and r.levelno < 30]
    step_lines = [m for m in messages.splitlines() if m.startswith("step 2/2 | G ")]
    assert step_lines and len(step_lines[0]) < 200, step_lines
    assert os.path.exists(os.path.join(workdir, "run.json"))
    assert sorted(os.listdir(os.path.join(workdir, "examples", "labels")))

    train_and_evaluate(config, workdir)  # finished: resumes at 2, writes nothing again
    train_and_evaluate(demo_config(num_train_steps=3, checkpoint_every=100, image_every=1), workdir)
    errors = _scalars(workdir, "quality/class_colour_error")
    assert sorted(errors) == [0, 1, 2, 3] and all(len(v) == 1 for v in errors.values()), errors

    other = demo_config(num_train_steps=4)
    other.model.ngf = 2 * int(other.model.ngf)
    with pytest.raises(ConfigError, match=r"'model.ngf': run \d+, now \d+"):
        train_and_evaluate(other, workdir)


@pytest.mark.xdist_group("train_step")
def test_a_damaged_checkpoint_falls_back_to_the_older_one(tmp_path, caplog):
    workdir = tmp_path / "run"
    # Two runs, each ending with its own checkpoint: steps 2 and 4.
    keep = dict(checkpoint_every=100, keep_checkpoints=3)  # the demo config keeps only one
    train_and_evaluate(demo_config(num_train_steps=2, **keep), str(workdir))
    train_and_evaluate(demo_config(num_train_steps=4, **keep), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    state_dir = workdir / "checkpoints" / "4" / "state"
    files = [p for p in state_dir.rglob("*") if p.is_file() and p.stat().st_size > 1000]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])  # truncated
    (workdir / "checkpoints" / "4" / "data").mkdir(exist_ok=True)
    with caplog.at_level(logging.WARNING):
        state = train_and_evaluate(
            demo_config(num_train_steps=5, checkpoint_every=100), str(workdir)
        )
    assert int(state.step) == 5
    warned = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert warned and "/4 cannot be read" in warned[0], warned
    assert any("resuming from step 2" in r.getMessage() for r in caplog.records)


def test_exit_codes_of_the_training_command(monkeypatch):
    from ecgan_jax.cli import train as cli_train
    from ecgan_jax.training import loop

    def raising(error):
        def fake(config, workdir):
            raise error

        return fake

    flags = {"verbosity": 0, "distributed": "off", "config": None, "workdir": "w"}
    monkeypatch.setattr(cli_train, "FLAGS", type("Flags", (), flags)())
    cases = [
        (loop.Preempted(7, "w"), 3),
        (loop.NonFiniteLossError("non-finite value nan of 'g/total' at step 3"), 4),
        (ConfigError("config field 'lr' = -1 is invalid; allowed: a finite number > 0"), 2),
        (FileNotFoundError("label directory not found: /x"), 2),
    ]
    for error, code in cases:
        monkeypatch.setattr(loop, "train_and_evaluate", raising(error))
        with pytest.raises(SystemExit) as done:
            cli_train.main(["main"])
        assert done.value.code == code, (error, done.value.code)
    monkeypatch.setattr(loop, "train_and_evaluate", raising(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli_train.main(["main"])


def test_bad_input_exits_2_in_one_line_before_any_compile(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cases = [
        (["--config.batch_sizee=4"], "did you mean --config.batch_size?"),
        (["--config.lr=-1e-4", "--config.log_every=0"], "2 invalid config fields"),
        (["--config.checkpoint_every=0"], "'checkpoint_every' = 0 is invalid"),
    ]
    for extra, expected in cases:
        done = subprocess.run(
            [sys.executable, "-m", "ecgan_jax.main", "--config=configs/synthetic.py:smoke",
             f"--workdir={tmp_path / 'w'}", *extra],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.xdist_group("train_step")
def test_readme_demo_commands_end_to_end(tmp_path):
    """Train (the demo at smoke size), generate on the exported label maps with the README's
    command, evaluate offline with the random-weight Inception."""
    from ecgan_jax.cli import evaluate, generate

    workdir = str(tmp_path / "demo")
    train_and_evaluate(demo_config(num_train_steps=2, checkpoint_every=100), workdir)
    labels = os.path.join(workdir, "examples", "labels")
    stems = sorted(os.listdir(labels))
    assert stems and os.listdir(os.path.join(workdir, "examples", "instances")) == stems
    cfg = "--config=configs/synthetic.py:smoke"
    out = str(tmp_path / "out")
    written = generate.main([cfg, f"--workdir={workdir}", f"--labels={labels}", f"--out={out}"])
    assert sorted(os.path.basename(p) for p in written) == stems
    report = evaluate.main(
        [cfg, f"--workdir={workdir}", "--fid_weights=random", f"--out={tmp_path / 'eval'}"]
    )
    assert np.isfinite(report["metrics"]["fid"])
    assert 0 <= report["metrics"]["class_colour_error"] < 2
    assert "RANDOM" in report["protocol"]["fid"]["network"]
