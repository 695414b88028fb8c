"""The segmenter: the authors' key list and parameter count, and the importer of their weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from l2r_submit.nets import seg_checkpoint, segnet

KEYS_JSON = Path(__file__).parent / "data" / "original_state_dict_keys.json"  # the seed's list, committed
CONFIG = "abdo_segnet_cm4_classic_in_1ch_12class"


def authors_keys() -> dict[str, list[int]]:
    return json.loads(KEYS_JSON.read_text())[CONFIG]


def fake_original(keys: dict[str, list[int]], prefix: str = "module.") -> dict:
    """An original checkpoint of the authors' layout with random weights of the listed shapes."""
    g = torch.Generator().manual_seed(0)
    state = {prefix + k: torch.randn(shape, generator=g) * 0.1 for k, shape in keys.items()}
    return {"epoch": 3, "state_dict": state, "val_loss": 0.5, "optizmizer": {}}


def test_paper_preset_has_the_authors_keys_and_shapes():
    """Every key of the authors' segmenter maps to one of ours with the same shape, and no key is left over."""
    keys = authors_keys()
    ours = {k: list(v.shape) for k, v in segnet.build("paper").state_dict().items()}
    mapped = {seg_checkpoint.rename_segmenter_key(k): shape for k, shape in keys.items()}
    assert len(keys) == 54
    assert mapped == ours


def test_paper_preset_has_7_69_m_parameters():
    net = segnet.build("paper")
    assert round(segnet.n_parameters(net) / 1e6, 2) == 7.69
    assert sum(torch.Size(s).numel() for s in authors_keys().values()) == segnet.n_parameters(net)


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The authors' SegNet forward written from their blocks (InputBlock, ConvBlock, DeconvBlock, Decoder
    with a softmax last activation; LeakyReLU 0.01, InstanceNorm3d without affine), on their key names."""
    w = {k.removeprefix("module."): v for k, v in state.items()}

    def act(t):
        return F.leaky_relu(t, 0.01)

    def conv(t, name, transposed=False, norm=True):
        weight, bias = w[name + ".weight"], w[name + ".bias"]
        if transposed:
            t = F.conv_transpose3d(t, weight, bias, stride=2)
        elif weight.shape[-1] == 2:
            t = F.conv3d(t, weight, bias, stride=2)
        else:
            t = F.conv3d(t, weight, bias, padding=1)
        return act(F.instance_norm(t, eps=1e-5)) if norm else t

    h = act(conv(x, "encoder.input.add_conv", norm=False))
    skips = [act(conv(h, "encoder.input.conv", norm=False)) + h]
    for i in range(4):
        t = conv(skips[-1], f"encoder.conv_blocks.{i}.conv_pool.conv")
        n = 0
        while f"encoder.conv_blocks.{i}.nConvs.{n}.conv.weight" in w:
            t = conv(t, f"encoder.conv_blocks.{i}.nConvs.{n}.conv")
            n += 1
        skips.append(t)
    out = skips[-1]
    for i in range(4):
        up = conv(out, f"segmentation_decoder.conv_list.{i}.conv_tr.conv", transposed=True)
        out = torch.cat([up, skips[-i - 2]], 1)
        n = 0
        while f"segmentation_decoder.conv_list.{i}.nConvs.{n}.conv.weight" in w:
            out = conv(out, f"segmentation_decoder.conv_list.{i}.nConvs.{n}.conv")
            n += 1
    return torch.softmax(conv(out, "segmentation_decoder.last_conv", norm=False), dim=1)


def test_import_gives_the_authors_forward(tmp_path):
    ckpt = fake_original(authors_keys())
    src = tmp_path / "seg.pth.tar"
    torch.save(ckpt, src)
    net = seg_checkpoint.import_original(src)
    assert net.cfg == segnet.SEG_PRESETS["paper"].__class__(orientation="estienne2020")
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = segnet.probabilities(net(x))
        theirs = reference_forward(ckpt["state_dict"], x)
    assert torch.allclose(ours, theirs, atol=1e-5)
    out = seg_checkpoint.save(tmp_path / "ours.pt", net)
    again, _ = seg_checkpoint.load(out)
    assert again.cfg.orientation == "estienne2020"
    for k, v in again.state_dict().items():
        assert torch.equal(v, net.state_dict()[k])


@pytest.mark.parametrize("change, message", [
    ("drop", "missing key for 'decoder.levels.1.convs.2.conv.weight'"),
    ("extra", "extra key"),
    ("shape", "has shape"),
    ("registration", "registration network"),
])
def test_import_refuses_a_wrong_key_set_in_one_line(tmp_path, change, message):
    keys = dict(authors_keys())
    if change == "drop":
        keys.pop("segmentation_decoder.conv_list.1.nConvs.2.conv.weight")
    elif change == "extra":
        keys["segmentation_decoder.conv_list.3.nConvs.1.conv.weight"] = [16, 16, 3, 3, 3]
        keys["segmentation_decoder.conv_list.3.nConvs.1.conv.bias"] = [16]
    elif change == "shape":
        keys["segmentation_decoder.last_conv.bias"] = [14]
    else:
        keys["registration_decoder.last_conv.bias"] = [3]
    src = tmp_path / "seg.pth.tar"
    torch.save(fake_original(keys), src)
    with pytest.raises(ValueError) as err:
        seg_checkpoint.import_original(src)
    assert message in str(err.value) and str(src) in str(err.value) and "\n" not in str(err.value)


def test_segment_is_whole_volume_and_maps_the_authors_frame_back():
    """An imported net sees the image in the authors' frame; the label map comes back on our axes."""
    torch.manual_seed(0)
    net = segnet.build("tiny", orientation="estienne2020").eval()
    ct = torch.randn(1, 1, 12, 16, 20) * 300
    labels = segnet.segment(net, ct)
    assert labels.shape == (1, 12, 16, 20)
    l2r = segnet.build("tiny").eval()
    l2r.load_state_dict(net.state_dict())
    from l2r_submit.nets.inputs import from_model_frame, preprocess, to_model_frame
    x = to_model_frame(preprocess(ct, 1), "estienne2020")
    assert torch.equal(from_model_frame(x, "estienne2020"), preprocess(ct, 1))
    with torch.no_grad():
        expected = from_model_frame(l2r(x), "estienne2020").argmax(1)
    assert torch.equal(labels, expected)
