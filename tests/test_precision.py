"""minitrain/precision.py: dtype names, autocast, and a GradScaler that is on for fp16 only."""

import pytest
import torch

from minitrain import UserError
from minitrain.precision import autocast, make_scaler, resolve_dtype

CPU = torch.device("cpu")


def test_dtype_names_and_the_scaler():
    assert resolve_dtype("auto", CPU) == torch.float32  # no GPU: full precision
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    assert make_scaler(CPU, torch.float16).is_enabled()
    assert not make_scaler(CPU, torch.bfloat16).is_enabled()
    assert not make_scaler(CPU, torch.float32).is_enabled()
    with pytest.raises(UserError, match=r"--dtype='fp8' is not one of auto, fp32, bf16, fp16"):
        resolve_dtype("fp8", CPU)


def test_autocast_runs_matmuls_in_bf16_and_fp32_is_untouched():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(CPU, torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(CPU, torch.float32):
        assert (a @ b).dtype == torch.float32
