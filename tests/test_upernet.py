"""UperNet-101 segmenter (ecgan_jax/eval/upernet.py): key layout, converter, numerics vs torch.

The expected key lists and the torch reference below are written from CSAILVision/semantic-
segmentation-pytorch's `models/resnet.py` (`resnet101`: deep 3-conv stem, Bottleneck with the
stride on its 3x3 conv, [3, 4, 23, 3]) and `models/models.py` (`Resnet` wrapper without
avgpool/fc; `UPerNet(fpn_dim=512)`), and its `dataset.py` / `eval.py` for the multi-scale test,
independently of the converter, which derives its keys from the Flax modules.

Released files (`encoder_epoch_50.pth`, `decoder_epoch_50.pth`), keys with their shapes:
* encoder (530 tensors): `conv1.weight` (64, 3, 3, 3), `conv2.weight` (64, 64, 3, 3),
  `conv3.weight` (128, 64, 3, 3), `bn{1,2,3}.{weight,bias,running_mean,running_var}` (64 / 64 /
  128); `layer{i}.{b}.conv1.weight` (planes, in, 1, 1), `.conv2.weight` (planes, planes, 3, 3),
  `.conv3.weight` (4 planes, planes, 1, 1), `.bn{1,2,3}.*`, and on b = 0
  `layer{i}.0.downsample.0.weight` (4 planes, in, 1, 1), `layer{i}.0.downsample.1.*`; planes
  64, 128, 256, 512 for layer1..4 with 3, 4, 23, 3 blocks, in = 128 for layer1.
* decoder (62 tensors): `ppm_conv.{0..3}.0.weight` (512, 2048, 1, 1), `ppm_conv.{j}.1.*` (512),
  `ppm_last_conv.0.weight` (512, 4096, 3, 3), `ppm_last_conv.1.*`, `fpn_in.{0,1,2}.0.weight`
  (512, 256 / 512 / 1024, 1, 1), `fpn_in.{j}.1.*`, `fpn_out.{0,1,2}.0.0.weight` (512, 512, 3,
  3), `fpn_out.{j}.0.1.*`, `conv_last.0.0.weight` (512, 2048, 3, 3), `conv_last.0.1.*`,
  `conv_last.1.weight` (150, 512, 1, 1), `conv_last.1.bias` (150,).
(`*.num_batches_tracked`, present in files saved by PyTorch >= 0.4.1, is ignored.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_resnet import add_bn, load_on_meta, nchw, synthetic_state_dict

from ecgan_jax.eval import segmentation, upernet

# One worker under xdist, so the module fixture (full-size weights, converted) is built once.
pytestmark = pytest.mark.xdist_group("upernet")
SHALLOW = (1, 1, 1, 1)  # a 4-block encoder for the multi-scale test: same code, fast compile


def expected_encoder(layers=(3, 4, 23, 3)):
    shapes = {}
    for i, (cout, cin) in enumerate(((64, 3), (64, 64), (128, 64)), start=1):
        shapes[f"conv{i}.weight"] = (cout, cin, 3, 3)
        add_bn(shapes, f"bn{i}", cout)
    inplanes = 128
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for b in range(blocks):
            key, cin = f"layer{i}.{b}", inplanes if b == 0 else planes * 4
            shapes[f"{key}.conv1.weight"] = (planes, cin, 1, 1)
            shapes[f"{key}.conv2.weight"] = (planes, planes, 3, 3)
            shapes[f"{key}.conv3.weight"] = (planes * 4, planes, 1, 1)
            for j, c in ((1, planes), (2, planes), (3, planes * 4)):
                add_bn(shapes, f"{key}.bn{j}", c)
            if b == 0:
                shapes[f"{key}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                add_bn(shapes, f"{key}.downsample.1", planes * 4)
        inplanes = planes * 4
    return shapes


def expected_decoder(classes=150):
    shapes = {}
    for j in range(4):
        shapes[f"ppm_conv.{j}.0.weight"] = (512, 2048, 1, 1)
        add_bn(shapes, f"ppm_conv.{j}.1", 512)
    shapes["ppm_last_conv.0.weight"] = (512, 2048 + 4 * 512, 3, 3)
    add_bn(shapes, "ppm_last_conv.1", 512)
    for j, cin in enumerate((256, 512, 1024)):
        shapes[f"fpn_in.{j}.0.weight"] = (512, cin, 1, 1)
        add_bn(shapes, f"fpn_in.{j}.1", 512)
        shapes[f"fpn_out.{j}.0.0.weight"] = (512, 512, 3, 3)
        add_bn(shapes, f"fpn_out.{j}.0.1", 512)
    shapes["conv_last.0.0.weight"] = (512, 4 * 512, 3, 3)
    add_bn(shapes, "conv_last.0.1", 512)
    shapes["conv_last.1.weight"] = (classes, 512, 1, 1)
    shapes["conv_last.1.bias"] = (classes,)
    return shapes


def synthetic(shapes, seed):
    """Random tensors that keep a deep net's activations O(1)
    (`torch_resnet.synthetic_state_dict`), a small scale on each residual branch's last BN."""
    return synthetic_state_dict(
        shapes, seed, small_scale=lambda key: key.endswith(("bn3.weight", "downsample.1.weight"))
    )


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Encoder / decoder state dicts in the released layout, saved as files (one with a
    `module.` prefix, one with a `num_batches_tracked`), converted by the command line and
    read back: (encoder dict, decoder dict, variables, (encoder, decoder, out) paths)."""
    enc, dec = synthetic(expected_encoder(), 1), synthetic(expected_decoder(), 2)
    folder = tmp_path_factory.mktemp("upernet")
    enc_path, dec_path = folder / "encoder_epoch_50.npz", folder / "decoder_epoch_50.npz"
    np.savez(enc_path, **enc, **{"bn1.num_batches_tracked": np.array(7)})
    np.savez(dec_path, **{f"module.{k}": v for k, v in dec.items()})  # DataParallel prefix
    out = folder / "weights" / "upernet.npz"
    upernet.main(["--convert", str(enc_path), str(dec_path), "--out", str(out)])
    return enc, dec, upernet.load_upernet(str(out)), (enc_path, dec_path, out)


def test_key_list_is_the_released_layout():
    got = upernet.state_dict_shapes()
    assert got["encoder"] == expected_encoder()
    assert got["decoder"] == expected_decoder()
    assert upernet.state_dict_shapes(150, SHALLOW)["encoder"] == expected_encoder(SHALLOW)


def test_converter_places_tensors(released):
    enc, dec, variables, _ = released
    p, s = variables["params"], variables["batch_stats"]
    assert len(jax.tree_util.tree_leaves(variables)) == 530 + 62
    np.testing.assert_array_equal(
        p["encoder"]["layer3"]["block22"]["conv2"]["kernel"],
        enc["layer3.22.conv2.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        s["encoder"]["layer2"]["block0"]["downsample_bn"]["var"],
        enc["layer2.0.downsample.1.running_var"],
    )
    np.testing.assert_array_equal(p["encoder"]["bn3"]["scale"], enc["bn3.weight"])
    np.testing.assert_array_equal(
        p["decoder"]["fpn_out1_conv"]["kernel"], dec["fpn_out.1.0.0.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(s["decoder"]["ppm3_bn"]["mean"], dec["ppm_conv.3.1.running_mean"])
    np.testing.assert_array_equal(p["decoder"]["classifier"]["bias"], dec["conv_last.1.bias"])


def test_converter_errors(released):
    enc, dec, *_ = released
    bad = dict(dec)
    del bad["fpn_in.2.0.weight"]
    bad["conv_last.1.weight"] = np.zeros((151, 512, 1, 1), np.float32)
    bad["deepsup.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as err:
        upernet.convert_state_dict(enc, bad, source="enc.pth + dec.pth")
    msg = str(err.value)
    assert msg.startswith("enc.pth + dec.pth: the state dict does not match the network")
    assert "decoder.fpn_in.2.0.weight" in msg and "decoder.deepsup.weight" in msg
    assert "decoder.conv_last.1.weight: got (151, 512, 1, 1), expected (150, 512, 1, 1)" in msg
    with pytest.raises(ValueError, match="order ENCODER.pth DECODER.pth"):
        upernet.convert_state_dict(dec, enc, source="x")


def test_cli_refuses_existing_out_and_bad_files(released, tmp_path, capsys):
    *_, (enc_path, dec_path, out) = released
    assert sorted(p.name for p in out.parent.iterdir()) == ["upernet.npz"]  # no temp file left
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        upernet.main(["--convert", str(enc_path), str(dec_path), "--out", str(out)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "exists; pass --overwrite to replace it" in err
    with pytest.raises(FileExistsError, match="--overwrite"):
        upernet.convert_file(str(enc_path), str(dec_path), str(out))
    with pytest.raises(FileNotFoundError, match="state dict file not found"):
        upernet.convert_file(str(tmp_path / "absent.pth"), str(dec_path), str(tmp_path / "o.npz"))
    with pytest.raises(FileNotFoundError, match="--convert encoder_epoch_50.pth"):
        upernet.load_upernet(str(tmp_path / "absent.npz"))
    with pytest.raises(ValueError, match="upernet101_ade20k/v1/150"):
        upernet.load_upernet(str(dec_path))  # a state dict, not a converted file


def test_scaled_input_size_and_targets():
    # CSAILVision's rule: short side s (long side <= 1000), then up to a multiple of 32.
    assert [upernet.scaled_input_size(256, 256, s) for s in upernet.TEST_SIZES] == [
        (320, 320), (384, 384), (480, 480), (544, 544), (608, 608),
    ]  # fmt: skip
    assert upernet.scaled_input_size(256, 512, 600) == (512, 1024)  # capped by 1000, rounded
    with pytest.raises(ValueError, match="test_sizes=\\(\\); give positive short sides"):
        upernet.upernet_segmenter({}, test_sizes=())
    labels = np.array([[0, 1], [150, 7]])
    np.testing.assert_array_equal(upernet.ade20k_targets(labels), [[-1, 0], [149, 6]])


# --------------------------------------------------------------------------- torch reference


def _torch_upernet(torch, layers=(3, 4, 23, 3), classes=150):
    nn, F = torch.nn, torch.nn.functional

    def cbr(cin, cout, k):
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )

    class Bottleneck(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.downsample = None
            if stride != 1 or inplanes != planes * 4:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * 4),
                )

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = F.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return F.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.conv2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(64)
            self.conv3 = nn.Conv2d(64, 128, 3, 1, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(128)
            inplanes = 128
            for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
                stride = 1 if i == 1 else 2
                blocks = [Bottleneck(inplanes, planes, stride)]
                blocks += [Bottleneck(planes * 4, planes, 1) for _ in range(n - 1)]
                setattr(self, f"layer{i}", nn.Sequential(*blocks))
                inplanes = planes * 4

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            x = F.relu(self.bn3(self.conv3(x)))
            x = F.max_pool2d(x, 3, 2, 1)
            feats = []
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
                feats.append(x)
            return feats

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.ppm_conv = nn.ModuleList([cbr(2048, 512, 1) for _ in range(4)])
            self.ppm_last_conv = cbr(2048 + 4 * 512, 512, 3)
            self.fpn_in = nn.ModuleList([cbr(c, 512, 1) for c in (256, 512, 1024)])
            self.fpn_out = nn.ModuleList([nn.Sequential(cbr(512, 512, 3)) for _ in range(3)])
            self.conv_last = nn.Sequential(cbr(4 * 512, 512, 3), nn.Conv2d(512, classes, 1))

        def forward(self, feats):
            def up(t, size):
                return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

            c5 = feats[-1]
            ppm = [c5]
            for scale, conv in zip((1, 2, 3, 6), self.ppm_conv, strict=True):
                ppm.append(conv(up(F.adaptive_avg_pool2d(c5, scale), c5.shape[2:])))
            f = self.ppm_last_conv(torch.cat(ppm, 1))
            outs = [f]
            for j in (2, 1, 0):
                lateral = self.fpn_in[j](feats[j])
                f = lateral + up(f, lateral.shape[2:])
                outs.append(self.fpn_out[j](f))
            outs = outs[::-1]
            size = outs[0].shape[2:]
            return self.conv_last(torch.cat([outs[0]] + [up(t, size) for t in outs[1:]], 1))

    return Encoder(), Decoder()


def _torch_pair(torch, enc, dec, layers=(3, 4, 23, 3)):
    """The torch reference built on the meta device and given `enc`/`dec` without copies."""
    return load_on_meta(torch, lambda: _torch_upernet(torch, layers), enc, dec)


def _torch_eval(torch, t_enc, t_dec, images, sizes, max_size, pad):
    """CSAILVision's eval: per test size an antialiased resize, ImageNet normalisation,
    logits resized to the label size, softmax, averaged. -> (probs NHWC, max |logit|)."""
    F = torch.nn.functional
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    img = nchw(torch, (images + 1) / 2)
    n, h, w = images.shape[:3]
    scores, peak = torch.zeros(n, 150, h, w), 0.0
    with torch.no_grad():
        for short in sizes:
            r = min(short / min(h, w), max_size / max(h, w))
            th, tw = [((int(side * r) - 1) // pad + 1) * pad for side in (h, w)]
            x = F.interpolate(img, size=(th, tw), mode="bilinear", antialias=True)
            logits = t_dec(t_enc((x - mean) / std))
            peak = max(peak, float(logits.abs().max()))
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            scores += F.softmax(logits, dim=1) / len(sizes)
    return scores.permute(0, 2, 3, 1).numpy(), peak


@pytest.mark.torch
def test_full_upernet_at_the_protocol_size_matches_torch(released):
    """ResNet-101 + UPerNet through the segmenter on one 256 x 256 image at the smallest and
    the largest of the protocol's five test sizes: short sides 300 and 600 -> inputs 320 and
    608 (c5 10 x 10 and 19 x 19, so the PPM's 3 and 6 bins are uneven), probabilities averaged
    at 256 x 256. The three sizes between run the same code (and would triple the time)."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    enc, dec, variables, _ = released
    t_enc, t_dec = _torch_pair(torch, enc, dec)
    images = np.random.default_rng(3).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
    assert [upernet.scaled_input_size(256, 256, s)[0] for s in upernet.TEST_SIZES] == [
        320, 384, 480, 544, 608,
    ]  # fmt: skip
    sizes = (upernet.TEST_SIZES[0], upernet.TEST_SIZES[-1])
    segmenter = upernet.upernet_segmenter(variables, test_sizes=sizes)
    got = np.asarray(jax.jit(segmenter.apply_fn)(variables, jnp.asarray(images)))
    want, peak = _torch_eval(
        torch, t_enc, t_dec, images, sizes, upernet.TEST_MAX_SIZE, upernet.TEST_PADDING
    )
    assert got.shape == want.shape == (1, 256, 256, 150)
    assert 0.3 < peak < 30  # O(1) logits: the tolerance below is meaningful
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.torch
def test_multiscale_segmenter_matches_torch_eval():
    """The multi-scale average on a 4-block encoder (same code, fast compile), at two sizes
    that give odd maps: 24 x 30 -> 13 x 16 (down) and 27 x 33 (up), padding 1."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    enc, dec = synthetic(expected_encoder(SHALLOW), 4), synthetic(expected_decoder(), 5)
    t_enc, t_dec = _torch_pair(torch, enc, dec, SHALLOW)
    variables = upernet.convert_state_dict(enc, dec, layers=SHALLOW)
    images = np.random.default_rng(6).uniform(-1, 1, (2, 24, 30, 3)).astype(np.float32)
    sizes, max_size, pad = (13, 27), 40, 1
    assert [upernet.scaled_input_size(24, 30, s, max_size, pad) for s in sizes] == [
        (13, 16), (27, 33),
    ]  # fmt: skip
    segmenter = upernet.upernet_segmenter(
        variables, test_sizes=sizes, max_size=max_size, padding=pad, layers=SHALLOW
    )
    got = np.asarray(jax.jit(segmenter.apply_fn)(variables, jnp.asarray(images)))
    want, peak = _torch_eval(torch, t_enc, t_dec, images, sizes, max_size, pad)
    assert got.shape == (2, 24, 30, 150)
    assert 0.3 < peak < 30
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert isinstance(segmenter, segmentation.Segmenter) and segmenter.num_classes == 150
