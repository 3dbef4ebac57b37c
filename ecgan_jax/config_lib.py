"""Configuration schema shared by every `configs/*.py` file (docs/DESIGN.md §1.3, §D.4).

Config files under `configs/` call `base_config()` and override what differs per dataset; the
`:smoke` argument of each shrinks widths, sizes and step counts for tests and CPU demos.
`load_config("configs/cityscapes.py:smoke")` loads a config file by path (as `--config` does),
and `validate_config` checks the fields with messages that name the field and allowed values.

Only this module and the factories (`ecgan_jax.models.build_*`) read a ConfigDict; modules and
losses take plain typed arguments.
"""

from __future__ import annotations

import importlib.util
import numbers
import os
import sys

import ml_collections

UPSAMPLING_LAYERS = {"normal": 5, "more": 6, "most": 7}
DATASETS = ("cityscapes", "ade20k", "coco_stuff", "custom", "synthetic")
DTYPES = ("float32", "bfloat16")
CONTRASTIVE_LAYERS = ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3")


def base_config() -> ml_collections.ConfigDict:
    """Every field the project reads, with the authors'/project defaults (docs/DESIGN.md §D.4)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # --- data (docs/DESIGN.md §7, §D.6) ---
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
    # grain worker processes: an integer >= 0, or "auto" = host cores - 1, at most 32, and 0 on
    # 1-2 cores (data/pipeline.auto_num_workers). object-typed: it takes either kind of value.
    d.num_workers = ml_collections.FieldReference("auto", field_type=object)
    d.prefetch = 2
    d.synthetic_num_images = 256  # size of the embedded synthetic dataset
    d.synthetic_eval_images = 16

    # --- model (docs/DESIGN.md §2, §3) ---
    c.model = m = ml_collections.ConfigDict()
    m.ngf = 64
    m.ndf = 64
    m.num_upsampling_layers = "normal"  # normal / more / most
    m.spade_hidden = 128  # SPADE mlp_shared width (hard-coded 128 in the authors' code)
    m.num_D = 2
    m.n_layers_D = 4
    m.dtype = "float32"  # activation dtype: float32 or bfloat16 (params stay float32)

    # --- runtime: how the model is compiled, never what it computes ---
    c.runtime = r = ml_collections.ConfigDict()
    # XLA:CPU machinery (ecgan_jax/xla_cpu): blocked conv weight gradients, SPADE and head
    # recomputation, bit-packed VGG masks, memory ties in the step. "auto": on when the mesh the
    # function is compiled for is made of CPU devices; "on"/"off" force it. Same values.
    r.cpu_kernels = "auto"
    # Rematerialisation (training/remat.py), on any backend: "none" keeps every activation for
    # the backward pass; "spade" recomputes each SPADE layer, "blocks" each generator residual
    # block, there. Less memory for more FLOPs (`python -m ecgan_jax.plan` shows both).
    r.remat = "none"
    # XLA:CPU code generation for the train step only (ignored on GPU/TPU). False compiles its
    # fused elementwise ops with XLA's LLVM IR emitters instead of its newer MLIR fusion
    # emitters (XLA's default), which keep every kernel in memory until the end of the compile;
    # same step time (BENCHMARKS.md, "Sixth session"). True: XLA's default.
    r.xla_cpu_fusion_emitters = False
    # XLA:TPU's space-to-batch pass for the train step (ignored off TPU). libtpu 0.0.42 aborts
    # on it compiling ADE20K's step (a check failure on a discriminator weight-gradient
    # convolution), so configs/ade20k.py sets False: the pass is then disabled for that jit
    # (`xla_disable_hlo_passes`). True: XLA's default (BENCHMARKS.md, "space-to-batch").
    r.xla_tpu_space_to_batch = True

    # --- optimisation (docs/DESIGN.md §4.1, §D.4) ---
    c.batch_size = 32  # global batch over all devices and hosts
    c.lr = 2e-4  # base lr; TTUR gives lr_G = lr/2, lr_D = 2 lr
    c.ttur = True
    c.beta1 = 0.0
    c.beta2 = 0.9
    c.niter = 100  # epochs at constant lr
    c.niter_decay = 100  # epochs of linear decay to 0
    c.num_train_steps = -1  # > 0 overrides the epoch schedule (decay over the last half)
    # A resumed run keeps the lr schedule it started with (run.json) when the step count
    # changes; True: the lr reached at the resume step decays linearly to 0 at the new end.
    c.extend_schedule = False
    c.lambda_feat = 10.0
    c.lambda_vgg = 10.0
    c.loss_weights = (1.0, 1.0, 2.0)  # (I', I'_e, I'')
    c.regenerate_fakes_for_d = False
    c.ema_decay = 0.9999

    # --- perceptual loss (docs/DESIGN.md §4.1, §D.2) ---
    c.perceptual = p = ml_collections.ConfigDict()
    p.enabled = True
    p.weights_path = ""  # .npz made by `python -m ecgan_jax.models.vgg --convert`
    p.random_weights = False  # tests/demos only: a randomly initialised VGG19
    p.imagenet_normalize = False
    # VGG19's computation dtype, float32 or bfloat16, independent of model.dtype (its params
    # stay float32). float32 by default: the loss compares small feature differences
    # (docs/DESIGN.md §D.7, "numerics"; BENCHMARKS.md "bf16").
    p.dtype = "float32"

    # --- contrastive learning (docs/DESIGN.md §D.3) ---
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
    # How the anchors' top-k runs over a sharded batch (losses.sampling.select_top_pixels; the
    # same anchors whichever): "auto" = per device shard on a mesh of several devices,
    # "global" = one top-k over every pixel of the global batch on every device (what the
    # planner shows the per-shard one saves), "per_shard".
    cl.anchor_selection = "auto"

    # --- similarity loss (docs/DESIGN.md §D.1) ---
    c.lambda_sim = 0.0

    # --- devices ---
    c.num_devices = -1  # -1: every device of every process; N > 0: the first N (one host)

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


class ConfigError(ValueError):
    """Invalid config fields; the message lists each one (field, value, what is allowed)."""


def _fail(field: str, value, allowed: str) -> None:
    raise ConfigError(f"config field '{field}' = {value!r} is invalid; allowed: {allowed}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# (field, test, allowed) of every numeric field with a range; `c` is the whole config.
_INT_AT_LEAST = {
    "model.ngf": 1, "model.ndf": 1, "model.num_D": 1, "model.n_layers_D": 1,
    "model.spade_hidden": 1, "dataset.label_nc": 1,
    "dataset.prefetch": 0, "dataset.synthetic_num_images": 1, "dataset.synthetic_eval_images": 1,
    "dataset.unknown_label": -1, "dataset.load_size": 1, "batch_size": 1, "niter": 0,
    "niter_decay": 0, "contrastive.dim": 1, "contrastive.num_anchors": 1,
    "contrastive.pixel_bank_size": 1, "contrastive.region_bank_size": 1,
    "contrastive.bank_push_per_class": 1, "log_every": 1, "image_every": 0,
    "checkpoint_every": 1, "keep_checkpoints": 1, "num_eval_images": 1,
}  # fmt: skip
_FLOAT_AT_LEAST = {
    "lambda_feat": 0.0, "lambda_vgg": 0.0, "lambda_sim": 0.0, "contrastive.lambda_pixel": 0.0,
    "contrastive.lambda_class": 0.0,
}  # fmt: skip
_BOOLS = (
    "ttur", "regenerate_fakes_for_d", "extend_schedule", "dataset.flip",
    "dataset.contain_dontcare_label",
    "dataset.no_instance", "perceptual.enabled", "perceptual.random_weights",
    "perceptual.imagenet_normalize", "contrastive.enabled", "contrastive.cross_scale",
    "runtime.xla_cpu_fusion_emitters", "runtime.xla_tpu_space_to_batch", "keep_best_fid",
)  # fmt: skip
_CHOICES = {
    "dataset.name": DATASETS, "dataset.source": ("files", "tfds"),
    "dataset.preprocess": ("fixed", "resize_and_crop"),
    "dataset.edges": ("on_the_fly", "precomputed"),
    "model.num_upsampling_layers": tuple(UPSAMPLING_LAYERS), "model.dtype": DTYPES,
    "perceptual.dtype": DTYPES,
    "runtime.cpu_kernels": ("auto", "on", "off"), "runtime.remat": ("none", "spade", "blocks"),
    # losses.sampling.ANCHOR_SELECTIONS (config_lib imports no jax; tests/test_config_lib.py).
    "contrastive.anchor_selection": ("auto", "global", "per_shard"),
}  # fmt: skip


MAX_AUTO_WORKERS = 32


def num_workers_setting(value) -> int | str:
    """`dataset.num_workers` checked: an int >= 0 (digits from a command-line override become
    one) or "auto" (resolved per host by `data.pipeline.resolve_num_workers`); else
    ConfigError."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise ConfigError(
        f"config field 'dataset.num_workers' = {value!r} is invalid; allowed: 'auto' (host "
        f"cores - 1, at most {MAX_AUTO_WORKERS}; 0 on 1-2 cores) or an integer >= 0"
    )


def get_field(config: ml_collections.ConfigDict, field: str):
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def _problems(config: ml_collections.ConfigDict) -> list[str]:
    """Every invalid field of `config`, one line each: field, value, what is allowed."""
    out = []

    def bad(field, value, allowed):
        out.append(f"config field '{field}' = {value!r} is invalid; allowed: {allowed}")

    for field, choices in _CHOICES.items():
        if get_field(config, field) not in choices:
            bad(field, get_field(config, field), ", ".join(choices))
    for field, low in _INT_AT_LEAST.items():
        v = get_field(config, field)
        if not _is_int(v) or v < low:
            bad(field, v, f"an integer >= {low}")
    try:
        num_workers_setting(config.dataset.num_workers)
    except ConfigError as e:
        out.append(str(e))
    for field, low in _FLOAT_AT_LEAST.items():
        v = get_field(config, field)
        if not _is_number(v) or not low <= v < float("inf"):
            bad(field, v, f"a finite number >= {low}")
    for field in _BOOLS:
        if not isinstance(get_field(config, field), bool):
            bad(field, get_field(config, field), "True, False")
    if not _is_number(config.lr) or not 0 < config.lr < float("inf"):
        bad("lr", config.lr, "a finite number > 0")
    for field in ("beta1", "beta2", "ema_decay"):
        if not _is_number(config[field]) or not 0.0 <= config[field] < 1.0:
            bad(field, config[field], "a number in [0, 1)")
    if not _is_number(config.contrastive.temperature) or config.contrastive.temperature <= 0:
        bad("contrastive.temperature", config.contrastive.temperature, "a number > 0")
    steps = config.num_train_steps
    if not _is_int(steps) or (steps < 1 and steps != -1):
        bad("num_train_steps", steps, "-1 (the epoch schedule niter + niter_decay) or >= 1")
    elif steps == -1 and _is_int(config.niter) and _is_int(config.niter_decay):
        if config.niter + config.niter_decay < 1:
            bad("niter + niter_decay", config.niter + config.niter_decay, ">= 1 epoch")
    if not _is_int(config.num_devices) or (config.num_devices < 1 and config.num_devices != -1):
        bad("num_devices", config.num_devices, "-1 (every device) or an integer >= 1")
    weights = tuple(config.loss_weights)
    if len(weights) != 3 or not all(_is_number(w) and w >= 0 for w in weights):
        bad("loss_weights", weights, "three numbers >= 0 for (I', I'_e, I'')")
    layers = tuple(config.contrastive.layers)
    if any(layer not in CONTRASTIVE_LAYERS for layer in layers) or (
        config.contrastive.enabled and not layers
    ):
        bad("contrastive.layers", layers, "a non-empty tuple of " + ", ".join(CONTRASTIVE_LAYERS))
    if not out:  # the size rule needs valid upsampling and size fields
        h, w = (int(v) for v in config.dataset.image_size)
        n = num_upsampling(config)
        if h % 2**n or w % 2**n or h <= 0 or w <= 0:
            bad(
                "dataset.image_size",
                tuple(config.dataset.image_size),
                f"(H, W) both positive multiples of 2**{n} = {2**n} "
                f"for num_upsampling_layers='{config.model.num_upsampling_layers}'",
            )
    return out


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every field's type and range; returns the config unchanged.

    Raises `ConfigError` listing every invalid field (one line each) before anything is built.
    """
    problems = _problems(config)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} invalid config fields:\n  " + "\n  ".join(problems))
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


def nearest_fields(config: ml_collections.ConfigDict, key: str, n: int = 3) -> list[str]:
    """The config's dotted field names closest to `key` (for a typo's message)."""
    import difflib

    def names(node, prefix=""):
        for k, v in node.items():
            yield prefix + k
            if isinstance(v, ml_collections.ConfigDict):
                yield from names(v, prefix + k + ".")

    return difflib.get_close_matches(key, list(names(config)), n=n, cutoff=0.5)


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
        near = nearest_fields(config, key)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        raise KeyError(f"override {assignment!r}: no config field {key!r}{hint}") from None
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
