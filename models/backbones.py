"""ResNet feature extractors shared by the models (no pretrained weights; nothing is downloaded).

- `ResNet18(stride=8 | 4, width, out_dim, in_channels, stages=4)`: the ResNet-18 trunk (He
  et al. 2016) with the later stages at stride 1 so the output stride is 8 (layer3 and layer4
  at stride 1) or 4 (layer2-4 at stride 1), the resolution dense correspondence needs.
  `stages` < 4 keeps only the first residual stages: a smaller receptive field, so small
  objects keep features of their own instead of their surroundings'.
- `ResNet50Res4(width, out_dim, in_channels)`: ResNet-50 up to res4 (layer3) with res4 at
  stride 1, output stride 8 (CycleTime, Wang et al. 2019).

`padding` is the convolutions' padding mode: "zeros" (torchvision's) or "reflect" (CRW's
"scratch" trunk: zero padding lets features code their absolute position, which a walk or
a cycle can exploit instead of matching content).

`width` is the stem's channel count (64 in the papers); stage i has width * 2**i channels
(x 4 for bottlenecks). `out_dim` adds a 1 x 1 projection to that many channels (None keeps
the trunk's own channels). Output: (B, out_channels, ceil(H / stride), ceil(W / stride)).
"""
from __future__ import annotations

from torch import nn


def _norm(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != planes:
            self.down = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), _norm(planes))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _norm(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = _norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


PADDING_MODES = ("zeros", "reflect")


class _ResNetTrunk(nn.Module):
    """Stem (7 x 7 conv stride 2, 3 x 3 max-pool stride 2) and residual stages."""

    def __init__(self, block, depths, strides, width, in_channels, out_dim, padding="zeros"):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            _norm(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, cin = [], width
        for i, (depth, stride) in enumerate(zip(depths, strides)):
            planes = width * 2**i
            blocks = [block(cin, planes, stride)]
            cin = planes * block.expansion
            blocks += [block(cin, planes) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.stride = 4
        for s in strides:
            self.stride *= s
        self.proj = nn.Conv2d(cin, out_dim, 1) if out_dim else None
        self.out_channels = out_dim or cin
        self.padding = padding
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if padding != "zeros" and sum(m.padding) > 0:
                    m.padding_mode = padding

    def forward(self, x):
        """x: (B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))."""
        x = self.stages(self.stem(x))
        return x if self.proj is None else self.proj(x)

    def trunk(self, x, stages: int | None = None):
        """The stem and the first `stages` residual stages (None: all), without the projection:
        (B, in_channels, H, W) -> (B, C_stages, ceil(H / s), ceil(W / s)), s the stride there."""
        x = self.stem(x)
        for stage in list(self.stages)[: len(self.stages) if stages is None else stages]:
            x = stage(x)
        return x

    def channels_after(self, stages: int) -> int:
        """Output channels of `trunk(x, stages)`."""
        last = list(self.stages)[stages - 1][-1]
        return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


class ResNet18(_ResNetTrunk):
    """ResNet-18 trunk at output stride 8 (layer3, layer4 at stride 1) or 4 (layer2-4 at stride 1)."""

    def __init__(self, stride: int = 8, width: int = 64, out_dim: int | None = None, in_channels: int = 3,
                 stages: int = 4, padding: str = "zeros"):
        if stride not in (4, 8):
            raise ValueError(f"ResNet18 stride must be 4 or 8, got {stride}")
        if not 1 <= stages <= 4 or (stride == 8 and stages < 2):
            raise ValueError(f"ResNet18 stages must be in [1, 4] ([2, 4] at stride 8), got {stages}")
        strides = (1, 2, 1, 1) if stride == 8 else (1, 1, 1, 1)
        super().__init__(BasicBlock, (2, 2, 2, 2)[:stages], strides[:stages], width, in_channels, out_dim, padding)


class ResNet50Res4(_ResNetTrunk):
    """ResNet-50 up to res4 (layer3, 6 bottlenecks) with res4 at stride 1: output stride 8.

    Native output channels: 16 * width (1024 for width 64), as in CycleTime.
    """

    def __init__(self, width: int = 64, out_dim: int | None = None, in_channels: int = 3, padding: str = "zeros"):
        super().__init__(Bottleneck, (3, 4, 6), (1, 2, 1), width, in_channels, out_dim, padding)


def build_backbone(arch: str, stride: int, width: int, out_dim: int | None, in_channels: int,
                   stages: int = 4, padding: str = "zeros") -> nn.Module:
    """Build "resnet18" (stride 4 or 8, the first `stages` stages) or "resnet50_res4" (stride 8)
    from config values; `padding` "zeros" or "reflect"."""
    if arch == "resnet18":
        return ResNet18(stride, width, out_dim, in_channels, stages, padding)
    if arch == "resnet50_res4":
        if stages != 4:
            raise ValueError(f"resnet50_res4 has a fixed depth; stages must be 4, got {stages}")
        if stride != 8:
            raise ValueError(f"resnet50_res4 has output stride 8, got stride={stride}")
        return ResNet50Res4(width, out_dim, in_channels, padding)
    raise ValueError(f"unknown backbone arch {arch!r}; choose 'resnet18' or 'resnet50_res4'")
