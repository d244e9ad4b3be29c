"""optim.amp: 'auto' computes in bf16 only where bf16 is fast (CUDA, AMX CPUs); AVX512-BF16 without
AMX has bf16 instructions but slower bf16 matmuls than fp32, so it stays fp32."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from shiftnas.train import precision
from shiftnas.train.config import load_config
from shiftnas.train.precision import amp_name, amp_setup, cpu_features

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
SAPPHIRE_RAPIDS = ("model name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                   "flags\t\t: avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8\n")
COOPER_LAKE = "flags\t\t: avx2 avx512f avx512_bf16\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n"


def test_cpu_features_read_the_flags_that_decide_bf16_speed():
    avx2 = cpu_features(EPYC_AVX2)
    assert avx2["cpu_flags"] == {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False,
                                 "amx_tile": False}
    assert avx2["native_bf16"] is False and avx2["fast_bf16"] is False
    assert cpu_features(SAPPHIRE_RAPIDS)["native_bf16"] is True and cpu_features(SAPPHIRE_RAPIDS)["fast_bf16"] is True
    assert cpu_features(COOPER_LAKE)["native_bf16"] is True and cpu_features(COOPER_LAKE)["fast_bf16"] is False
    arm = cpu_features(ARM)
    assert arm["cpu_flags"] is None and arm["native_bf16"] is False and arm["fast_bf16"] is False
    assert avx2["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_this_host_is_described_and_the_result_is_cached():
    feat = cpu_features()
    assert set(feat) == {"cpu_capability", "cpu_flags", "native_bf16", "fast_bf16"}
    assert cpu_features() == feat


def _on_cpu(monkeypatch, cpuinfo: str) -> None:
    monkeypatch.setattr(precision, "cpu_features", lambda: cpu_features(cpuinfo))


def test_auto_is_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    _on_cpu(monkeypatch, EPYC_AVX2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        dtype, scaler, line = amp_setup("auto", torch.device("cpu"))
    assert dtype is None and scaler is None
    assert line.startswith("amp: fp32 (optim.amp=auto") and "no native bf16" in line and "slower" in line


def test_auto_is_fp32_with_avx512_bf16_but_no_amx_and_explicit_bf16_warns(monkeypatch):
    _on_cpu(monkeypatch, COOPER_LAKE)
    monkeypatch.setattr(precision, "_warned_slow_bf16", False)
    dtype, _, line = amp_setup("auto", torch.device("cpu"))
    assert dtype is None and "(avx512_bf16) but no AMX" in line and "~2x slower" in line
    with pytest.warns(UserWarning, match=r"optim.amp=bf16: .*no AMX"):
        assert amp_setup("bf16", torch.device("cpu"))[0] is torch.bfloat16


def test_auto_is_bf16_on_native_bf16_cpus_and_on_cuda(monkeypatch):
    _on_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    dtype, _, line = amp_setup("auto", torch.device("cpu"))
    assert dtype is torch.bfloat16 and "avx512_bf16, amx_bf16" in line
    dtype, scaler, line = amp_setup("auto", torch.device("cuda", 0))
    assert dtype is torch.bfloat16 and scaler is None and "CUDA" in line


def test_explicit_bf16_on_a_slow_cpu_works_and_warns_once(monkeypatch):
    _on_cpu(monkeypatch, EPYC_AVX2)
    monkeypatch.setattr(precision, "_warned_slow_bf16", False)
    with pytest.warns(UserWarning, match=r"optim.amp=bf16: .*~10x slower than fp32"):
        dtype, _, _ = amp_setup("bf16", torch.device("cpu"))
    assert dtype is torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert amp_setup("bf16", torch.device("cpu"))[0] is torch.bfloat16  # no second warning


def test_explicit_bf16_on_a_native_cpu_is_silent(monkeypatch):
    _on_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    monkeypatch.setattr(precision, "_warned_slow_bf16", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert amp_setup("bf16", torch.device("cpu"))[0] is torch.bfloat16


def test_off_fp16_and_bad_modes():
    assert amp_setup("off", torch.device("cpu"))[:2] == (None, None)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        amp_setup("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="'fp8'.*'auto', 'gpu', 'bf16', 'fp16', 'off'"):
        amp_setup("fp8", torch.device("cpu"))
    assert [amp_name(d) for d in (torch.bfloat16, torch.float16, None)] == ["bf16", "fp16", "fp32"]


def test_gpu_mode_is_bf16_on_cuda_and_fp32_on_every_cpu():
    assert amp_setup("gpu", torch.device("cuda"))[:2] == (torch.bfloat16, None)
    dtype, scaler, line = amp_setup("gpu", torch.device("cpu"))
    assert (dtype, scaler) == (None, None) and line == "amp: fp32 (optim.amp=gpu: bf16 on a CUDA device only)"
    for name in ("fmnist-vit-shift", "fmnist-vit-uniform", "fmnist-vit-binuniform", "fmnist-vit-sandwich",
                 "fmnist-vit-attentive"):  # the small ViT trains faster in fp32 on CPU, AMX or not
        assert load_config(CONFIGS / f"{name}.yaml", []).optim.amp == "gpu"
    assert load_config(CONFIGS / "fmnist-cnn-shift.yaml", []).optim.amp == "auto"  # faster in bf16 with AMX


def test_auto_is_the_default():
    assert load_config(None, []).optim.amp == "auto"
    assert load_config(None, ["optim.amp=auto"]).optim.amp == "auto"
