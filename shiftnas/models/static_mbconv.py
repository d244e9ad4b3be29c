"""StaticMBConv: an exported MBConv subnet built from plain torch modules (no supernet needed).

Built from the arch and its space's hparams alone, with the parameter and buffer names that
`MBConvSupernet.export` fills, so `load_state_dict` of a saved subnet needs nothing else.
`hidden_width` and `se_mid` (from `shiftnas.spaces.cnn`, re-exported here) are the width rules the
supernet and the cost model share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import dispatch
from ..spaces import ArchConfig, get_space
from ..spaces.cnn import cnn_blocks, conv_out, has_residual, hidden_width, se_mid

__all__ = ["DepthwiseConv2d", "StaticMBConv", "conv_out", "hidden_width", "se_mid"]


class DepthwiseConv2d(nn.Conv2d):
    """`nn.Conv2d(c, c, k, stride, k // 2, groups=c)` (same parameters and state dict) that runs
    the `dwconv` op stack, the supernet's: the compiled kernel where one can take the input
    (PyTorch's CPU depthwise conv is 2-3x slower than it in bf16; README, Measured so far),
    F.conv2d otherwise. While exporting (torch.export, ONNX, TorchScript tracing or scripting)
    it is plain F.conv2d, so an exported graph holds standard operators only."""

    def __init__(self, channels: int, kernel: int, stride: int, device=None, dtype=None):
        super().__init__(channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False,
                         device=device, dtype=dtype)
        # The backends register now, with the compiled op's FLOP formula: a FlopCounterMode made
        # after the model counts this conv (one made before a first backend call would not).
        dispatch.backends()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript: nn.Conv2d's forward (the model stays scriptable)
            return self._conv_forward(x, self.weight, self.bias)
        return self._dispatched(x)

    @torch.jit.unused
    def _dispatched(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return self._conv_forward(x, self.weight, self.bias)
        return dispatch.call("dwconv", x, self.weight, self.bias, self.stride[0], self.padding[0])


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        mid = se_mid(channels)
        self.reduce = nn.Conv2d(channels, mid, 1, bias=True, device=device, dtype=dtype)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(mid, channels, 1, bias=True, device=device, dtype=dtype)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


def pool_shortcut(x: torch.Tensor, stride: int) -> torch.Tensor:
    """AttentiveNAS's shortcut pool: stride x stride average, padded by 1 on an odd grid (the
    padding counted in the mean), so the output grid is `conv_out(H, stride)` for stride 2."""
    if stride == 1:
        return x
    return F.avg_pool2d(x, stride, padding=x.shape[-1] % 2)


class MBConvBlock(nn.Module):
    """[1x1 expand + BN + SiLU] -> dw kxk + BN + SiLU -> [SE] -> 1x1 project + BN, plus, for a
    `residual` block, the shortcut: [avg pool if stride > 1] -> [1x1 conv if the width changes]."""

    def __init__(
        self,
        in_width: int,
        out_width: int,
        kernel: int,
        expand: float,
        stride: int,
        se: bool,
        residual: bool,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        hidden = hidden_width(in_width, expand)
        self.residual, self.stride = residual, stride
        if expand != 1:
            self.expand_conv = nn.Conv2d(in_width, hidden, 1, bias=False, **kw)
            self.expand_bn = nn.BatchNorm2d(hidden, **kw)
            self.expand_act = nn.SiLU()
        else:
            self.expand_conv = None
        self.dw_conv = DepthwiseConv2d(hidden, kernel, stride, **kw)
        self.dw_bn = nn.BatchNorm2d(hidden, **kw)
        self.dw_act = nn.SiLU()
        self.se = SqueezeExcite(hidden, **kw) if se else None
        self.project_conv = nn.Conv2d(hidden, out_width, 1, bias=False, **kw)
        self.project_bn = nn.BatchNorm2d(out_width, **kw)
        self.shortcut_conv = None
        if residual and in_width != out_width:
            self.shortcut_conv = nn.Conv2d(in_width, out_width, 1, bias=False, **kw)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        x = pool_shortcut(x, self.stride)
        return x if self.shortcut_conv is None else self.shortcut_conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand_conv is not None:
            h = self.expand_act(self.expand_bn(self.expand_conv(h)))
        h = self.dw_act(self.dw_bn(self.dw_conv(h)))
        if self.se is not None:
            h = self.se(h)
        h = self.project_bn(self.project_conv(h))
        return self.shortcut(x) + h if self.residual else h


class StaticMBConv(nn.Module):
    """The subnet `arch` of a cnn space as an ordinary MobileNetV3-style network."""

    def __init__(
        self,
        arch: ArchConfig,
        num_classes: int | None = None,
        drop_rate: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        space = get_space(arch.space)
        if space.family != "cnn":
            raise ValueError(
                f"StaticMBConv needs an arch of a cnn space, got {arch.space!r} ({space.family})"
            )
        hp = space.hparams
        kw = {"device": device, "dtype": dtype}
        shortcut = hp.get("shortcut", "ofa")
        self.arch = arch
        self.num_classes = hp["num_classes"] if num_classes is None else int(num_classes)
        self.in_chans, self.resolution = hp["in_chans"], arch["resolution"]
        self.drop_rate = hp["dropout"] if drop_rate is None else float(drop_rate)
        width = arch["stem.width"]
        self.stem_conv = nn.Conv2d(hp["in_chans"], width, 3, hp["stem_stride"], 1, bias=False, **kw)
        self.stem_bn = nn.BatchNorm2d(width, **kw)
        self.stem_act = nn.SiLU()
        stages = []
        for s, (st, blocks) in enumerate(zip(hp["stages"], cnn_blocks(arch))):
            out = arch[f"stage{s}.width"]
            stage = nn.ModuleList()
            for j, (k, t) in enumerate(blocks):
                stride = st["stride"] if j == 0 else 1
                residual = has_residual(shortcut, j)
                stage.append(MBConvBlock(width, out, k, t, stride, st["se"], residual, **kw))
                width = out
            stages.append(stage)
        self.stages = nn.ModuleList(stages)
        final = hp["final_expand"] * width
        self.final_conv = nn.Conv2d(width, final, 1, bias=False, **kw)
        self.final_bn = nn.BatchNorm2d(final, **kw)
        self.final_act = nn.SiLU()
        self.feature_mix = nn.Linear(final, arch["head.width"], bias=False, **kw)
        self.feature_act = nn.SiLU()
        self.dropout = nn.Dropout(self.drop_rate)
        self.classifier = nn.Linear(arch["head.width"], self.num_classes, **kw)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem_conv(x)))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.final_act(self.final_bn(self.final_conv(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_act(self.feature_mix(x.mean((2, 3))))
        return self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
