"""ECGAN on the embedded synthetic street scenes: the CPU demo (no files, no download).

    python -m ecgan_jax.main --config=configs/synthetic.py --workdir=runs/demo

The scenes are generated in code from a seed (`ecgan_jax.data.synthetic`). The VGG perceptual
loss is off here (no pretrained weights ship with the project, and on a 2-core CPU VGG19 would
cost more than G and D together); pass --config.perceptual.weights_path=vgg19.npz
--config.perceptual.enabled=True to use it.
`configs/synthetic.py:smoke` is the tiny variant used by the tests.
"""

from ecgan_jax.config_lib import base_config


def get_config(arg=None):
    c = base_config()
    d = c.dataset
    d.name = "synthetic"
    d.image_size = (64, 128)
    d.preprocess = "fixed"
    d.label_nc = 8
    d.contain_dontcare_label = False
    d.no_instance = False
    d.synthetic_num_images = 256
    c.model.num_upsampling_layers = "normal"
    c.model.ngf = 16
    c.model.ndf = 16
    c.model.spade_hidden = 32
    c.batch_size = 4
    # A few minutes on a 2-core CPU (the figure, its machine and date: BENCHMARKS.md).
    c.num_train_steps = 300
    c.ema_decay = 0.99
    c.perceptual.enabled = False
    c.contrastive.dim = 32
    c.contrastive.num_anchors = 256
    c.log_every = 25
    c.image_every = 100
    c.checkpoint_every = 100
    c.keep_checkpoints = 1  # the demo workdir stays small (one step of about 65 MB)
    if arg == "smoke":
        d.num_workers = 0  # tests and CPU demos: no worker start-up on any host
        c.perceptual.enabled = True
        c.perceptual.random_weights = True  # tests exercise the VGG path
        d.image_size = (32, 64)
        d.synthetic_num_images = 8
        c.model.ngf = c.model.ndf = 8
        c.model.spade_hidden = 16
        c.batch_size = 2
        c.contrastive.dim = 16
        c.contrastive.num_anchors = 64
        c.num_train_steps = 10
        c.log_every = 1
        c.image_every = 5
        c.checkpoint_every = 5
    elif arg:
        raise ValueError(f"configs/synthetic.py: unknown variant {arg!r}; allowed: smoke")
    return c
