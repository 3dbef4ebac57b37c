"""Tests of the ECGAN generator (docs/DESIGN.md §2.2-2.6): parameter counts, stage shapes,
bfloat16 compute, and the errors on bad input.

Full-size models are only traced (`jax.eval_shape`), never initialised. Numerical parity with the
authors' model is in test_parity_authors.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax import config_lib
from ecgan_jax.config_lib import load_config
from ecgan_jax.models import build_generator, encode_labels


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def authors_g_param_count(S: int, L: int, ngf: int = 64, hidden: int = 128) -> int:
    """Trainable parameters of the authors' G without fc1, from the §2.6 state-dict shapes."""

    def conv(o, i, k, bias=True):
        return o * i * k * k + (o if bias else 0)

    def spade(norm_nc):  # mlp_shared.0, mlp_gamma, mlp_beta (param_free_norm has no params)
        return conv(hidden, S, 3) + 2 * conv(norm_nc, hidden, 3)

    def block(fin, fout):
        fm = min(fin, fout)
        n = conv(fm, fin, 3) + conv(fout, fm, 3) + spade(fin) + spade(fm)
        if fin != fout:
            n += conv(fout, fin, 1, bias=False) + spade(fin)  # conv_s, norm_s
        return n

    nf = 16 * ngf
    total = conv(nf, S, 3)  # fc
    total += 3 * block(nf, nf)  # head_0, G_middle_0, G_middle_1
    for fin, fout in ((16, 8), (8, 4), (4, 2), (2, 1)):  # up_0 .. up_3
        total += block(fin * ngf, fout * ngf)
    widths = (ngf, 32, 16, 8, 3)  # conv_img1..4 and conv_edge1..4
    total += 2 * sum(conv(widths[k + 1], widths[k], 3) for k in range(4))
    c_cat = ngf + 3 + 3 + S  # 70 + S for ngf 64
    total += conv(L, c_cat, 3) + conv(c_cat, L, 3) + conv(3, c_cat, 3)  # comb1, comb2, comb
    return total


@functools.cache
def _abstract_init(spec: str, batch: int = 1):
    """eval_shape of init_with_output(return_features=True) for a config file (full size)."""
    config = load_config(spec)
    gen = build_generator(config)
    h, w = config.dataset.image_size
    seg = jax.ShapeDtypeStruct((batch, h, w, config_lib.semantic_nc(config)), jnp.float32)
    return jax.eval_shape(
        lambda s: gen.init_with_output(jax.random.key(0), s, return_features=True), seg
    )


def test_independent_count_formula_matches_spec_numbers():
    # The formula reproduces the counts the spec gives for the authors' model (§2.6).
    assert authors_g_param_count(36, 35) == 93_164_992
    assert authors_g_param_count(151, 150) == 97_142_727
    assert authors_g_param_count(36, 35) + 35 * 35 + 35 == 93_166_252  # with fc1
    assert authors_g_param_count(151, 150) + 150 * 150 + 150 == 97_165_377


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("configs/cityscapes.py", 93_164_992), ("configs/ade20k.py", 97_142_727)],
)
def test_param_count_equals_authors(spec, expected):
    _, variables = _abstract_init(spec)
    assert _count(variables["params"]) == expected
    assert set(variables) == {"params", "batch_stats", "spectral"}
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))


def test_param_count_coco_from_state_dict_shapes():
    _, variables = _abstract_init("configs/coco_stuff.py")
    expected = authors_g_param_count(S=184, L=182)
    assert 98_000_000 < expected < 99_000_000  # "≈ 98.4 M by hand" (§2.6)
    assert _count(variables["params"]) == expected
    params = variables["params"]
    assert params["conv_comb1"]["kernel"].shape == (3, 3, 254, 182)
    assert params["fc"]["kernel"].shape == (3, 3, 184, 1024)


def test_buffers_match_state_dict_layout():
    # u [O], v [I·kh·kw] per spectral conv; running mean/var [C] per SyncBN (§2.6).
    _, variables = _abstract_init("configs/cityscapes.py")
    spec = variables["spectral"]
    assert spec["head_0"]["conv_0"]["u"].shape == (1024,)
    assert spec["head_0"]["conv_0"]["v"].shape == (9216,)
    assert spec["up_0"]["conv_s"]["v"].shape == (1024,)
    assert spec["up_3"]["conv_1"]["v"].shape == (64 * 9,)
    bs = variables["batch_stats"]
    assert bs["up_1"]["norm_s"]["param_free_norm"]["var"].shape == (512,)
    assert bs["up_1"]["norm_1"]["param_free_norm"]["mean"].shape == (256,)
    n_sn = len(jax.tree_util.tree_leaves(spec)) // 2
    n_bn = len(jax.tree_util.tree_leaves(bs)) // 2
    assert n_sn == 3 * 2 + 4 * 3  # head/middle blocks: conv_0, conv_1; up blocks: + conv_s
    assert n_bn == 3 * 2 + 4 * 3


# (name, H, W, C) of every backbone stage, docs/DESIGN.md §2.2 table.
CITYSCAPES_STAGES = [
    ("head_0", 4, 8, 1024),
    ("G_middle_0", 8, 16, 1024),
    ("G_middle_1", 16, 32, 1024),
    ("up_0", 32, 64, 512),
    ("up_1", 64, 128, 256),
    ("up_2", 128, 256, 128),
    ("up_3", 256, 512, 64),
]
ADE_STAGES = [
    ("head_0", 8, 8, 1024),
    ("G_middle_0", 16, 16, 1024),
    ("G_middle_1", 16, 16, 1024),
    ("up_0", 32, 32, 512),
    ("up_1", 64, 64, 256),
    ("up_2", 128, 128, 128),
    ("up_3", 256, 256, 64),
]


@pytest.mark.parametrize(
    ("spec", "stages", "latent", "semantic_nc"),
    [
        ("configs/cityscapes.py", CITYSCAPES_STAGES, (4, 8), 36),
        ("configs/ade20k.py", ADE_STAGES, (8, 8), 151),
        ("configs/coco_stuff.py", ADE_STAGES, (8, 8), 184),
    ],
)
def test_backbone_stage_shapes(spec, stages, latent, semantic_nc):
    (first, final, edge, features), variables = _abstract_init(spec)
    config = load_config(spec)
    h, w = config.dataset.image_size
    assert set(features) == {s[0] for s in stages}
    for name, sh, sw, c in stages:
        assert features[name].shape == (1, sh, sw, c), name
    # fc: a 3x3 conv semantic_nc -> 1024 applied at the latent size.
    assert variables["params"]["fc"]["kernel"].shape == (3, 3, semantic_nc, 1024)
    assert build_generator(config).latent_size(h, w) == latent
    for out in (first, final, edge):
        assert out.shape == (1, h, w, 3) and out.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# bfloat16 compute on the smoke config.


def _random_variables(abstract, seed):
    """Variables with O(1) activations: kernels N(0, 1/fan_in), biases N(0, 0.1), unit u/v,
    running stats near (0, 1). (Xavier(0.02) would make every output ~1e-6.)"""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:3])
            return rng.normal(size=leaf.shape).astype(np.float32) / np.sqrt(fan_in)
        if name in ("u", "v"):
            x = rng.normal(size=leaf.shape)
            return (x / np.linalg.norm(x)).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 1.5, size=leaf.shape).astype(np.float32)
        return (rng.normal(size=leaf.shape) * 0.1).astype(np.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(draw, abstract)


def test_bfloat16_smoke_close_to_float32():
    config = load_config("configs/cityscapes.py:smoke")
    g32 = build_generator(config)
    config.model.dtype = "bfloat16"
    g16 = build_generator(config)
    assert g16.dtype == jnp.bfloat16
    rng = np.random.default_rng(0)
    h, w = config.dataset.image_size
    label = rng.integers(0, 35, size=(2, h // 8, w // 8)).repeat(8, 1).repeat(8, 2)
    inst = rng.integers(0, 3, size=(2, h // 16, w // 16)).repeat(16, 1).repeat(16, 2)
    seg = encode_labels(label.astype(np.int32), inst.astype(np.int32), config)
    abstract = jax.eval_shape(lambda: g32.init(jax.random.key(0), seg))
    abstract16 = jax.eval_shape(lambda: g16.init(jax.random.key(0), seg))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(abstract16))
    variables = _random_variables(abstract, 1)

    def run(gen):
        return jax.jit(
            lambda v, s: gen.apply(v, s, train=True, mutable=["batch_stats", "spectral"])
        )(variables, seg)

    outs32, new32 = run(g32)
    outs16, new16 = run(g16)
    for a, b in zip(outs32, outs16, strict=True):
        assert a.dtype == b.dtype == jnp.float32
        assert np.isfinite(np.asarray(b)).all()
        assert np.asarray(a).std() > 0.05  # not a degenerate comparison
        a, b = np.asarray(a), np.asarray(b)
        diff = np.abs(a - b)
        # bf16 error accumulates over ~20 convs: a loose tolerance, relative to the output scale.
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert diff.mean() < 0.1 * a.std() and diff.max() < 0.5 and corr > 0.99
        assert diff.max() > 0  # the bfloat16 path really computes in bfloat16
    # Parameters and statistics stay float32; bf16 statistics close to float32 ones.
    for tree in (new16["batch_stats"], new16["spectral"]):
        assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(tree))
    m32 = new32["batch_stats"]["up_3"]["norm_0"]["param_free_norm"]["var"]
    m16 = new16["batch_stats"]["up_3"]["norm_0"]["param_free_norm"]["var"]
    np.testing.assert_allclose(np.asarray(m16), np.asarray(m32), rtol=0.05)
    # Output ranges of §2.3/2.4: edge, final in [-1, 1]; first in ±(1 + σ(1)).
    first, final, edge = (np.asarray(o) for o in outs16)
    assert np.abs(edge).max() <= 1 and np.abs(final).max() <= 1
    assert np.abs(first).max() <= 1 + 1 / (1 + np.exp(-1)) + 1e-2


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_label_values_out_of_range_raise():
    config = load_config("configs/ade20k.py:smoke")
    label = np.full((1, 64, 64), 151, np.int32)  # label_nc 150 + dontcare: 0..150 allowed
    with pytest.raises(ValueError, match=r"0\.\.150"):
        encode_labels(label, None, config)


def test_wrong_channel_count_raises():
    config = load_config("configs/cityscapes.py")
    gen = build_generator(config)
    seg = jnp.zeros((1, 256, 512, 35))  # 36 expected
    with pytest.raises(ValueError, match=r"\(B,H,W,36\)"):
        jax.eval_shape(lambda: gen.init(jax.random.key(0), seg))
    with pytest.raises(ValueError, match="semantic_nc"):
        jax.eval_shape(lambda: gen.init(jax.random.key(0), jnp.zeros((256, 512, 36))))


def test_unreachable_image_size_raises():
    config = load_config("configs/cityscapes.py")  # 'more': H, W multiples of 64
    gen = build_generator(config)
    seg = jnp.zeros((1, 100, 200, 36))
    with pytest.raises(ValueError, match="100x200.*multiples of 64"):
        jax.eval_shape(lambda: gen.init(jax.random.key(0), seg))
    config.dataset.image_size = (100, 200)
    with pytest.raises(ValueError, match=r"dataset\.image_size.*2\*\*6 = 64"):
        config_lib.validate_config(config)
    with pytest.raises(ValueError, match=r"dataset\.image_size"):
        build_generator(config)
    # 'normal' only needs multiples of 32: 96x160 is fine there, not with 'more'.
    config.dataset.image_size = (96, 160)
    with pytest.raises(ValueError, match=r"dataset\.image_size"):
        config_lib.validate_config(config)
    config.model.num_upsampling_layers = "normal"
    config_lib.validate_config(config)
    config.model.num_upsampling_layers = "most_"
    with pytest.raises(ValueError, match="num_upsampling_layers.*normal, more, most"):
        config_lib.validate_config(config)
