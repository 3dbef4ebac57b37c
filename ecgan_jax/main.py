"""`python -m ecgan_jax.main --config=... --workdir=...`: training (`ecgan_jax.cli.train`)."""

from ecgan_jax.cli.train import run

if __name__ == "__main__":
    run()
