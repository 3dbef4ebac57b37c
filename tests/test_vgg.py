"""VGG19 feature extractor and the torchvision converter (docs/DESIGN.md §4.1, §D.2)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax.models import vgg
from ecgan_jax.models.vgg import max_pool_2x2

# torchvision vgg19().features layout: 3×3 convs at these indices, with (out, in) channels
TORCH_CONVS = {
    0: (64, 3),
    2: (64, 64),
    5: (128, 64),
    7: (128, 128),
    10: (256, 128),
    12: (256, 256),
    14: (256, 256),
    16: (256, 256),
    19: (512, 256),
    21: (512, 512),
    23: (512, 512),
    25: (512, 512),
    28: (512, 512),
    30: (512, 512),
    32: (512, 512),
    34: (512, 512),
}


def synthetic_state_dict(seed=0):
    """A full torchvision vgg19 state dict (features + classifier) of random numpy arrays."""
    rng = np.random.default_rng(seed)
    sd = {}
    for n, (o, i) in TORCH_CONVS.items():
        sd[f"features.{n}.weight"] = (rng.normal(size=(o, i, 3, 3)) * np.sqrt(2 / (9 * i))).astype(
            np.float32
        )
        sd[f"features.{n}.bias"] = (0.1 * rng.normal(size=(o,))).astype(np.float32)
    for n, (o, i) in {0: (4096, 8), 3: (8, 8), 6: (10, 8)}.items():  # shapes irrelevant here
        sd[f"classifier.{n}.weight"] = np.zeros((o, i), np.float32)
        sd[f"classifier.{n}.bias"] = np.zeros((o,), np.float32)
    return sd


def np_conv3x3(x, w, b):
    """x (B, H, W, Cin), torch OIHW weight, zero padding 1, as an explicit correlation."""
    bsz, h, wd, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((bsz, h, wd, w.shape[0]))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("bhwi,oi->bhwo", xp[:, dy : dy + h, dx : dx + wd], w[:, :, dy, dx])
    return out + b


def np_maxpool(x):
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    sd = synthetic_state_dict()
    d = tmp_path_factory.mktemp("vgg")
    np.savez(d / "torchvision_vgg19.npz", **sd)
    assert vgg.main(["--convert", str(d / "torchvision_vgg19.npz"), "--out", str(d / "v.npz")]) == 0
    return sd, vgg.load_vgg19_params(str(d / "v.npz"))


def test_param_layout_and_count():
    shapes = vgg.vgg19_param_shapes()
    assert sum(int(np.prod(s)) for s in shapes.values()) == 12_944_960  # docs/DESIGN.md §2.6
    params = vgg.random_vgg19_params(0)["params"]
    for key, shape in shapes.items():
        layer, leaf = key.split(".")
        assert params[layer][leaf].shape == shape
        assert params[layer][leaf].dtype == jnp.float32
    # He-normal kernels: std sqrt(2 / fan_in); zero biases; the same seed gives the same draw.
    k = np.asarray(params["conv10"]["kernel"])
    np.testing.assert_allclose(k.std(), np.sqrt(2 / (9 * 128)), rtol=0.02)
    assert not np.any(np.asarray(params["conv10"]["bias"]))
    np.testing.assert_array_equal(k, vgg.random_vgg19_params(0)["params"]["conv10"]["kernel"])
    assert not np.array_equal(k, vgg.random_vgg19_params(1)["params"]["conv10"]["kernel"])


def test_converter_round_trip_values(converted):
    sd, variables = converted
    p = variables["params"]
    assert set(p) == {f"conv{n}" for n in TORCH_CONVS if n < 30}
    for n in (0, 12, 28):
        np.testing.assert_array_equal(
            np.asarray(p[f"conv{n}"]["kernel"]), sd[f"features.{n}.weight"].transpose(2, 3, 1, 0)
        )
        np.testing.assert_array_equal(np.asarray(p[f"conv{n}"]["bias"]), sd[f"features.{n}.bias"])


def test_first_layers_match_numpy(converted):
    sd, variables = converted
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, 16, 18, 3)).astype(np.float32)
    feats = jax.jit(vgg.VGG19Features().apply)(variables, jnp.asarray(x))
    assert [f.shape for f in feats] == [
        (2, 16, 18, 64),
        (2, 8, 9, 128),
        (2, 4, 4, 256),
        (2, 2, 2, 512),
        (2, 1, 1, 512),
    ]
    relu = lambda v: np.maximum(v, 0)
    r11 = relu(np_conv3x3(x, sd["features.0.weight"], sd["features.0.bias"]))
    np.testing.assert_allclose(np.asarray(feats[0]), r11, rtol=1e-4, atol=1e-5)
    h = relu(np_conv3x3(r11, sd["features.2.weight"], sd["features.2.bias"]))
    r21 = relu(np_conv3x3(np_maxpool(h), sd["features.5.weight"], sd["features.5.bias"]))
    np.testing.assert_allclose(np.asarray(feats[1]), r21, rtol=1e-4, atol=1e-4)


def test_imagenet_normalize_switch(converted):
    _, variables = converted
    x = np.random.default_rng(2).uniform(-1, 1, size=(1, 8, 8, 3)).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    manual = ((x + 1) / 2 - mean) / std
    a = vgg.VGG19Features(imagenet_normalize=True).apply(variables, jnp.asarray(x))[0]
    b = vgg.VGG19Features().apply(variables, jnp.asarray(manual, jnp.float32))[0]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    c = vgg.VGG19Features().apply(variables, jnp.asarray(x))[0]
    assert float(jnp.abs(a - c).max()) > 1e-2


def test_matches_torch_sequential_when_available(converted, tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed: numpy checks above")
    sd, _ = converted
    layers = []
    for n in range(30):
        if n in TORCH_CONVS:
            o, i = TORCH_CONVS[n]
            layers.append(torch.nn.Conv2d(i, o, 3, padding=1))
        elif n in (4, 9, 18, 27):
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    net.load_state_dict(
        {
            k[len("features.") :]: torch.from_numpy(v)
            for k, v in sd.items()
            if k.startswith("features.") and int(k.split(".")[1]) < 30
        }
    )
    # .pth round trip through the CLI (full state dict incl. classifier and features.30+)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "vgg19.pth")
    assert (
        vgg.main(["--convert", str(tmp_path / "vgg19.pth"), "--out", str(tmp_path / "o.npz")]) == 0
    )
    variables = vgg.load_vgg19_params(str(tmp_path / "o.npz"))
    x = np.random.default_rng(3).uniform(-1, 1, size=(1, 32, 32, 3)).astype(np.float32)
    feats = jax.jit(vgg.VGG19Features().apply)(variables, jnp.asarray(x))
    with torch.no_grad():
        h = torch.from_numpy(x.transpose(0, 3, 1, 2))
        want = []
        for start, stop in ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30)):
            h = net[start:stop](h)
            want.append(h.numpy().transpose(0, 2, 3, 1))
    for got, ref in zip(feats, want, strict=True):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_bad_files_name_the_file_and_keys(tmp_path, converted):
    sd = synthetic_state_dict()
    del sd["features.5.bias"]
    sd["features.7.weight"] = sd["features.7.weight"][:, :10]
    sd["module.extra"] = np.zeros(1, np.float32)
    np.savez(tmp_path / "bad.npz", **sd)
    with pytest.raises(ValueError) as e:
        vgg.convert_vgg19(str(tmp_path / "bad.npz"), str(tmp_path / "out.npz"))
    msg = str(e.value)
    assert "bad.npz" in msg and "features.5.bias" in msg and "features.7.weight" in msg
    assert "module.extra" in msg
    # a torchvision-layout file given to the loader: told to convert first
    np.savez(tmp_path / "tv.npz", **synthetic_state_dict())
    with pytest.raises(ValueError, match="tv.npz.*--convert"):
        vgg.load_vgg19_params(str(tmp_path / "tv.npz"))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        vgg.load_vgg19_params(str(tmp_path / "nope.npz"))
    # a converted file with a wrong shape
    p = jax.tree_util.tree_map(np.asarray, converted[1]["params"])
    flat = {f"{layer}.{leaf}": v for layer, d in p.items() for leaf, v in d.items()}
    flat["conv0.bias"] = flat["conv0.bias"][:3]
    np.savez(tmp_path / "short.npz", **flat)
    with pytest.raises(ValueError, match=r"short.npz.*conv0.bias: \(3,\)"):
        vgg.load_vgg19_params(str(tmp_path / "short.npz"))


@pytest.mark.parametrize("shape", [(2, 8, 12, 3), (1, 7, 9, 2)])
def test_max_pool_2x2_equals_flax_max_pool_forward_and_gradient(shape):
    # Random floats have no ties, so even the backward must be identical; odd sizes are cropped.
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))

    def ref(x):
        return (nn.max_pool(x, (2, 2), strides=(2, 2)) * w).sum()

    def ours(x):
        return (max_pool_2x2(x) * w).sum()

    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
    np.testing.assert_array_equal(jax.grad(ours)(x), jax.grad(ref)(x))
