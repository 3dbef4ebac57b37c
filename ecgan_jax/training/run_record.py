"""What a training run started with, kept in `<workdir>/run.json` for the runs that resume it.

A resumed run is checked against the record before anything is compiled: fields that change
the shapes of the saved state (widths, classes, heads, EMA on/off) must match, and the first
differing ones are named; and the learning-rate schedule stays the one the run started with
unless `extend_schedule` asks for a new end (`Schedule`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from ecgan_jax import config_lib

RECORD = "run.json"

# Fields whose change makes the saved state unreadable (or silently a different model).
STATE_FIELDS = (
    "dataset.label_nc",
    "dataset.contain_dontcare_label",
    "dataset.no_instance",
    "model.ngf",
    "model.ndf",
    "model.num_upsampling_layers",
    "model.spade_hidden",
    "model.num_D",
    "model.n_layers_D",
    "contrastive.enabled",
    "contrastive.layers",
    "contrastive.dim",
    "contrastive.pixel_bank_size",
    "contrastive.region_bank_size",
)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Constant lr for `const_steps`, then linear decay to 0 over `decay_steps`; with
    `extend_from` (a step), the value reached there decays linearly to 0 at `total` instead."""

    total: int
    const_steps: int
    decay_steps: int
    extend_from: int | None = None
    original_total: int | None = None

    def describe(self) -> str:
        if self.extend_from is None:
            return (
                f"lr constant for {self.const_steps} steps, then linear decay to 0 at step "
                f"{self.const_steps + self.decay_steps}"
            )
        return (
            f"lr of the run's schedule (ending at step {self.original_total}) up to step "
            f"{self.extend_from}, then linear decay from there to 0 at step {self.total}"
        )


def schedule_of(config, total: int) -> Schedule:
    """The schedule of `config` over `total` steps (docs/DESIGN.md §4.1, §D.4): the decay
    takes the niter_decay share of the steps."""
    n_const, n_decay = int(config.niter), int(config.niter_decay)
    decay = round(total * n_decay / max(n_const + n_decay, 1))
    return Schedule(total=total, const_steps=total - decay, decay_steps=decay)


def _differing(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict, fields) -> list:
    out = []
    for field in fields:
        try:
            va, vb = config_lib.get_field(a, field), config_lib.get_field(b, field)
        except (KeyError, AttributeError):
            continue
        if isinstance(va, (list, tuple)) or isinstance(vb, (list, tuple)):
            va, vb = list(va), list(vb)
        if va != vb:
            out.append((field, va, vb))
    return out


def read(workdir: str) -> dict | None:
    """The record of the run in `workdir`, or None (a new run, or one from before records)."""
    path = os.path.join(workdir, RECORD)
    if "://" in workdir or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        record["config"] = ml_collections.ConfigDict(json.loads(record["config"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise config_lib.ConfigError(
            f"{path} is unreadable ({type(e).__name__}: {e}); it records the config the run "
            "started with: restore it from a backup, or move it away to resume without checks"
        ) from None
    return record


def write(workdir: str, config, *, dataset_size: int, total_steps: int) -> None:
    """Writes the record of a new run (atomically: a temporary file, then a rename)."""
    if "://" in workdir:
        return
    path = os.path.join(workdir, RECORD)
    record = {
        "config": config.to_json_best_effort(sort_keys=True),
        "dataset_size": int(dataset_size),
        "total_steps": int(total_steps),
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


def check_resumable(record: dict, config, workdir: str) -> None:
    """Raises ConfigError naming the state-shaping fields where `config` differs from the run."""
    diff = _differing(record["config"], config, STATE_FIELDS)
    ema = (float(record["config"].ema_decay) > 0, float(config.ema_decay) > 0)
    if ema[0] != ema[1]:
        diff.append(("ema_decay", record["config"].ema_decay, config.ema_decay))
    if diff:
        lines = [f"'{f}': run {a!r}, now {b!r}" for f, a, b in diff]
        raise config_lib.ConfigError(
            f"the config does not match the run in {workdir} (recorded in "
            f"{os.path.join(workdir, RECORD)}), whose checkpoints hold another model; "
            "differing fields: " + "; ".join(lines) + ". Use the run's values, or a new --workdir"
        )


def resumed_schedule(record: dict | None, config, total: int, start: int) -> Schedule:
    """The schedule of a run resumed at `start` with `config` (or a new run: record None).

    Without `config.extend_schedule` it is the schedule the run started with, whatever the
    new step count (past its end the lr stays 0); with it, the lr reached at `start` decays
    linearly to 0 at the new end `total`.
    """
    if record is None or start == 0:
        return schedule_of(config, total)
    first = schedule_of(record["config"], int(record["total_steps"]))
    if int(record["total_steps"]) == total or not bool(config.extend_schedule):
        return first
    return dataclasses.replace(first, total=total, extend_from=start, original_total=first.total)
