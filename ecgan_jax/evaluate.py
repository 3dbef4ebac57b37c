"""`python -m ecgan_jax.evaluate`: the command in `ecgan_jax.cli.evaluate`."""

from ecgan_jax.cli.evaluate import run

if __name__ == "__main__":
    run()
