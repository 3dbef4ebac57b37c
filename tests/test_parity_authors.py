"""Parity with the authors' PyTorch ECGAN on the shared fixtures (../shared/fixtures/README.md).

For the Cityscapes (64x128, `more`) and ADE20K (64x64, `normal`) fixtures, made by the authors'
code with ngf = ndf = 4 and random weights, in eval mode:
* `encode_labels` reproduces the authors' generator input `seg_nchw` exactly;
* the converted G reproduces I′, I″ and I′_e, and the converted D every layer of both scales on
  concat(seg, I″), to max abs diff <= 1e-4;
* one training-mode G call continues PyTorch's algorithm from the converted state: spectral-norm
  u, v advance by one power iteration from the stored ones, and SyncBN running statistics move
  with momentum 0.1 towards the batch mean and the *unbiased* batch variance.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ecgan_jax.config_lib import load_config
from ecgan_jax.interop.authors import torch_discriminator_to_flax, torch_generator_to_flax
from ecgan_jax.models import build_discriminator, build_generator, encode_labels

pytestmark = pytest.mark.fixtures

CASES = {
    "cityscapes": ("configs/cityscapes.py", (64, 128)),
    "ade20k": ("configs/ade20k.py", (64, 64)),
}
TOL = 1e-4
_cache: dict = {}


def _setup(name, authors_fixture):
    """Loads a fixture and converts it; cached per fixture (conversion and jit are not free)."""
    if name not in _cache:
        data = authors_fixture(name)
        spec, size = CASES[name]
        config = load_config(spec)
        config.dataset.image_size = size
        config.model.ngf = config.model.ndf = 4
        g_sd = {k[2:]: v for k, v in data.items() if k.startswith("G/")}
        d_sd = {k[2:]: v for k, v in data.items() if k.startswith("D/")}
        _cache[name] = dict(
            data=data,
            config=config,
            g_sd=g_sd,
            gen=build_generator(config),
            disc=build_discriminator(config),
            g_vars=torch_generator_to_flax(g_sd, config),
            d_vars=torch_discriminator_to_flax(d_sd, config),
        )
    return _cache[name]


def _nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_encode_labels_reproduces_authors_input(name, authors_fixture):
    case = _setup(name, authors_fixture)
    data, config = case["data"], case["config"]
    seg = encode_labels(data["label"], data.get("instance"), config)
    expected = _nhwc(data["seg_nchw"])
    assert seg.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(seg), expected)
    if name == "cityscapes":
        assert expected[..., 35].sum() > 0  # the instance-boundary channel is exercised


@pytest.mark.parametrize("name", sorted(CASES))
def test_generator_eval_matches_authors(name, authors_fixture):
    case = _setup(name, authors_fixture)
    seg = _nhwc(case["data"]["seg_nchw"])
    gen = case["gen"]
    outs = jax.jit(lambda v, s: gen.apply(v, s, train=False))(case["g_vars"], seg)
    for out, key in zip(outs, ("out_first_nchw", "out_final_nchw", "out_edge_nchw"), strict=True):
        ref = _nhwc(case["data"][key])
        assert ref.std() > 0.05, key  # the fixture is not degenerate
        assert out.shape == ref.shape
        diff = np.abs(np.asarray(out) - ref).max()
        assert diff <= TOL, (key, diff)


@pytest.mark.parametrize("name", sorted(CASES))
def test_discriminator_eval_matches_authors(name, authors_fixture):
    case = _setup(name, authors_fixture)
    data, disc = case["data"], case["disc"]
    seg = _nhwc(data["seg_nchw"])
    image = _nhwc(data["out_final_nchw"])
    outs = jax.jit(lambda v, s, i: disc.apply(v, s, i, train=False))(case["d_vars"], seg, image)
    keys = sorted(k for k in data if k.startswith("d_out/"))
    assert keys == [f"d_out/{s}/{layer}" for s in range(2) for layer in range(5)]
    assert len(outs) == 2 and all(len(o) == 5 for o in outs)
    for key in keys:
        _, scale, layer = key.split("/")
        ref = _nhwc(data[key])
        got = np.asarray(outs[int(scale)][int(layer)])
        assert got.shape == ref.shape, key
        assert ref.std() > 0.01, key
        diff = np.abs(got - ref).max()
        assert diff <= TOL, (key, diff)


def _np_normalize(x):
    return x / max(np.linalg.norm(x), 1e-12)


def _np_conv3x3(x, w_oihw, bias):
    """PyTorch Conv2d(k=3, padding=1) on NHWC x, float64."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros((x.shape[0], h, w, w_oihw.shape[0]))
    for a in range(3):
        for c in range(3):
            out += np.einsum("bhwi,oi->bhwo", xp[:, a : a + h, c : c + w], w_oihw[:, :, a, c])
    return out + bias


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_call_continues_pytorch_algorithm(name, authors_fixture):
    case = _setup(name, authors_fixture)
    g_sd, gen, config = case["g_sd"], case["gen"], case["config"]
    seg = _nhwc(case["data"]["seg_nchw"])
    step = jax.jit(lambda v, s: gen.apply(v, s, train=True, mutable=["batch_stats", "spectral"]))
    outs, new = step(case["g_vars"], seg)
    assert all(np.isfinite(np.asarray(o)).all() for o in outs)

    # Spectral norm: one power iteration from PyTorch's stored u (v is recomputed first).
    moved = 0.0
    n_layers = 0
    for block, convs in new["spectral"].items():
        for conv_name, uv in convs.items():
            prefix = f"{block}.{conv_name}"
            w_mat = g_sd[f"{prefix}.weight_orig"].astype(np.float64)
            w_mat = w_mat.reshape(w_mat.shape[0], -1)
            u0 = g_sd[f"{prefix}.weight_u"].astype(np.float64)
            v1 = _np_normalize(w_mat.T @ u0)
            u1 = _np_normalize(w_mat @ v1)
            np.testing.assert_allclose(np.asarray(uv["v"]), v1, atol=2e-5, err_msg=prefix)
            np.testing.assert_allclose(np.asarray(uv["u"]), u1, atol=2e-5, err_msg=prefix)
            moved = max(moved, np.abs(u1 - u0).max())
            n_layers += 1
    assert n_layers == 3 * 2 + 4 * 3
    assert moved > 1e-3  # the vectors really moved: a skipped iteration would be caught

    # SyncBN of head_0.norm_0 normalises the fc output; recompute that in numpy.
    h, w = config.dataset.image_size
    factor = 2 ** {"normal": 5, "more": 6}[config.model.num_upsampling_layers]
    lh, lw = h // factor, w // factor
    rows, cols = (np.arange(lh) * h) // lh, (np.arange(lw) * w) // lw  # floor(dst · in/out)
    x = _np_conv3x3(seg[:, rows][:, :, cols], g_sd["fc.weight"], g_sd["fc.bias"])
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mean = x.mean(axis=(0, 1, 2))
    var_unbiased = x.var(axis=(0, 1, 2)) * n / (n - 1)
    pfn = "head_0.norm_0.param_free_norm"
    expected_mean = 0.9 * g_sd[f"{pfn}.running_mean"] + 0.1 * mean
    expected_var = 0.9 * g_sd[f"{pfn}.running_var"] + 0.1 * var_unbiased
    got = new["batch_stats"]["head_0"]["norm_0"]["param_free_norm"]
    np.testing.assert_allclose(np.asarray(got["mean"]), expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got["var"]), expected_var, rtol=1e-5, atol=1e-6)
    # The increment alone, (new - 0.9·old) / 0.1, is the unbiased batch variance: the biased
    # one differs by n/(n-1) (4/3 for Cityscapes, 8/7 for ADE20K here) and would fail this.
    increment = (np.asarray(got["var"], np.float64) - 0.9 * g_sd[f"{pfn}.running_var"]) / 0.1
    np.testing.assert_allclose(increment, var_unbiased, rtol=1e-2)
    assert np.abs(x.var(axis=(0, 1, 2)) / var_unbiased - 1).min() > 0.1
    # Every other running statistic moved too (all SPADE norms saw the batch).
    old = case["g_vars"]["batch_stats"]
    changed = jax.tree_util.tree_map(
        lambda a, b: bool(np.abs(np.asarray(a) - np.asarray(b)).max() > 0), old, new["batch_stats"]
    )
    assert all(jax.tree_util.tree_leaves(changed))
    # And training-mode outputs (batch statistics) are not the eval-mode ones.
    eval_final = _nhwc(case["data"]["out_final_nchw"])
    assert np.abs(np.asarray(outs[1]) - eval_final).max() > 1e-3
