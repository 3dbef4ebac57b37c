"""`python -m ecgan_jax.convert`: the authors' PyTorch G/D checkpoints to an orbax directory.

    python -m ecgan_jax.convert --config=configs/cityscapes.py \
        --generator=checkpoints/cityscapes/latest_net_G.pth \
        [--discriminator=checkpoints/cityscapes/latest_net_D.pth] --out=converted/cityscapes

The conversion itself is `ecgan_jax.interop.authors`.
"""

from __future__ import annotations

from ecgan_jax import config_lib
from ecgan_jax.interop.authors import (
    read_state_dict,
    save_converted,
    torch_discriminator_to_flax,
    torch_generator_to_flax,
)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Convert the authors' PyTorch checkpoints.")
    parser.add_argument("--config", required=True, help="config file[:variant]")
    parser.add_argument("--generator", required=True, help="latest_net_G.pth or .npz")
    parser.add_argument("--discriminator", default=None, help="latest_net_D.pth or .npz")
    parser.add_argument("--out", required=True, help="output directory (orbax checkpoint)")
    args = parser.parse_args(argv)
    config = config_lib.load_config(args.config)
    gen = torch_generator_to_flax(read_state_dict(args.generator), config)
    disc = None
    if args.discriminator:
        disc = torch_discriminator_to_flax(read_state_dict(args.discriminator), config)
    path = save_converted(args.out, gen, disc)
    print(f"wrote {path}")


def run() -> None:
    main()


if __name__ == "__main__":
    run()
