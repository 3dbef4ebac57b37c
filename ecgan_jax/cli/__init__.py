"""Command-line programs: `train` (`python -m ecgan_jax.main`), `generate`, `evaluate`, `convert`.

Each is a thin absl program over the library; `flags.py` holds what they share.
"""
