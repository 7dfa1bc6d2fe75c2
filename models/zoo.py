"""Model families: each builder is small (< 1M params, 3x32x32 inputs) and covers one coupling
pattern of METHODS.md §1.3. BatchNorm statistics and affine parameters are perturbed at build
time (`bn`, and the registry's wrapper for any BatchNorm left at its defaults) so BN is never
the identity. Builders are called through ``ModelSpec.builder``, which seeds torch by name."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register_model

IMG = (1, 3, 32, 32)


def bn(c: int) -> nn.BatchNorm2d:
    b = nn.BatchNorm2d(c)
    with torch.no_grad():
        b.running_mean.uniform_(-0.5, 0.5)
        b.running_var.uniform_(0.5, 2.0)
        b.weight.uniform_(0.5, 1.5)
        b.bias.uniform_(-0.5, 0.5)
    return b


def cbr(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), bn(cout), act()
    )


@register_model("plain_cnn", IMG, tags={"flatten", "gemm", "dropout", "prelu", "maxpool"})
def plain_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.PReLU(16), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


@register_model("vgg_bn", IMG, tags={"bn", "flatten", "gemm", "maxpool", "avgpool"})
def vgg_bn():
    return nn.Sequential(
        cbr(3, 16), cbr(16, 16), nn.MaxPool2d(2), cbr(16, 32), cbr(32, 32), nn.AvgPool2d(2),
        cbr(32, 64), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 4 * 4, 10),
    )  # fmt: skip


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a, self.b = (
            cbr(cin, cout, 3, stride),
            nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), bn(cout)),
        )
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))
        )

    def forward(self, x):
        return F.relu(self.b(self.a(x)) + self.short(x))


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride, groups=1):
        super().__init__()
        self.body = nn.Sequential(
            cbr(cin, mid, 1), cbr(mid, mid, 3, stride, groups=groups),
            nn.Conv2d(mid, cout, 1, bias=False), bn(cout),
        )  # fmt: skip
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))
        )

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


class Classifier(nn.Module):
    def __init__(self, features: nn.Module, c: int, n: int = 10):
        super().__init__()
        self.features, self.fc = features, nn.Linear(c, n)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


@register_model("resnet_basic", IMG, tags={"residual", "downsample", "bn", "gap", "gemm"})
def resnet_basic():
    return Classifier(
        nn.Sequential(
            cbr(3, 16), Basic(16, 16, 1), Basic(16, 32, 2), Basic(32, 32, 1), Basic(32, 64, 2)
        ),
        64,
    )


@register_model(
    "resnet_bottleneck", IMG, tags={"residual", "downsample", "bn", "bottleneck", "gap", "gemm"}
)
def resnet_bottleneck():
    return Classifier(
        nn.Sequential(
            cbr(3, 16),
            Bottleneck(16, 8, 32, 1),
            Bottleneck(32, 8, 32, 1),
            Bottleneck(32, 16, 64, 2),
        ),
        64,
    )


@register_model(
    "resnext", IMG, tags={"residual", "downsample", "grouped", "bn", "bottleneck", "gap", "gemm"}
)
def resnext():
    return Classifier(
        nn.Sequential(
            cbr(3, 16), Bottleneck(16, 32, 32, 1, groups=8), Bottleneck(32, 32, 64, 2, groups=4)
        ),
        64,
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, act=nn.ReLU6, se=False, dw_mult=1):
        super().__init__()
        mid = cin * expand
        layers = [cbr(cin, mid, 1, act=act)] if expand != 1 else []
        layers.append(
            nn.Sequential(
                nn.Conv2d(mid, mid * dw_mult, 3, stride, 1, groups=mid, bias=False),
                bn(mid * dw_mult),
                act(),
            )
        )
        mid *= dw_mult
        if se:
            layers.append(SqueezeExcite(mid))
        layers += [nn.Conv2d(mid, cout, 1, bias=False), bn(cout)]
        self.body = nn.Sequential(*layers)
        self.res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.res else y


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.f1, self.f2 = nn.Conv2d(c, max(1, c // r), 1), nn.Conv2d(max(1, c // r), c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.f2(F.relu(self.f1(s))))


@register_model(
    "mobilenet_v2",
    IMG,
    tags={"depthwise", "depthwise_multiplier", "residual", "bn", "relu6", "gap", "gemm"},
)
def mobilenet_v2():
    return Classifier(nn.Sequential(
        cbr(3, 16, act=nn.ReLU6), InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 2, 4),
        InvertedResidual(24, 24, 1, 4), InvertedResidual(24, 32, 2, 2, dw_mult=2), cbr(32, 64, 1, act=nn.ReLU6),
    ), 64)  # fmt: skip


@register_model(
    "mobilenet_v3",
    IMG,
    tags={"depthwise", "se", "hardswish", "hardsigmoid", "residual", "bn", "gap", "gemm"},
)
def mobilenet_v3():
    hs = nn.Hardswish
    return Classifier(nn.Sequential(
        cbr(3, 16, act=hs), InvertedResidual(16, 16, 1, 1, act=nn.ReLU, se=True),
        InvertedResidual(16, 24, 2, 3, act=hs, se=True), InvertedResidual(24, 24, 1, 3, act=hs, se=True),
        cbr(24, 48, 1, act=hs),
    ), 48)  # fmt: skip


def channel_shuffle(x, groups: int):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        half = cout // 2
        src = cin if stride == 2 else cin // 2
        self.branch = nn.Sequential(
            cbr(src, half, 1), nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), bn(half), cbr(half, half, 1),
        )  # fmt: skip
        if stride == 2:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), bn(cin), cbr(cin, half, 1)
            )

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.branch(b)], 1)
        else:
            out = torch.cat([self.short(x), self.branch(x)], 1)
        return channel_shuffle(out, 2)


@register_model(
    "shufflenet_v2", IMG, tags={"shuffle", "split", "concat", "depthwise", "bn", "gap", "gemm"}
)
def shufflenet_v2():
    return Classifier(nn.Sequential(
        cbr(3, 24, 3, 2), ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 96, 2), ShuffleUnit(96, 96, 1),
        cbr(96, 128, 1),
    ), 128)  # fmt: skip


class DenseBlock(nn.Module):
    def __init__(self, cin, growth, n):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                bn(cin + i * growth),
                nn.ReLU(),
                nn.Conv2d(cin + i * growth, growth, 3, padding=1, bias=False),
            )
            for i in range(n)
        )

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


@register_model("densenet", IMG, tags={"concat", "dense", "bn", "preact", "avgpool", "gap", "gemm"})
def densenet():
    return Classifier(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), DenseBlock(16, 8, 3), bn(40), nn.ReLU(), nn.Conv2d(40, 24, 1, bias=False),
        nn.AvgPool2d(2), DenseBlock(24, 8, 3), bn(48), nn.ReLU(),
    ), 48)  # fmt: skip


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.s = nn.Conv2d(cin, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        s = F.relu(self.s(x))
        return torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1)


class SqueezeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1),
            nn.ReLU(),
            Fire(32, 8, 16),
            Fire(32, 8, 16),
            nn.MaxPool2d(2),
            Fire(32, 16, 32),
        )
        self.head = nn.Conv2d(64, 10, 1)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(self.head(self.f(x))), 1), 1)


@register_model("squeezenet", IMG, tags={"concat", "fire", "maxpool", "gap", "flatten"})
def squeezenet():
    return SqueezeNet()


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.e1, self.e2 = cbr(3, 16), cbr(16, 32, 3, 2)
        self.mid = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1), nn.InstanceNorm2d(32, affine=True), nn.ReLU()
        )
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.d1 = cbr(32, 16)
        self.side = nn.Conv2d(32, 8, 1)
        self.out = nn.Conv2d(24, 2, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.mid(self.e2(F.pad(a, (1, 1, 1, 1))[:, :, 1:-1, 1:-1]))
        d = self.d1(torch.cat([a, F.relu(self.up(b))], 1))
        s = F.interpolate(self.side(b), scale_factor=2, mode="nearest")
        return self.out(torch.cat([d, s], 1))


@register_model(
    "unet",
    IMG,
    tags={"concat", "skip", "convtranspose", "resize", "instancenorm", "pad", "slice", "bn"},
)
def unet():
    return UNet()


@register_model("mlp", (1, 64), tags={"mlp", "gemm", "gelu", "dropout"})
def mlp():
    return nn.Sequential(
        nn.Linear(64, 128),
        nn.GELU(),
        nn.Linear(128, 96),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(96, 10),
    )
