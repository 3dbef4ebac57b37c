"""The evaluation protocol of each dataset: segmenter, label mapping, protocol block (§5, §D.5).

mIoU and accuracy depend on the segmenter, its weights, its input size and on which label
pixels count (§5: 81.9 vs 93.5 Cityscapes accuracy from the ignore pixels alone), so every
number `python -m ecgan_jax.evaluate` prints comes after, and is saved with, a protocol block
(`protocol_block`) that states them. Per dataset (`DATASETS`, `for_config`):

| dataset | segmenter (`SEGMENTERS`) | K | ground truth (`LABEL_MAPPINGS`) |
|---|---|---|---|
| cityscapes | DRN-D-105 (fyu/drn) | 19 | labelIds -> trainIds; other ids -> 255 |
| ade20k | UperNet-101 (CSAILVision) | 150 | ids 1..150 -> 0..149; 0 "other" -> 255 |
| coco_stuff | DeepLab-v2 ResNet-101 (kazuto1011) | 182 | ids 0..181; 255 "unlabeled" -> 255 |
| custom, synthetic | none: `--segmenter=` names one | label_nc | values as ids (identity) |

255 is ignored (`IGNORE_LABEL`); COCO-Stuff's unlabeled pixels are 182 after the pipeline's
dontcare mapping and go back to 255; identity ignores values outside [0, K).

Labels are those of the eval pipeline (`data.make_eval_iterator`): the annotation files
resized to `dataset.image_size` by nearest neighbour, after the dataset's unknown mapping; the
segmenter sees the generated image I″ (or, with `score_real_images`, the real image)
quantised to uint8, at that resolution, and each network applies its own test rule
(`SegmenterSpec.input_rule`, `scales`). Accuracy is pixel accuracy over the non-ignored
pixels; mIoU the mean IoU over the classes present in the ground truth or the prediction
(`segmentation.scores_from_confusion`).

    proto = for_config(config)                    # the dataset's protocol (Cityscapes: DRN)
    seg = load_segmenter(proto.segmenter, "weights/drn.npz")
    real = score_real_images(config, seg, LABEL_MAPPINGS[proto.label_mapping], max_images=500)
    info = segmentation_block(config, segmenter=proto.segmenter, weights="weights/drn.npz",
                              num_classes=19, label_mapping=proto.label_mapping)
    print(format_block(protocol_block(config, num_images=500, segmentation=info)))
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from collections.abc import Callable

import numpy as np

__all__ = [
    "DATASETS",
    "IGNORE_LABEL",
    "LABEL_MAPPINGS",
    "SCALES",
    "SEGMENTERS",
    "DatasetProtocol",
    "LabelMapping",
    "SegmenterSpec",
    "ade20k_to_targets",
    "cityscapes_to_targets",
    "coco_stuff_to_targets",
    "default_num_classes",
    "fid_block",
    "for_config",
    "format_block",
    "identity_targets",
    "input_rule",
    "load_segmenter",
    "protocol_block",
    "resolve_scales",
    "score_real_images",
    "segmentation_block",
    "segmenter_spec",
    "sha256_file",
]

IGNORE_LABEL = 255  # every mapping sends the pixels that do not count here
SCALES = ("protocol", "single")
FID_NETWORK = (
    "pytorch-fid InceptionV3 (TF 2015-12-05 graph), pool3 2048-d features, bilinear resize to "
    "299x299 (PyTorch rule, align_corners=False), uint8 inputs mapped to [-1, 1]"
)
FID_DISTANCE = "Frechet distance in float64 (scipy sqrtm), pytorch-fid's rules"
ACCURACY = "pixel accuracy: correctly labelled pixels / non-ignored pixels"
MIOU = "mean IoU over the classes present in the ground truth or the prediction (union > 0)"

# --------------------------------------------------------------------------- label mappings


def identity_targets(labels) -> np.ndarray:
    """Label values used as class ids (values outside [0, K) are not counted)."""
    return np.asarray(labels, np.int32)


def cityscapes_to_targets(labels) -> np.ndarray:
    """Cityscapes labelIds -> the 19 trainIds of cityscapesScripts, the others 255."""
    from ecgan_jax.eval.segmentation import cityscapes_label_to_train_id

    return np.asarray(cityscapes_label_to_train_id(np.asarray(labels)), np.int32)


def ade20k_to_targets(labels) -> np.ndarray:
    """ADE20K ids (0 "other", 1..150) -> 0..149, "other" -> 255 (CSAILVision's `label - 1`)."""
    labels = np.asarray(labels, np.int32)
    return np.where(labels > 0, labels - 1, IGNORE_LABEL).astype(np.int32)


def coco_stuff_to_targets(labels) -> np.ndarray:
    """COCO-Stuff ids 0..181 kept; 182 (the pipeline's dontcare for raw 255) and up -> 255."""
    labels = np.asarray(labels, np.int32)
    return np.where((labels >= 0) & (labels < 182), labels, IGNORE_LABEL).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class LabelMapping:
    """Ground truth of the segmenter from the eval pipeline's labels (B, H, W) int32."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    description: str
    ignored: str

    def __call__(self, labels) -> np.ndarray:
        return self.fn(labels)


LABEL_MAPPINGS = {
    m.name: m
    for m in (
        LabelMapping(
            "cityscapes_train_id",
            cityscapes_to_targets,
            "Cityscapes labelIds -> the 19 trainIds (cityscapesScripts labels.py)",
            "labelIds 0-6, 9, 10, 14-16, 18, 29, 30 and -1 (mapped to 255)",
        ),
        LabelMapping(
            "ade20k_minus_one",
            ade20k_to_targets,
            "ADE20K ids 1..150 -> 0..149 (CSAILVision: label - 1)",
            "id 0 'other' (mapped to 255)",
        ),
        LabelMapping(
            "coco_stuff",
            coco_stuff_to_targets,
            "COCO-Stuff ids 0..181 as they are (stuffthingmaps)",
            "id 255 'unlabeled' (182 after the pipeline's dontcare mapping; mapped to 255)",
        ),
        LabelMapping(
            "identity",
            identity_targets,
            "label values used as class ids",
            "values outside [0, num_classes) (e.g. 255, or the dontcare value label_nc)",
        ),
    )
}

# --------------------------------------------------------------------------- segmenters


@dataclasses.dataclass(frozen=True)
class SegmenterSpec:
    """A segmentation network the protocol can use, loaded from a converted `.npz`.

    `module` holds `loader(path, num_classes) -> variables` and `factory(variables,
    num_classes=..., **scale_kwargs[scales]) -> segmentation.Segmenter`.
    """

    name: str
    network: str
    module: str
    loader: str
    factory: str
    num_classes: int
    release: str
    url: str
    input_rule: dict  # {"protocol": text, "single": text}
    scale_kwargs: dict  # {"protocol": {...}, "single": {...}} passed to the factory
    multiple_of: int = 1  # H and W must be multiples of this

    @property
    def convert_command(self) -> str:
        return importlib.import_module(self.module).CONVERT_COMMAND

    def check_size(self, height: int, width: int) -> None:
        m = self.multiple_of
        if height % m or width % m:
            raise ValueError(
                f"segmenter {self.name} needs H and W multiples of {m}; "
                f"config field 'dataset.image_size' is {(height, width)}"
            )


SEGMENTERS = {
    s.name: s
    for s in (
        SegmenterSpec(
            name="drn_d_105",
            network="DRN-D-105 (fyu/drn DRNSeg, Cityscapes)",
            module="ecgan_jax.eval.drn",
            loader="load_drn",
            factory="drn_segmenter",
            num_classes=19,
            release="drn-d-105_ms_cityscapes.pth",
            url="http://go.yf.io/drn-cityscapes-models",
            input_rule={
                "protocol": "the image at the generated resolution H x W (multiples of 8), "
                "single scale, [0, 1] RGB normalised by fyu/drn's Cityscapes mean/std; "
                "logits at H x W (the network's x8 bilinear deconvolution)",
            },
            scale_kwargs={"protocol": {}},
            multiple_of=8,
        ),
        SegmenterSpec(
            name="upernet101",
            network="UperNet-101 (CSAILVision ade20k-resnet101-upernet, epoch 50)",
            module="ecgan_jax.eval.upernet",
            loader="load_upernet",
            factory="upernet_segmenter",
            num_classes=150,
            release="encoder_epoch_50.pth + decoder_epoch_50.pth",
            url="http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/",
            input_rule={
                "protocol": "CSAILVision's multi-scale test: the image resized (bilinear, "
                "antialiased) to short sides 300, 375, 450, 525, 600 (long side <= 1000, "
                "rounded up to multiples of 32), ImageNet mean/std; each scale's logits "
                "resized bilinearly to H x W, softmax averaged, arg-max",
                "single": "single scale: the image at the generated resolution H x W, "
                "ImageNet mean/std, logits resized bilinearly to H x W",
            },
            scale_kwargs={"protocol": {}, "single": {"test_sizes": None}},
        ),
        SegmenterSpec(
            name="deeplabv2_resnet101",
            network="DeepLab-v2 ResNet-101 MSC (kazuto1011/deeplab-pytorch, COCO-Stuff 164k)",
            module="ecgan_jax.eval.deeplab",
            loader="load_deeplab",
            factory="deeplab_segmenter",
            num_classes=182,
            release="deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
            url="https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
            "deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
            input_rule={
                "protocol": "the image at the generated resolution H x W, BGR 0..255 minus "
                "the mean (104.008, 116.669, 122.675); MSC: pixel-wise max of the logits of "
                "the image and of it resized by 0.5 and 0.75; logits resized bilinearly "
                "to H x W",
                "single": "single scale: the image at H x W, BGR minus the mean, logits "
                "resized bilinearly to H x W",
            },
            scale_kwargs={"protocol": {}, "single": {"scales": ()}},
        ),
    )
}


def load_segmenter(
    name: str, weights: str, *, num_classes: int | None = None, scales: str = "protocol"
):
    """The `segmentation.Segmenter` of `SEGMENTERS[name]` with the converted `weights`."""
    spec = segmenter_spec(name)
    k = spec.num_classes if num_classes is None else int(num_classes)
    kwargs = spec.scale_kwargs[resolve_scales(spec, scales)]
    module = importlib.import_module(spec.module)
    variables = getattr(module, spec.loader)(weights, k)
    return getattr(module, spec.factory)(variables, num_classes=k, **kwargs)


def segmenter_spec(name: str) -> SegmenterSpec:
    if name not in SEGMENTERS:
        raise ValueError(f"--segmenter={name!r} is unknown; allowed: {', '.join(SEGMENTERS)}")
    return SEGMENTERS[name]


def resolve_scales(spec: SegmenterSpec, scales: str) -> str:
    """`scales`, or "protocol" for a network whose protocol is already single scale (DRN)."""
    if scales not in SCALES:
        raise ValueError(f"--segmenter_scales={scales!r}; allowed: {', '.join(SCALES)}")
    return scales if scales in spec.scale_kwargs else "protocol"


def input_rule(spec: SegmenterSpec, scales: str) -> str:
    return spec.input_rule[resolve_scales(spec, scales)]


# --------------------------------------------------------------------------- datasets


@dataclasses.dataclass(frozen=True)
class DatasetProtocol:
    """The conventional evaluation of one dataset (§5); `segmenter` None: none conventional."""

    dataset: str
    segmenter: str | None
    label_mapping: str
    real_reference: str  # what the segmenter's authors report on real validation images


DATASETS = {
    p.dataset: p
    for p in (
        DatasetProtocol(
            "cityscapes",
            "drn_d_105",
            "cityscapes_train_id",
            "fyu/drn: 75.6% mIoU on Cityscapes val at full resolution (1024x2048)",
        ),
        DatasetProtocol(
            "ade20k",
            "upernet101",
            "ade20k_minus_one",
            "CSAILVision: 42.00 mIoU / 80.79% pixel accuracy single scale, 42.66 / 81.01% "
            "multi-scale, ADE20K val at full resolution",
        ),
        DatasetProtocol(
            "coco_stuff",
            "deeplabv2_resnet101",
            "coco_stuff",
            "kazuto1011: 39.1 mIoU / 66.8% pixel accuracy (no CRF), COCO-Stuff 164k val at "
            "full resolution",
        ),
        DatasetProtocol("custom", None, "identity", "none (no conventional segmenter)"),
        DatasetProtocol("synthetic", None, "identity", "none (no conventional segmenter)"),
    )
}


def for_config(config) -> DatasetProtocol:
    """The protocol of `config.dataset.name`."""
    name = str(config.dataset.name)
    if name not in DATASETS:
        raise ValueError(
            f"config field 'dataset.name' = {name!r} has no evaluation protocol; allowed: "
            + ", ".join(DATASETS)
        )
    return DATASETS[name]


def default_num_classes(config, segmenter: str) -> int:
    """The segmenter's classes for the dataset: the network's own, or label_nc off-protocol."""
    spec = segmenter_spec(segmenter)
    if for_config(config).segmenter == segmenter:
        return spec.num_classes
    if str(config.dataset.name) in ("custom", "synthetic"):
        return int(config.dataset.label_nc)
    return spec.num_classes


# --------------------------------------------------------------------------- the block


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def segmentation_block(
    config,
    *,
    segmenter: str,
    weights: str,
    num_classes: int,
    label_mapping: str,
    scales: str = "protocol",
) -> dict:
    """What the mIoU / accuracy numbers mean: network, weights, input, labels, ignored ids."""
    spec = segmenter_spec(segmenter)
    scales = resolve_scales(spec, scales)
    mapping = LABEL_MAPPINGS[label_mapping]
    proto = for_config(config)
    h, w = (int(v) for v in config.dataset.image_size)
    block = {
        "network": spec.network,
        "name": spec.name,
        "weights": os.path.abspath(weights),
        "weights_sha256": sha256_file(weights),
        "weights_release": f"{spec.release} ({spec.url})",
        "num_classes": int(num_classes),
        "scales": scales,
        "input": input_rule(spec, scales),
        "resolution": [h, w],
        "labels": f"the eval pipeline's label maps resized to {h}x{w} by nearest neighbour",
        "label_mapping": f"{mapping.name}: {mapping.description}",
        "ignored": mapping.ignored,
        "accuracy": ACCURACY,
        "miou": MIOU,
        "conventional": proto.segmenter == spec.name and scales == "protocol",
        "real_reference": proto.real_reference,
    }
    if proto.segmenter is not None and proto.segmenter != spec.name:
        conventional = SEGMENTERS[proto.segmenter].network
        block["note"] = (
            f"the conventional segmenter of {proto.dataset} is {conventional}; these numbers "
            "are not comparable with published ones"
        )
    elif proto.segmenter is not None and scales != "protocol":
        block["note"] = "single-scale test: not the published protocol's multi-scale numbers"
    return block


def fid_block(
    *, weights: str | None, stats_file: str | None, num_images: int, resolution, split: str
) -> dict:
    """What the FID means: network, weights, and the reference it is measured against.

    `weights=None`: a randomly initialised network (smoke tests), labelled as such.
    """
    h, w = (int(v) for v in resolution)
    if stats_file:
        reference = {
            "kind": "statistics file",
            "path": os.path.abspath(stats_file),
            "sha256": sha256_file(stats_file),
            "count": None,  # the file does not record how many images it summarises
            "resolution": None,
        }
    else:
        reference = {
            "kind": "real images",
            "path": None,
            "count": int(num_images),
            "resolution": [h, w],
            "images": f"the same {num_images} real {split} images, uint8, at {h}x{w}",
        }
    return {
        "network": FID_NETWORK if weights else f"{FID_NETWORK} with RANDOM weights (smoke test)",
        "weights": os.path.abspath(weights) if weights else "random (seed 0): not comparable",
        "weights_sha256": sha256_file(weights) if weights else None,
        "generated": {"count": int(num_images), "resolution": [h, w]},
        "reference": reference,
        "distance": FID_DISTANCE,
    }


def protocol_block(
    config,
    *,
    num_images: int,
    segmentation: dict | None = None,
    fid: dict | None = None,
    generator: dict | None = None,
) -> dict:
    """The protocol block written before any number: dataset, images, FID, segmentation.

    `segmentation` / `fid`: `segmentation_block` / `fid_block` (None: not measured);
    `generator`: where the scored images come from (checkpoint, parameters), None for
    real images only.
    """
    h, w = (int(v) for v in config.dataset.image_size)
    return {
        "dataset": str(config.dataset.name),
        "split": str(config.dataset.eval_split),
        "num_images": int(num_images),
        "resolution": [h, w],
        "images": "I'' (the generator's final output) quantised to uint8, as saved PNGs; "
        "real images: the uint8 files resized to the resolution (bicubic, as in training)",
        "generator": generator,
        "fid": fid,
        "segmentation": segmentation,
    }


def _lines(obj, indent: int) -> list[str]:
    pad = "  " * indent
    out = []
    for key, value in obj.items():
        if isinstance(value, dict):
            out.append(f"{pad}{key}:")
            out.extend(_lines(value, indent + 1))
        elif value is not None:
            out.append(f"{pad}{key}: {value}")
    return out


def format_block(block: dict) -> str:
    """The protocol block as indented `key: value` lines (None fields left out)."""
    return "\n".join(["protocol:", *_lines(block, 1)])


# --------------------------------------------------------------------------- real images


def score_real_images(
    config,
    segmenter,
    label_mapping,
    *,
    max_images: int | None = None,
    batch_size: int = 8,
    mesh=None,
) -> dict:
    """mIoU / accuracy of `segmenter` on the real eval images (the upper bound of §5).

    The images of `data.make_eval_iterator` back to uint8 and to [-1, 1] (what the generated
    images go through), the labels through `label_mapping`; every batch is padded to
    `batch_size` rows (images 0, labels -1: not counted), so the segmenter compiles once:
    `inference.evaluate_generator(real_images=True)`, so `batch_size` must be a multiple of
    the mesh's device count. Returns the `scores_from_confusion` dict plus "num_images".
    """
    from ecgan_jax import inference

    # The generator's own evaluation loop with the real images in place of I″.
    result = inference.evaluate_generator(
        config,
        None,
        None,
        max_images=max_images,
        segmenter=segmenter,
        label_mapping=label_mapping,
        ignore_label=IGNORE_LABEL,
        batch_size=batch_size,
        mesh=mesh,
        real_images=True,
    )
    return {**result["segmentation"], "num_images": result["num_images"]}
