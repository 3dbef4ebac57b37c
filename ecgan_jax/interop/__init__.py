"""PyTorch interop: safe reading of `.pth`/`.npz` state dicts, layout checking and conversion
(`state_dict`), and the authors' ECGAN generator/discriminator checkpoints (`authors`)."""
