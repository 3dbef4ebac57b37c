"""Cost of the multi-scale contrastive loss (docs/DESIGN.md §D.3) at the Cityscapes config.

    python benchmarks/contrastive_bench.py            # full table (a few minutes on 2 cores)
    python benchmarks/contrastive_bench.py --quick    # the Cityscapes row only

Times forward + backward (gradients w.r.t. the generator features and the projection heads'
parameters) of: the three projection heads (up_1/up_2/up_3: 256/128/64 channels at 64×128,
128×256, 256×512 for batch 1, D = 128), then `multiscale_contrastive_loss` (1024 anchors per
layer, cross-scale, K = 35, both memory banks full), then the bank update. Reports the median
of `--repeats` runs after a warm-up (compile excluded), and how the cost grows with K, the
anchors and the bank sizes. Random features and labels; timings only, no assertion.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax.losses import (
    init_memory_bank,
    l2_normalize,
    multiscale_contrastive_loss,
    update_memory_bank,
)
from ecgan_jax.models.heads import ProjectionHead

LAYERS = (("up_1", 256, 4), ("up_2", 128, 2), ("up_3", 64, 1))  # name, channels, stride


def full_bank(num_classes, dim, pixel_size, region_size, seed=0):
    rng = np.random.default_rng(seed)
    bank = init_memory_bank(
        num_classes=num_classes, dim=dim, pixel_bank_size=pixel_size, region_bank_size=region_size
    )
    return bank._replace(
        pixel=l2_normalize(jnp.asarray(rng.normal(size=bank.pixel.shape), jnp.float32)),
        pixel_valid=jnp.ones_like(bank.pixel_valid),
        region=l2_normalize(jnp.asarray(rng.normal(size=bank.region.shape), jnp.float32)),
        region_valid=jnp.ones_like(bank.region_valid),
    )


def make_case(
    *, batch, height, width, num_classes, num_anchors, pixel_size, region_size, dim=128, heads=True
):
    key = jax.random.PRNGKey(0)
    labels = jax.random.randint(key, (batch, height, width), -1, num_classes)
    feats, modules, params = [], [], []
    for i, (_, ch, stride) in enumerate(LAYERS):
        x = jax.random.normal(
            jax.random.fold_in(key, i), (batch, height // stride, width // stride, ch)
        )
        feats.append(x)
        head = ProjectionHead(dim=dim)
        modules.append(head)
        params.append(jax.jit(head.init)(jax.random.PRNGKey(i), x[:, :1, :1])["params"])
    if not heads:  # loss only: the features are already embeddings of width dim
        feats = [
            l2_normalize(
                jnp.asarray(f[..., :1]).repeat(dim, -1)
                + 0.1 * jax.random.normal(jax.random.fold_in(key, 10 + i), f.shape[:3] + (dim,))
            )
            for i, f in enumerate(feats)
        ]
    bank = full_bank(num_classes, dim, pixel_size, region_size)

    def loss_fn(params, feats, bank, key):
        if heads:
            emb = [
                m.apply({"params": p}, f) for m, p, f in zip(modules, params, feats, strict=True)
            ]
        else:
            emb = feats
        return multiscale_contrastive_loss(
            embeddings=emb,
            labels=labels,
            bank=bank,
            key=key,
            num_classes=num_classes,
            num_anchors=num_anchors,
            temperature=0.1,
            cross_scale=True,
            lambda_pixel=1.0,
            lambda_class=1.0,
        )

    @jax.jit
    def step(params, feats, bank, key):
        (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            params, feats, bank, key
        )
        return loss, grads, update_memory_bank(bank, aux, push_per_class=8)

    return step, (params, feats, bank, key)


def make_heads_only(*, batch, height, width, dim=128, **_):
    """The three projection heads alone (forward + backward), for the breakdown."""
    step, (params, feats, bank, key) = make_case(
        batch=batch,
        height=height,
        width=width,
        num_classes=2,
        num_anchors=1,
        pixel_size=1,
        region_size=1,
        dim=dim,
    )
    heads = [ProjectionHead(dim=dim) for _ in LAYERS]

    @jax.jit
    def run(params, feats, bank, key):
        def f(params, feats):
            return sum(
                jnp.sum(h.apply({"params": p}, x) * 0.5)
                for h, p, x in zip(heads, params, feats, strict=True)
            )

        return jax.grad(f, argnums=(0, 1))(params, feats)

    return run, (params, feats, bank, key)


def time_case(repeats, heads_only=False, **kw):
    step, args = make_heads_only(**kw) if heads_only else make_case(**kw)
    t0 = time.perf_counter()
    jax.block_until_ready(step(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        a = args[:3] + (jax.random.fold_in(args[3], i + 1),)
        t0 = time.perf_counter()
        jax.block_until_ready(step(*a))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Cityscapes rows only")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base = dict(
        batch=1,
        height=256,
        width=512,
        num_classes=35,
        num_anchors=1024,
        pixel_size=64,
        region_size=16,
    )
    cpu = platform.processor() or platform.machine()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({cpu}), {os.cpu_count()} cores")
    print("| case | fwd+bwd median | compile |")
    print("|---|---|---|")

    def row(label, **over):
        cfg = {**base, **over}
        t, c = time_case(args.repeats, **cfg)
        print(f"| {label} | {t * 1e3:.0f} ms | {c:.1f} s |", flush=True)

    row("Cityscapes: heads + loss + bank update (B=1, K=35, A=1024, banks 64/16 full)")
    row("same, loss + bank update only (embeddings given)", heads=False)
    row("same, the three projection heads only", heads_only=True)
    if args.quick:
        return
    for k in (150, 182):
        row(f"K = {k}", num_classes=k)
    for a in (256, 4096):
        row(f"anchors = {a}", num_anchors=a)
    for p, r in ((256, 64), (1024, 256)):
        row(f"banks = {p}/{r} per class", pixel_size=p, region_size=r)
    row("batch 2", batch=2)


if __name__ == "__main__":
    main()
