"""`python -m ecgan_jax.generate`: the command in `ecgan_jax.cli.generate`."""

from ecgan_jax.cli.generate import run

if __name__ == "__main__":
    run()
