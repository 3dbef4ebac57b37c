"""`python -m ecgan_jax.plan`: the command in `ecgan_jax.cli.plan`."""

from ecgan_jax.xla_cpu.hostmem import limit_malloc_arenas

# Before JAX starts its compiler threads: a --fit compiles several full-size steps in one
# process, and every thread's own malloc arena keeps the compiler's freed memory resident.
limit_malloc_arenas()

from ecgan_jax.cli.plan import run  # noqa: E402

if __name__ == "__main__":
    run()
