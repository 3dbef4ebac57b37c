"""One process of the two-process training test (tests/test_multiprocess.py), and its helpers.

    ECGAN_COORDINATOR_ADDRESS=127.0.0.1:PORT ECGAN_NUM_PROCESSES=2 ECGAN_PROCESS_ID=i \\
    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
    python tests/multiprocess_worker.py WORKDIR OUT.npz

Calls `ecgan_jax.main.initialize_distributed("auto")`, trains `multiprocess_config()` for two
steps in WORKDIR (shared by the processes, as a GCS workdir on a pod), then writes OUT.npz:
the final state's leaves (`state/<path>`), the scalars of every step (`metric/<step>/<name>`),
and the process index and count. The test reproduces the run in one process with
`interleaved_train_iterator`, which gives it the same global batches.
"""

from __future__ import annotations

import os
import sys

import numpy as np

STEPS = 2


def multiprocess_config():
    """tests/train_configs.py's config on 4 devices, global batch 4, for STEPS steps."""
    from train_configs import demo_config

    return demo_config(batch_size=4, num_devices=4, checkpoint_every=100, num_train_steps=STEPS)


def record_scalars(monkeypatch_setattr):
    """Wraps the loop's summary writer so every `write_scalars` is also kept in the returned
    dict."""
    from ecgan_jax.training import loop

    recorded: dict[int, dict[str, float]] = {}
    create = loop._writer

    class Recording:
        def __init__(self, writer):
            self._writer = writer

        def write_scalars(self, step, scalars):
            recorded.setdefault(int(step), {}).update({k: float(v) for k, v in scalars.items()})
            self._writer.write_scalars(step, scalars)

        def __getattr__(self, name):
            return getattr(self._writer, name)

    monkeypatch_setattr(loop, "_writer", lambda *a, **k: Recording(create(*a, **k)))
    return recorded


class interleaved_train_iterator:  # noqa: N801 (used like the factory it replaces)
    """The global batches of an n-process run, in one process.

    Process p's iterator (`make_train_iterator(config, process_index=p, process_count=n)`)
    gives rows p·b ... (p+1)·b - 1 of the global batch (`jax.make_array_from_process_local_data`
    lays processes out in `jax.devices()` order), so the concatenation is that global batch.
    """

    def __init__(self, config, process_count: int):
        from ecgan_jax.data import pipeline  # not `ecgan_jax.data`: the test patches that

        self.its = [
            pipeline.make_train_iterator(config, process_index=p, process_count=process_count)
            for p in range(process_count)
        ]
        self.num_examples = self.its[0].num_examples

    def __iter__(self):
        return self

    def __next__(self):
        parts = [next(it) for it in self.its]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self):
        return {str(p): it.get_state() for p, it in enumerate(self.its)}

    def set_state(self, state):
        for p, it in enumerate(self.its):
            it.set_state(state[str(p)])


def state_arrays(state) -> dict[str, np.ndarray]:
    """{'state/<path>': numpy value} of every leaf (replicated, so a local copy is the value)."""
    import jax

    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        out["state/" + jax.tree_util.keystr(path)] = np.asarray(leaf.addressable_data(0))
    return out


def metric_arrays(recorded) -> dict[str, np.ndarray]:
    return {
        f"metric/{step}/{name}": np.float64(value)
        for step, values in recorded.items()
        for name, value in values.items()
        # Losses and norms; not timings, nor clu's ReportProgress figures (process 0 only).
        if "/" in name and not name.startswith("perf/")
    }


def main(workdir: str, out: str) -> None:
    import jax

    # The settings of tests/conftest.py, so that both runs compile the same way.
    jax.config.update("jax_disable_most_optimizations", True)
    from ecgan_jax.cli.train import initialize_distributed

    initialize_distributed("auto")
    assert jax.process_count() == 2 and jax.device_count() == 4, (
        jax.process_count(),
        jax.devices(),
    )
    recorded = record_scalars(setattr)
    from ecgan_jax.training.loop import train_and_evaluate

    state = train_and_evaluate(multiprocess_config(), workdir)
    arrays = {**state_arrays(state), **metric_arrays(recorded)}
    arrays["process_index"] = np.int64(jax.process_index())
    arrays["process_count"] = np.int64(jax.process_count())
    np.savez(out, **arrays)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(*sys.argv[1:])
