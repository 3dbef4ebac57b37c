"""Device mesh and shardings: data parallelism as `jit` over a 1-D `data` mesh (STYLE.md).

The batch is sharded on its leading axis over every device of every process; the train state
is replicated. SPADE's synchronized BatchNorm then needs no collective in the model code: the
batch statistics are global-batch reductions that XLA partitions itself.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named `data` over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def local_mesh(num_devices: int | None = None) -> Mesh:
    """`make_mesh` over this process's first `num_devices` devices (None or <= 0: all local)."""
    devices = jax.local_devices()
    if num_devices is not None and num_devices > 0:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices}, but only {len(devices)} are local")
        devices = devices[:num_devices]
    return make_mesh(devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """The global batch must split evenly over devices and processes."""
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if global_batch % n_dev or global_batch % n_proc:
        raise ValueError(
            f"config.batch_size={global_batch} must be a multiple of the device count "
            f"({n_dev}) and of the process count ({n_proc})"
        )


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's part of the batch into global arrays sharded on `data`.

    Non-numeric entries (file stems) stay on the host and are dropped from the device batch.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "USO":
            continue
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
