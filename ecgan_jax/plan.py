"""`python -m ecgan_jax.plan`: the command in `ecgan_jax.cli.plan`."""

from ecgan_jax.cli.plan import run

if __name__ == "__main__":
    run()
