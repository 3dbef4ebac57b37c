"""Orbax checkpoints of the train state and the input iterator (resume is exact).

`Checkpointer(workdir, every=..., keep=...)` wraps an `ocp.CheckpointManager` over
`<workdir>/checkpoints` with two items: `state` (the `TrainState` pytree, restored straight into
its target shardings) and `data` (the input iterator's state as JSON). Saves are asynchronous;
every process takes part in a save (orbax coordinates them); `save(..., force=True)` writes
off-interval (preemption, end of training).
"""

from __future__ import annotations

import base64
import logging
import os

import jax
import orbax.checkpoint as ocp


def _encode_data_state(data_state):
    if isinstance(data_state, bytes):
        return {"__bytes__": base64.b64encode(data_state).decode("ascii")}
    return data_state


def _decode_data_state(data_state):
    if isinstance(data_state, dict) and set(data_state) == {"__bytes__"}:
        return base64.b64decode(data_state["__bytes__"])
    return data_state


class Checkpointer:
    """Interval / keep-N checkpoints of {state, data} in `<workdir>/<subdir>` (`checkpoints`;
    the periodic FID keeps its best one in `best`, same layout)."""

    def __init__(
        self,
        workdir: str,
        *,
        every: int,
        keep: int,
        async_save: bool = True,
        subdir: str = "checkpoints",
    ):
        directory = workdir if "://" in workdir else os.path.abspath(workdir)
        self.directory = os.path.join(directory, subdir)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(int(every), 1),
            max_to_keep=int(keep) if int(keep) > 0 else None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state=None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        items["data"] = ocp.args.JsonSave(_encode_data_state(data_state or {}))
        return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state, step: int | None = None):
        """(state, data_state) at `step` (default latest), placed as `abstract_state` says.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings (e.g. from
        `jax.eval_shape` plus the mesh's replicated sharding).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], _decode_data_state(restored["data"])

    def restore_latest_intact(self, abstract_state):
        """(state, data_state, step) of the newest checkpoint that reads back.

        A checkpoint that cannot be read (a truncated or missing file, bad JSON) is reported
        in one log line naming its step and the error, and the next older one is tried.
        Raises `CheckpointError` listing every step when none can be read.
        """
        failures = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, data_state = self.restore(abstract_state, step)
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
                reason = _first_line(e)
                failures.append(f"step {step}: {reason}")
                logging.warning(
                    "checkpoint %s/%d cannot be read (%s); trying an older one",
                    self.directory, step, reason,
                )  # fmt: skip
                continue
            if failures:
                logging.warning("resuming from step %d instead of %s", step, failures[0])
            return state, data_state, step
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be read: " + "; ".join(failures)
        )

    def delete(self, step: int) -> None:
        self.manager.delete(int(step))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class CheckpointError(OSError):
    """No checkpoint of a run can be read back."""


def _first_line(error: Exception, limit: int = 300) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def abstract_with_shardings(tree, sharding):
    """ShapeDtypeStructs of `tree` (arrays or abstract values) carrying `sharding`."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
    )
