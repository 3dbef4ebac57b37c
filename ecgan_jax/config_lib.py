"""Configuration schema shared by every `configs/*.py` file (ECGAN_SPEC.md §1.3, §D.4).

Config files under `configs/` call `base_config()` and override what differs per dataset; the
`:smoke` argument of each shrinks widths, sizes and step counts for tests and CPU demos.
`load_config("configs/cityscapes.py:smoke")` loads a config file by path (as `--config` does),
and `validate_config` checks the fields with messages that name the field and allowed values.

Only this module and the factories (`ecgan_jax.models.build_*`) read a ConfigDict; modules and
losses take plain typed arguments.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import ml_collections

UPSAMPLING_LAYERS = {"normal": 5, "more": 6, "most": 7}
DATASETS = ("cityscapes", "ade20k", "coco_stuff", "custom", "synthetic")
DTYPES = ("float32", "bfloat16")
CONTRASTIVE_LAYERS = ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3")


def base_config() -> ml_collections.ConfigDict:
    """Every field the project reads, with the authors'/project defaults (ECGAN_SPEC.md §D.4)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # --- data (ECGAN_SPEC.md §7, §D.6) ---
    c.dataset = d = ml_collections.ConfigDict()
    d.name = "synthetic"  # one of DATASETS
    d.root = ""  # dataset root directory (or TFDS data_dir with source="tfds")
    d.source = "files"  # "files" (directory layout) or "tfds" (array_record via tfds.data_source)
    d.tfds_name = ""  # TFDS builder name when source == "tfds"
    d.image_size = (256, 256)  # (H, W) of the training crop / generated image
    d.preprocess = "fixed"  # "fixed" (resize to image_size) or "resize_and_crop"
    d.load_size = 286  # square resize before the random crop ("resize_and_crop")
    d.flip = True  # random horizontal flip at training time
    d.label_nc = 8  # classes, excluding dontcare (K of §D.3)
    d.contain_dontcare_label = False  # adds one "unknown" one-hot channel (ADE20K, COCO)
    d.no_instance = False  # True: no instance-boundary channel
    # Label value of "unknown" pixels after loading (-1: the dataset has none). ADE20K keeps
    # raw 0 as unknown (one-hot channel 0, §7); COCO-Stuff maps 255 to label_nc = 182. These
    # pixels are ignored (-1) by the contrastive and similarity losses (§D.3).
    d.unknown_label = -1
    d.edges = "on_the_fly"  # "on_the_fly" (Canny in the pipeline) or "precomputed" (edge/ tree)
    d.train_split = "train"
    d.eval_split = "val"
    d.num_workers = 0  # grain worker processes
    d.prefetch = 2
    d.synthetic_num_images = 256  # size of the embedded synthetic dataset
    d.synthetic_eval_images = 16

    # --- model (ECGAN_SPEC.md §2, §3) ---
    c.model = m = ml_collections.ConfigDict()
    m.ngf = 64
    m.ndf = 64
    m.num_upsampling_layers = "normal"  # normal / more / most
    m.spade_hidden = 128  # SPADE mlp_shared width (hard-coded 128 in the authors' code)
    m.num_D = 2
    m.n_layers_D = 4
    m.dtype = "float32"  # activation dtype: float32 or bfloat16 (params stay float32)
    # Conv weight-gradient path (xla_cpu/conv.py): "auto" = "blocked" on CPU (about 3x faster
    # backward at 256x512 on XLA:CPU), "xla" on GPU/TPU; same numbers either way.
    m.conv_impl = "auto"
    # SPADE layers keep only their input for the backward pass and recompute BN, gamma, beta
    # there (ecgan_jax/xla_cpu/recompute.py): full Cityscapes config on CPU, batch 1: peak
    # 5.87 -> 5.19
    # GB for about 7% more step time (BENCHMARKS.md). Same values either way.
    m.spade_recompute = True

    # --- optimisation (ECGAN_SPEC.md §4.1, §D.4) ---
    c.batch_size = 32  # global batch over all devices and hosts
    c.lr = 2e-4  # base lr; TTUR gives lr_G = lr/2, lr_D = 2 lr
    c.ttur = True
    c.beta1 = 0.0
    c.beta2 = 0.9
    c.niter = 100  # epochs at constant lr
    c.niter_decay = 100  # epochs of linear decay to 0
    c.num_train_steps = -1  # > 0 overrides the epoch schedule (decay over the last half)
    c.lambda_feat = 10.0
    c.lambda_vgg = 10.0
    c.loss_weights = (1.0, 1.0, 2.0)  # (I', I'_e, I'')
    c.regenerate_fakes_for_d = False
    c.ema_decay = 0.9999

    # --- perceptual loss (ECGAN_SPEC.md §4.1, §D.2) ---
    c.perceptual = p = ml_collections.ConfigDict()
    p.enabled = True
    p.weights_path = ""  # .npz made by `python -m ecgan_jax.models.vgg --convert`
    p.random_weights = False  # tests/demos only: a randomly initialised VGG19
    p.imagenet_normalize = False

    # --- contrastive learning (ECGAN_SPEC.md §D.3) ---
    c.contrastive = cl = ml_collections.ConfigDict()
    cl.enabled = True
    cl.layers = ("up_1", "up_2", "up_3")
    cl.dim = 128
    cl.temperature = 0.1
    cl.num_anchors = 1024
    cl.pixel_bank_size = 64
    cl.region_bank_size = 16
    cl.bank_push_per_class = 8
    cl.cross_scale = True
    cl.lambda_pixel = 1.0
    cl.lambda_class = 1.0

    # --- similarity loss (ECGAN_SPEC.md §D.1) ---
    c.lambda_sim = 0.0

    # --- devices ---
    c.num_devices = -1  # -1: every device of every process; N > 0: the first N (one host)
    # XLA:CPU code generation for the train step only (ignored on GPU/TPU). False compiles its
    # fused elementwise ops with XLA's LLVM IR emitters instead of its newer MLIR fusion
    # emitters (XLA's default): the compiler's own memory peak drops from 2.4-2.7 to 1.0 GB at
    # ngf 16 (it keeps every MLIR kernel until the end) and the full Cityscapes batch-1 peak
    # 4.6-4.7 -> 4.5 GB, at the same step time (BENCHMARKS.md). True: XLA's default (XLA_FLAGS).
    c.xla_cpu_fusion_emitters = False

    # --- bookkeeping ---
    c.log_every = 50
    c.image_every = 500
    c.checkpoint_every = 2000
    c.keep_checkpoints = 3
    c.num_eval_images = 16
    c.compilation_cache_dir = ""

    # --- periodic FID during training (ecgan_jax.train_fid) ---
    c.fid_every = 0  # steps between FIDs of the (EMA) generator on the eval split; 0: off
    c.fid_weights = ""  # InceptionV3 .npz (python -m ecgan_jax.eval.inception); needed if on
    c.fid_num_images = 0  # first N images of the eval split (0: all of it; else >= 2)
    c.fid_stats = ""  # real statistics .npz; "": computed once, cached in the workdir
    c.keep_best_fid = True  # keep the checkpoint of the lowest FID in <workdir>/best
    return c


def semantic_nc(config: ml_collections.ConfigDict) -> int:
    """Generator input channels: label_nc (+1 dontcare) (+1 instance edges) (§1.3)."""
    d = config.dataset
    return int(d.label_nc) + int(bool(d.contain_dontcare_label)) + int(not d.no_instance)


def num_upsampling(config: ml_collections.ConfigDict) -> int:
    return UPSAMPLING_LAYERS[config.model.num_upsampling_layers]


def _fail(field: str, value, allowed: str) -> None:
    raise ValueError(f"config field '{field}' = {value!r} is invalid; allowed: {allowed}")


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every field with a closed set of values; returns the config unchanged."""
    d, m = config.dataset, config.model
    if d.name not in DATASETS:
        _fail("dataset.name", d.name, ", ".join(DATASETS))
    if d.source not in ("files", "tfds"):
        _fail("dataset.source", d.source, "files, tfds")
    if d.preprocess not in ("fixed", "resize_and_crop"):
        _fail("dataset.preprocess", d.preprocess, "fixed, resize_and_crop")
    if d.edges not in ("on_the_fly", "precomputed"):
        _fail("dataset.edges", d.edges, "on_the_fly, precomputed")
    if m.num_upsampling_layers not in UPSAMPLING_LAYERS:
        _fail("model.num_upsampling_layers", m.num_upsampling_layers, "normal, more, most")
    if m.conv_impl not in ("auto", "xla", "blocked"):
        _fail("model.conv_impl", m.conv_impl, "auto, xla, blocked")
    if m.dtype not in DTYPES:
        _fail("model.dtype", m.dtype, ", ".join(DTYPES))
    if int(d.label_nc) < 1:
        _fail("dataset.label_nc", d.label_nc, "an integer >= 1")
    h, w = (int(v) for v in d.image_size)
    f = 2 ** num_upsampling(config)
    if h % f or w % f or h <= 0 or w <= 0:
        _fail(
            "dataset.image_size",
            tuple(d.image_size),
            f"(H, W) both positive multiples of 2**{num_upsampling(config)} = {f} "
            f"for num_upsampling_layers='{m.num_upsampling_layers}'",
        )
    for name in ("ngf", "ndf", "num_D", "n_layers_D", "spade_hidden"):
        if int(m[name]) < 1:
            _fail(f"model.{name}", m[name], "an integer >= 1")
    if int(config.batch_size) < 1:
        _fail("batch_size", config.batch_size, "an integer >= 1")
    if len(tuple(config.loss_weights)) != 3:
        _fail("loss_weights", config.loss_weights, "three weights for (I', I'_e, I'')")
    for layer in config.contrastive.layers:
        if layer not in CONTRASTIVE_LAYERS:
            _fail(
                "contrastive.layers",
                tuple(config.contrastive.layers),
                "a tuple of " + ", ".join(CONTRASTIVE_LAYERS),
            )
    for key, value in (
        ("model.spade_recompute", m.spade_recompute),
        ("regenerate_fakes_for_d", config.regenerate_fakes_for_d),
        ("xla_cpu_fusion_emitters", config.get("xla_cpu_fusion_emitters", False)),
    ):
        if not isinstance(value, bool):
            _fail(key, value, "True, False")
    if not 0.0 <= float(config.ema_decay) < 1.0:
        _fail("ema_decay", config.ema_decay, "a float in [0, 1)")
    _validate_fid(config)
    return config


def _validate_fid(config: ml_collections.ConfigDict) -> None:
    """The periodic-FID fields (files are checked when training starts: `train_fid`)."""
    every = config.get("fid_every", 0)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        _fail("fid_every", every, "an integer >= 0 (0: no FID during training)")
    n = config.get("fid_num_images", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n == 1:
        _fail("fid_num_images", n, "0 (the whole eval split) or an integer >= 2")
    keep = config.get("keep_best_fid", True)
    if not isinstance(keep, bool):
        _fail("keep_best_fid", keep, "True, False")
    if every > 0 and not config.get("fid_weights", ""):
        from ecgan_jax.eval.inception import CONVERT_COMMAND

        _fail(
            "fid_weights",
            config.get("fid_weights", ""),
            f"the path of pytorch-fid's InceptionV3 weights converted to .npz, needed when "
            f"fid_every > 0 (fid_every = {every}). Nothing is downloaded at run time; make it "
            f"with\n  {CONVERT_COMMAND}\nand pass --config.fid_weights=FILE.npz, or set "
            "--config.fid_every=0",
        )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` the way `--config` does, and validates it."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    name = "_ecgan_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    return validate_config(config)


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
    """Sets one field from a "dotted.key=value" string (the benchmarks' `--set`).

    The value is parsed as the field's current type: tuples from comma-separated items
    ("dataset.image_size=128,256"), booleans from 1/true/yes or 0/false/no. An unknown key or
    an unparsable value is an error naming the key.
    """
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r}: expected key=value")
    key, value = assignment.split("=", 1)
    *path, leaf = key.split(".")
    node = config
    try:
        for p in path:
            node = node[p]
        old = node[leaf]
    except (KeyError, AttributeError, TypeError):
        raise KeyError(f"override {assignment!r}: no config field {key!r}") from None
    try:
        if isinstance(old, tuple):
            node[leaf] = tuple(type(old[0])(v) for v in value.split(","))
        elif isinstance(old, bool):
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(value)
            node[leaf] = value.lower() in ("1", "true", "yes")
        else:
            node[leaf] = type(old)(value)
    except ValueError:
        raise ValueError(
            f"override {assignment!r}: {value!r} is not a valid {type(old).__name__} for {key!r}"
        ) from None
