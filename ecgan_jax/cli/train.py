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
import sys

from ecgan_jax.xla_cpu.flags import set_cpu_scheduler_flag
from ecgan_jax.xla_cpu.hostmem import limit_malloc_arenas

# Both before JAX starts: XLA reads XLA_FLAGS at backend start, glibc its arena cap before
# the first threads (ecgan_jax/xla_cpu/flags.py, hostmem.py).
set_cpu_scheduler_flag()
limit_malloc_arenas()

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


from ecgan_jax.cli.flags import (  # noqa: E402 - the exit codes of every command
    EXIT_BAD_INPUT,
    EXIT_NON_FINITE,
    EXIT_PREEMPTED,
    is_expected_error,
)


def fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ecgan_jax.training.progress import quiet_library_logs

    verbose = FLAGS.verbosity >= 1
    quiet_library_logs(verbose)
    initialize_distributed(FLAGS.distributed)
    from ecgan_jax.training.loop import NonFiniteLossError, Preempted, train_and_evaluate

    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except Preempted as e:
        logging.warning("%s", e)
        sys.exit(EXIT_PREEMPTED)
    except NonFiniteLossError as e:
        fail(str(e), EXIT_NON_FINITE)
    except Exception as e:
        if verbose or not is_expected_error(e):
            raise
        fail(str(e).strip().strip("'\""), EXIT_BAD_INPUT)


def parse_flags(argv):
    """absl's parser, with an unknown or malformed flag (`--config.batch_sizee=4`) answered in
    one line naming the nearest config fields instead of a traceback."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
        keys = [a[2:].split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        bad = None
        if "config" in FLAGS and FLAGS["config"].value is not None:
            from ecgan_jax.config_lib import get_field, nearest_fields

            for key in keys:
                try:
                    get_field(FLAGS.config, key.removeprefix("config."))
                except (KeyError, AttributeError):
                    bad = key.removeprefix("config.")
                    break
        if bad is not None:
            near = nearest_fields(FLAGS.config, bad)
            hint = f"; did you mean --config.{' or --config.'.join(near)}?" if near else ""
            fail(f"--config.{bad}: no such config field{hint}", EXIT_BAD_INPUT)
        import re

        message = str(e.args[0] if e.args else e).replace("\\n", " ")
        near = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', message)
        if near and keys:
            wrong = next((k for k in keys if k.endswith(near.group(2))), keys[0])
            right = wrong[: len(wrong) - len(near.group(2))] + near.group(1)
            fail(f"--{wrong}: no such config field; did you mean --{right}?", EXIT_BAD_INPUT)
        fail(" ".join(message.split())[:400], EXIT_BAD_INPUT)


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
