"""bench_kernels: the op cases. One op at one shape, with a zero-argument callable per implementation.

The implementations under test (`UNDER_TEST`: Triton kernels, the `cuda` / `cpu` backend ops of
`shiftnas._C`) and the baselines (`BASELINES`: ref_slice, full_mask, dense; see bench_kernels.py)
share the case's leaf tensors. A missing implementation records why (`Impls`), never raises.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from harness import short_error

VIT_OPS = ("layer_norm", "linear_qkv", "linear_proj", "mlp", "attention")
# cnn-bignas depthwise layers (stage, block): 144 ch @112 px s2, 240 @28, 768 @14, 1296 @7.
DW_LAYERS = ((1, 0), (2, 1), (4, 1), (5, 1))
UNDER_TEST = ("triton", "cuda", "cpu")
BASELINES = ("ref_slice", "full_mask", "dense")
IMPL_ORDER = UNDER_TEST + BASELINES
EPS = 1e-5
SPACE_SHORT = {"autoformer-t": "T", "autoformer-s": "S", "autoformer-b": "B", "smoke": "tiny"}
# Targets, reported and never asserted (see bench_kernels.py).
GPU_DENSE_TARGET = 0.9  # an op >= 0.9x the dense static op's throughput
CPU_REF_TARGET = 1.0  # the cpu backend >= 1.0x ref_slice
MASK_SLACK = 0.1  # a masked op at active fraction f costs <= f + 0.1 of full width
STEP_TARGET = 1.1  # supernet step <= 1.1x the exported model's step


class Impls:
    """The functions under test, each looked up once; a missing one records why, never raises."""

    def __init__(self, device: str):
        self.device = device
        self.missing: dict[str, str] = {}
        self._cache: dict[str, Callable | None] = {}

    def get(self, module: str, name: str) -> Callable | None:
        key = f"{module}.{name}"
        if key not in self._cache:
            try:
                self._cache[key] = getattr(importlib.import_module(module), name)
            except Exception as e:  # ImportError, a kernel failing at import, AttributeError
                self._cache[key] = None
                self.missing[key] = short_error(e)
        return self._cache[key]

    def kernel(self, module: str, name: str) -> Callable | None:
        return self.get(f"shiftnas.kernels.{module}", name)

    def ext(self, module: str, name: str) -> Callable | None:
        """A `shiftnas._C` op, when the extension is built (with CUDA for the *_cuda ones)."""
        from shiftnas import _ext

        key = f"shiftnas.ops.{module}.{name}"
        why = _ext.unavailable_reason()
        if why is None and name.endswith("_cuda") and not _ext.has_cuda_ops():
            why = "shiftnas._C was built without CUDA sources"
        if why is None and name.endswith("_cuda") and self.device != "cuda":
            why = "needs CUDA tensors (this run has none)"
        if why:
            self.missing.setdefault(key, why)
            return None
        return self.get(f"shiftnas.ops.{module}", name)

    def reason(self, module: str, name: str) -> str:
        for key in (
            f"shiftnas.kernels.{module}.{name}",
            f"shiftnas.ops.{module}.{name}",
            f"{module}.{name}",
        ):
            if key in self.missing:
                return self.missing[key]
        return "unavailable"

    def attach(self, case: OpCase, label: str, where: str, call: Callable) -> None:
        """Add implementation `label` = ``call(f)`` for `where` (``kernel:<module>.<name>``, a
        Triton kernel, or ``ext:<module>.<name>``, a `shiftnas._C` op); or record why it is missing."""
        kind, path = where.split(":")
        module, name = path.rsplit(".", 1)
        f = self.kernel(module, name) if kind == "kernel" else self.ext(module, name)
        if f is None:
            case.unavailable[label] = self.reason(module, name)
        else:
            case.impls[label] = lambda: call(f)


@dataclass
class OpCase:
    """One op at one shape: zero-argument callables per implementation, sharing leaf tensors."""

    op: str
    space: str
    width: str
    shape: dict
    shape_str: str
    impls: dict[str, Callable] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    leaves: list = field(default_factory=list)


def leaf(*shape, dtype, device, scale: float = 1.0, grad: bool = True, gen=None):
    import torch

    t = (torch.randn(*shape, generator=gen, dtype=torch.float32) * scale).to(
        device=device, dtype=dtype
    )
    return t.requires_grad_(grad)


def ones_leaf(n: int, **kw):
    """A mask of ones that requires grad (the *_masked kernels take one)."""
    import torch

    m = leaf(n, **kw)
    with torch.no_grad():
        m.fill_(1)
    return m


def prefix_mask(n_active: int, n: int, dtype, device, view=None):
    import torch

    m = (torch.arange(n, device=device) < n_active).to(dtype)
    return m.view(view) if view is not None else m


def tensor_kw(dtype, device) -> dict:
    """Keyword arguments of `leaf` with a fresh generator seeded 0 (every case starts alike)."""
    import torch

    return dict(dtype=dtype, device=device, gen=torch.Generator().manual_seed(0))


def dense_copy(t, *index):
    """A contiguous leaf copy of ``t[index]``: the dense static op's own weight."""
    return t.detach()[index].clone().requires_grad_(True)


# --- ViT ops -----------------------------------------------------------------------------------
def vit_dims(space_name: str, width: str) -> dict:
    """Active and max (supernet) sizes of `space_name` at its max arch or a mid arch."""
    if space_name == "smoke":  # tiny, odd token count so the tails are exercised
        base = dict(B=2, N=17, d=32, Em=64, Hm=3, Dhm=128)
        act = dict(E=48, H=2, Dh=96) if width == "max" else dict(E=32, H=1, Dh=64)
        return {**base, **act}
    import shiftnas
    from shiftnas.spaces.vit import mlp_hidden

    sp = shiftnas.get_space(space_name)
    hp = sp.hparams
    emb = sp.decision("embed_dim").choices
    heads = sp.decision("layers.0.num_heads").choices
    ratios = sp.decision("layers.0.mlp_ratio").choices
    if width == "max":
        E, H, r = max(emb), max(heads), max(ratios)
    else:  # middle embed choice, lower-middle heads and mlp ratio
        E, H, r = emb[len(emb) // 2], heads[(len(heads) - 1) // 2], ratios[(len(ratios) - 1) // 2]
    return dict(
        B=128,
        N=(hp["img_size"] // hp["patch_size"]) ** 2 + 1,
        d=hp["head_dim"],
        Em=hp["super_embed_dim"],
        Hm=hp["super_num_heads"],
        Dhm=mlp_hidden(hp["super_embed_dim"], hp["super_mlp_ratio"]),
        E=E,
        H=H,
        Dh=mlp_hidden(E, r),
    )


def _vit_layer_norm(case: OpCase, D: dict, kw: dict, impls: Impls, under_test) -> None:
    import torch
    import torch.nn.functional as F

    from shiftnas.ops import ref

    B, N, E, Em = D["B"], D["N"], D["E"], D["Em"]
    x, xf = leaf(B, N, E, **kw), leaf(B, N, Em, **kw)
    w, b = leaf(Em, scale=0.1, **kw), leaf(Em, scale=0.1, **kw)
    with torch.no_grad():
        w += 1
    wd, bd = dense_copy(w, slice(E)), dense_copy(b, slice(E))
    m = prefix_mask(E, Em, kw["dtype"], kw["device"])
    case.leaves = [x, xf, w, b, wd, bd]
    if "triton" in under_test:
        impls.attach(case, "triton", "kernel:layer_norm.layer_norm", lambda f: f(x, w, b, E, EPS))
    if "cuda" in under_test:
        impls.attach(
            case, "cuda", "ext:layer_norm_ext.layer_norm_cuda", lambda f: f(x, w, b, E, EPS)
        )
    if "cpu" in under_test:
        impls.attach(case, "cpu", "ext:layer_norm_ext.layer_norm_cpu", lambda f: f(x, w, b, E, EPS))
    case.impls["ref_slice"] = lambda: ref.layer_norm(x, w, b, E, EPS)
    case.impls["full_mask"] = lambda: F.layer_norm(xf, (Em,), w, b, EPS) * m
    case.impls["dense"] = lambda: F.layer_norm(x, (E,), wd, bd, EPS)


def _vit_linear(case: OpCase, D: dict, kw: dict, impls: Impls, under_test) -> None:
    import torch.nn.functional as F

    from shiftnas.ops import ref

    K, Km, Nout, Nm = (case.shape[k] for k in ("K", "K_max", "N_out", "N_max"))
    x, xf = leaf(D["B"], D["N"], K, **kw), leaf(D["B"], D["N"], Km, **kw)
    W, b = leaf(Nm, Km, scale=Km**-0.5, **kw), leaf(Nm, scale=0.02, **kw)
    Wd, bd = dense_copy(W, slice(Nout), slice(K)), dense_copy(b, slice(Nout))
    m = prefix_mask(Nout, Nm, kw["dtype"], kw["device"])
    case.leaves = [x, xf, W, b, Wd, bd]
    if "triton" in under_test:
        impls.attach(case, "triton", "kernel:linear.linear", lambda f: f(x, W, b, Nout))
    case.impls["ref_slice"] = lambda: ref.linear(x, W, b, Nout)
    case.impls["full_mask"] = lambda: F.linear(xf, W, b) * m
    case.impls["dense"] = lambda: F.linear(x, Wd, bd)


def _vit_mlp(case: OpCase, D: dict, kw: dict, impls: Impls, under_test) -> None:
    import torch.nn.functional as F

    from shiftnas.ops import ref

    B, N, E, Em, Dh, Dhm = (D[k] for k in ("B", "N", "E", "Em", "Dh", "Dhm"))
    x, xf = leaf(B, N, E, **kw), leaf(B, N, Em, **kw)
    W1, b1 = leaf(Dhm, Em, scale=Em**-0.5, **kw), leaf(Dhm, scale=0.02, **kw)
    W2, b2 = leaf(Em, Dhm, scale=Dhm**-0.5, **kw), leaf(Em, scale=0.02, **kw)
    W1d, b1d = dense_copy(W1, slice(Dh), slice(E)), dense_copy(b1, slice(Dh))
    W2d, b2d = dense_copy(W2, slice(E), slice(Dh)), dense_copy(b2, slice(E))
    mh, me = (
        prefix_mask(Dh, Dhm, kw["dtype"], kw["device"]),
        prefix_mask(E, Em, kw["dtype"], kw["device"]),
    )
    case.leaves = [x, xf, W1, b1, W2, b2, W1d, b1d, W2d, b2d]
    if "triton" in under_test:
        impls.attach(case, "triton", "kernel:mlp.mlp", lambda f: f(x, W1, b1, W2, b2, Dh))
    ref_mlp = getattr(ref, "mlp", None)
    if ref_mlp is not None:
        case.impls["ref_slice"] = lambda: ref_mlp(x, W1, b1, W2, b2, Dh)
    else:
        case.impls["ref_slice"] = lambda: ref.linear(ref.linear(x, W1, b1, Dh, "gelu"), W2, b2, E)
    case.impls["full_mask"] = lambda: F.linear(F.gelu(F.linear(xf, W1, b1)) * mh, W2, b2) * me
    case.impls["dense"] = lambda: F.linear(F.gelu(F.linear(x, W1d, b1d)), W2d, b2d)


def qkv_views(t):
    """q, k, v [B, H, N, d] as the model views its qkv linear output [B, N, H, 3, d]."""
    return t.permute(3, 0, 2, 1, 4).unbind(0)


def _vit_attention(case: OpCase, D: dict, kw: dict, impls: Impls, under_test) -> None:
    import torch.nn.functional as F

    from shiftnas.ops import ref

    B, N, d, H, Hm = D["B"], D["N"], D["d"], D["H"], D["Hm"]
    qkv, qkvf = leaf(B, N, H, 3, d, **kw), leaf(B, N, Hm, 3, d, **kw)
    q_, k_, v_ = (leaf(B, H, N, d, **kw) for _ in range(3))  # dense: contiguous q, k, v
    mh = prefix_mask(H, Hm, kw["dtype"], kw["device"], view=(1, Hm, 1, 1))
    case.leaves = [qkv, qkvf, q_, k_, v_]
    if "triton" in under_test:
        impls.attach(
            case, "triton", "kernel:attention.elastic_attention", lambda f: f(*qkv_views(qkv))
        )
    case.impls["ref_slice"] = lambda: ref.attention(*qkv_views(qkv))
    case.impls["full_mask"] = lambda: F.scaled_dot_product_attention(*qkv_views(qkvf)) * mh
    case.impls["dense"] = lambda: F.scaled_dot_product_attention(q_, k_, v_)


def _vit_shape(op: str, D: dict) -> tuple[dict, str]:
    B, N, d, E, Em, H, Hm, Dh, Dhm = (
        D[k] for k in ("B", "N", "d", "E", "Em", "H", "Hm", "Dh", "Dhm")
    )
    tok = f"{B}x{N}"
    if op == "layer_norm":
        return dict(B=B, N=N, C=E, C_max=Em), f"[{tok}, {E}/{Em}]"
    if op in ("linear_qkv", "linear_proj"):  # qkv: embed -> 3 * heads * d (head-major rows)
        K, Km, No, Nm = (
            (E, Em, 3 * H * d, 3 * Hm * d) if op == "linear_qkv" else (H * d, Hm * d, E, Em)
        )
        return dict(B=B, N=N, K=K, K_max=Km, N_out=No, N_max=Nm), f"[{tok}, {K}/{Km}] -> {No}/{Nm}"
    if op == "mlp":
        return dict(
            B=B, N=N, E=E, E_max=Em, hidden=Dh, hidden_max=Dhm
        ), f"[{tok}, {E}/{Em}] hidden {Dh}/{Dhm}"
    if op == "attention":
        return dict(B=B, heads=H, heads_max=Hm, N=N, d=d), f"[{B}, {H}/{Hm} heads, {N}, {d}]"
    raise ValueError(f"unknown op {op!r}")


_VIT_BUILDERS = {
    "layer_norm": _vit_layer_norm,
    "linear_qkv": _vit_linear,
    "linear_proj": _vit_linear,
    "mlp": _vit_mlp,
    "attention": _vit_attention,
}


def build_vit_case(
    op: str, space: str, width: str, dims: dict, dtype, device, impls: Impls, under_test
) -> OpCase:
    """`op` (one of `VIT_OPS`) at `dims` (`vit_dims`), with the implementations of `under_test`."""
    shape, shape_str = _vit_shape(op, dims)
    case = OpCase(op, space, width, shape, shape_str)
    _VIT_BUILDERS[op](case, dims, tensor_kw(dtype, device), impls, under_test)
    return case


# --- depthwise conv ----------------------------------------------------------------------------
def _dw_layer(s: int, j: int, stride: int, size: int, batch: int, c_in: tuple, t, k) -> dict:
    from shiftnas.models.static_mbconv import hidden_width

    mid = t[len(t) // 2]
    return dict(
        name=f"bignas s{s}b{j}",
        B=batch,
        H=size,
        stride=stride,
        Cm=hidden_width(c_in[0], max(t)),
        C_max=hidden_width(c_in[0], max(t)),
        k_max=max(k),
        C_mid=hidden_width(c_in[1], mid),
        k_mid=min(k),
    )


def dw_layers(batch: int, smoke: bool) -> list[dict]:
    """cnn-bignas depthwise layers at 224 px: max (widest hidden, largest k) and mid widths."""
    if smoke:
        return [
            dict(name="tiny s1", B=2, H=8, stride=1, Cm=24, C_max=24, k_max=5, C_mid=16, k_mid=3),
            dict(name="tiny s2", B=2, H=9, stride=2, Cm=16, C_max=16, k_max=3, C_mid=8, k_mid=3),
        ]
    import shiftnas
    from shiftnas.spaces.cnn import conv_out

    sp = shiftnas.get_space("cnn-bignas")
    hp = sp.hparams

    def ch(n):
        return sp.decision(n).choices

    def mid(c):
        return c[len(c) // 2]

    size = conv_out(224, hp["stem_stride"])
    pmax, pmid = max(ch("stem.width")), mid(ch("stem.width"))
    out = []
    for s, st in enumerate(hp["stages"]):
        w = ch(f"stage{s}.width")
        for j in range(max(ch(f"stage{s}.depth"))):
            stride = st["stride"] if j == 0 else 1
            c_in = (pmax, pmid) if j == 0 else (max(w), mid(w))
            if (s, j) in DW_LAYERS:
                t, k = ch(f"stage{s}.block{j}.expand"), ch(f"stage{s}.block{j}.kernel")
                out.append(_dw_layer(s, j, stride, size, batch, c_in, t, k))
            if j == 0:
                size = conv_out(size, stride)
        pmax, pmid = max(w), mid(w)
    return out


def build_dw_case(layer: dict, width: str, dtype, device, impls: Impls, under_test) -> OpCase:
    import torch.nn.functional as F

    kw = tensor_kw(dtype, device)
    B, Hs, s, Cm = layer["B"], layer["H"], layer["stride"], layer["Cm"]
    C, k = layer[f"C_{width}"], layer[f"k_{width}"]
    p = k // 2
    shape = dict(B=B, C=C, C_max=Cm, H=Hs, W=Hs, k=k, stride=s)
    case = OpCase("dwconv", layer["name"], width, shape, f"[{B}, {C}/{Cm}, {Hs}x{Hs}] k{k} s{s}")
    x, xf = leaf(B, C, Hs, Hs, **kw), leaf(B, Cm, Hs, Hs, **kw)
    w = leaf(Cm, 1, k, k, scale=1.0 / k, **kw)  # the active kernel, already cropped (OFA)
    wd = dense_copy(w, slice(C))
    m = prefix_mask(C, Cm, dtype, device, view=(1, Cm, 1, 1))
    case.leaves = [x, xf, w, wd]
    if "triton" in under_test:
        impls.attach(case, "triton", "kernel:dwconv.elastic_dwconv", lambda f: f(x, w, None, s))
    for name in ("cuda", "cpu"):
        if name in under_test:
            impls.attach(case, name, f"ext:dwconv_ext.dwconv_{name}", lambda f: f(x, w, None, s, p))
    case.impls["ref_slice"] = lambda: F.conv2d(x, w[:C], None, s, p, 1, C)
    case.impls["full_mask"] = lambda: F.conv2d(xf, w, None, s, p, 1, Cm) * m
    case.impls["dense"] = lambda: F.conv2d(x, wd, None, s, p, 1, C)
    return case
