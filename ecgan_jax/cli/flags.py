"""Flags shared by the `generate` and `evaluate` commands: absl + ml_collections `config_flags`.

Every command takes its config the way `python -m ecgan_jax.main` does: `--config=FILE[:variant]`
(a `configs/*.py` file with `get_config(arg)`) and `--config.a.b=value` overrides, parsed by
`config_flags` (value types from the config's fields; tuples as `--config.x='(64, 128)'`,
booleans also as `--config.x` / `--noconfig.x`). The flags naming a checkpoint and the devices
are defined once, here (`define_checkpoint_flags`):

    --config=FILE[:variant]  --workdir=DIR  --checkpoint=STEP_OR_DIR  --raw
    --batch_size=8  --num_devices=-1  --overwrite

A command module defines its flags in `define_flags(flag_values, argv)` (calling
`define_checkpoint_flags` first) and reads them from the `FlagValues` it is handed:
* `parse(argv, define_flags)`: a fresh `absl.flags.FlagValues` with the command's flags, parsed
  from `argv`. No global flag state is touched, so a test can call `generate.main([...])` and
  `evaluate.main([...])` one after the other in one process, and importing several command
  modules (or `cli/train.py`, whose flags live in absl's global `FLAGS`) defines nothing twice.
* `run(command, define_flags, doc)`: the program entry (`python -m ecgan_jax.generate`):
  defines the flags in absl's global `FLAGS` (so `--help` lists them) and runs `app.run`;
  bad input ends the program with one line naming the flag or file (exit status 2).

Errors of flag parsing are `CommandLineError` (a ValueError) with one line: an unknown config
field names the override and the fields that exist, a missing config file its path, a bad
`:variant` the config's own message.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

from ecgan_jax import config_lib
from ecgan_jax.sharding import local_mesh

__all__ = [
    "CommandLineError",
    "batch_for_mesh",
    "checkpoint_folder",
    "config_overrides",
    "config_spec",
    "define_checkpoint_flags",
    "define_config_flag",
    "load_config",
    "mesh_and_batch",
    "parse",
    "require",
    "require_checkpoint",
    "restore_generator",
    "run",
]

DefineFn = Callable[[flags.FlagValues, "Sequence[str] | None"], None]
# Exit codes of every command (README "When something goes wrong"); `cli/train.py` adds
# EXIT_PREEMPTED and EXIT_NON_FINITE. A traceback (exit 1) means a bug.
EXIT_DONE = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2  # a flag, config field, file or value refused, in one line
EXIT_PREEMPTED = 3  # training stopped by SIGTERM after saving: rerun to resume
EXIT_NON_FINITE = 4  # a loss or the state became NaN/inf: the last good checkpoint is kept


def is_expected_error(error: BaseException) -> bool:
    """Whether `error` is a refusal of the user's input, reported in one line (exit 2), rather
    than a bug (traceback, exit 1): an OSError (a missing or unreadable file), a config or
    checkpoint refusal, or a ValueError/KeyError raised by this project's own checks."""
    from ecgan_jax.config_lib import ConfigError

    if isinstance(error, (ConfigError, OSError)):  # OSError covers CheckpointError
        return True
    if not isinstance(error, (ValueError, KeyError)):
        return False
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "/ecgan_jax/" in tb.tb_frame.f_code.co_filename


class CommandLineError(ValueError):
    """A flag is missing, unknown or has a bad value (the message names it)."""


# --------------------------------------------------------------------------- definitions


def define_config_flag(
    flag_values: flags.FlagValues,
    argv: Sequence[str] | None,
    help_string: str = "config file[:variant] of the run, e.g. configs/cityscapes.py "
    "(overrides: --config.x.y=v)",
) -> None:
    """`--config=FILE[:variant]` with `--config.x.y=v` overrides, locked as in training.

    `argv`: the command line that `flag_values` will parse (`config_flags` reads the
    overrides from it, not from the parser's argument); None: `sys.argv` at parse time.
    """
    config_flags.DEFINE_config_file(
        "config",
        None,
        help_string,
        flag_values=flag_values,
        lock_config=True,
        sys_argv=None if argv is None else list(argv),
    )


def define_checkpoint_flags(flag_values: flags.FlagValues, argv: Sequence[str] | None) -> None:
    """The flags every command that runs a generator takes (module docstring); `argv` as in
    `define_config_flag`."""
    fv = flag_values
    define_config_flag(fv, argv)
    flags.DEFINE_string(
        "workdir",
        None,
        "training workdir (its checkpoints/), or a directory made by python -m ecgan_jax.convert",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "checkpoint",
        None,
        "a step of --workdir, or a checkpoint directory (a step directory, a checkpoints/ "
        "directory, or a converted checkpoint); default: the latest step of --workdir",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "raw", False, "use the raw generator parameters, not their EMA", flag_values=fv
    )
    flags.DEFINE_integer(
        "batch_size", 8, "images per generator call", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer(
        "num_devices", -1, "local devices to shard the batch over (-1: all)", flag_values=fv
    )
    flags.DEFINE_boolean(
        "overwrite",
        False,
        "replace output files that exist already (input folders are never written to)",
        flag_values=fv,
    )


# --------------------------------------------------------------------------- parsing


def _with_program_name(argv: Sequence[str]) -> list[str]:
    # absl's convention is argv[0] = program name; a list of flags only is accepted too.
    argv = [str(a) for a in argv]
    if not argv or argv[0].startswith("-"):
        return ["ecgan_jax", *argv]
    return argv


def _config_arg(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _override_names(argv: Sequence[str]) -> list[str]:
    names = []
    for arg in argv:
        for prefix in ("--config.", "--noconfig."):
            if arg.startswith(prefix):
                names.append(arg[len(prefix) :].split("=", 1)[0])
    return names


def _unknown_field(spec: str, names: Sequence[str]) -> str | None:
    """The first override of `names` that `spec`'s config lacks, as a one-line message."""
    try:
        config = config_lib.load_config(spec)
    except Exception:  # noqa: BLE001 - only used to improve a message; the original error wins
        return None
    for name in names:
        node = config
        for i, part in enumerate(name.split(".")):
            if not hasattr(node, "keys") or part not in node.keys():
                where = ".".join(name.split(".")[:i]) or "the config"
                have = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
                return (
                    f"--config.{name}: the config has no field {name!r} (fields of {where}: {have})"
                )
            node = node[part]
    return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else str(text)


def _parse_into(fv: flags.FlagValues, argv: list[str]) -> list[str]:
    """fv(argv), with the config flag's errors turned into one-line CommandLineErrors."""
    spec = _config_arg(argv)
    if spec is not None:
        path = spec.split(":", 1)[0]
        if not os.path.isfile(path):
            raise CommandLineError(f"--config: config file not found: {path}")
    try:
        return fv(argv)
    except (AttributeError, KeyError, TypeError) as e:
        message = _unknown_field(spec, _override_names(argv)) if spec else None
        raise CommandLineError(message or f"bad config override: {e}") from e
    except flags.Error as e:
        text = str(e)
        if "Traceback" in text and spec is not None:
            raise CommandLineError(f"--config={spec}: {_last_line(text)}") from e
        if "earlier failure to load" in text and spec is not None:
            raise CommandLineError(f"--config={spec}: cannot load it: {_last_line(text)}") from e
        raise CommandLineError(text.replace("\n", " ")) from e


def parse(argv: Sequence[str], define_flags: DefineFn) -> flags.FlagValues:
    """A new FlagValues with `define_flags`' flags, parsed from `argv` (program name optional).

    Leftover positional arguments are an error.
    """
    argv = _with_program_name(argv)
    fv = flags.FlagValues()
    define_flags(fv, argv)
    rest = _parse_into(fv, argv)
    if len(rest) > 1:
        raise CommandLineError(f"unexpected arguments {rest[1:]} (flags are --name=value)")
    return fv


def require(fv: flags.FlagValues, *names: str, why: str = "") -> None:
    """CommandLineError naming the first of `names` that has no value."""
    for name in names:
        if fv[name].value in (None, ""):
            raise CommandLineError(f"--{name} is required: {fv[name].help}{why}")


# --------------------------------------------------------------------------- reading values


def config_spec(fv: flags.FlagValues) -> str:
    """The `--config` argument as given (file[:variant])."""
    return str(fv["config"].config_filename)


def config_overrides(fv: flags.FlagValues) -> dict:
    """{dotted field: value} of the `--config.x=v` overrides (JSON-ready: tuples as lists)."""
    values = config_flags.get_override_values(fv["config"])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def load_config(fv: flags.FlagValues):
    """The parsed config (overrides applied), validated by `config_lib.validate_config`."""
    require(fv, "config")
    try:
        config = fv.config
    except OSError as e:
        raise CommandLineError(f"--config={config_spec(fv)}: {_last_line(str(e))}") from e
    return config_lib.validate_config(config)


def require_checkpoint(fv: flags.FlagValues) -> None:
    """CommandLineError unless --workdir or --checkpoint names the generator."""
    if fv.workdir is None and fv.checkpoint is None:
        raise CommandLineError(
            "give --workdir (a training workdir or a converted checkpoint) and/or --checkpoint"
        )


def checkpoint_folder(fv: flags.FlagValues) -> str:
    """The folder holding --workdir / --checkpoint's generator (an input: never written to):
    a converted checkpoint itself, or the `checkpoints/` folder of a training step."""
    from ecgan_jax import inference

    require_checkpoint(fv)
    ref = inference.resolve_checkpoint(fv.workdir, fv.checkpoint)
    return ref.path if ref.kind == "converted" else os.path.dirname(ref.path)


def restore_generator(fv: flags.FlagValues, config):
    """`inference.restore_generator` of --workdir / --checkpoint / --raw."""
    from ecgan_jax import inference

    require_checkpoint(fv)
    return inference.restore_generator(
        config, workdir=fv.workdir, checkpoint=fv.checkpoint, use_ema=not fv.raw
    )


def batch_for_mesh(batch_size: int, mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh size."""
    n = mesh.devices.size
    return max(n, -(-int(batch_size) // n) * n)


def mesh_and_batch(fv: flags.FlagValues):
    """(mesh over --num_devices local devices, --batch_size rounded up to a multiple of it)."""

    mesh = local_mesh(fv.num_devices)
    return mesh, batch_for_mesh(fv.batch_size, mesh)


# --------------------------------------------------------------------------- programs


def run(command: Callable[[flags.FlagValues], object], define_flags: DefineFn, doc: str) -> None:
    """Runs `command(FLAGS)` as a program: absl's global FLAGS, `app.run`, one-line errors.

    `doc` (the command module's docstring) is what `--help` prints above the flags.
    """
    fv = flags.FLAGS
    before = set(fv)
    define_flags(fv, None)
    main_module = sys.argv[0]
    for name in sorted(set(fv) - before):
        fv.register_key_flag_for_module(main_module, fv[name])
    sys.modules["__main__"].__doc__ = doc

    def parser(argv):
        try:
            return _parse_into(fv, list(argv))
        except CommandLineError as e:
            sys.stderr.write(f"error: {e}\nPass --help to see the flags.\n")
            sys.exit(EXIT_BAD_INPUT)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
        try:
            command(fv)
        except Exception as e:
            if not is_expected_error(e):
                raise
            logging.debug("error details", exc_info=True)
            sys.stderr.write(f"error: {e}\n")
            return EXIT_BAD_INPUT
        return EXIT_DONE

    app.run(main, flags_parser=parser)
