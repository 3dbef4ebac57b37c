"""DeepLab-v2 segmenter (ecgan_jax/eval/deeplab.py): key layout, converter, numerics vs torch.

The expected key list and the torch reference below are written from kazuto1011/deeplab-
pytorch's `libs/models/resnet.py` (`_ConvBnReLU` = conv + bn, `_Bottleneck` with `reduce`
carrying the stride, `conv3x3`, `increase`, `shortcut` on each layer's `block1`, `_Stem` with a
ceil-mode pool), `libs/models/deeplabv2.py` (layers 2..5 with strides 1, 2, 1, 1 and dilations
1, 1, 2, 4; `_ASPP` summing `c0..c3`), `libs/models/msc.py` (`MSC.base`, scales 0.5 and 0.75,
pixel-wise max) and `main.py test`, independently of the converter, which derives its keys
from the Flax modules.

Released file (`deeplabv2_resnet101_msc-cocostuff164k-100000.pth`, 528 tensors), keys with
their shapes:
* `base.layer1.conv1.conv.weight` (64, 3, 7, 7), `base.layer1.conv1.bn.{weight,bias,
  running_mean,running_var}` (64,);
* `base.layer{2,3,4,5}.block{1..n}.reduce.conv.weight` (mid, in, 1, 1),
  `.conv3x3.conv.weight` (mid, mid, 3, 3), `.increase.conv.weight` (out, mid, 1, 1), each
  with `.bn.*`, and on block1 `.shortcut.conv.weight` (out, in, 1, 1) + `.shortcut.bn.*`;
  out = 256, 512, 1024, 2048, mid = out / 4, n = 3, 4, 23, 3;
* `base.aspp.c{0,1,2,3}.weight` (182, 2048, 3, 3), `base.aspp.c{i}.bias` (182,).
(`*.num_batches_tracked` is ignored.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_resnet import add_bn, load_on_meta, nchw, synthetic_state_dict

from ecgan_jax.eval import deeplab, segmentation

# One worker under xdist, so the module fixture (full-size weights, converted) is built once.
pytestmark = pytest.mark.xdist_group("deeplab")
SHALLOW = (1, 1, 1, 1)  # one block per layer for the MSC test: same code, fast compile


def expected_shapes(n_blocks=(3, 4, 23, 3), classes=182):
    shapes = {}

    def conv_bn(key, cout, cin, k):
        shapes[f"{key}.conv.weight"] = (cout, cin, k, k)
        add_bn(shapes, f"{key}.bn", cout)

    conv_bn("base.layer1.conv1", 64, 3, 7)
    cin = 64
    for layer, (out, n) in enumerate(zip((256, 512, 1024, 2048), n_blocks, strict=True), 2):
        mid = out // 4
        for b in range(1, n + 1):
            key = f"base.layer{layer}.block{b}"
            conv_bn(f"{key}.reduce", mid, cin if b == 1 else out, 1)
            conv_bn(f"{key}.conv3x3", mid, mid, 3)
            conv_bn(f"{key}.increase", out, mid, 1)
            if b == 1:
                conv_bn(f"{key}.shortcut", out, cin, 1)
        cin = out
    for i in range(4):
        shapes[f"base.aspp.c{i}.weight"] = (classes, 2048, 3, 3)
        shapes[f"base.aspp.c{i}.bias"] = (classes,)
    return shapes


def synthetic(shapes, seed):
    """Random tensors keeping activations O(1) (`torch_resnet.synthetic_state_dict`): the
    ASPP's convs 4x smaller (its 4 convs are summed), a small scale on each `increase` and
    `shortcut` BN."""
    return synthetic_state_dict(
        shapes,
        seed,
        small_scale=lambda key: ".increase." in key or ".shortcut." in key,
        conv_divisor=lambda key: 4 if ".aspp." in key else 1,
    )


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A state dict in the released layout, saved with a `module.` prefix and a
    `num_batches_tracked`, converted by the command line and read back:
    (state dict, variables, (source, out) paths)."""
    sd = synthetic(expected_shapes(), 1)
    folder = tmp_path_factory.mktemp("deeplab")
    src = folder / "deeplab.npz"
    extra = {"module.base.layer1.conv1.bn.num_batches_tracked": np.array(3)}
    np.savez(src, **{f"module.{k}": v for k, v in sd.items()}, **extra)
    out = folder / "weights" / "deeplabv2_cocostuff.npz"
    deeplab.main(["--convert", str(src), "--out", str(out)])
    return sd, deeplab.load_deeplab(str(out)), (src, out)


def test_key_list_is_the_released_layout():
    assert deeplab.state_dict_shapes() == expected_shapes()
    assert deeplab.state_dict_shapes(21) == expected_shapes(classes=21)


def test_converter_places_tensors(released):
    sd, variables, _ = released
    p, s = variables["params"], variables["batch_stats"]
    assert len(jax.tree_util.tree_leaves(variables)) == 528
    np.testing.assert_array_equal(
        p["layer4"]["block23"]["conv3x3"]["conv"]["kernel"],
        sd["base.layer4.block23.conv3x3.conv.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        s["layer5"]["block1"]["shortcut"]["bn"]["var"],
        sd["base.layer5.block1.shortcut.bn.running_var"],
    )
    np.testing.assert_array_equal(p["aspp"]["c3"]["bias"], sd["base.aspp.c3.bias"])


def test_legacy_and_bare_layouts_are_renamed():
    """The pre-2019-02 layout (MSC child `scale`, shortcut `proj`, `aspp.stages`) and a bare
    DeepLabV2 state dict (no `base.`) name the same tensors."""
    names = list(expected_shapes())
    legacy = []
    for k in names:
        k = k.replace("base.", "scale.", 1).replace(".shortcut.", ".proj.")
        legacy.append(k.replace(".aspp.", ".aspp.stages."))
    bare = [k[len("base.") :] for k in names]
    bare_legacy = [k[len("scale.") :] for k in legacy]
    for keys in (legacy, bare, bare_legacy):
        renamed = deeplab.canonical_keys({k: i for i, k in enumerate(keys)})
        assert list(renamed) == names and list(renamed.values()) == list(range(len(keys)))


def test_converter_errors(released):
    sd, *_ = released
    bad = dict(sd)
    del bad["base.layer3.block4.increase.bn.running_mean"]
    bad["base.aspp.c0.weight"] = np.zeros((21, 2048, 3, 3), np.float32)
    bad["base.aspp.c4.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as err:
        deeplab.convert_state_dict(bad, source="deeplab.pth")
    msg = str(err.value)
    assert msg.startswith("deeplab.pth: the state dict does not match the network")
    assert "base.layer3.block4.increase.bn.running_mean" in msg and "base.aspp.c4.weight" in msg
    assert "base.aspp.c0.weight: got (21, 2048, 3, 3), expected (182, 2048, 3, 3)" in msg


def test_cli_refuses_existing_out_and_bad_files(released, tmp_path, capsys):
    *_, (src, out) = released
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temp file left
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        deeplab.main(["--convert", str(src), "--out", str(out)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "exists; pass --overwrite to replace it" in err
    with pytest.raises(FileExistsError, match="--overwrite"):
        deeplab.convert_file(str(src), str(out))
    with pytest.raises(FileNotFoundError, match="state dict file not found"):
        deeplab.convert_file(str(tmp_path / "absent.pth"), str(tmp_path / "o.npz"))
    with pytest.raises(FileNotFoundError, match="--convert deeplabv2_resnet101_msc-cocostuff164k"):
        deeplab.load_deeplab(str(tmp_path / "absent.npz"))
    with pytest.raises(ValueError, match="deeplabv2_resnet101/v1/182"):
        deeplab.load_deeplab(str(src))  # a state dict, not a converted file


# --------------------------------------------------------------------------- torch reference


def _torch_deeplab(torch, n_blocks=(3, 4, 23, 3), classes=182):
    nn, F = torch.nn, torch.nn.functional

    def conv_bn(cin, cout, k, stride=1, pad=0, dil=1, relu=True):
        m = nn.Sequential()
        m.add_module("conv", nn.Conv2d(cin, cout, k, stride, pad, dil, bias=False))
        m.add_module("bn", nn.BatchNorm2d(cout))
        if relu:
            m.add_module("relu", nn.ReLU())
        return m

    class Block(nn.Module):
        def __init__(self, cin, cout, stride, dil, first):
            super().__init__()
            mid = cout // 4
            self.reduce = conv_bn(cin, mid, 1, stride)
            self.conv3x3 = conv_bn(mid, mid, 3, 1, dil, dil)
            self.increase = conv_bn(mid, cout, 1, relu=False)
            self.shortcut = conv_bn(cin, cout, 1, stride, relu=False) if first else nn.Identity()

        def forward(self, x):
            return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))

    class ASPP(nn.Module):
        def __init__(self):
            super().__init__()
            for i, r in enumerate((6, 12, 18, 24)):
                self.add_module(f"c{i}", nn.Conv2d(2048, classes, 3, 1, r, r, bias=True))

        def forward(self, x):
            return sum(c(x) for c in self.children())

    net = nn.Sequential()
    stem = nn.Sequential()
    stem.add_module("conv1", conv_bn(3, 64, 7, 2, 3))
    stem.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    net.add_module("layer1", stem)
    cin = 64
    plan = zip((256, 512, 1024, 2048), (1, 2, 1, 1), (1, 1, 2, 4), n_blocks, strict=True)
    for layer, (cout, stride, dil, n) in enumerate(plan, start=2):
        seq = nn.Sequential()
        for b in range(n):
            seq.add_module(
                f"block{b + 1}",
                Block(cin if b == 0 else cout, cout, stride if b == 0 else 1, dil, b == 0),
            )
        net.add_module(f"layer{layer}", seq)
        cin = cout
    net.add_module("aspp", ASPP())

    class MSC(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = net

        def forward(self, x, scales=(0.5, 0.75)):
            logits = self.base(x)
            size = logits.shape[2:]
            outs = [logits]
            for s in scales:
                h = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                outs.append(
                    F.interpolate(self.base(h), size=size, mode="bilinear", align_corners=False)
                )
            return torch.stack(outs).max(dim=0)[0]

    return MSC()


def _torch_msc(torch, sd, n_blocks=(3, 4, 23, 3)):
    (msc,) = load_on_meta(torch, lambda: _torch_deeplab(torch, n_blocks), sd)
    return msc


def _torch_test(torch, msc, images):
    """`main.py test`: [-1, 1] RGB -> BGR 0..255 minus the mean, MSC max, logits resized
    to the label size. -> (logits NHWC, max |logit| before the resize)."""
    F = torch.nn.functional
    bgr = ((images + 1) * 127.5)[..., ::-1] - np.array([104.008, 116.669, 122.675], np.float32)
    with torch.no_grad():
        logits = msc(nchw(torch, bgr))
        want = F.interpolate(logits, size=images.shape[1:3], mode="bilinear", align_corners=False)
    return want.permute(0, 2, 3, 1).numpy(), float(logits.abs().max())


def _check_segmenter(torch, msc, variables, images, n_blocks):
    segmenter = deeplab.deeplab_segmenter(variables, n_blocks=n_blocks)
    got = np.asarray(jax.jit(segmenter.apply_fn)(variables, jnp.asarray(images)))
    want, peak = _torch_test(torch, msc, images)
    assert got.shape == want.shape == (*images.shape[:3], 182)
    assert 0.3 < peak < 30  # O(1) logits: the tolerance below is meaningful
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert isinstance(segmenter, segmentation.Segmenter) and segmenter.num_classes == 182


@pytest.mark.torch
def test_full_msc_segmenter_at_the_protocol_size_matches_torch(released):
    """Dilated ResNet-101 + ASPP + MSC (scales 1, 0.5, 0.75) on one 256 x 256 image, the
    protocol's input: ceil-mode pool 128 -> 65, output stride 8 -> 33 x 33 logits
    (17 x 17 and 25 x 25 for the rescaled inputs)."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    sd, variables, _ = released
    images = np.random.default_rng(3).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
    _check_segmenter(torch, _torch_msc(torch, sd), variables, images, deeplab.N_BLOCKS)


@pytest.mark.torch
def test_msc_segmenter_matches_torch_test():
    """The same pipeline on one block per layer (fast compile) at 37 x 50, where the scale
    factors' kernel (1 / s, not in / out) and the odd maps matter."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    sd = synthetic(expected_shapes(SHALLOW), 4)
    variables = deeplab.convert_state_dict(sd, n_blocks=SHALLOW)
    images = np.random.default_rng(5).uniform(-1, 1, (2, 37, 50, 3)).astype(np.float32)
    _check_segmenter(torch, _torch_msc(torch, sd, SHALLOW), variables, images, SHALLOW)


def test_sharded_evaluator_counts_the_predictions():
    """SegmentationEvaluator: batch of 3 padded to the 8 (fake) devices on `data`; the counts
    equal those of the unsharded arg-max, 255 and the padding ignored."""
    variables = deeplab.init_deeplab(seed=7, n_blocks=SHALLOW)
    segmenter = deeplab.deeplab_segmenter(variables, scales=(), n_blocks=SHALLOW)
    rng = np.random.default_rng(8)
    images = rng.uniform(-1, 1, (3, 16, 24, 3)).astype(np.float32)
    preds = np.asarray(jax.jit(segmenter.apply_fn)(variables, jnp.asarray(images))).argmax(-1)
    labels = np.where(rng.uniform(size=preds.shape) < 0.5, preds, rng.integers(0, 182, preds.shape))
    labels[:, :2] = deeplab.COCOSTUFF_IGNORE
    evaluator = segmentation.SegmentationEvaluator(segmenter, ignore_label=255)
    assert evaluator.accumulator.mesh.devices.size == 8
    evaluator.update(images, labels)
    want = np.zeros((182, 182), np.int64)
    keep = labels != 255
    np.add.at(want, (labels[keep], preds[keep]), 1)
    np.testing.assert_array_equal(evaluator.accumulator.confusion, want)
