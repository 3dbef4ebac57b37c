"""Static and offline checks of the launch scripts (`launch/*.sh`); nothing here reaches GCP.

shellcheck and `bash -n` on every script; `tpu_pod.sh` run against a fake `gcloud` placed first on
PATH that records its arguments: `--help` and argument errors never call it, `--dry-run` prints
exactly the commands that a real run executes (compared call by call), and the training command
reaches every worker (`--worker=all`) with its flags intact through the remote shell's quoting.
`gpu_multinode.sh` runs under fake `srun`/`scontrol`; `tpu_worker.sh` runs its start / logs / stop
cycle locally on a small Python child that handles SIGTERM like train.py does.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"
TPU_POD = LAUNCH / "tpu_pod.sh"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))

BASE = [
    "--name=ecgan-v4",
    "--zone=us-central2-b",
    "--project=my-proj",
    "--accelerator=v4-32",
    "--spot",
    "--bucket=gs://my-bucket",
    "--config=configs/cityscapes.py",
]
LOC = "--zone=us-central2-b --project=my-proj"
WORKER = "bash ecgan_jax/launch/tpu_worker.sh"
EXPECTED_ALL = [
    f"gcloud compute tpus queued-resources create ecgan-v4 {LOC} --node-id=ecgan-v4"
    " --accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --spot",
    f"gcloud compute tpus queued-resources describe ecgan-v4 {LOC} --format='value(state.state)'",
    "gcloud compute tpus tpu-vm scp {tmp}/ecgan_jax-ecgan-v4.tar.gz ecgan-v4:ecgan_jax.tar.gz"
    f" {LOC} --worker=all",
    f"gcloud compute tpus tpu-vm ssh ecgan-v4 {LOC} --worker=all --command='rm -rf ecgan_jax"
    " && mkdir -p ecgan_jax && tar -xzf ecgan_jax.tar.gz -C ecgan_jax && rm ecgan_jax.tar.gz'",
    f"gcloud compute tpus tpu-vm ssh ecgan-v4 {LOC} --worker=all --command='{WORKER} setup'",
    f"gcloud compute tpus tpu-vm ssh ecgan-v4 {LOC} --worker=all --command='{WORKER} check'",
    f"gcloud compute tpus tpu-vm ssh ecgan-v4 {LOC} --worker=all --command='{WORKER} start"
    " --log-uri=gs://my-bucket/runs/ecgan-v4/logs -- python -m ecgan_jax.main"
    " --config=configs/cityscapes.py --workdir=gs://my-bucket/runs/ecgan-v4 --distributed=on"
    " --config.dataset.source=tfds --config.dataset.root=gs://my-bucket/tfds"
    " --config.batch_size=64'",
    f"gcloud compute tpus tpu-vm ssh ecgan-v4 {LOC} --worker=0 --command='{WORKER} logs'",
    f"gcloud compute tpus queued-resources delete ecgan-v4 {LOC} --force --quiet",
]


@pytest.fixture
def fake_env(tmp_path):
    """PATH with a recording `gcloud` first (it shadows any real one), TMPDIR in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gcloud_calls.jsonl"
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if 'describe' in sys.argv:\n"
        "    print('ACTIVE' if 'queued-resources' in sys.argv else 'READY')\n"
    )
    gcloud.chmod(0o755)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        FAKE_GCLOUD_LOG=str(calls),
        TMPDIR=str(tmp),
    )
    for key in [k for k in env if k.startswith("ECGAN_")]:
        del env[key]
    return env, calls, tmp


def _run(args, env, **kwargs):
    return subprocess.run(
        ["bash", str(TPU_POD), *args], env=env, capture_output=True, text=True, timeout=60, **kwargs
    )


def _calls(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_launch_scripts_exist():
    assert {p.name for p in SCRIPTS} >= {"tpu_pod.sh", "tpu_worker.sh", "gpu_multinode.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_help_prints_usage_and_exits_0_without_gcloud(fake_env):
    env, calls, _ = fake_env
    result = _run(["--help"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: launch/tpu_pod.sh COMMAND")
    for word in ("create", "setup", "train", "logs", "ssh", "delete", "all", "--dry-run"):
        assert word in result.stdout
    assert _calls(calls) == []


def test_no_arguments_prints_usage_and_exits_2(fake_env):
    env, calls, _ = fake_env
    result = _run([], env)
    assert result.returncode == 2
    assert "usage: launch/tpu_pod.sh" in result.stderr
    assert _calls(calls) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["frobnicate", "--name=a", "--zone=z"], "unknown command 'frobnicate'"),
        (["create", "--zone=z"], "--name is required"),
        (["create", "--name=Bad_Name", "--zone=z"], "--name 'Bad_Name'"),
        (["create", "--name=a"], "--zone is required"),
        (["create", "--name=a", "--zone=z", "--accelerator=v9x-8"], "no default runtime version"),
        (["create", "--name=a", "--zone=z", "--provisioning=fast"], "allowed: queued, direct"),
        (["train", "--name=a", "--zone=z"], "--bucket ''"),
        (
            ["train", "--name=a", "--zone=z", "--bucket=gs://b", "--config=configs/nope.py"],
            "no file configs/nope.py",
        ),
        (["train", "--name=a", "--zone=z", "--bogus"], "unknown option '--bogus'"),
        (["setup", "--name=a", "--zone=z", "--source=git"], "--source=git needs --git-url"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(fake_env, args, message):
    env, calls, _ = fake_env
    result = _run(args, env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert _calls(calls) == []


def test_dry_run_all_prints_the_exact_commands(fake_env):
    env, calls, tmp = fake_env
    result = _run(["all", "--dry-run", *BASE, "--", "--config.batch_size=64"], env)
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert commands == [c.replace("{tmp}", str(tmp)) for c in EXPECTED_ALL]
    assert _calls(calls) == []  # a dry run calls nothing


def test_dry_run_output_is_what_a_real_run_executes(fake_env):
    env, calls, tmp = fake_env
    extra = [
        "--",
        "--config.batch_size=64",
        "--config.dataset.image_size=(256, 512)",
        "--config.note=it's",
    ]
    dry = _run(["all", "--dry-run", *BASE, *extra], env)
    assert dry.returncode == 0, dry.stderr
    printed = [shlex.split(line) for line in dry.stdout.splitlines() if line.startswith("gcloud ")]
    real = _run(["all", *BASE, *extra], env)
    assert real.returncode == 0, real.stderr
    executed = [["gcloud", *argv] for argv in _calls(calls)]
    assert executed == printed
    assert (tmp / "ecgan_jax-ecgan-v4.tar.gz").stat().st_size > 0  # the packed working tree

    # The training command reaches every worker, its flags intact through the remote shell.
    train = [c for c in executed if any("tpu_worker.sh start" in a for a in c)]
    assert len(train) == 1 and "--worker=all" in train[0]
    remote = shlex.split(next(a for a in train[0] if a.startswith("--command=")).split("=", 1)[1])
    main_argv = remote[remote.index("--") + 1 :]
    assert main_argv == [
        "python",
        "-m",
        "ecgan_jax.main",
        "--config=configs/cityscapes.py",
        "--workdir=gs://my-bucket/runs/ecgan-v4",
        "--distributed=on",
        "--config.dataset.source=tfds",
        "--config.dataset.root=gs://my-bucket/tfds",
        "--config.batch_size=64",
        "--config.dataset.image_size=(256, 512)",
        "--config.note=it's",
    ]


def test_direct_provisioning_and_runtime_defaults(fake_env):
    env, calls, _ = fake_env
    common = ["--name=ecgan-v6", "--zone=us-east5-b", "--provisioning=direct", "--dry-run"]
    result = _run(["create", *common, "--accelerator=v6e-64", "--reserved"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "gcloud compute tpus tpu-vm create ecgan-v6 --zone=us-east5-b --accelerator-type=v6e-64"
        " --version=v2-alpha-tpuv6e --reserved"
    )
    result = _run(["create", *common[:3], "--accelerator=v5p-64", "--dry-run"], env)
    assert result.stdout.split()[-1] == "--version=v2-alpha-tpuv5"
    result = _run(["delete", *common], env)
    assert result.stdout.strip() == (
        "gcloud compute tpus tpu-vm delete ecgan-v6 --zone=us-east5-b --quiet"
    )
    # Without --dry-run the same call reaches (the fake) gcloud.
    result = _run(["delete", *common[:3]], env)
    assert result.returncode == 0, result.stderr
    assert _calls(calls) == [
        ["compute", "tpus", "tpu-vm", "delete", "ecgan-v6", "--zone=us-east5-b", "--quiet"]
    ]


def test_tfds_overrides_can_be_dropped(fake_env):
    env, _, _ = fake_env
    result = _run(
        [
            "train",
            "--dry-run",
            "--name=a",
            "--zone=z",
            "--bucket=gs://b",
            "--config=configs/synthetic.py",
            "--tfds-data-dir=none",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    assert "--worker=all" in result.stdout
    assert "dataset.source" not in result.stdout and "--workdir=gs://b/runs/a " in result.stdout


def _fake_slurm_bin(tmp_path, tasks_per_node):
    bin_dir = tmp_path / "slurm_bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-node-07\\ngpu-node-08\\n'\n")
    # srun: the command once per task, with the per-task variables SLURM would set.
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\n"
        'while [[ "$1" == --* ]]; do shift; done\n'
        "for ((i = 0; i < SLURM_NTASKS; i++)); do\n"
        f"  SLURM_PROCID=$i SLURM_LOCALID=$((i % {tasks_per_node}))"
        f" SLURM_STEP_TASKS_PER_NODE='{tasks_per_node}(x2)' \"$@\"\n"
        "done\n"
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    "tasks_per_node, visible, local_ids", [(1, "0,1,2,3,4,5,6,7", "0,1,2,3,4,5,6,7"), (8, "5", "0")]
)
def test_gpu_multinode_exports_the_process_layout(tmp_path, tasks_per_node, visible, local_ids):
    bin_dir = _fake_slurm_bin(tmp_path, tasks_per_node)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ECGAN_", "JAX_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        SLURM_JOB_ID="12345",
        SLURM_JOB_NODELIST="gpu-node-[07-08]",
        SLURM_NTASKS=str(2 * tasks_per_node),
        SLURM_SUBMIT_DIR=str(ROOT),
        CUDA_VISIBLE_DEVICES=visible,
        ECGAN_DRY_RUN="1",
    )
    result = subprocess.run(
        [
            "bash",
            str(LAUNCH / "gpu_multinode.sh"),
            "--config=configs/cityscapes.py",
            "--workdir=/shared/runs/cs",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    tasks = [line for line in result.stdout.splitlines() if line.startswith("task ")]
    n = 2 * tasks_per_node
    assert len(tasks) == n
    port = 61440 + 12345 % 4096  # JAX's own SLURM rule
    for i, line in enumerate(tasks):
        assert line.startswith(f"task {i}/{n} ")
        assert f"coordinator=gpu-node-07:{port} JAX_LOCAL_DEVICE_IDS={local_ids}:" in line
        assert line.endswith(
            "python -m ecgan_jax.main --config=configs/cityscapes.py --workdir=/shared/runs/cs"
        )


def test_gpu_multinode_outside_slurm_fails_clearly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(
        ["bash", str(LAUNCH / "gpu_multinode.sh"), "--config=x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "not inside a SLURM job" in result.stderr
    result = subprocess.run(
        ["bash", str(LAUNCH / "gpu_multinode.sh"), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "ONE PROCESS PER NODE" in result.stdout


@pytest.mark.skipif(
    shutil.which("setsid") is None or sys.platform != "linux",
    reason="tpu_worker.sh targets the TPU VMs' Linux userland (setsid, GNU tail)",
)
def test_tpu_worker_start_logs_stop_cycle(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    (venv / "bin" / "python").symlink_to(sys.executable)
    run_dir = tmp_path / "run"
    env = dict(os.environ, ECGAN_VENV_DIR=str(venv), ECGAN_RUN_DIR=str(run_dir))
    worker = ["bash", str(LAUNCH / "tpu_worker.sh")]

    def call(*args, timeout=30):
        return subprocess.run(
            [*worker, *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    child = (
        "import signal, sys, time\n"
        "def on_term(*_):\n"
        "    print('checkpoint saved', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "print('training', flush=True)\n"
        "time.sleep(60)\n"
    )
    assert "no run started" in call("status").stdout
    started = call("start", "--", sys.executable, "-c", child)
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.time() + 20
        while "training" not in (run_dir / "train.log").read_text():
            assert time.time() < deadline, (run_dir / "train.log").read_text()
            time.sleep(0.1)
        assert "running" in call("status").stdout
        assert call("start", "--", "true").returncode != 0  # one run at a time
        assert "sent SIGTERM" in call("stop").stdout
        logs = call("logs", "5")  # follows until the run has ended
        assert logs.returncode == 0, logs.stderr
        assert "checkpoint saved" in logs.stdout and "finished, exit code 0" in logs.stdout
        assert (run_dir / "exit_code").read_text().strip() == "0"
    finally:
        pid_file = run_dir / "pid"
        if "running" in call("status").stdout and pid_file.exists():
            os.kill(int(pid_file.read_text()), 9)
