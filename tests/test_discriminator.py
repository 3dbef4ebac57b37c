"""Tests of the multi-scale PatchGAN discriminator (docs/DESIGN.md §3).

Full-size models are only traced (`jax.eval_shape`). A tiny D is checked value by value against
an independent numpy forward pass of the authors' NLayerDiscriminator (conv k4 p2, spectral norm
with the stored u/v in eval mode, InstanceNorm, LeakyReLU 0.2, AvgPool(3,2,1) excluding padding).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax import config_lib
from ecgan_jax.config_lib import load_config
from ecgan_jax.models import build_discriminator


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def authors_d_param_count(input_nc: int, ndf: int = 64, num_d: int = 2) -> int:
    """From §3: model0 conv+bias, model1-3 SN convs without bias, model4 conv+bias."""
    k = 16  # 4x4 kernels
    widths = (input_nc, ndf, 2 * ndf, 4 * ndf, 8 * ndf)
    n = widths[1] * widths[0] * k + widths[1]
    n += sum(widths[i + 1] * widths[i] * k for i in range(1, 4))
    n += 1 * widths[4] * k + 1
    return num_d * n


def _abstract(spec):
    config = load_config(spec)
    disc = build_discriminator(config)
    h, w = config.dataset.image_size
    s = config_lib.semantic_nc(config)
    seg = jax.ShapeDtypeStruct((1, h, w, s), jnp.float32)
    img = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    return jax.eval_shape(
        lambda a, b: disc.init_with_output(jax.random.key(0), a, b, train=False), seg, img
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("configs/cityscapes.py", 5_601_410),
        ("configs/ade20k.py", 5_836_930),
        ("configs/coco_stuff.py", authors_d_param_count(184 + 3)),
    ],
)
def test_param_count_equals_authors(spec, expected):
    assert authors_d_param_count(39) == 5_601_410  # the formula reproduces §2.6's numbers
    assert authors_d_param_count(154) == 5_836_930
    _, variables = _abstract(spec)
    assert _count(variables["params"]) == expected
    assert set(variables) == {"params", "spectral"}  # no BatchNorm in D
    spectral = variables["spectral"]["discriminator_0"]
    assert sorted(spectral) == ["model1", "model2", "model3"]
    assert spectral["model3"]["v"].shape == (256 * 16,)
    assert "bias" not in variables["params"]["discriminator_1"]["model2"]
    assert "bias" in variables["params"]["discriminator_1"]["model4"]


CITYSCAPES_SIZES = [
    [(129, 257), (65, 129), (33, 65), (34, 66), (35, 67)],
    [(65, 129), (33, 65), (17, 33), (18, 34), (19, 35)],
]
SQUARE_SIZES = [
    [(129, 129), (65, 65), (33, 33), (34, 34), (35, 35)],
    [(65, 65), (33, 33), (17, 17), (18, 18), (19, 19)],
]


@pytest.mark.parametrize(
    ("spec", "sizes"),
    [
        ("configs/cityscapes.py", CITYSCAPES_SIZES),
        ("configs/ade20k.py", SQUARE_SIZES),
        ("configs/coco_stuff.py", SQUARE_SIZES),
    ],
)
def test_feature_sizes_every_layer_and_scale(spec, sizes):
    outputs, _ = _abstract(spec)
    assert len(outputs) == 2
    for scale, expected in enumerate(sizes):
        assert len(outputs[scale]) == 5
        for layer, (hw, channels) in enumerate(zip(expected, (64, 128, 256, 512, 1), strict=True)):
            assert outputs[scale][layer].shape == (1, *hw, channels), (scale, layer)
            assert outputs[scale][layer].dtype == jnp.float32


def test_input_channel_error():
    config = load_config("configs/cityscapes.py:smoke")
    disc = build_discriminator(config)
    seg = jnp.zeros((1, 16, 16, 35))  # 36 expected
    img = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match="39 channels"):
        jax.eval_shape(lambda: disc.init(jax.random.key(0), seg, img))
    with pytest.raises(ValueError, match="39 channels"):
        jax.eval_shape(lambda: disc.init(jax.random.key(0), jnp.zeros((1, 16, 16, 36)), seg))


# ---------------------------------------------------------------------------------------------
# Values of a tiny D against numpy.


def np_conv(x, w_oihw, stride, pad, xp=np):
    """Conv by shifted windows; float64 numpy, or (xp=jax.numpy) float32 and differentiable."""
    x = xp.pad(xp.asarray(x, _float(xp)), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    o, _, kh, kw = w_oihw.shape
    b, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = 0.0
    for a in range(kh):
        for c in range(kw):
            patch = x[:, a : a + stride * (ho - 1) + 1 : stride][
                :, :, c : c + stride * (wo - 1) + 1 : stride
            ]
            out = out + xp.einsum("bhwi,oi->bhwo", patch, xp.asarray(w_oihw[:, :, a, c]))
    return out


def _float(xp):
    return np.float64 if xp is np else jnp.float32


def np_lrelu(x, xp=np):
    return xp.where(x > 0, x, 0.2 * x)


def np_instance_norm(x, xp=np):
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) / xp.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)


def np_avg_pool(x):
    b, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    out = np.zeros((b, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            win = x[:, max(2 * i - 1, 0) : 2 * i + 2, max(2 * j - 1, 0) : 2 * j + 2]
            out[:, i, j] = win.mean(axis=(1, 2))
    return out


def _torch_layout_d(rng, input_nc, ndf):
    """A random D in the authors' layout: {scale: {layer: (w_oihw, bias|None, u|None, v|None)}}."""
    widths = (input_nc, ndf, 2 * ndf, 4 * ndf, 8 * ndf, 1)
    layers = {}
    for scale in range(2):
        for n in range(5):
            o, i = widths[n + 1], widths[n]
            w = rng.normal(size=(o, i, 4, 4)) / np.sqrt(i * 16)
            sn = 1 <= n <= 3
            u = rng.normal(size=o) if sn else None
            v = rng.normal(size=i * 16) if sn else None
            bias = None if sn else rng.normal(size=o) * 0.1
            if sn:
                u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
            layers[scale, n] = tuple(
                None if t is None else t.astype(np.float32) for t in (w, bias, u, v)
            )
    return layers


def _to_flax(layers):
    params, spectral = {}, {}
    for (scale, n), (w, bias, u, v) in layers.items():
        p = params.setdefault(f"discriminator_{scale}", {})[f"model{n}"] = {
            "kernel": jnp.asarray(w.transpose(2, 3, 1, 0))
        }
        if bias is not None:
            p["bias"] = jnp.asarray(bias)
        if u is not None:
            spectral.setdefault(f"discriminator_{scale}", {})[f"model{n}"] = {
                "u": jnp.asarray(u),
                "v": jnp.asarray(v),
            }
    return {"params": params, "spectral": spectral}


def np_discriminator(layers, x, xp=np, avg_pool=np_avg_pool):
    """The authors' D on the concatenated input x (eval mode); numpy float64, or with
    xp=jax.numpy and a jnp `avg_pool` float32 and differentiable."""
    outs = []
    for scale in range(2):
        h, feats = x, []
        for n in range(5):
            w, bias, u, v = layers[scale, n]
            if u is not None:
                w = w / (u.astype(np.float64) @ w.reshape(w.shape[0], -1) @ v)
            h = np_conv(h, w, 2 if n < 3 else 1, 2, xp)
            if bias is not None:
                h = h + xp.asarray(bias)
            if 1 <= n <= 3:
                h = np_instance_norm(h, xp)
            if n < 4:
                h = np_lrelu(h, xp)
            feats.append(h)
        outs.append(feats)
        x = avg_pool(x)
    return outs


def _tiny_d(seed: int, batch: int):
    """(flax D with ndf 2, its authors'-layout layers, flax variables, seg, image, rng)."""
    config = load_config("configs/cityscapes.py:smoke")
    config.model.ndf = 2
    rng = np.random.default_rng(seed)
    layers = _torch_layout_d(rng, 39, 2)
    seg = rng.normal(size=(batch, 13, 18, 36)).astype(np.float32)
    img = rng.normal(size=(batch, 13, 18, 3)).astype(np.float32)
    return build_discriminator(config), layers, _to_flax(layers), seg, img, rng


def test_tiny_discriminator_matches_numpy_and_batch_stacking():
    disc, layers, variables, seg, img, _ = _tiny_d(seed=0, batch=4)
    run = jax.jit(lambda v, s, i: disc.apply(v, s, i, train=False))
    outs = run(variables, seg, img)
    ref = np_discriminator(layers, np.concatenate([seg, img], -1))
    for scale in range(2):
        for n in range(5):
            got = np.asarray(outs[scale][n])
            assert got.shape == ref[scale][n].shape, (scale, n)
            np.testing.assert_allclose(got, ref[scale][n], atol=2e-4, rtol=1e-4)
    assert np.abs(ref[1][4]).std() > 0.05  # a non-degenerate comparison

    # D is per-sample (InstanceNorm only): a stacked batch equals separate calls, which is what
    # lets the three fake/real pairs share one D call (§D.2). Train mode too, with u/v updates.
    train = jax.jit(lambda v, s, i: disc.apply(v, s, i, train=True, mutable=["spectral"]))
    both, upd = train(variables, seg, img)
    first, upd_a = train(variables, seg[:2], img[:2])
    second, _ = train(variables, seg[2:], img[2:])
    for scale in range(2):
        for n in range(5):
            joined = np.concatenate([np.asarray(first[scale][n]), np.asarray(second[scale][n])])
            np.testing.assert_allclose(np.asarray(both[scale][n]), joined, atol=1e-5)
    jax.tree_util.tree_map(np.testing.assert_array_equal, upd, upd_a)
    # Train mode advanced the stored vectors (one power iteration).
    w, _, u, _ = layers[0, 2]
    w_mat = w.reshape(w.shape[0], -1).astype(np.float64)
    v1 = w_mat.T @ u
    v1 /= np.linalg.norm(v1)
    u1 = w_mat @ v1
    u1 /= np.linalg.norm(u1)
    np.testing.assert_allclose(upd["spectral"]["discriminator_0"]["model2"]["u"], u1, atol=1e-5)


def test_image_gradient_equals_the_concatenated_conv_and_skips_the_label_channels():
    from ecgan_jax.models.layers import avg_pool_exclude_pad

    disc, layers, variables, seg, img, rng = _tiny_d(seed=1, batch=2)
    seg, img = jnp.asarray(seg), jnp.asarray(img)

    def reference(i):  # the concatenated input, as the authors' D
        x = jnp.concatenate([seg, i], -1)
        return np_discriminator(layers, x, xp=jnp, avg_pool=avg_pool_exclude_pad)

    weights = [  # only the output shapes are needed here: traced, not run op by op
        jnp.asarray(rng.normal(size=o.shape).astype(np.float32))
        for o in jax.tree_util.tree_leaves(jax.eval_shape(reference, img))
    ]

    def loss(outs):
        return sum(
            jnp.sum(o * wt) for o, wt in zip(jax.tree_util.tree_leaves(outs), weights, strict=True)
        )

    ours = jax.jit(jax.grad(lambda i: loss(disc.apply(variables, seg, i, train=False))))
    ref = jax.jit(jax.grad(lambda i: loss(reference(i))))
    got, want = np.asarray(ours(img)), np.asarray(ref(img))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert np.abs(want).max() > 0.1  # a non-degenerate comparison
    # The input gradient of the first conv is computed for the 3 image channels only, not for
    # all 39 of concat(seg, image) (whose scratch matrix is 0.3 GB at the full config).
    hlo = ours.lower(img).compile().as_text()
    conv_shapes = re.findall(r"= f32\[([0-9,]+)\]\{[0-9,]*\} convolution\(", hlo)
    assert conv_shapes and not [s for s in conv_shapes if s.endswith(",39")], conv_shapes
