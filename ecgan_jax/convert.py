"""`python -m ecgan_jax.convert`: the command in `ecgan_jax.cli.convert`."""

from ecgan_jax.cli.convert import run

if __name__ == "__main__":
    run()
