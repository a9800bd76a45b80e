"""Tests for ace_ros.core.network: encoder/head shapes, sizes, homogeneous output."""

from __future__ import annotations

import math

from ace_ros.core.network import cell_centers, check_encoder_state, Encoder, ENCODER_SHAPES, \
    global_context, Head, HeadConfig, image_to_network_input
from ace_ros.core.weights import random_encoder_state
import pytest
import torch
import torch.nn.functional as F

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='no CUDA device'))]


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _reference_encoder(state: dict, image: torch.Tensor) -> torch.Tensor:
    """The encoder as ACE_NOTES.md describes it, written out with functional convs."""
    def conv(name, x, stride=1):
        weight = state[f'{name}.weight']
        return F.conv2d(x, weight, state[f'{name}.bias'], stride, weight.shape[-1] // 2)

    x = F.relu(conv('conv1', image))
    x = F.relu(conv('conv2', x, 2))
    x = F.relu(conv('conv3', x, 2))
    x = F.relu(conv('conv4', x, 2))
    res = F.relu(conv('res1_conv3', F.relu(conv('res1_conv2', F.relu(conv('res1_conv1', x))))))
    x = x + res
    res = F.relu(conv('res2_conv3', F.relu(conv('res2_conv2', F.relu(conv('res2_conv1', x))))))
    return conv('res2_skip', x) + res


@pytest.mark.parametrize('height, width, rows, cols', [
    (480, 640, 60, 80), (481, 641, 61, 81), (479, 637, 60, 80), (17, 23, 3, 3), (8, 8, 1, 1),
    (1, 9, 1, 2)])
def test_encoder_output_shape(height, width, rows, cols):
    # Meta tensors give the shapes without the arithmetic (or the weight initialisation).
    with torch.device('meta'):
        encoder = Encoder()
    out = encoder(torch.empty(2, 1, height, width, device='meta'))
    assert tuple(out.shape) == (2, 512, rows, cols)
    assert (rows, cols) == (math.ceil(height / 8), math.ceil(width / 8))


def test_encoder_parameter_count_and_state_dict():
    encoder = Encoder()
    assert _n_params(encoder) == pytest.approx(5.57e6, abs=0.01e6)
    state = encoder.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == ENCODER_SHAPES
    assert len(ENCODER_SHAPES) == 22


def test_encoder_matches_the_described_architecture():
    state = random_encoder_state(1)
    encoder = Encoder()
    encoder.load_state_dict(state)
    image = image_to_network_input(torch.rand(1, 1, 17, 30,
                                              generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        out = encoder(image)
    torch.testing.assert_close(out, _reference_encoder(state, image), rtol=1e-4, atol=1e-4)
    # No ReLU after the skip sum: features can be negative.
    assert (out < 0).any()


def test_check_encoder_state_accepts_a_real_state():
    check_encoder_state(Encoder().state_dict(), 'encoder.pt')
    check_encoder_state({k: v.half() for k, v in random_encoder_state(0).items()}, 'fp16')


def test_check_encoder_state_refuses_missing_keys():
    state = random_encoder_state(0)
    del state['res2_skip.bias']
    with pytest.raises(ValueError, match=r"enc\.pt: .*missing keys \['res2_skip\.bias'\]"):
        check_encoder_state(state, 'enc.pt')


def test_check_encoder_state_refuses_extra_keys():
    state = random_encoder_state(0)
    state['head.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \['head\.weight'\]"):
        check_encoder_state(state, 'enc.pt')


def test_check_encoder_state_refuses_wrong_shape():
    state = random_encoder_state(0)
    state['conv1.weight'] = torch.zeros(32, 3, 3, 3)  # an RGB encoder
    with pytest.raises(ValueError, match=r'enc\.pt: conv1\.weight has shape \(32, 3, 3, 3\), '
                                         r'expected \(32, 1, 3, 3\)'):
        check_encoder_state(state, 'enc.pt')


def test_check_encoder_state_refuses_integer_tensors():
    state = random_encoder_state(0)
    state['conv2.bias'] = torch.zeros(64, dtype=torch.int64)
    with pytest.raises(ValueError, match=r'conv2\.bias has dtype torch\.int64'):
        check_encoder_state(state, 'enc.pt')


def test_check_encoder_state_refuses_non_tensors():
    # A weights_only torch file may hold plain numbers; they must not slip through as
    # an AttributeError.
    state = {**random_encoder_state(0), 'conv3.weight': 1.5}
    with pytest.raises(ValueError,
                       match=r'enc\.pt: conv3\.weight is a float, expected a tensor'):
        check_encoder_state(state, 'enc.pt')


def test_head_parameter_count():
    head = Head()
    assert _n_params(head) == pytest.approx(2.1e6, abs=0.01e6)
    assert _n_params(Head(HeadConfig(num_blocks=2))) == _n_params(head) + 3 * (512 * 512 + 512)
    assert 'scene_mean' not in head.weights()
    assert set(head.weights()) == {k for k, _ in head.named_parameters()}


def _rigged_head(xyz, w: float, mean=(0.0, 0.0, 0.0)) -> Head:
    """A small head whose last layer ignores its input and outputs (xyz, w)."""
    head = Head(HeadConfig(channels=8))
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.copy_(torch.tensor([*xyz, w]))
        head.scene_mean.copy_(torch.tensor(mean))
    return head


@pytest.mark.parametrize('w', [-1000.0, -3.0, -0.5, 0.0, 0.7, 5.0, 90.0, 1000.0])
def test_head_homogeneous_scale(w):
    xyz, mean = (2.0, -4.0, 8.0), (10.0, 20.0, -30.0)
    head = _rigged_head(xyz, w, mean)
    beta = math.log(2) / (1 - 1 / 4)
    h = min(math.log1p(math.exp(beta * w)) / beta + 0.25 if w < 50 else w + 0.25, 100.0)
    with torch.no_grad():
        out = head(torch.rand(5, 8))
    expected = torch.tensor([x / h + m for x, m in zip(xyz, mean)]).expand(5, 3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_head_scale_is_one_at_zero_and_bounded():
    with torch.no_grad():
        features = torch.rand(1, 8)
        assert _rigged_head((3.0, 0.0, 0.0), 0.0)(features)[0, 0].item() == pytest.approx(3.0)
        assert _rigged_head((3.0, 0.0, 0.0), -1e4)(features)[0, 0].item() == pytest.approx(12.0)
        assert _rigged_head((3.0, 0.0, 0.0), 1e4)(features)[0, 0].item() == pytest.approx(0.03)


def test_untrained_head_predicts_near_the_scene_mean():
    torch.manual_seed(0)
    head = Head()
    mean = torch.tensor([10.0, -20.0, 5.0])
    head.scene_mean.copy_(mean)
    features = torch.relu(torch.randn(200, 512, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        out = head(features)
    assert out.shape == (200, 3) and out.dtype == torch.float32
    distance = (out - mean).norm(dim=1)
    assert distance.max() < 2.0
    assert distance.mean() > 1e-3  # not trivially constant


@pytest.mark.parametrize('device', DEVICES)
def test_head_forward_image_equals_forward_on_flat_features(device):
    torch.manual_seed(0)
    head = Head(HeadConfig(channels=16)).to(device)
    head.scene_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
    features = torch.randn(2, 16, 3, 5, device=device)
    with torch.no_grad():
        image = head.forward_image(features)
        assert image.shape == (2, 3, 3, 5)
        for b, i, j in [(0, 0, 0), (0, 2, 4), (1, 1, 3), (1, 2, 0)]:
            single = head(features[b, :, i, j][None])[0]
            torch.testing.assert_close(image[b, :, i, j], single, rtol=1e-5, atol=1e-5)


def test_head_context_is_each_images_mean_feature_on_every_path():
    """A head with context: a feature map, the image's flat cells, the context given per
    cell and the context given per image with an index all predict the same; the context
    changes the prediction; a head without it keeps ACE's layout (no inp/ctx layers)."""
    torch.manual_seed(0)
    head = Head(HeadConfig(channels=16, in_channels=32, context_channels=32))
    features = torch.randn(2, 32, 3, 4)
    with torch.no_grad():
        image = head.forward_image(features)
        for b in range(2):
            flat = features[b].reshape(32, -1).T
            expected = image[b].reshape(3, -1).T
            context = global_context(flat)
            assert float(context.norm()) == pytest.approx(32 ** 0.5, rel=1e-5)
            torch.testing.assert_close(head(flat), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(head(flat, context.expand(12, -1)), expected,
                                       rtol=1e-5, atol=1e-5)
            table = torch.stack([torch.randn(32), context])
            torch.testing.assert_close(head(flat, table, torch.ones(12, dtype=torch.long)),
                                       expected, rtol=1e-5, atol=1e-5)
            other = head(flat, table, torch.zeros(12, dtype=torch.long))
            assert (other - expected).abs().max() > 1e-3
    torch.testing.assert_close(global_context(features)[1],
                               global_context(features[1].reshape(32, -1).T))
    assert not any(k.startswith(('inp.', 'ctx.')) for k in Head(HeadConfig()).state_dict())


def test_head_forward_equals_conv2d_layers():
    # The flat matrix products are the 1x1 convolutions the map file stores.
    torch.manual_seed(0)
    head = Head(HeadConfig(channels=16))
    features = torch.randn(1, 16, 2, 2)
    x = features
    with torch.no_grad():
        for block in head.blocks:
            res = F.relu(block.conv3(F.relu(block.conv2(F.relu(block.conv1(x))))))
            x = x + res
        out = head.out(F.relu(head.fc2(F.relu(head.fc1(x)))))
        h = F.softplus(out[:, 3:4], beta=math.log(2) / 0.75) + 0.25
        expected = out[:, :3] / h.clamp(max=100.0)
        torch.testing.assert_close(head.forward_image(features), expected, rtol=1e-5,
                                   atol=1e-5)


def test_cell_centers():
    centers = cell_centers(17, 23)
    assert centers.shape == (2, 3, 3) and centers.dtype == torch.float32
    torch.testing.assert_close(centers[0], torch.tensor([[3.5, 11.5, 19.5]] * 3))
    torch.testing.assert_close(centers[1], torch.tensor([[3.5], [11.5], [19.5]]).expand(3, 3))
    big = cell_centers(480, 640)
    assert big.shape == (2, 60, 80)
    assert big[:, 59, 79].tolist() == [8 * 79 + 3.5, 8 * 59 + 3.5]


def test_image_to_network_input():
    gray = torch.tensor([0.4, 0.65, 0.15]).reshape(1, 1, 1, 3)
    torch.testing.assert_close(image_to_network_input(gray),
                               torch.tensor([0.0, 1.0, -1.0]).reshape(1, 1, 1, 3))
