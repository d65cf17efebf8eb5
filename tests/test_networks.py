"""Every architecture of the reference get_network list on every supported geometry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.errors import MethodError
from methods.rng import make_generator
from methods.networks import (
    NETWORKS,
    ConvNet,
    canonical_network_name,
    get_network,
    has_batchnorm,
    network_names,
    network_skeleton,
    register_network,
)

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


# -- the registry ------------------------------------------------------------------------------


class _TinyNet(nn.Module):
    def __init__(self, channel: int, num_classes: int, im_size: tuple[int, int]) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(channel * im_size[0] * im_size[1], 8))
        self.classifier = nn.Linear(8, num_classes)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.body(x))


@register_network("TestOnlyTinyNet")
def _tiny(channel, num_classes, im_size):
    """A two-layer test network."""
    return _TinyNet(channel, num_classes, im_size)


def test_a_registered_network_is_built_seeded_by_any_spelling():
    assert "TestOnlyTinyNet" in network_names()
    assert canonical_network_name("testonlytinynet") == "TestOnlyTinyNet"
    assert NETWORKS.get("TESTONLYTINYNET").description == "A two-layer test network."
    a = get_network("testonlytinynet", 1, 3, (16, 16), seed=4)
    b = get_network("TestOnlyTinyNet", 1, 3, (16, 16), seed=4)
    assert isinstance(a, _TinyNet) and a.arch_name == "TestOnlyTinyNet"
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert a(torch.zeros(2, 1, 16, 16)).shape == (2, 3)


def test_registering_a_taken_name_is_rejected_in_any_case():
    with pytest.raises(ValueError, match="registered twice"):
        register_network("convnetbn")(_tiny)
    with pytest.raises(ValueError, match="registered twice"):
        register_network("TestOnlyTinyNet")(_tiny)
    assert get_network("ConvNetBN", 3, 10, (32, 32), seed=0).arch_name == "ConvNetBN"


def test_unknown_name_message_is_one_line_with_the_registered_spellings():
    with pytest.raises(MethodError) as err:
        canonical_network_name("ResNet50")
    text = str(err.value)
    assert "\n" not in text and text.startswith("unknown architecture 'ResNet50'")
    assert all(name in text for name in REFERENCE_NAMES + ["TestOnlyTinyNet"])


def test_skeleton_has_the_structure_without_memory_or_random_draws():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    net = network_skeleton("convnetd2", 3, 10, (32, 32))
    assert torch.equal(torch.rand(2), expected)
    assert net.feature_names == ["block1", "block2", "pooled"]
    assert all(p.is_meta for p in net.parameters())


# -- ResNet18BN_AP against a plain transcription of the reference block order --------------------


class _RefBlockAP(nn.Module):
    """The reference order (DC ``BasicBlock_AP``): conv -> BN -> ReLU -> [2x2 avg pool when
    strided] -> conv -> BN, plus shortcut conv1x1 -> [pool] -> BN, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.c1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.n1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = nn.BatchNorm2d(cout)
        self.sc = None
        if stride != 1 or cin != cout:
            self.sc = nn.ModuleList([nn.Conv2d(cin, cout, 1, 1, bias=False), nn.BatchNorm2d(cout)])

    def forward(self, x):
        y = F.relu(self.n1(self.c1(x)))
        if self.stride != 1:
            y = F.avg_pool2d(y, 2, 2)
        y = self.n2(self.c2(y))
        if self.sc is None:
            s = x
        else:
            s = self.sc[0](x)
            if self.stride != 1:
                s = F.avg_pool2d(s, 2, 2)
            s = self.sc[1](s)
        return F.relu(y + s)


class _RefResNet18BNAP(nn.Module):
    def __init__(self, channel: int, num_classes: int, final_hw: int) -> None:
        super().__init__()
        self.c = nn.Conv2d(channel, 64, 3, 1, 1, bias=False)
        self.n = nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_RefBlockAP(cin, cout, stride), _RefBlockAP(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512 * final_hw * final_hw, num_classes)

    def forward(self, x):
        y = self.blocks(F.relu(self.n(self.c(x))))
        return self.fc(F.avg_pool2d(y, 1, 1).flatten(1))


def _randomise_batchnorm(net: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("channel,size,final_hw", [(3, 32, 4), (1, 28, 3)])
def test_resnet18bn_ap_equals_the_reference_block_order(channel, size, final_hw):
    ours = get_network("ResNet18BN_AP", channel, 10, (size, size), seed=3)
    _randomise_batchnorm(ours, seed=7)
    ref = _RefResNet18BNAP(channel, 10, final_hw)
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert len(ours_state) == len(ref_state)
    copied = {}
    for (ref_key, ref_value), our_value in zip(ref_state.items(), ours_state.values()):
        assert ref_value.shape == our_value.shape, ref_key
        copied[ref_key] = our_value.clone()
    ref.load_state_dict(copied)
    x = torch.randn(4, channel, size, size, generator=torch.Generator().manual_seed(1))
    for train in (False, True):
        ours.train(train)
        ref.train(train)
        with torch.no_grad():
            assert torch.allclose(ours(x), ref(x), rtol=0, atol=1e-6), f"train={train}"
