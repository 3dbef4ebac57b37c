"""Converter from the authors' PyTorch checkpoints to Flax variables (docs/DESIGN.md §2.6, §3, §6).

    python -m ecgan_jax.convert --config=configs/cityscapes.py \
        --generator=checkpoints/cityscapes/latest_net_G.pth \
        [--discriminator=checkpoints/cityscapes/latest_net_D.pth] --out=converted/cityscapes

Library use: `torch_generator_to_flax(state_dict, config)` and
`torch_discriminator_to_flax(state_dict, config)` take a dict of numpy arrays in the authors'
key layout (no `module.` prefix) and return Flax variables {params, batch_stats, spectral}:
* conv weights OIHW -> HWIO; spectral norm's `weight_orig` becomes the raw `kernel` and
  `weight_u`/`weight_v` the stored `spectral` u/v, so eval mode (σ = uᵀWv, no iteration) equals
  PyTorch's eval mode and training continues PyTorch's power iteration;
* SyncBN `running_mean`/`running_var` become `batch_stats` mean/var;
* the unused `fc1` and every `num_batches_tracked` are dropped.
A missing, unexpected or wrongly shaped key is an error listing the keys. `.pth` files are read
with `torch.load(weights_only=True)` and `.npz` with `allow_pickle=False`: a checkpoint from the
internet cannot run code. The CLI writes an orbax checkpoint that `load_converted` reads; it never
replaces an existing --out unless told to (`--overwrite`), and then only a checkpoint it wrote
(`check_output`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax import config_lib

_DROPPED = re.compile(r"(^fc1\.(weight|bias)$)|(\.num_batches_tracked$)")


def _abstract_variables(module, inputs):
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))


def _generator_inputs(config):
    h, w = (int(v) for v in config.dataset.image_size)
    return (jnp.zeros((1, h, w, config_lib.semantic_nc(config)), jnp.float32),)


def _discriminator_inputs(config):
    h, w = (int(v) for v in config.dataset.image_size)
    s = config_lib.semantic_nc(config)
    return (jnp.zeros((1, h, w, s), jnp.float32), jnp.zeros((1, h, w, 3), jnp.float32))


def _torch_key(collection: str, path: tuple[str, ...], spectral_layers: set, is_disc: bool):
    """(torch key, kind) of a Flax leaf; kind in {conv, copy}."""
    *mods, leaf = path
    mods = list(mods)
    if mods and mods[-1] == "mlp_shared":
        mods[-1] = "mlp_shared.0"
    module = ".".join(mods)
    if is_disc and mods and re.fullmatch(r"model\d+", mods[-1]):
        module += ".0.0" if tuple(path[:-1]) in spectral_layers else ".0"
    if collection == "batch_stats":
        return f"{module}.running_{leaf}", "copy"
    if collection == "spectral":
        return f"{module}.weight_{leaf}", "copy"
    if leaf == "kernel":
        suffix = "weight_orig" if tuple(path[:-1]) in spectral_layers else "weight"
        return f"{module}.{suffix}", "conv"
    return f"{module}.{leaf}", "copy"


def _convert(state_dict, abstract, what: str, is_disc: bool):
    state = {k: np.asarray(v) for k, v in state_dict.items()}
    # Strip a DataParallel "module." prefix before dropping fc1 (its pattern is anchored).
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not _DROPPED.search(k)}
    spectral_layers = {
        tuple(p.key for p in path[:-1])
        for path, _ in jax.tree_util.tree_leaves_with_path(abstract.get("spectral", {}))
    }
    # PyTorch < 1.1 checkpoints have no weight_v: derive v = normalize(Wᵀu), documented.
    for layer in spectral_layers:
        key_u, _ = _torch_key("spectral", (*layer, "u"), spectral_layers, is_disc)
        key_v = key_u[: -len("weight_u")] + "weight_v"
        key_w = key_u[: -len("weight_u")] + "weight_orig"
        if key_u in state and key_w in state and key_v not in state:
            w_mat = state[key_w].reshape(state[key_w].shape[0], -1)
            v = w_mat.T @ state[key_u]
            state[key_v] = (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)

    used, missing, bad_shape = set(), [], []

    def convert_leaf(collection, path, leaf):
        names = tuple(p.key for p in path)
        key, kind = _torch_key(collection, names, spectral_layers, is_disc)
        if key not in state:
            missing.append(key)
            return np.zeros(leaf.shape, np.float32)
        value = state[key].astype(np.float32)
        used.add(key)
        if kind == "conv":
            if value.ndim != 4:
                bad_shape.append(f"{key}: {value.shape}, expected OIHW for HWIO {leaf.shape}")
                return np.zeros(leaf.shape, np.float32)
            value = value.transpose(2, 3, 1, 0)
        if value.shape != tuple(leaf.shape):
            bad_shape.append(f"{key}: {value.shape}, expected {tuple(leaf.shape)}")
            return np.zeros(leaf.shape, np.float32)
        return value

    out = {}
    for collection, tree in abstract.items():
        out[collection] = jax.tree_util.tree_map_with_path(
            lambda p, x, c=collection: convert_leaf(c, p, x), tree
        )
    unexpected = sorted(set(state) - used)
    if missing or unexpected or bad_shape:
        lines = [f"{what} state dict does not match the config's model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(sorted(missing))}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if bad_shape:
            lines.append(f"  wrong shapes ({len(bad_shape)}): {'; '.join(bad_shape)}")
        raise ValueError("\n".join(lines))
    return jax.tree_util.tree_map(jnp.asarray, out)


def torch_generator_to_flax(state_dict, config):
    """Flax variables of `build_generator(config)` from the authors' G state dict (numpy)."""
    from ecgan_jax.models import build_generator

    abstract = _abstract_variables(build_generator(config), _generator_inputs(config))
    return _convert(state_dict, abstract, "generator", is_disc=False)


def torch_discriminator_to_flax(state_dict, config):
    """Flax variables of `build_discriminator(config)` from the authors' D state dict (numpy)."""
    from ecgan_jax.models import build_discriminator

    abstract = _abstract_variables(build_discriminator(config), _discriminator_inputs(config))
    return _convert(state_dict, abstract, "discriminator", is_disc=True)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a `.pth` (torch, weights_only) or `.npz` (allow_pickle=False) state dict."""
    from ecgan_jax.interop.state_dict import read_state_dict as read

    return read(path)


MARKER = "ecgan_convert.json"
_WRITER = "python -m ecgan_jax.convert"


def _files_under(path: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files
    )


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def check_output(out_dir: str, *, overwrite: bool = False, inputs=()) -> None:
    """Raises FileExistsError (one line) unless `save_converted` may write `out_dir`.

    A path that does not exist may be written. An existing one only with `overwrite`, and even
    then only when it is a directory that `save_converted` wrote (its `ecgan_convert.json` lists
    every file there and nothing else is there) and holds none of `inputs` (the .pth/.npz and
    config files being converted): another folder is never deleted.
    """
    path = os.path.abspath(out_dir)
    if not os.path.lexists(path):
        return
    keep = "choose another --out"
    if not overwrite:
        raise FileExistsError(
            f"--out {path} already exists; {keep}, or pass --overwrite to replace a converted "
            f"checkpoint that {_WRITER} wrote there"
        )
    refuse = f"not replacing it even with --overwrite; {keep}"
    if os.path.islink(path) or not os.path.isdir(path):
        kind = "a symbolic link" if os.path.islink(path) else "a file"
        raise FileExistsError(f"--out {path} is {kind}, not a converted checkpoint: {refuse}")
    held = [str(p) for p in inputs if p and _inside(str(p), path)]
    if held:
        raise FileExistsError(f"--out {path} holds the input(s) {', '.join(held)}: {refuse}")
    try:
        with open(os.path.join(path, MARKER)) as f:
            marker = json.load(f)
        written = set(marker["files"]) if marker.get("written_by") == _WRITER else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        written = None
    if written is None:
        raise FileExistsError(
            f"--out {path} is not a checkpoint written by {_WRITER} (no valid {MARKER}): {refuse}"
        )
    extra = [f for f in _files_under(path) if f != MARKER and f not in written]
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise FileExistsError(
            f"--out {path} holds files that {_WRITER} did not write ({', '.join(extra[:3])}"
            f"{more}): {refuse}"
        )


def save_converted(
    out_dir: str, generator=None, discriminator=None, *, overwrite: bool = False, inputs=()
) -> str:
    """Writes {'generator': vars, 'discriminator': vars} as an orbax checkpoint at out_dir.

    The checkpoint is written in a temporary sibling directory and renamed into place, so
    out_dir never holds half a checkpoint; an existing out_dir is replaced only as
    `check_output` allows (`overwrite`, `inputs`), else FileExistsError and nothing is touched.
    `ecgan_convert.json` in the checkpoint lists its files, which is what lets a later
    `overwrite` tell this command's output from any other folder. Returns the absolute path.
    """
    import orbax.checkpoint as ocp

    tree = {}
    if generator is not None:
        tree["generator"] = generator
    if discriminator is not None:
        tree["discriminator"] = discriminator
    path = os.path.abspath(out_dir)
    check_output(path, overwrite=overwrite, inputs=inputs)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.converting-", dir=parent)
    new, old = os.path.join(staging, "checkpoint"), os.path.join(staging, "previous")
    moved = False
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(new, tree)
        marker = {
            "written_by": _WRITER,
            "items": sorted(tree),
            "inputs": [os.path.abspath(str(p)) for p in inputs if p],
            "files": _files_under(new),
        }
        with open(os.path.join(new, MARKER), "w") as f:
            json.dump(marker, f, indent=1)
        if os.path.lexists(path):
            check_output(path, overwrite=overwrite, inputs=inputs)  # it may have changed
            os.rename(path, old)
            moved = True
        os.rename(new, path)  # fails on a non-empty directory that appeared meanwhile
        moved = False
    finally:
        if moved:
            os.rename(old, path)
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_converted(out_dir: str) -> dict:
    """Reads a checkpoint written by `save_converted` (numpy leaves)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(out_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"converted checkpoint {path} not found; make it with python -m ecgan_jax.convert"
        )
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path)
