"""ECGAN on ADE20K (ADEChallengeData2016), 256x256 (docs/DESIGN.md §1.3, §D.4).

    python -m ecgan_jax.main --config=configs/ade20k.py --workdir=runs/ade20k \
        --config.dataset.root=/data/ADEChallengeData2016

`configs/ade20k.py:smoke` is a tiny variant (widths 8, 64x64, batch 2) for tests.
"""

from ecgan_jax.config_lib import base_config


def get_config(arg=None):
    c = base_config()
    d = c.dataset
    d.name = "ade20k"
    d.image_size = (256, 256)
    d.preprocess = "resize_and_crop"
    d.load_size = 286
    d.label_nc = 150
    d.contain_dontcare_label = True
    d.unknown_label = 0
    d.no_instance = True
    d.train_split = "training"
    d.eval_split = "validation"
    c.model.num_upsampling_layers = "normal"
    c.batch_size = 32
    # libtpu 0.0.42 check-fails in its space-to-batch pass on this config's train step, so
    # the step is compiled for TPU without that pass (config_lib, runtime.xla_tpu_space_to_batch).
    c.runtime.xla_tpu_space_to_batch = False
    c.niter, c.niter_decay = 100, 100
    if arg == "smoke":
        d.num_workers = 0  # tests and CPU demos: no worker start-up on any host
        d.image_size = (64, 64)
        d.load_size = 72
        c.model.ngf = c.model.ndf = 8
        c.model.spade_hidden = 16
        c.batch_size = 2
        c.perceptual.random_weights = True
        c.contrastive.dim = 16
        c.contrastive.num_anchors = 64
        c.num_train_steps = 10
    elif arg:
        raise ValueError(f"configs/ade20k.py: unknown variant {arg!r}; allowed: smoke")
    return c
