"""The plumbing every evaluation network's weight converter shares (§D.5).

`drn.py`, `upernet.py`, `deeplab.py` and `inception.py` each keep their architecture, their
`torch_key(collection, path) -> (key, kind)` table and their public names
(`abstract_variables`, `init_*`, `convert_state_dict`, `convert_file`, `load_*`, `main`);
those call these:

* `abstract_of(model, size)`: `jax.eval_shape` of `model.init` on a (1, size, size, 3)
  float32 input: the variables' shapes without computing them.
* `random_variables(abstract, seed, override)`: numpy variables for tests and benchmarks:
  He-normal kernels (std sqrt(2 / fan_in): activations keep their scale through a deep
  conv + ReLU stack), identity BatchNorm (scale 1, bias 0, mean 0, var 1), zero biases.
* `torch_shapes(abstract, torch_key)`: {PyTorch key: shape}, the layout a converter expects.
* `save_converted(out, convert, fmt, overwrite)`: refuses an existing `out` before any work
  (unless `overwrite`), then writes `convert()`'s variables through a renamed temp file.
* `load_converted(path, abstract, fmt, how_to_make)`: a converted file as jax arrays.
* `converter_main(...)`: the `python -m ecgan_jax.eval.<net> --convert ... --out ...` CLI.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax.interop import state_dict as sd_lib
from ecgan_jax.interop import weights_out

# BatchNorm's step counter (PyTorch >= 0.4.1 saves it): no Flax counterpart, ignored.
BN_COUNTER = re.compile(r"\.num_batches_tracked$")


def abstract_of(model, size: int = 64):
    """Variables ({params, batch_stats}) of `model` as `jax.ShapeDtypeStruct`s."""
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def random_variables(
    abstract, seed: int = 0, override: Callable[[list[str], tuple], np.ndarray | None] = None
) -> dict:
    """float32 numpy variables shaped like `abstract` (see the module docstring).

    `override(names, shape)` may return the value of a leaf (its path names) instead; the
    random kernels are drawn in leaf order from `np.random.default_rng(seed)`.
    """
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        names = [p.key for p in path]
        if override is not None and (value := override(names, x.shape)) is not None:
            return value
        if names[-1] == "kernel":
            fan_in = x.shape[0] * x.shape[1] * x.shape[2]
            return rng.standard_normal(x.shape).astype(np.float32) * np.sqrt(2.0 / fan_in)
        return np.full(x.shape, 1.0 if names[-1] in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def torch_shapes(
    abstract, torch_key: Callable[[str, tuple[str, ...]], tuple[str, str]]
) -> dict[str, tuple]:
    """{PyTorch key: PyTorch shape} of every Flax leaf, in leaf order."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        collection, *rest = (str(p.key) for p in path)
        key, kind = torch_key(collection, tuple(rest))
        out[key] = sd_lib.torch_shape(kind, leaf.shape)
    return out


def save_converted(out: str, convert: Callable[[], dict], fmt: str, overwrite: bool) -> None:
    """`convert()`'s variables to `out` tagged `fmt`; an existing `out` is refused first
    (FileExistsError, before the conversion) unless `overwrite`."""
    weights_out.check_out(out, overwrite)
    weights_out.save_variables_atomic(out, convert(), fmt, overwrite)


def load_converted(path: str, abstract, fmt: str, how_to_make: str) -> dict:
    """Variables ({params, batch_stats}, jax arrays) of a file written by a converter."""
    return jax.tree.map(jnp.asarray, sd_lib.load_variables(path, abstract, fmt, how_to_make))


def converter_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    sources: str | tuple[str, ...],
    sources_help: str,
    run: Callable[[argparse.Namespace], None],
    classes: int | None = None,
    refuse_existing: bool = True,
) -> None:
    """`prog --convert SRC... --out NPZ [--overwrite] [--classes K]`, then `run(args)`.

    `sources`: the metavar of the one source file, or a tuple of them (that many files, in
    `args.convert` as a list). `classes`: the default of `--classes` (None: no such flag).
    `refuse_existing`: an existing `--out` is a one-line error (exit 1) unless `--overwrite`.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    many = isinstance(sources, tuple)
    parser.add_argument(
        "--convert",
        required=True,
        nargs=len(sources) if many else None,
        metavar=sources,
        help=sources_help,
    )
    parser.add_argument("--out", required=True, metavar="NPZ", help="output .npz file")
    if refuse_existing:
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    if classes is not None:
        parser.add_argument("--classes", type=int, default=classes, help=f"classes ({classes})")
    args = parser.parse_args(argv)
    if refuse_existing:
        try:
            weights_out.check_out(args.out, args.overwrite)
        except FileExistsError as e:
            parser.exit(1, f"{prog}: error: {e}\n")
    run(args)
    print(f"wrote {args.out}", file=sys.stderr)
