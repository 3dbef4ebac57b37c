"""ecgan_jax.losses: the losses as a library (docs/DESIGN.md §4.1, §D.1, §D.3).

Imports only jax and numpy (no flax, no configs, no TensorFlow). Every function takes
keyword-only arguments (except the positional arrays of `supervised_contrastive_loss`),
documents shapes and dtypes, and reduces in float32.
"""

from ecgan_jax.losses.adversarial import (
    feature_matching_loss,
    hinge_discriminator_fake_loss,
    hinge_discriminator_loss,
    hinge_discriminator_real_loss,
    hinge_generator_loss,
)
from ecgan_jax.losses.contrastive import (
    ContrastiveAux,
    class_contrastive_loss,
    multiscale_contrastive_loss,
    pixel_contrastive_loss,
    supervised_contrastive_loss,
)
from ecgan_jax.losses.memory_bank import (
    MemoryBank,
    bank_pixel_contrast,
    bank_region_contrast,
    init_memory_bank,
    push_to_queue,
    update_memory_bank,
)
from ecgan_jax.losses.perceptual import VGG_LAYER_WEIGHTS, vgg_perceptual_loss
from ecgan_jax.losses.sampling import (
    ANCHOR_SELECTIONS,
    AnchorSample,
    anchor_scores,
    class_counts,
    l2_normalize,
    region_embeddings,
    resize_labels_nearest,
    sample_anchors,
    select_top_pixels,
    valid_labels,
)
from ecgan_jax.losses.similarity import similarity_loss

__all__ = [
    "ANCHOR_SELECTIONS",
    "AnchorSample",
    "anchor_scores",
    "ContrastiveAux",
    "MemoryBank",
    "VGG_LAYER_WEIGHTS",
    "bank_pixel_contrast",
    "bank_region_contrast",
    "class_contrastive_loss",
    "class_counts",
    "feature_matching_loss",
    "hinge_discriminator_fake_loss",
    "hinge_discriminator_loss",
    "hinge_discriminator_real_loss",
    "hinge_generator_loss",
    "init_memory_bank",
    "l2_normalize",
    "multiscale_contrastive_loss",
    "pixel_contrastive_loss",
    "push_to_queue",
    "region_embeddings",
    "resize_labels_nearest",
    "sample_anchors",
    "select_top_pixels",
    "similarity_loss",
    "supervised_contrastive_loss",
    "update_memory_bank",
    "vgg_perceptual_loss",
    "valid_labels",
]
