"""Entry point: `python -m ecgan_jax.main --config=configs/cityscapes.py --workdir=DIR`.

Config overrides: `--config.batch_size=8 --config.dataset.root=/data/cityscapes`. A thin shim
over `ecgan_jax.training.train_and_evaluate`. Multi-process runs (TPU pods, SLURM, or explicit
ECGAN_COORDINATOR_ADDRESS / ECGAN_NUM_PROCESSES / ECGAN_PROCESS_ID) call
`jax.distributed.initialize()` first; a single process on a laptop does not. A launch with one
process per node that drives only some of the node's devices (SLURM) names them in
ECGAN_LOCAL_DEVICE_IDS (comma list, e.g. `0,1,2,3`), passed on as `local_device_ids`.
"""

from __future__ import annotations

import os

# XLA:CPU's default instruction scheduler favours running independent ops concurrently and
# keeps more buffers alive; the memory-minimising one lowered the full Cityscapes step's peak
# RSS from 7.27 to 5.93 GB at the same step time (BENCHMARKS.md). XLA reads this flag only from
# XLA_FLAGS at backend start (a per-jit compiler option is accepted but has no effect), so it
# is set here, before JAX is imported; an explicit setting in XLA_FLAGS wins. GPU/TPU ignore it.
CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def set_cpu_scheduler_flag(environ=os.environ) -> None:
    """Adds CPU_SCHEDULER_FLAG to environ["XLA_FLAGS"] unless the flag is already there."""
    flags_now = environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags_now:
        environ["XLA_FLAGS"] = f"{flags_now} {CPU_SCHEDULER_FLAG}".strip()


set_cpu_scheduler_flag()

from ecgan_jax.xla_cpu.hostmem import limit_malloc_arenas  # noqa: E402

limit_malloc_arenas()  # before JAX starts its thread pools (ecgan_jax/xla_cpu/hostmem.py)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file[:variant].", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (or gs:// path) for checkpoints and logs.")
flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "jax.distributed.initialize(): auto = when a multi-process launch is detected.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _multiprocess_env() -> bool:
    if os.environ.get("ECGAN_COORDINATOR_ADDRESS"):
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def _local_device_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0:
        raise ValueError(
            f"ECGAN_LOCAL_DEVICE_IDS={text!r}: expected a comma list of device ids >= 0, "
            "e.g. '0,1,2,3'"
        )
    return ids


def initialize_distributed(mode: str = "auto") -> None:
    """Calls jax.distributed.initialize() when running multi-process (guarded for laptops)."""
    import jax

    if mode == "off" or (mode == "auto" and not _multiprocess_env()):
        return
    kwargs = {}
    if os.environ.get("ECGAN_COORDINATOR_ADDRESS"):
        kwargs = dict(
            coordinator_address=os.environ["ECGAN_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["ECGAN_NUM_PROCESSES"]),
            process_id=int(os.environ["ECGAN_PROCESS_ID"]),
        )
    if os.environ.get("ECGAN_LOCAL_DEVICE_IDS"):
        kwargs["local_device_ids"] = _local_device_ids(os.environ["ECGAN_LOCAL_DEVICE_IDS"])
    if os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    initialize_distributed(FLAGS.distributed)
    from ecgan_jax.training.loop import train_and_evaluate

    train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
