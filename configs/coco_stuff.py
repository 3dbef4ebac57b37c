"""ECGAN on COCO-Stuff, 256x256 (docs/DESIGN.md §1.3, §D.4).

    python -m ecgan_jax.main --config=configs/coco_stuff.py --workdir=runs/coco \
        --config.dataset.root=/data/cocostuff

`configs/coco_stuff.py:smoke` is a tiny variant (widths 8, 64x64, batch 2) for tests.
"""

from ecgan_jax.config_lib import base_config


def get_config(arg=None):
    c = base_config()
    d = c.dataset
    d.name = "coco_stuff"
    d.image_size = (256, 256)
    d.preprocess = "resize_and_crop"
    d.load_size = 286
    d.label_nc = 182
    d.contain_dontcare_label = True
    d.unknown_label = 182
    d.no_instance = False
    c.model.num_upsampling_layers = "normal"
    c.batch_size = 32
    c.niter, c.niter_decay = 50, 50
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
        raise ValueError(f"configs/coco_stuff.py: unknown variant {arg!r}; allowed: smoke")
    return c
