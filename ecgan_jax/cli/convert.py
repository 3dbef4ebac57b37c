"""`python -m ecgan_jax.convert`: the authors' PyTorch G/D checkpoints to an orbax directory.

    python -m ecgan_jax.convert --config=configs/cityscapes.py \
        --generator=checkpoints/cityscapes/latest_net_G.pth \
        [--discriminator=checkpoints/cityscapes/latest_net_D.pth] --out=converted/cityscapes \
        [--overwrite]

An existing --out is refused (exit status 2, one line on stderr, nothing touched) before any
work; `--overwrite` replaces it only when it is a checkpoint this command wrote that holds none
of the inputs. The checkpoint is written next to --out and renamed into place. The conversion
itself is `ecgan_jax.interop.authors`.
"""

from __future__ import annotations

import sys

from ecgan_jax import config_lib
from ecgan_jax.interop.authors import (
    check_output,
    read_state_dict,
    save_converted,
    torch_discriminator_to_flax,
    torch_generator_to_flax,
)

PROG = "python -m ecgan_jax.convert"


def _refuse(error: Exception) -> None:
    print(f"{PROG}: error: {error}", file=sys.stderr)
    raise SystemExit(2)


def _converted(convert, path: str, config):
    """`convert(read_state_dict(path), config)`, its errors naming `path`."""
    import pickle

    try:
        state_dict = read_state_dict(path)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise pickle.UnpicklingError(
            f"{path}: refused: not a plain PyTorch state dict (torch.load with "
            f"weights_only=True: {first[:200]})"
        ) from e
    try:
        return convert(state_dict, config)
    except (ValueError, KeyError) as e:
        raise type(e)(f"{path}: {e}") from e


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert the authors' PyTorch checkpoints."
    )
    parser.add_argument("--config", required=True, help="config file[:variant]")
    parser.add_argument("--generator", required=True, help="latest_net_G.pth or .npz")
    parser.add_argument("--discriminator", default=None, help="latest_net_D.pth or .npz")
    parser.add_argument("--out", required=True, help="output directory (orbax checkpoint)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it is a checkpoint this command wrote (never another folder)",
    )
    args = parser.parse_args(argv)
    inputs = [args.config.split(":")[0], args.generator, args.discriminator]
    try:
        check_output(args.out, overwrite=args.overwrite, inputs=inputs)
    except FileExistsError as e:
        _refuse(e)
    config = config_lib.load_config(args.config)
    gen = _converted(torch_generator_to_flax, args.generator, config)
    disc = None
    if args.discriminator:
        disc = _converted(torch_discriminator_to_flax, args.discriminator, config)
    try:
        path = save_converted(args.out, gen, disc, overwrite=args.overwrite, inputs=inputs)
    except FileExistsError as e:
        _refuse(e)
    print(f"wrote {path}")


def run() -> None:
    """The program: bad input (a missing or damaged file, a key mismatch, a refused --out)
    ends in one line with exit status 2; a traceback means a bug."""
    import pickle
    import sys

    from ecgan_jax.cli.flags import EXIT_BAD_INPUT

    try:
        main()
    except (ValueError, KeyError, OSError, pickle.UnpicklingError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    run()
