"""Mixed precision: the autocast context and a GradScaler that is enabled only for fp16.

bf16 has fp32's exponent range, so its gradients do not underflow and need no loss scaling; fp16
does (Micikevicius et al. 2018, "Mixed Precision Training").
"""

import contextlib

import torch

from minitrain import UserError
from minitrain.options import DtypeName  # noqa: F401  (the choices of --dtype)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    return choose_dtype(name, device)[0]


def choose_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """(the compute dtype for --dtype `name` on `device`, why): `auto` is bf16 where the hardware
    computes it natively (a GPU with bf16; a CPU with AVX-512 BF16 or AMX, where a bf16 matmul runs
    several times faster than fp32), else fp32."""
    if name == "auto":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16, "--dtype auto; this GPU computes bf16"
            return torch.float32, "--dtype auto; this GPU has no bf16"
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16, "--dtype auto; this CPU computes bf16 natively: AVX-512 BF16 or AMX"
        return torch.float32, "--dtype auto; no native bf16 matrix instructions here"
    if name not in DTYPES:
        raise UserError(f"--dtype={name!r} is not one of auto, {', '.join(DTYPES)}.")
    dtype = DTYPES[name]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype=bf16 was asked for, but this GPU cannot do bf16; use fp16.")
    if dtype == torch.float16 and device.type == "cpu" and not cpu_supports_fp16():
        raise UserError("--dtype=fp16 was asked for, but this CPU cannot run fp16; use bf16 or fp32.")
    return dtype, f"--dtype {name}"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16, or AMX tiles), as torch reports
    them (torch.cpu's capability probes; older builds without them count as no)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def cpu_supports_fp16() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2))
        return True
    except (RuntimeError, TypeError):
        return False


def autocast(device: torch.device, dtype: torch.dtype):
    """Run matmuls in `dtype` with fp32 master weights; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def allow_tf32(device: torch.device) -> None:
    """On CUDA, let fp32 matmuls and convolutions use TF32 tensor cores (~8x fp32 on Ampere and
    later, with a 10-bit mantissa: enough for training, as PyTorch's own docs discuss)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def oom_sentence() -> str:
    """What to say when CUDA runs out of memory: the peak and the levers, not a traceback."""
    peak = total = 0.0
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    return (
        f"the GPU ran out of memory (peak {peak:.1f} GiB allocated of {total:.1f} GiB); lower --batch_size "
        f"(or --batch_size=auto; accumulation keeps the tokens per step), --block_size, or turn on "
        f"--activation_checkpointing."
    )
