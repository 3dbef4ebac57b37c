"""The commands never overwrite a user's files: output checks and atomic writes.

* `check_not_inputs(outputs, inputs)`: an output folder may not be, contain or lie inside an
  input folder (the label maps, the instance maps, the dataset root, the checkpoint), and an
  output file may not be an input file or lie inside an input folder. Paths are compared after
  `os.path.realpath`, so symlinks and `..` do not get around it.
* `check_absent(paths, flag)`: existing output files are refused unless `--overwrite`.
* `write_bytes_atomic(path, data)` / `save_png` / `save_json`: every file is written whole to a
  temporary name in its folder and renamed over the target, so a crash never leaves half a file
  under the final name (and a reader never sees one).

Errors are one line naming the path and what to do (`OutputError`, a ValueError).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = [
    "OutputError",
    "check_absent",
    "check_not_inputs",
    "save_json",
    "save_png",
    "write_bytes_atomic",
]


class OutputError(ValueError):
    """An output path would overwrite an input or an existing file (the message names it)."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(str(path))))


def _inside(path: str, folder: str) -> bool:
    """True when `path` is `folder` or lies under it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_not_inputs(
    outputs: Mapping[str, tuple[str, str]], inputs: Mapping[str, tuple[str, str]]
) -> None:
    """Refuses outputs that would write into (or over) an input.

    outputs / inputs: {flag or role: (path, "dir" | "file")}, e.g.
    `{"--out": (out, "dir")}` and `{"--labels": (labels, "dir"), "dataset.root": (root, "dir")}`.
    Empty or None paths are skipped.
    """
    ins = [(_describe(name, p), _real(p), kind) for name, (p, kind) in inputs.items() if p]
    for out_name, (out_path, out_kind) in outputs.items():
        if not out_path:
            continue
        out = _real(out_path)
        for desc, inp, in_kind in ins:
            if in_kind == "dir":
                if _inside(out, inp):
                    what = "is" if out == inp else "lies inside"
                    raise OutputError(
                        f"{out_name}={out_path} {what} an input folder ({desc}); choose an "
                        f"{out_name} outside it (inputs are never written to)"
                    )
                if out_kind == "dir" and _inside(inp, out):
                    raise OutputError(
                        f"{out_name}={out_path} contains an input folder ({desc}); choose an "
                        f"{out_name} that holds no input (inputs are never written to)"
                    )
            elif out == inp or (out_kind == "dir" and _inside(inp, out)):
                what = "is" if out == inp else "contains"
                raise OutputError(
                    f"{out_name}={out_path} {what} an input file ({desc}); choose another "
                    f"{out_name} (inputs are never written to)"
                )


def _describe(name: str, path: str) -> str:
    # Flags and config fields read as name=value; roles ("the label maps") as "role: path".
    if name.startswith("--") or "." in name:
        return f"{name}={path}"
    return f"{name}: {path}"


def check_absent(paths: Iterable[str], *, overwrite: bool, where: str = "--out") -> None:
    """Refuses existing files among `paths` unless `overwrite`; names the first few."""
    if overwrite:
        return
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        shown = ", ".join(existing[:3]) + (f" (and {len(existing) - 3} more)" * (len(existing) > 3))
        raise OutputError(
            f"{len(existing)} output file(s) exist already: {shown}; pass --overwrite to "
            f"replace them, or choose another {where}"
        )


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to a unique temporary file beside `path`, then renames it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_png(path: str, image_u8: np.ndarray) -> None:
    """uint8 (H, W, 3) or (H, W) -> PNG at `path`, written atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image_u8)).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def save_json(path: str, obj) -> None:
    """`obj` as indented JSON at `path`, written atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())
