"""MBConvSupernet: the BigNAS / AttentiveNAS weight-sharing MobileNetV3-style network.

BigNAS: Yu et al., "BigNAS: Scaling Up Neural Architecture Search with Big Single-Stage Models",
ECCV 2020 (https://arxiv.org/abs/2003.11142). AttentiveNAS: Wang et al., CVPR 2021
(https://arxiv.org/abs/2011.09011, code: facebookresearch/AttentiveNAS, `use_v3_head`).
Elastic kernels: OFA, Cai et al., ICLR 2020 (https://arxiv.org/abs/1908.09791).

Decisions per `shiftnas/spaces/cnn.py`: resolution, stem width, per-stage width and depth,
per-block kernel and expand ratio, head width. `forward(x, arch)`: an `ArchConfig` runs the
sliced subnet; an `ArchSample` runs its hard (arg-max) subnet and multiplies each op's output
by its prefix mask or straight-through gate (docs/method.md Eq. 9), so the loss has a gradient
w.r.t. the generator's one-hots. Inputs must already be at `arch["resolution"]`:
`resize_to(x, r)` does what the trainer does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from ..ops import ref
from ..ops.batch_norm import ElasticBatchNorm2d
from ..ops.conv import ElasticConv2d, ElasticDWConv2d
from ..ops.linear import ElasticLinear
from ..ops.se import ElasticSE, se_mid
from ..spaces import ArchConfig, SearchSpace, get_space
from ..spaces.arch_sample import ArchSample
from ..spaces.cnn import has_residual
from .static_mbconv import StaticMBConv, hidden_width, pool_shortcut
from .timm_cfg import timm_create, timm_default_cfgs

__all__ = ["ElasticMBConvBlock", "MBConvSupernet", "resize_to"]


def resize_to(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of a [B, C, H, W] batch to resolution x resolution (no-op if already)."""
    if x.dim() != 4:
        raise ValueError(
            f"resize_to: expected a 4-D [B, C, H, W] tensor, got shape {list(x.shape)}"
        )
    if x.shape[-2:] == (resolution, resolution):
        return x
    return F.interpolate(
        x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=False
    )


def _scale(x: torch.Tensor, s: torch.Tensor | None, tap: bool) -> torch.Tensor:
    """x * s over channels (s: [C] mask) or as a scalar gate; identity when s is None. `tap`: the
    prefix path, where s's value is 1 (`ref.mask_tap`: no multiply, the same gradients)."""
    return x if s is None else ref.apply_mask(x, s, None if s.dim() == 0 else 1, tap)


class ElasticMBConvBlock(nn.Module):
    """MBConv block at max size: [expand] -> dw conv -> [SE] -> project, plus the shortcut if
    `residual`: [avg pool if stride > 1] -> [1x1 conv where the width changes] (the conv exists
    if `shortcut_conv`; the space's `shortcut` rule, `shiftnas/spaces/cnn.py`)."""

    def __init__(
        self,
        max_in: int,
        max_out: int,
        kernel_sizes: tuple[int, ...],
        max_expand: float,
        stride: int,
        se: bool,
        residual: bool,
        shortcut_conv: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        max_hidden = hidden_width(max_in, max_expand)
        self.residual, self.stride = residual, stride
        if max_expand != 1:
            self.expand_conv = ElasticConv2d(max_in, max_hidden, 1, **kw)
            self.expand_bn = ElasticBatchNorm2d(max_hidden, **kw)
        else:
            self.expand_conv = None
        self.dw_conv = ElasticDWConv2d(max_hidden, kernel_sizes, stride, **kw)
        self.dw_bn = ElasticBatchNorm2d(max_hidden, **kw)
        self.se = ElasticSE(max_hidden, **kw) if se else None
        self.project_conv = ElasticConv2d(max_hidden, max_out, 1, **kw)
        self.project_bn = ElasticBatchNorm2d(max_out, **kw)
        self.shortcut_conv = None
        if residual and shortcut_conv:
            self.shortcut_conv = ElasticConv2d(max_in, max_out, 1, **kw)

    def shortcut(
        self, x: torch.Tensor, width: int, scale: torch.Tensor | None, same_width: bool | None,
        tap: bool = False,
    ) -> torch.Tensor:
        """The residual at `width` channels; `scale` multiplies the shortcut conv's output.
        `same_width`: whether the subnet keeps its width, given on the full-width path, where x
        and `width` are the widest candidates and x's channels past the subnet's are zero: the
        identity is then x zero-padded or cut to `width`. Default: x.shape[1] == width."""
        x = pool_shortcut(x, self.stride)
        same = x.shape[1] == width if same_width is None else same_width
        if same:
            return x if x.shape[1] == width else F.pad(x, (0, 0, 0, 0, 0, width - x.shape[1]))
        if self.shortcut_conv is None:
            raise ValueError(
                f"ElasticMBConvBlock: a shortcut from {x.shape[1]} to {width} channels needs a "
                "shortcut conv, and this block has none (its space never changes the width here)"
            )
        return _scale(self.shortcut_conv(x, width), scale, tap)

    def forward(
        self,
        x: torch.Tensor,
        width: int,
        kernel: int,
        expand: float,
        hidden_scale: torch.Tensor | None = None,
        out_scale: torch.Tensor | None = None,
        hidden: int | None = None,
        se_mid: int | None = None,
        shortcut_scale: torch.Tensor | None = None,
        same_width: bool | None = None,
        tap: bool = False,
    ) -> torch.Tensor:
        """`hidden_scale` multiplies the dw output ([hidden] or scalar), `out_scale` the branch,
        `shortcut_scale` the shortcut conv's output (`tap`: the scales' value is 1, the prefix
        path). `hidden` / `se_mid` / `same_width` override what is derived from x (the
        full-width Eq. 9 path)."""
        h = x
        if expand != 1:
            hidden = hidden_width(x.shape[1], expand) if hidden is None else hidden
            h = F.silu(self.expand_bn(self.expand_conv(x, hidden)))
        h = _scale(F.silu(self.dw_bn(self.dw_conv(h, kernel))), hidden_scale, tap)
        if self.se is not None:
            h = self.se(h, se_mid)
        h = _scale(self.project_bn(self.project_conv(h, width)), out_scale, tap)
        return self.shortcut(x, width, shortcut_scale, same_width, tap) + h if self.residual else h


class MBConvSupernet(nn.Module):
    """Weight-sharing MBConv network over a `cnn` search space (cnn-bignas, cnn-fmnist)."""

    def __init__(
        self,
        space: SearchSpace | str = "cnn-fmnist",
        num_classes: int | None = None,
        drop_rate: float | None = None,
        zero_init_last: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.space = sp = get_space(space)
        if sp.family != "cnn":
            raise ValueError(
                f"MBConvSupernet needs a cnn space, got {sp.name!r} ({sp.family}); try 'cnn-fmnist'"
            )
        hp = sp.hparams
        kw = {"device": device, "dtype": dtype}
        self.num_classes = hp["num_classes"] if num_classes is None else int(num_classes)
        self.in_chans = hp["in_chans"]
        self.drop_rate = hp["dropout"] if drop_rate is None else float(drop_rate)
        width = max(sp.decision("stem.width").choices)
        self.stem_conv = ElasticConv2d(hp["in_chans"], width, 3, hp["stem_stride"], **kw)
        self.stem_bn = ElasticBatchNorm2d(width, **kw)
        self.shortcut = hp.get("shortcut", "ofa")
        in_widths = sp.decision("stem.width").choices
        stages = []
        for s, st in enumerate(hp["stages"]):
            out_widths = sp.decision(f"stage{s}.width").choices
            out = max(out_widths)
            stage = nn.ModuleList()
            for j in range(max(sp.decision(f"stage{s}.depth").choices)):
                kernels = sp.decision(f"stage{s}.block{j}.kernel").choices
                max_t = max(sp.decision(f"stage{s}.block{j}.expand").choices)
                stride = st["stride"] if j == 0 else 1
                residual = has_residual(self.shortcut, j)
                # a shortcut conv where some subnet changes the width (a stage's first block)
                conv = j == 0 and any(a != b for a in in_widths for b in out_widths)
                stage.append(ElasticMBConvBlock(
                    width, out, kernels, max_t, stride, st["se"], residual, conv, **kw
                ))
                width = out
            in_widths = out_widths
            stages.append(stage)
        self.stages = nn.ModuleList(stages)
        self.final_expand = hp["final_expand"]
        final = self.final_expand * width
        head = max(sp.decision("head.width").choices)
        self.final_conv = ElasticConv2d(width, final, 1, **kw)
        self.final_bn = ElasticBatchNorm2d(final, **kw)
        self.feature_mix = ElasticLinear(final, head, bias=False, **kw)
        self.classifier = ElasticLinear(head, self.num_classes, bias=True, **kw)
        if zero_init_last:  # BigNAS / AttentiveNAS: residual blocks start as their shortcuts
            for stage in self.stages:
                for block in stage:
                    if block.residual:
                        nn.init.zeros_(block.project_bn.weight)

    # -- input checks ------------------------------------------------------------------------------
    def _resolve(self, arch) -> tuple[ArchConfig, ArchSample | None, dict[str, int] | None]:
        if isinstance(arch, ArchSample):
            if arch.space != self.space.name:
                raise ValueError(f"arch is from space {arch.space!r}, expected {self.space.name!r}")
            idx = arch.indices()
            return self.space.from_indices(idx), arch, idx
        if isinstance(arch, ArchConfig):
            if arch.space != self.space.name:
                raise ValueError(f"arch is from space {arch.space!r}, expected {self.space.name!r}")
            return arch, None, None
        raise ValueError(
            f"arch must be an ArchConfig or ArchSample of {self.space.name!r}, got {type(arch).__name__}"
        )

    def check_input(self, x: torch.Tensor, resolution: int) -> None:
        name = self.space.name
        if x.dim() != 4:
            raise ValueError(
                f"{name}: expected a 4-D input [B, C, H, W], got shape {list(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name}: expected {self.in_chans} input channels, got {x.shape[1]} (shape {list(x.shape)})"
            )
        if tuple(x.shape[-2:]) != (resolution, resolution):
            raise ValueError(
                f"{name}: expected {resolution}x{resolution} input for resolution {resolution}, got "
                f"{x.shape[-2]}x{x.shape[-1]}; resize with shiftnas.models.mbconv.resize_to(x, {resolution})"
            )

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, arch: ArchConfig | ArchSample) -> torch.Tensor:
        arch, sample, idx = self._resolve(arch)
        self.check_input(x, arch["resolution"])
        if sample is not None and sample.full_width:
            return self._forward_full(x, arch, sample, idx)
        sp = self.space

        def width_mask(name: str, active: int, scale: int = 1) -> torch.Tensor | None:
            if sample is None:
                return None
            return sample.prefix_mask(name, [scale * c for c in sp.decision(name).choices])[:active]

        w = arch["stem.width"]
        stem_scale = None
        if sample is not None:  # resolution gate after the stem BN: train-mode BN cancels it on x
            stem_scale = width_mask("stem.width", w) * sample.gate("resolution", idx["resolution"])
        x = _scale(F.silu(self.stem_bn(self.stem_conv(x, w))), stem_scale, True)
        for s, stage in enumerate(self.stages):
            w, d = arch[f"stage{s}.width"], arch[f"stage{s}.depth"]
            wmask = width_mask(f"stage{s}.width", w)
            if sample is not None:
                depth_choices = sp.decision(f"stage{s}.depth").choices
                dmask = sample.prefix_mask(f"stage{s}.depth", depth_choices, length=len(stage))
            for j in range(d):
                kname, ename = f"stage{s}.block{j}.kernel", f"stage{s}.block{j}.expand"
                k, t = arch[kname], arch[ename]
                hidden_scale = out_scale = None
                if sample is not None:
                    widths = [hidden_width(x.shape[1], c) for c in sp.decision(ename).choices]
                    emask = sample.prefix_mask(ename, widths)[: hidden_width(x.shape[1], t)]
                    hidden_scale = emask * sample.gate(kname, idx[kname])
                    out_scale = wmask * dmask[j]  # j == 0 too: every depth one-hot gets a gradient
                x = stage[j](x, w, k, t, hidden_scale, out_scale, shortcut_scale=wmask, tap=True)
        last = arch["stage%d.width" % (len(self.stages) - 1)]
        return self._head(x, last, arch["head.width"], width_mask, True)

    def _head(self, x: torch.Tensor, last_width: int, hw: int, width_mask, tap: bool) -> torch.Tensor:
        last = f"stage{len(self.stages) - 1}.width"
        c = self.final_expand * last_width
        x = _scale(
            F.silu(self.final_bn(self.final_conv(x, c))), width_mask(last, c, self.final_expand), tap
        )
        x = _scale(F.silu(self.feature_mix(x.mean((2, 3)), hw)), width_mask("head.width", hw), tap)
        x = F.dropout(x, self.drop_rate, self.training)
        return self.classifier(x, self.num_classes)

    def _forward_full(self, x: torch.Tensor, arch: ArchConfig, sample: ArchSample, idx: dict[str, int]) -> torch.Tensor:
        """Eq. 9 at full width: every width, expand ratio and depth at its largest candidate, the
        whole output times its prefix mask (same forward value as the hard subnet). Kernel size
        and resolution are not prefixes: they keep their straight-through gates. Widths that
        depend on another decision (hidden = expand x input width, the SE reduce width) are
        taken at the hard choice of that decision. BN running statistics of channels beyond the
        subnet are updated too: BN is recalibrated per subnet before evaluation."""
        sp = self.space
        choices = lambda name: sp.decision(name).choices  # noqa: E731
        choice = lambda name: choices(name)[idx[name]]  # noqa: E731 - inactive decisions too

        def mask(name: str, widths: list[int], length: int | None = None) -> tuple[int, torch.Tensor]:
            return max(widths), sample.prefix_mask(name, widths, length)

        w, m = mask("stem.width", choices("stem.width"))
        x = _scale(F.silu(self.stem_bn(self.stem_conv(x, w))), m * sample.gate("resolution", idx["resolution"]), False)
        cin = arch["stem.width"]  # the hard subnet's input width of the next block
        for s, stage in enumerate(self.stages):
            w, wmask = mask(f"stage{s}.width", choices(f"stage{s}.width"))
            dmask = sample.prefix_mask(f"stage{s}.depth", choices(f"stage{s}.depth"), length=len(stage))
            for j, block in enumerate(stage):
                kname, ename = f"stage{s}.block{j}.kernel", f"stage{s}.block{j}.expand"
                widths = [hidden_width(cin, c) for c in choices(ename)]
                # no expand conv (expand 1 only): the dw conv runs on x's full width
                hidden, emask = mask(ename, widths, None if block.expand_conv else x.shape[1])
                x = block(x, w, choice(kname), max(choices(ename)), emask * sample.gate(kname, idx[kname]),
                          wmask * dmask[j], hidden, se_mid(hidden_width(cin, choice(ename))),
                          shortcut_scale=wmask, same_width=cin == choice(f"stage{s}.width"))
                cin = arch[f"stage{s}.width"]
        last = f"stage{len(self.stages) - 1}.width"
        full_mask = lambda name, active, scale=1: sample.prefix_mask(  # noqa: E731
            name, [scale * c for c in choices(name)])[:active]
        hw = max(choices("head.width"))
        return self._head(x, max(sp.decision(last).choices), hw, full_mask, False)

    # -- export ------------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, arch: ArchConfig) -> StaticMBConv:
        """A standalone `StaticMBConv` of `arch` with the sliced (and kernel-transformed) weights,
        BN affine parameters and running statistics copied; same train/eval mode as self."""
        if not isinstance(arch, ArchConfig):
            raise ValueError(  # noqa: TRY004 - the project reports bad input as ValueError
                f"export needs an ArchConfig of {self.space.name!r}, got {type(arch).__name__}"
            )
        self._resolve(arch)
        ref = next(self.parameters())
        model = StaticMBConv(
            arch, self.num_classes, self.drop_rate, device=ref.device, dtype=ref.dtype
        )
        src = self.state_dict()
        for name, dst in model.state_dict().items():
            if name.endswith("dw_conv.weight"):
                val = self.get_submodule(name[: -len(".weight")]).active_weight(
                    dst.shape[-1], dst.shape[0]
                )
            else:
                val = src[name]
                if val.dim() != dst.dim() or any(a < b for a, b in zip(val.shape, dst.shape)):
                    raise RuntimeError(
                        f"export: {name} {list(dst.shape)} does not fit in {list(val.shape)}"
                    )
                val = val[tuple(slice(0, n) for n in dst.shape)]
            dst.copy_(val)
        model.train(self.training)
        return model


# Read by timm's register_model (the entrypoint's module `default_cfgs`), keyed by model name.
default_cfgs = timm_default_cfgs(("cnn-bignas", "cnn-fmnist"))


@register_model
def shiftnas_cnn_bignas_supernet(pretrained: bool = False, **kwargs) -> MBConvSupernet:
    """AttentiveNAS/BigNAS MBConv supernet (ImageNet, 192-288 px)."""
    return timm_create(MBConvSupernet, "cnn-bignas", pretrained, kwargs)


@register_model
def shiftnas_cnn_fmnist_supernet(pretrained: bool = False, **kwargs) -> MBConvSupernet:
    """Small MBConv supernet for 28x28 Fashion-MNIST."""
    return timm_create(MBConvSupernet, "cnn-fmnist", pretrained, kwargs)
