"""ECGAN on Cityscapes, 256x512 (docs/DESIGN.md §1.3, §D.4).

    python -m ecgan_jax.main --config=configs/cityscapes.py --workdir=runs/cityscapes \
        --config.dataset.root=/data/cityscapes

`configs/cityscapes.py:smoke` is a tiny variant (widths 8, 64x128, batch 2) for tests.
"""

from ecgan_jax.config_lib import base_config


def get_config(arg=None):
    c = base_config()
    d = c.dataset
    d.name = "cityscapes"
    d.image_size = (256, 512)
    d.preprocess = "fixed"
    d.label_nc = 35
    d.contain_dontcare_label = False
    d.no_instance = False
    c.model.num_upsampling_layers = "more"
    c.batch_size = 32
    c.niter, c.niter_decay = 100, 100
    if arg == "smoke":
        d.num_workers = 0  # tests and CPU demos: no worker start-up on any host
        d.image_size = (64, 128)
        c.model.ngf = c.model.ndf = 8
        c.model.spade_hidden = 16
        c.batch_size = 2
        c.perceptual.random_weights = True
        c.contrastive.dim = 16
        c.contrastive.num_anchors = 64
        c.num_train_steps = 10
    elif arg:
        raise ValueError(f"configs/cityscapes.py: unknown variant {arg!r}; allowed: smoke")
    return c
