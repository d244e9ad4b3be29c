"""ViTSupernet: the AutoFormer weight-sharing vision transformer.

AutoFormer: Chen et al., "AutoFormer: Searching Transformers for Visual Recognition", ICCV 2021
(https://arxiv.org/abs/2107.00651, code: microsoft/Cream/AutoFormer). Semantics: one embed dim
shared by all layers, heads and mlp ratio per layer, depth by skipping trailing blocks, fixed
head dim. The active subnet is an argument of `forward`, never module state. The space's
hparams add AutoFormer's model options (shiftnas/spaces/vit.py): relative position encodings
(`rel_pos`), mean pooling of the patch tokens (`pool`) and the LayerNorm eps (`ln_eps`).

`forward(x, arch)`: an `ArchConfig` runs the sliced subnet; an `ArchSample` runs its hard
(arg-max) subnet and multiplies each op's output by its prefix mask (Eq. 9 of the ShiftNAS
paper), so the loss has a gradient w.r.t. the generator's one-hots; with
`ArchSample.full_width` every op runs at its widest candidate times the whole mask.
"""
from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from ..ops import (
    ElasticAttention,
    ElasticLayerNorm,
    ElasticLinear,
    ElasticMLP,
    ElasticPatchEmbed,
    ref,
)
from ..spaces import ArchConfig, SearchSpace, get_space
from ..spaces.arch_sample import ArchSample
from ..spaces.vit import mlp_hidden
from .timm_cfg import timm_create, timm_default_cfgs

__all__ = ["ViTSupernet", "ViTBlock"]


class ViTBlock(nn.Module):
    """Pre-norm transformer block at max size."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, mlp_hidden_dim: int, rel_pos: int = 0,
                 grid: int = 0, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm1 = ElasticLayerNorm(embed_dim, eps, **kw)
        self.attn = ElasticAttention(embed_dim, num_heads, head_dim, rel_pos=rel_pos, grid=grid, **kw)
        self.norm2 = ElasticLayerNorm(embed_dim, eps, **kw)
        self.mlp = ElasticMLP(embed_dim, mlp_hidden_dim, **kw)

    def forward(
        self,
        x: torch.Tensor,
        heads: int,
        hidden: int,
        head_mask: torch.Tensor | None = None,
        hidden_mask: torch.Tensor | None = None,
        layer_gate: torch.Tensor | None = None,
        embed_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`embed_mask` (full-width path): x is at full embed width with the channels beyond the
        subnet's zero; norms weigh channels by the mask and outputs are masked back to zero.
        Without it (the prefix path) every mask's value is 1: the masks are taps (`ref.mask_tap`)."""
        full = embed_mask is not None
        out_scale = layer_gate if not full else (embed_mask if layer_gate is None else layer_gate * embed_mask)
        norm1 = self.norm1(x) if not full else self.norm1.masked(x, embed_mask)
        a = self.attn(norm1, heads, head_mask, tap=not full)
        x = x + _scaled(a, out_scale, not full)
        norm2 = self.norm2(x) if not full else self.norm2.masked(x, embed_mask)
        m = self.mlp(norm2, hidden, hidden_mask, tap=not full)
        return x + _scaled(m, out_scale, not full)


def _scaled(y: torch.Tensor, scale: torch.Tensor | None, tap: bool) -> torch.Tensor:
    """y times a 0-d gate or an embed-channel mask (identity when None)."""
    return y if scale is None else ref.apply_mask(y, scale, None if scale.dim() == 0 else -1, tap)


class ViTSupernet(nn.Module):
    """Weight-sharing ViT over a `vit` search space (AutoFormer-T/S/B, vit-fmnist)."""

    def __init__(
        self,
        space: SearchSpace | str = "vit-fmnist",
        num_classes: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.space = get_space(space)
        if self.space.family != "vit":
            raise ValueError(f"ViTSupernet needs a vit space, got {self.space.name!r} ({self.space.family})")
        hp = self.space.hparams
        self.num_classes = hp["num_classes"] if num_classes is None else int(num_classes)
        self.in_chans, self.img_size = hp["in_chans"], hp["img_size"]
        E, H, d = hp["super_embed_dim"], hp["super_num_heads"], hp["head_dim"]
        kw = dict(device=device, dtype=dtype)
        self.patch_embed = ElasticPatchEmbed(hp["img_size"], hp["patch_size"], hp["in_chans"], E, **kw)
        n = self.patch_embed.num_patches + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E, **kw))
        self.pos_embed = nn.Parameter(torch.zeros(1, n, E, **kw))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        hidden_max = mlp_hidden(E, hp["super_mlp_ratio"])
        grid, eps = hp["img_size"] // hp["patch_size"], hp["ln_eps"]
        self.pool = hp["pool"]
        self.blocks = nn.ModuleList(
            ViTBlock(E, H, d, hidden_max, hp["rel_pos"], grid, eps, **kw) for _ in range(hp["super_depth"])
        )
        self.norm = ElasticLayerNorm(E, eps, **kw)
        self.head = ElasticLinear(E, self.num_classes, **kw)

    def check_input(self, x: torch.Tensor) -> None:
        want = (self.in_chans, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"{self.space.name}: expected input [B, {want[0]}, {want[1]}, {want[2]}], got {list(x.shape)}"
            )

    def forward(self, x: torch.Tensor, arch: ArchConfig | ArchSample) -> torch.Tensor:
        self.check_input(x)
        if isinstance(arch, ArchSample):
            return self._forward_sample(x, arch)
        self.space.check(arch)
        E = arch["embed_dim"]
        t = self._embed(x, E)
        for i in range(arch["depth"]):
            h, r = arch[f"layers.{i}.num_heads"], arch[f"layers.{i}.mlp_ratio"]
            t = self.blocks[i](t, h, mlp_hidden(E, r))
        return self._head(t, E)

    def _embed(self, x: torch.Tensor, E: int) -> torch.Tensor:
        t = self.patch_embed(x, E)
        cls = self.cls_token[:, :, :E].expand(t.shape[0], -1, -1)
        return torch.cat([cls, t], dim=1) + self.pos_embed[:, :, :E]

    def _head(self, t: torch.Tensor, E: int, embed_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm, pooling (the cls token, or the mean of the patch tokens), classifier."""
        t = t[:, 0] if self.pool == "cls" else t[:, 1:]
        t = self.norm(t) if embed_mask is None else self.norm.masked(t, embed_mask)
        return self.head(t if self.pool == "cls" else t.mean(dim=1), self.num_classes)

    def _forward_sample(self, x: torch.Tensor, sample: ArchSample) -> torch.Tensor:
        """The hard subnet times prefix masks; `sample.full_width`: every op at its widest
        candidate times the whole mask (Eq. 9 as written; same forward value). The MLP hidden
        widths of the ratio candidates are taken at the hard embed dim."""
        if sample.space != self.space.name:
            raise ValueError(f"sample is from space {sample.space!r}, expected space {self.space.name!r}")
        arch, sp, full = sample.hard(), self.space, sample.full_width
        dec = sp.decision
        E = max(dec("embed_dim").choices) if full else arch["embed_dim"]
        embed_mask = sample.prefix_mask("embed_dim", dec("embed_dim").choices)[:E]
        depth_choices = dec("depth").choices
        layer_gates = sample.prefix_mask("depth", depth_choices, length=max(depth_choices))
        t = ref.apply_mask(self._embed(x, E), embed_mask, -1, tap=not full)
        heads_choices, ratio_choices = dec("layers.0.num_heads").choices, dec("layers.0.mlp_ratio").choices
        widths = [mlp_hidden(arch["embed_dim"], c) for c in ratio_choices]
        for i in range(max(depth_choices) if full else arch["depth"]):
            h = max(heads_choices) if full else arch[f"layers.{i}.num_heads"]
            hidden = max(widths) if full else mlp_hidden(E, arch[f"layers.{i}.mlp_ratio"])
            head_mask = sample.prefix_mask(f"layers.{i}.num_heads", heads_choices)[:h]
            hidden_mask = sample.prefix_mask(f"layers.{i}.mlp_ratio", widths)[:hidden]
            t = self.blocks[i](t, h, hidden, head_mask, hidden_mask, layer_gates[i], embed_mask if full else None)
        return self._head(t, E, embed_mask if full else None)

    @torch.no_grad()
    def export(self, arch: ArchConfig) -> nn.Module:
        """A standalone `StaticViT` of `arch` with the sliced weights copied."""
        from .static_vit import StaticViT

        self.space.check(arch)
        E = arch["embed_dim"]
        d = self.space.hparams["head_dim"]
        ref = next(self.parameters())
        model = StaticViT(arch, self.num_classes, device=ref.device, dtype=ref.dtype)
        model.patch_embed.weight.copy_(self.patch_embed.weight[:E])
        model.patch_embed.bias.copy_(self.patch_embed.bias[:E])
        model.cls_token.copy_(self.cls_token[:, :, :E])
        model.pos_embed.copy_(self.pos_embed[:, :, :E])
        for i, blk in enumerate(model.blocks):
            src = self.blocks[i]
            h, hidden = blk.attn.num_heads, blk.mlp.fc1.out_features
            _copy_ln(blk.norm1, src.norm1, E)
            _copy_ln(blk.norm2, src.norm2, E)
            _copy_linear(blk.attn.qkv, src.attn.qkv, 3 * h * d, E)
            _copy_linear(blk.attn.proj, src.attn.proj, E, h * d)
            if src.attn.rel_pos_k is not None:  # never sliced (ops/rel_pos.py)
                blk.attn.rel_pos_k.load_state_dict(src.attn.rel_pos_k.state_dict())
                blk.attn.rel_pos_v.load_state_dict(src.attn.rel_pos_v.state_dict())
            _copy_linear(blk.mlp.fc1, src.mlp.fc1, hidden, E)
            _copy_linear(blk.mlp.fc2, src.mlp.fc2, E, hidden)
        _copy_ln(model.norm, self.norm, E)
        _copy_linear(model.head, self.head, self.num_classes, E)
        return model


def _copy_linear(dst: nn.Linear, src: ElasticLinear, out_f: int, in_f: int) -> None:
    w, b = src.active_weights(out_f, in_f)
    dst.weight.copy_(w)
    if b is not None:
        dst.bias.copy_(b)


def _copy_ln(dst: nn.LayerNorm, src: ElasticLayerNorm, c: int) -> None:
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])


# Read by timm's register_model (the entrypoint's module `default_cfgs`), keyed by model name.
default_cfgs = timm_default_cfgs(("autoformer-t", "autoformer-s", "autoformer-b", "vit-fmnist"))


@register_model
def shiftnas_autoformer_t_supernet(pretrained: bool = False, **kwargs) -> ViTSupernet:
    """AutoFormer-T supernet (ImageNet, 224 px)."""
    return timm_create(ViTSupernet, "autoformer-t", pretrained, kwargs)


@register_model
def shiftnas_autoformer_s_supernet(pretrained: bool = False, **kwargs) -> ViTSupernet:
    """AutoFormer-S supernet (ImageNet, 224 px)."""
    return timm_create(ViTSupernet, "autoformer-s", pretrained, kwargs)


@register_model
def shiftnas_autoformer_b_supernet(pretrained: bool = False, **kwargs) -> ViTSupernet:
    """AutoFormer-B supernet (ImageNet, 224 px)."""
    return timm_create(ViTSupernet, "autoformer-b", pretrained, kwargs)


@register_model
def shiftnas_vit_fmnist_supernet(pretrained: bool = False, **kwargs) -> ViTSupernet:
    """Small ViT supernet for 28x28 Fashion-MNIST."""
    return timm_create(ViTSupernet, "vit-fmnist", pretrained, kwargs)
