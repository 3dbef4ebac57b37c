"""Evaluation (docs/DESIGN.md §5, §D.5): FID with pytorch-fid's InceptionV3 and mIoU / pixel
accuracy with each dataset's conventional segmenter, the protocol written next to the numbers.

* `inception`: the FID InceptionV3 in Flax and its weight converter.
* `fid`: sharded feature extraction, statistics files, Fréchet distance.
* `segmentation`: confusion-matrix metrics, the `Segmenter` interface, the Cityscapes
  labelId -> trainId table.
* `drn`: DRN-D-105 (fyu/drn `DRNSeg`, Cityscapes); `upernet`: UperNet-101 (CSAILVision,
  ADE20K); `deeplab`: DeepLab-v2 ResNet-101 with MSC (kazuto1011, COCO-Stuff 164k); each with its
  weight converter. `resampling`: the torch-exact resizes and pools they share.
* `protocol`: per dataset the segmenter, the label mapping and the protocol block.
* `quality`: the per-class colour error of the demo, uint8 conversion, sample grids.

Nothing here downloads: pretrained weights come from local `.npz` files made by the converters.
"""
