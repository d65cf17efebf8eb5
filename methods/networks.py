"""The network zoo of the reference ``get_network`` (DC/DSA/DM and CAFE code), written anew.

The architectures are those the DC paper (Zhao et al., ICLR 2021, §3 and appendix) and its
successors evaluate on; docs/reference.md §3 describes each reference structure. Every name
is registered in :data:`NETWORKS` with :func:`register_network` (a decorator on a builder
function); :func:`get_network` builds any registered name.

Every architecture is built from a seeded :class:`torch.Generator` (:func:`get_network`), never
from the clock: modules are created on the ``meta`` device (no global-RNG draws), materialised,
then initialised with PyTorch's default schemes drawn from the generator.

Supported input geometries: 1x28x28 (MNIST, FashionMNIST), 3x32x32 (SVHN, CIFAR), 3x64x64
(TinyImageNet) and the bundled digits' 1x16x16, plus anything else the layer arithmetic allows.
Linear-layer sizes are inferred from the geometry instead of the reference's literals.

Deliberate generalisations (each reduces to the reference on its geometries):

* The reference pads the first conv by 3 for every 1-channel input (28 -> 32). Here that rule
  applies to 1-channel 28x28 inputs only, the case it was written for; other sizes use the
  normal padding.
* VGG11 skips a max-pool that would shrink a 1x1 map (only inputs under 32 px reach that).
* ResNet18's final ``avg_pool2d(4)`` uses ``min(4, size)`` so inputs under 32 px work.

Why one file of ~600 lines: it is the whole zoo of the reference list (ConvNet family, MLP,
LeNet, AlexNet, VGG11, ResNet18 and their registrations) read side by side, as one table of
architectures; each class is short and none is used without the registry at the bottom.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.errors import MethodError
from methods.registry import Registry
from methods.rng import make_generator

# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTIVATIONS = ("relu", "sigmoid", "leakyrelu", "swish")
POOLINGS = ("avgpooling", "maxpooling", "none")


class Swish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


def _activation(name: str) -> nn.Module:
    return {
        "relu": lambda: nn.ReLU(inplace=True),
        "sigmoid": nn.Sigmoid,
        "leakyrelu": lambda: nn.LeakyReLU(0.01),
        "swish": Swish,
    }[name]()


def _norm(name: str, channels: int, hw: tuple[int, int]) -> Optional[nn.Module]:
    if name == "instancenorm":  # the reference's instance norm: GroupNorm(C, C, affine=True)
        return nn.GroupNorm(channels, channels, affine=True)
    if name == "batchnorm":
        return nn.BatchNorm2d(channels)
    if name == "layernorm":
        return nn.LayerNorm([channels, hw[0], hw[1]], elementwise_affine=True)
    if name == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    return None


def _first_padding(channel: int, im_size: tuple[int, int], default: int, gray28: int) -> int:
    return gray28 if (channel == 1 and tuple(im_size) == (28, 28)) else default


# --------------------------------------------------------------------------------------------
# ConvNet family
# --------------------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """``depth`` x [conv3x3 -> norm -> activation -> 2x2 pool] -> flatten -> linear.

    Features for CAFE/DM: :meth:`feature_maps` returns, in order shallow -> deep, the output of
    every block *before* its pooling (``block1`` ... ``block{depth}``) and the final pooled map
    (``pooled``), named in :attr:`feature_names`. With depth 3 these are exactly CAFE's
    f1, f2, f3, f4 (docs/reference.md §7.2; Wang et al., CAFE, CVPR 2022); :meth:`embed`
    is the flattened ``pooled`` map (CAFE's f5, DM's embedding).
    """

    def __init__(
        self,
        channel: int,
        num_classes: int,
        im_size: tuple[int, int] = (32, 32),
        width: int = 128,
        depth: int = 3,
        act: str = "relu",
        norm: str = "instancenorm",
        pooling: str = "avgpooling",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise MethodError("ConvNet depth must be >= 1")
        h, w = im_size
        c_in = channel
        self.blocks = nn.ModuleList()
        self.pools = nn.ModuleList()
        for d in range(depth):
            pad = _first_padding(channel, im_size, 1, 3) if d == 0 else 1
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            layers: list[nn.Module] = [nn.Conv2d(c_in, width, 3, padding=pad)]
            nl = _norm(norm, width, (h, w))
            if nl is not None:
                layers.append(nl)
            layers.append(_activation(act))
            self.blocks.append(nn.Sequential(*layers))
            if pooling == "none":
                self.pools.append(nn.Identity())
            else:
                if h < 2 or w < 2:
                    raise MethodError(
                        f"ConvNet depth {depth} is too deep for {im_size[0]}x{im_size[1]} "
                        "inputs (the feature map would vanish); use a shallower ConvNetD*"
                    )
                pool_cls = nn.AvgPool2d if pooling == "avgpooling" else nn.MaxPool2d
                self.pools.append(pool_cls(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
            c_in = width
        self.feature_shape = (width, h, w)
        self.feature_names: list[str] = [f"block{i + 1}" for i in range(depth)] + ["pooled"]
        self.classifier = nn.Linear(width * h * w, num_classes)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        feats = []
        for block, pool in zip(self.blocks, self.pools):
            x = block(x)
            feats.append(x)
            x = pool(x)
        feats.append(x)
        return feats

    def embed(self, x: Tensor) -> Tensor:
        for block, pool in zip(self.blocks, self.pools):
            x = pool(block(x))
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


# --------------------------------------------------------------------------------------------
# Other evaluation architectures
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """flatten -> FC 128 -> ReLU -> FC 128 -> ReLU -> FC classes (input size from geometry)."""

    def __init__(self, channel: int, num_classes: int, im_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channel * im_size[0] * im_size[1], 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 128),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(128, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))


def _flat_size(module: nn.Module, channel: int, im_size: tuple[int, int]) -> int:
    """Flattened output size of ``module`` for one input, computed on the meta device."""
    with torch.device("meta"):
        probe = torch.empty(1, channel, *im_size)
        return int(copy.deepcopy(module).to("meta")(probe).flatten(1).shape[1])


class LeNet(nn.Module):
    """conv5x5 6 -> ReLU -> maxpool -> conv5x5 16 -> ReLU -> maxpool -> FC 120 -> 84 -> classes."""

    def __init__(self, channel: int, num_classes: int, im_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channel, 6, 5, padding=2 if channel == 1 else 0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
        )
        n = _flat_size(self.features, channel, im_size)
        self.fc = nn.Sequential(
            nn.Linear(n, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class AlexNet(nn.Module):
    """The reference's small AlexNet (5 convs, 3 max-pools); ``bn`` adds BatchNorm per conv."""

    def __init__(
        self, channel: int, num_classes: int, im_size: tuple[int, int] = (32, 32), bn: bool = False
    ) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int, p: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=p)]
            if bn:
                layers.append(nn.BatchNorm2d(cout))
            return layers + [nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *conv(channel, 128, 5, 4 if channel == 1 else 2),
            nn.MaxPool2d(2, 2),
            *conv(128, 192, 5, 2),
            nn.MaxPool2d(2, 2),
            *conv(192, 256, 3, 1),
            *conv(256, 192, 3, 1),
            *conv(192, 192, 3, 1),
            nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Linear(_flat_size(self.features, channel, im_size), num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class VGG11(nn.Module):
    """VGG11 [64,M,128,M,256,256,M,512,512,M,512,512,M]; instance norm (GroupNorm(C, C)) or BN."""

    CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(
        self, channel: int, num_classes: int, im_size: tuple[int, int] = (32, 32), norm: str = "instancenorm"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, (h, w) = channel, im_size
        for i, v in enumerate(self.CFG):
            if v == "M":
                if h >= 2 and w >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    h, w = h // 2, w // 2
                continue
            pad = _first_padding(channel, im_size, 1, 3) if i == 0 else 1
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            layers.append(nn.Conv2d(c_in, v, 3, padding=pad))
            layers.append(_norm(norm, v, (h, w)))
            layers.append(nn.ReLU(inplace=True))
            c_in = v
        layers.append(nn.AvgPool2d(1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512 * h * w, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class _BasicBlock(nn.Module):
    """ResNet basic block: conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus the shortcut, ReLU.

    With ``avgpool_stride`` (ResNet18BN_AP) a strided block convolves at stride 1 and
    average-pools 2x2 *after* the first conv's norm and ReLU (conv -> BN -> ReLU -> pool), and
    its shortcut is conv1x1 -> 2x2 average pool -> norm, as the reference's ``BasicBlock_AP``
    (docs/reference.md §3)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, avgpool_stride: bool) -> None:
        super().__init__()

        def nl(c: int) -> nn.Module:
            return nn.GroupNorm(c, c, affine=True) if norm == "instancenorm" else nn.BatchNorm2d(c)

        conv_stride = 1 if avgpool_stride else stride
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=conv_stride, padding=1, bias=False)
        self.pool1 = nn.AvgPool2d(2, 2) if (avgpool_stride and stride != 1) else nn.Identity()
        self.bn1 = nl(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nl(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            short: list[nn.Module] = [nn.Conv2d(cin, cout, 1, stride=conv_stride, bias=False)]
            if avgpool_stride and stride != 1:
                short.append(nn.AvgPool2d(2, 2))
            short.append(nl(cout))
            self.shortcut = nn.Sequential(*short)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool1(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 (BasicBlock [2,2,2,2], 64..512, 3x3 stem, stride 1).

    ``norm='instancenorm'`` is the reference default (GroupNorm(C, C)), ``'batchnorm'`` gives
    ResNet18BN. ``avgpool_stride=True`` is ResNet18BN_AP: strided convs become stride-1 convs
    whose block pools 2x2 after the conv's norm and ReLU (the shortcut pools between its conv
    and norm), and the head is a linear layer over the whole final map (512x4x4 at 32 px,
    docs/reference.md §3).
    """

    def __init__(
        self,
        channel: int,
        num_classes: int,
        im_size: tuple[int, int] = (32, 32),
        norm: str = "instancenorm",
        avgpool_stride: bool = False,
    ) -> None:
        super().__init__()
        self.avgpool_stride = avgpool_stride
        self.conv1 = nn.Conv2d(channel, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(64, 64, affine=True) if norm == "instancenorm" else nn.BatchNorm2d(64)
        layers = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(
                nn.Sequential(
                    _BasicBlock(cin, cout, stride, norm, avgpool_stride),
                    _BasicBlock(cout, cout, 1, norm, avgpool_stride),
                )
            )
            cin = cout
        self.layers = nn.Sequential(*layers)
        h, w = im_size
        for _ in range(3):  # three stride-2 stages: conv (pad 1) or avg-pool arithmetic
            h, w = ((h - 1) // 2 + 1, (w - 1) // 2 + 1) if not avgpool_stride else (h // 2, w // 2)
        self._pool = 1 if avgpool_stride else min(4, h, w)
        h, w = h // self._pool, w // self._pool
        self.classifier = nn.Linear(512 * h * w, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        if self._pool > 1:
            out = F.avg_pool2d(out, self._pool)
        return out.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


# --------------------------------------------------------------------------------------------
# Registry (the reference get_network list, docs/reference.md §3)
# --------------------------------------------------------------------------------------------

Builder = Callable[[int, int, tuple[int, int]], nn.Module]
"""``builder(channel, num_classes, (h, w)) -> nn.Module``; called on the ``meta`` device."""


@dataclass(frozen=True)
class NetworkInfo:
    """One registered architecture: its canonical ``name``, its ``builder`` and a one-line
    ``description`` (the builder's docstring unless given)."""

    name: str
    builder: Builder
    description: str = ""


NETWORKS: Registry[NetworkInfo] = Registry("architecture", MethodError)
"""Every architecture :func:`get_network` builds, keyed case-insensitively."""


def register_network(name: str, *, description: str = "") -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(channel, num_classes, im_size) -> nn.Module`` as ``name``.

    The builder must not draw random numbers or allocate real tensors: :func:`get_network`
    calls it on the ``meta`` device and initialises the parameters from its own generator.
    A name already registered (case-insensitively) raises ``ValueError``::

        @register_network("MyNet")
        def _my_net(channel, num_classes, im_size):
            return MyNet(channel, num_classes, im_size)
    """

    def make(builder: Builder) -> NetworkInfo:
        text = description or (builder.__doc__ or "").strip().split("\n")[0]
        return NetworkInfo(name, builder, text)

    return NETWORKS.decorator(name, make)


@register_network("MLP")
def _mlp(ch: int, nc: int, size: tuple[int, int]) -> nn.Module:
    """3-layer perceptron (128, 128)."""
    return MLP(ch, nc, size)


@register_network("LeNet")
def _lenet(ch: int, nc: int, size: tuple[int, int]) -> nn.Module:
    """LeNet-5 style, max-pooled."""
    return LeNet(ch, nc, size)


@register_network("AlexNet")
def _alexnet(ch: int, nc: int, size: tuple[int, int]) -> nn.Module:
    """The reference's small AlexNet."""
    return AlexNet(ch, nc, size)


@register_network("AlexNetBN")
def _alexnet_bn(ch: int, nc: int, size: tuple[int, int]) -> nn.Module:
    """AlexNet with BatchNorm after every conv."""
    return AlexNet(ch, nc, size, bn=True)


@register_network("VGG11")
def _vgg11(ch: int, nc: int, size: tuple[int, int]) -> nn.Module:
    """VGG11 with instance norm."""
    return VGG11(ch, nc, size)


@register_network("VGG11BN")
def _vgg11_bn(ch: int, nc: int, size: tuple[int, int]) -> nn.Module:
    """VGG11 with BatchNorm."""
    return VGG11(ch, nc, size, norm="batchnorm")


@register_network("ResNet18")
def _resnet18(ch: int, nc: int, size: tuple[int, int]) -> nn.Module:
    """ResNet18 with instance norm."""
    return ResNet18(ch, nc, size)


@register_network("ResNet18BN")
def _resnet18_bn(ch: int, nc: int, size: tuple[int, int]) -> nn.Module:
    """ResNet18 with BatchNorm."""
    return ResNet18(ch, nc, size, norm="batchnorm")


@register_network("ResNet18BN_AP")
def _resnet18_bn_ap(ch: int, nc: int, size: tuple[int, int]) -> nn.Module:
    """ResNet18 with BatchNorm, average pooling instead of strided convs."""
    return ResNet18(ch, nc, size, norm="batchnorm", avgpool_stride=True)


#: The ConvNet family of the reference list: name -> the ConvNet arguments that differ from
#: the default (width 128, depth 3, ReLU, instance norm, average pooling).
CONVNET_VARIANTS: dict[str, dict[str, Any]] = {
    "ConvNet": {},
    "ConvNetD1": {"depth": 1},
    "ConvNetD2": {"depth": 2},
    "ConvNetD3": {"depth": 3},
    "ConvNetD4": {"depth": 4},
    "ConvNetW32": {"width": 32},
    "ConvNetW64": {"width": 64},
    "ConvNetW128": {"width": 128},
    "ConvNetW256": {"width": 256},
    "ConvNetAS": {"act": "sigmoid"},
    "ConvNetAR": {"act": "relu"},
    "ConvNetAL": {"act": "leakyrelu"},
    "ConvNetASwish": {"act": "swish"},
    "ConvNetASwishBN": {"act": "swish", "norm": "batchnorm"},
    "ConvNetNN": {"norm": "none"},
    "ConvNetBN": {"norm": "batchnorm"},
    "ConvNetLN": {"norm": "layernorm"},
    "ConvNetIN": {"norm": "instancenorm"},
    "ConvNetGN": {"norm": "groupnorm"},
    "ConvNetNP": {"pooling": "none"},
    "ConvNetMP": {"pooling": "maxpooling"},
    "ConvNetAP": {"pooling": "avgpooling"},
}


def _convnet_builder(kwargs: dict[str, Any]) -> Builder:
    def build(ch: int, nc: int, size: tuple[int, int]) -> nn.Module:
        return ConvNet(ch, nc, size, **kwargs)

    return build


for _name, _kwargs in CONVNET_VARIANTS.items():
    _text = ", ".join(f"{k}={v}" for k, v in _kwargs.items()) or "the default"
    register_network(_name, description=f"ConvNet ({_text})")(_convnet_builder(dict(_kwargs)))
del _name, _kwargs, _text


def network_names() -> list[str]:
    """Every architecture name :func:`get_network` accepts, as registered (alphabetical)."""
    return [info.name for _, info in NETWORKS.items()]


def canonical_network_name(name: str) -> str:
    """The registered spelling of ``name`` (case-insensitive); raises :class:`MethodError`
    listing the valid names."""
    if name not in NETWORKS:
        raise MethodError(f"unknown architecture '{name}'; valid architectures: {', '.join(network_names())}")
    return NETWORKS.get(name).name


def network_skeleton(name: str, channel: int, num_classes: int, im_size: Sequence[int] = (32, 32)) -> nn.Module:
    """Architecture ``name`` on the ``meta`` device: its structure and shapes (feature names,
    layer sizes) without allocating memory or drawing random numbers. Use :func:`get_network`
    for a network to run."""
    info = NETWORKS.get(canonical_network_name(name))
    with torch.device("meta"):
        return info.builder(int(channel), int(num_classes), (int(im_size[0]), int(im_size[1])))


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@torch.no_grad()
def init_parameters(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """PyTorch's default initialisation of every parameter, drawn from ``generator``.

    Conv/Linear: Kaiming-uniform weights (a=sqrt(5)) and uniform(+-1/sqrt(fan_in)) biases;
    norm layers: weight 1, bias 0, running statistics reset. Draws happen on the CPU generator
    and are copied to the parameter's device, so CPU and CUDA nets from one seed are equal.
    """
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            weight = torch.empty(module.weight.shape)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            module.weight.copy_(weight)
            if module.bias is not None:
                fan_in = weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                bias = torch.empty(module.bias.shape).uniform_(-bound, bound, generator=generator)
                module.bias.copy_(bias)
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
    return net


def get_network(
    name: str,
    channel: int,
    num_classes: int,
    im_size: Sequence[int] = (32, 32),
    *,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build architecture ``name`` for (channel, im_size) inputs and ``num_classes`` outputs.

    Exactly one of ``generator``/``seed`` must be given: initialisation is always seeded.
    """
    key = canonical_network_name(name)
    if (generator is None) == (seed is None):
        raise ValueError("get_network needs exactly one of generator= or seed= (seeded init only)")
    if generator is None:
        generator = make_generator(int(seed))  # type: ignore[arg-type]
    net = network_skeleton(key, channel, num_classes, im_size).to_empty(device="cpu")
    init_parameters(net, generator)
    net.arch_name = key  # type: ignore[attr-defined]
    return net.to(torch.device(device))
