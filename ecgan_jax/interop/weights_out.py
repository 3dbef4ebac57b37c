"""The `--out` of a weights converter: refused when it exists, written atomically (§D.5).

* `check_out(path, overwrite)`: call before converting; an existing `path` is a
  `FileExistsError` (one line) unless `overwrite`.
* `save_variables_atomic(path, variables, fmt, overwrite=False)`: `state_dict.save_variables`
  into a temporary sibling (`.NAME.tmp`), then a rename, so an interrupted conversion never
  leaves a truncated weights file under the final name.
"""

from __future__ import annotations

import os

from ecgan_jax.interop import state_dict as sd_lib


def check_out(path: str | os.PathLike, overwrite: bool) -> None:
    """Raises FileExistsError when `path` exists and `overwrite` is false."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"--out {os.fspath(path)} exists; pass --overwrite to replace it")


def save_variables_atomic(
    path: str | os.PathLike, variables, fmt: str, overwrite: bool = False
) -> None:
    """Writes `variables` as `state_dict.save_variables` does, through a renamed temp file."""
    path = os.fspath(path)
    check_out(path, overwrite)
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.tmp")
    try:
        sd_lib.save_variables(tmp, variables, fmt)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
