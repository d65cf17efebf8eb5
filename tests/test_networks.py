"""Every architecture of the reference get_network list on every supported geometry."""

from __future__ import annotations

import pytest
import torch

from methods.errors import MethodError
from methods.rng import make_generator
from methods.networks import ConvNet, canonical_network_name, get_network, has_batchnorm, network_names

GEOMETRIES = {
    "gray28": (1, (28, 28)),  # MNIST, FashionMNIST
    "rgb32": (3, (32, 32)),  # SVHN, CIFAR10/100
    "rgb64": (3, (64, 64)),  # TinyImageNet
    "digits16": (1, (16, 16)),  # the bundled digits dataset
}

REFERENCE_NAMES = [
    "MLP", "ConvNet", "LeNet", "AlexNet", "AlexNetBN", "VGG11", "VGG11BN", "ResNet18",
    "ResNet18BN_AP", "ResNet18BN", "ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4",
    "ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256", "ConvNetAS", "ConvNetAR",
    "ConvNetAL", "ConvNetASwish", "ConvNetASwishBN", "ConvNetNN", "ConvNetBN", "ConvNetLN",
    "ConvNetIN", "ConvNetGN", "ConvNetNP", "ConvNetMP", "ConvNetAP",
]


def test_every_reference_name_is_available():
    assert set(REFERENCE_NAMES) <= set(network_names())


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_forward_backward_on_every_geometry(name, geometry):
    channel, size = GEOMETRIES[geometry]
    net = get_network(name, channel, 7, size, seed=0)
    x = torch.randn(2, channel, *size, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 7)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    emb = net.embed(x.detach())
    assert emb.ndim == 2 and emb.shape[0] == 2
    assert net.classifier.in_features == emb.shape[1]


def test_same_seed_gives_bit_identical_init_and_different_seeds_differ():
    a = get_network("ResNet18BN", 3, 10, (32, 32), seed=5)
    b = get_network("ResNet18BN", 3, 10, (32, 32), generator=make_generator(5))
    c = get_network("ResNet18BN", 3, 10, (32, 32), seed=6)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_network_init_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    get_network("ConvNet", 3, 10, (32, 32), seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_init_follows_pytorch_default_bounds():
    net = get_network("ConvNet", 3, 10, (32, 32), seed=0)
    conv = net.blocks[0][0]
    fan_in = conv.weight[0].numel()
    bound = 1 / fan_in**0.5  # kaiming_uniform(a=sqrt(5)) bound equals 1/sqrt(fan_in)
    assert conv.weight.abs().max() <= bound + 1e-6
    assert conv.weight.abs().max() > 0.8 * bound
    norm = net.blocks[0][1]
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 128
    assert torch.equal(norm.weight, torch.ones(128))


def test_unknown_name_lists_valid_ones():
    with pytest.raises(MethodError) as err:
        get_network("ConvNet9000", 3, 10, (32, 32), seed=0)
    assert "ConvNetD4" in str(err.value) and "ResNet18BN_AP" in str(err.value)
    assert canonical_network_name("convnetbn") == "ConvNetBN"


def test_seed_is_required():
    with pytest.raises(ValueError, match="seed"):
        get_network("ConvNet", 3, 10, (32, 32))


def test_convnet_features_match_cafe_layout():
    net = get_network("ConvNet", 3, 10, (32, 32), seed=0)
    x = torch.randn(2, 3, 32, 32)
    feats = net.feature_maps(x)
    assert net.feature_names == ["block1", "block2", "block3", "pooled"]
    assert [tuple(f.shape[1:]) for f in feats] == [(128, 32, 32), (128, 16, 16), (128, 8, 8), (128, 4, 4)]
    assert torch.allclose(feats[-1].flatten(1), net.embed(x))
    assert torch.allclose(net.classifier(net.embed(x)), net(x))


def test_gray28_first_conv_pads_to_32_like_the_reference():
    net = get_network("ConvNet", 1, 10, (28, 28), seed=0)
    feats = net.feature_maps(torch.randn(1, 1, 28, 28))
    assert feats[0].shape[-1] == 32 and feats[-1].shape[-1] == 4


def test_convnetd4_on_64px_ends_at_4x4():
    net = get_network("ConvNetD4", 3, 200, (64, 64), seed=0)
    assert isinstance(net, ConvNet) and net.feature_shape == (128, 4, 4)


def test_too_deep_convnet_gives_clear_error():
    with pytest.raises(MethodError, match="too deep"):
        get_network("ConvNetD4", 1, 10, (8, 8), seed=0)


def test_batchnorm_detection():
    assert has_batchnorm(get_network("ConvNetBN", 3, 10, (32, 32), seed=0))
    assert not has_batchnorm(get_network("ConvNet", 3, 10, (32, 32), seed=0))
