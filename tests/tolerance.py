"""The tolerance rules of the numerical tests, in one place (a plain module, like archutil).

The rule for a kernel (compiled, in shiftnas._C, or Triton) against a reference in higher precision
(float64, or float32 for bfloat16/float16 inputs) is FlashAttention's: the kernel may be off the
reference by at most twice PyTorch's own error in the tested dtype, plus a small absolute slack:

    max |got - ref| <= 2 * max |same - ref| + atol

`same` is PyTorch's result for the same inputs in the tested dtype. The slack is the call site's
choice (it depends on the op and the dtype; each test file documents its own), often relative to
the reference's largest magnitude (`ref_scale`).

`assert_rel_close` is the other rule, for two implementations of one computation in the same
dtype with no higher-precision reference at hand (a whole supernet on two backends): there is no
"PyTorch's own error" to scale by, so the bound is relative to the expected values' magnitude.
"""
from __future__ import annotations

import torch

__all__ = [
    "KERNEL_REL_ATOL",
    "assert_rel_close",
    "assert_within_2x_torch",
    "assert_within_2x_torch_scaled",
    "max_err",
    "ref_scale",
]

# The Triton linear, mlp and LayerNorm tests' slack, relative to the output scale
# (`assert_within_2x_torch_scaled`): a few fp32 ulp, about two fp16 / bf16 ulp.
KERNEL_REL_ATOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| over the elements, computed in float64 on the CPU (a kernel's output may be
    on the GPU, a reference on the CPU); 0.0 for empty tensors."""
    return (a.double().cpu() - ref.double().cpu()).abs().max().item() if a.numel() else 0.0


def ref_scale(ref: torch.Tensor) -> float:
    """The reference's largest magnitude, max |ref| (0.0 for an empty tensor)."""
    return ref.abs().max().item() if ref.numel() else 0.0


def assert_within_2x_torch(what: str, got: torch.Tensor, same: torch.Tensor, ref: torch.Tensor,
                           atol: float) -> None:
    """max |got - ref| <= 2 * max |same - ref| + atol, and got has ref's shape.

    got: the implementation under test; same: PyTorch in the tested dtype; ref: the reference in
    higher precision."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err, base = max_err(got, ref), max_err(same, ref)
    assert err <= 2 * base + atol, (
        f"{what}: max |got - ref| {err:.3g} > 2 x torch {same.dtype} error {base:.3g} + atol {atol:.3g}"
    )


def assert_within_2x_torch_scaled(what: str, got: torch.Tensor, same: torch.Tensor, ref: torch.Tensor,
                                  rel_atol: float) -> None:
    """`assert_within_2x_torch` with the slack relative to the output's scale: atol = rel_atol x
    max |ref| (a scale of at least 1e-3, so an all-but-zero output still has some slack)."""
    assert_within_2x_torch(what, got, same, ref, rel_atol * max(ref_scale(ref), 1e-3))


def assert_rel_close(what: str, got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4,
                     atol: float = 1e-5) -> None:
    """max |got - want| <= rtol * (max |want| + 1e-6) + atol: two implementations, one dtype."""
    err = (got - want).abs().max().item()
    scale = want.abs().max().item() + 1e-6
    assert err <= rtol * scale + atol, f"{what}: max |got - want| = {err:.3e} (scale {scale:.3e})"
