"""The training library: state and optimisers (`state`), the jitted train step (`step`), the
loop (`loop.train_and_evaluate`), checkpoints (`checkpointing`), FID during training
(`fid_tracker`) and the rematerialisation policy (`remat`).

The loop's names load on first use, so `training.remat` (which the XLA:CPU runtime imports)
can be imported without the loop, which imports that runtime.
"""

_LOOP_NAMES = ("NonFiniteLossError", "build_trainer", "train_and_evaluate")
__all__ = list(_LOOP_NAMES)


def __getattr__(name):
    if name in _LOOP_NAMES:
        from ecgan_jax.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'ecgan_jax.training' has no attribute {name!r}")
