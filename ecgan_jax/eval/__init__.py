"""Evaluation metrics (docs/DESIGN.md §5, §D.5): FID with pytorch-fid's InceptionV3 and mIoU /
pixel accuracy through a segmenter interface (DRN-D-105 for Cityscapes).

* `ecgan_jax.eval.inception`: the FID InceptionV3 in Flax and its weight converter.
* `ecgan_jax.eval.fid`: sharded feature extraction, statistics files, Fréchet distance.
* `ecgan_jax.eval.segmentation`: confusion-matrix metrics, the `Segmenter` interface, the
  Cityscapes labelId -> trainId table.
* `ecgan_jax.eval.drn`: DRN-D-105 (fyu/drn `DRNSeg`) in Flax and its weight converter.
* `ecgan_jax.state_dict`: reading `.pth`/`.npz` state dicts, key checking, `.npz` weights.

Nothing here downloads: pretrained weights come from local `.npz` files made by the converters.
"""
