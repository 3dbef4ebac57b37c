"""The training library: state and optimisers (`state`), the jitted train step (`step`), the
loop (`loop.train_and_evaluate`), checkpoints (`checkpointing`) and FID during training
(`fid_tracker`)."""

from ecgan_jax.training.loop import NonFiniteLossError, build_trainer, train_and_evaluate

__all__ = ["NonFiniteLossError", "build_trainer", "train_and_evaluate"]
