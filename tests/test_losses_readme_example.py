"""Runs the README section "Using the losses as a library" verbatim (keep the two in sync)."""

import os
import subprocess
import sys
import textwrap

README_EXAMPLE = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp
    from ecgan_jax.losses import (
        init_memory_bank, l2_normalize, multiscale_contrastive_loss,
        supervised_contrastive_loss, update_memory_bank,
    )

    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)

    # 1) The core loss on any embeddings: 6 anchors against 10 contrast items, τ = 0.1.
    anchors = l2_normalize(jax.random.normal(k1, (6, 16)))
    contrast = l2_normalize(jax.random.normal(k2, (10, 16)))
    anchor_labels = jnp.array([0, 1, 2, 0, -1, 1])         # -1: ignored
    contrast_labels = jnp.array([0, 0, 1, 1, 2, 2, 0, 1, 2, -1])
    loss = supervised_contrastive_loss(anchors, anchor_labels, contrast, contrast_labels,
                                       temperature=0.1)
    print("supervised contrastive:", float(loss))

    # 2) The multi-scale pixel + class contrastive loss with memory banks, as in training.
    num_classes, dim = 5, 16
    labels = jax.random.randint(k3, (2, 32, 64), -1, num_classes)   # (B, H, W), -1 = ignore
    features = [jax.random.normal(jax.random.fold_in(key, i), (2, 32 // s, 64 // s, dim))
                for i, s in enumerate((4, 2, 1))]                  # one (B, h, w, D) per layer
    embeddings = [l2_normalize(f) for f in features]                # a projection head's output
    bank = init_memory_bank(num_classes=num_classes, dim=dim,
                            pixel_bank_size=64, region_bank_size=16)

    @jax.jit
    def step(embeddings, bank, key):
        (loss, aux), grads = jax.value_and_grad(
            lambda e: multiscale_contrastive_loss(
                embeddings=e, labels=labels, bank=bank, key=key, num_classes=num_classes,
                num_anchors=256, temperature=0.1, cross_scale=True,
                lambda_pixel=1.0, lambda_class=1.0),
            has_aux=True)(embeddings)
        bank = update_memory_bank(bank, aux, push_per_class=8)
        return loss, aux.terms, grads, bank

    for i in range(3):
        loss, terms, grads, bank = step(embeddings, bank, jax.random.fold_in(key, i))
        print(f"step {i}: L_cl = {float(loss):.4f}  pixel = {float(terms['pixel']):.4f}  "
              f"class = {float(terms['class']):.4f}  "
              f"bank fill = {int(bank.pixel_valid.sum())} pixels, "
              f"{int(bank.region_valid.sum())} regions")
    """
)


def test_readme_example_runs_without_flax():
    # A fresh interpreter shows the library works without flax/configs/TensorFlow imported.
    code = README_EXAMPLE + textwrap.dedent(
        """
        import sys
        assert not [m for m in sys.modules if m.split(".")[0] in
                    ("flax", "tensorflow", "ml_collections")], "losses imported flax/TF/config"
        assert 0 < float(loss) < 20
        assert all(bool(jnp.isfinite(g).all()) for g in grads)
        assert int(bank.pixel_valid.sum()) == 5 * 3 * 8   # 3 pushes of 8 pixels per class
        assert int(bank.region_valid.sum()) == 5 * 16     # every class present: queues full
        """
    )
    # conftest's environment: CPU devices and the persistent compilation cache
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "supervised contrastive:" in result.stdout and "step 2: L_cl" in result.stdout
