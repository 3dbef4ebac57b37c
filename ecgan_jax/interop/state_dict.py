"""PyTorch state dicts to Flax variables, and the converted `.npz` weights files (§D.5).

Shared by the InceptionV3 (`inception.py`) and DRN (`drn.py`) converters:

* `read_state_dict(path)`: a `.pth` read with `torch.load(map_location="cpu",
  weights_only=True)` (torch is imported only here, with a clear message when missing) or an
  `.npz` read with `allow_pickle=False`; a checkpoint from the internet cannot run code.
  A `{"state_dict": ...}` wrapper and a `module.` (DataParallel) prefix are removed.
* `convert_state_dict(...)`: walks the Flax model's abstract variables, asks the model file
  for the PyTorch key of each leaf and converts it (conv OIHW -> HWIO, transposed depthwise
  conv: flipped too). A missing, unexpected or wrongly shaped key is an error listing them.
* `write_npz(path, arrays)` / `read_npz(path, how_to_make)`: every `.npz` this project writes
  goes to a temporary sibling and is renamed into place (never half a file at `path`); a
  damaged one is a one-line error naming the file and the command that makes it.
* `save_variables(path, variables, fmt)` / `load_variables(path, abstract, fmt, how_to_make)`:
  the converted file is an `.npz` of float32 arrays named `collection/module/.../leaf`
  (e.g. `params/Conv2d_1a_3x3/conv/kernel`, `batch_stats/Conv2d_1a_3x3/bn/mean`) plus a
  string entry `_format` naming the network, so the wrong file is refused.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections.abc import Callable

import jax
import numpy as np

# kind of a leaf: how a PyTorch tensor becomes the Flax leaf.
CONV = "conv"  # OIHW -> HWIO
DECONV = "deconv"  # ConvTranspose2d (in, out/groups, kh, kw), depthwise: flip, -> HWIO
COPY = "copy"

FORMAT_KEY = "_format"
_MAX_LISTED = 25


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict from `.pth`/`.pt` (torch) or `.npz` into numpy arrays."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"state dict file not found: {path}")
    if path.endswith(".npz"):
        sd = read_npz(path, "numpy.savez(FILE.npz, **state_dict) from the PyTorch state dict")
    else:
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"reading {path} needs PyTorch (a CPU build is enough: pip install torch); "
                "or save the state dict as .npz (numpy arrays under the same key names)"
            ) from e
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
            # A truncated or damaged .pth; refused pickled objects (UnpicklingError) propagate.
            raise ValueError(
                f"cannot read {path} ({type(e).__name__}: {_first_line(e)}): the file is "
                "damaged or not a PyTorch checkpoint; download or save it again"
            ) from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
        sd = {k: v.detach().cpu().numpy() for k, v in sd.items() if hasattr(v, "detach")}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


# Flax (collection, leaf) -> (PyTorch leaf, conversion) of a conv + BatchNorm network: the one
# key table of the evaluation networks' converters (DRN, InceptionV3, UperNet, DeepLab).
CONV_BN_LEAVES = {
    ("params", "kernel"): ("weight", CONV),
    ("params", "scale"): ("weight", COPY),
    ("params", "bias"): ("bias", COPY),
    ("batch_stats", "mean"): ("running_mean", COPY),
    ("batch_stats", "var"): ("running_var", COPY),
}


def torch_shape(kind: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the PyTorch tensor that becomes a Flax leaf of `flax_shape`."""
    if kind in (CONV, DECONV):  # depthwise DECONV: torch (C, 1, kh, kw) <-> HWIO (kh, kw, 1, C)
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    return tuple(flax_shape)


def to_flax(kind: str, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if kind == CONV:
        return value.transpose(2, 3, 1, 0)
    if kind == DECONV:
        # A transposed conv is a conv of the stride-dilated input with the flipped kernel.
        # Depthwise (groups = channels): torch (C, 1, kh, kw) -> HWIO (kh, kw, 1, C).
        return value[:, :, ::-1, ::-1].transpose(2, 3, 1, 0)
    return value


def _flatten(tree) -> dict[tuple[str, ...], object]:
    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        flat[tuple(str(p.key) for p in path)] = leaf
    return flat


def _unflatten(flat: dict[tuple[str, ...], np.ndarray]) -> dict:
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = leaf
    return out


def _listing(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    lines = [f"  {title} ({len(items)}):"]
    lines += [f"    {x}" for x in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
    return lines


def convert_state_dict(
    state_dict: dict[str, np.ndarray],
    abstract_variables,
    torch_key: Callable[[str, tuple[str, ...]], tuple[str, str]],
    *,
    dropped: re.Pattern,
    source: str,
) -> dict:
    """Flax variables (nested dicts of float32 numpy arrays) from a PyTorch state dict.

    `abstract_variables`: `jax.eval_shape` of the model's init (collections `params`,
    `batch_stats`). `torch_key(collection, path) -> (key, kind)` names the PyTorch tensor of
    each Flax leaf. Keys matching `dropped` are ignored. `source` names the file in errors.
    """
    expected = {}
    for (collection, *path), leaf in _flatten(abstract_variables).items():
        key, kind = torch_key(collection, tuple(path))
        expected[key] = ((collection, *path), kind, torch_shape(kind, leaf.shape))
    _check_layout(
        f"{source}: the state dict does not match the network",
        expected={k: v[2] for k, v in expected.items()},
        got={k: tuple(np.shape(v)) for k, v in state_dict.items() if not dropped.search(k)},
        noun=" keys",
    )
    flat = {path: to_flax(kind, state_dict[k]) for k, (path, kind, _) in expected.items()}
    return _unflatten(flat)


def _check_layout(header: str, *, expected: dict, got: dict, noun: str) -> None:
    """Raises one ValueError listing missing, unexpected and mis-shaped keys (name -> shape)."""
    missing = sorted(k for k in expected if k not in got)
    unexpected = sorted(k for k in got if k not in expected)
    wrong = sorted(
        f"{k}: got {got[k]}, expected {expected[k]}"
        for k in expected
        if k in got and tuple(got[k]) != tuple(expected[k])
    )
    if missing or unexpected or wrong:
        lines = [header]
        lines += _listing(f"missing{noun}", missing)
        lines += _listing(f"unexpected{noun}", unexpected)
        lines += _listing("wrong shapes", wrong)
        raise ValueError("\n".join(lines))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Writes `arrays` as an uncompressed `.npz` at `path`, whole or not at all.

    The data go to a temporary file in the same folder (`.<name>.tmp-<pid>`), are flushed to
    disk and renamed over `path` (os.replace, atomic on one file system): a full disk or a
    killed process leaves the previous file, or no file, at `path`, never a truncated one.
    The folder is created if needed.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:  # an explicit handle: np.savez would append ".npz"
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        message = (
            f"cannot write {path} ({e.strerror or e}); nothing was written there and a "
            "previous file at that path is unchanged"
        )
        raise (OSError(e.errno, message) if e.errno else OSError(message)) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_npz(path: str | os.PathLike, how_to_make: str) -> dict[str, np.ndarray]:
    """Every array of an `.npz` (allow_pickle=False), read whole.

    A missing file is FileNotFoundError; a damaged one (cut short, bad CRC, not a zip) or one
    holding pickled objects is a one-line ValueError naming the file and `how_to_make`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"file not found: {path}. Nothing is downloaded at run time; make it with: "
            f"{how_to_make}"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error, KeyError) as e:
        raise ValueError(
            f"cannot read {path} ({type(e).__name__}: {_first_line(e)}): the file is damaged "
            f"(a write cut short?) or not an .npz of arrays; make it again with: {how_to_make}"
        ) from e


def save_variables(path: str | os.PathLike, variables, fmt: str) -> None:
    """Writes Flax variables as an `.npz` of `collection/.../leaf` arrays tagged `fmt`
    (`write_npz`: a temporary sibling renamed into place)."""
    arrays = {"/".join(p): np.asarray(v, np.float32) for p, v in _flatten(variables).items()}
    arrays[FORMAT_KEY] = np.array(fmt)
    write_npz(path, arrays)


def load_variables(path: str | os.PathLike, abstract_variables, fmt: str, how_to_make: str):
    """Reads a `save_variables` file and checks it against the model's abstract variables."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights file not found: {path}. Nothing is downloaded at run time; make it with\n"
            f"  {how_to_make}"
        )
    arrays = read_npz(path, how_to_make)
    got_fmt = str(arrays.pop(FORMAT_KEY, ""))
    if got_fmt != fmt:
        raise ValueError(
            f"{path}: {FORMAT_KEY}={got_fmt!r}, expected {fmt!r} (a file made by: {how_to_make})"
        )
    _check_layout(
        f"{path}: the weights do not match the network",
        expected={
            "/".join(p): tuple(leaf.shape) for p, leaf in _flatten(abstract_variables).items()
        },
        got={k: v.shape for k, v in arrays.items()},
        noun="",
    )
    return _unflatten({tuple(k.split("/")): v.astype(np.float32) for k, v in arrays.items()})
