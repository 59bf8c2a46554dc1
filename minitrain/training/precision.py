"""Mixed precision: the autocast context and a GradScaler that is enabled only for fp16.

bf16 has fp32's exponent range, so its gradients do not underflow and need no loss scaling; fp16
does (Micikevicius et al. 2018, "Mixed Precision Training").
"""

import contextlib
from typing import Literal

import torch

from minitrain import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DtypeName = Literal["auto", "bf16", "fp16", "fp32"]  # the choices of the scripts' --dtype


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"--dtype={name!r} is not one of auto, {', '.join(DTYPES)}.")
    dtype = DTYPES[name]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype=bf16 was asked for, but this GPU cannot do bf16; use fp16.")
    if dtype == torch.float16 and device.type == "cpu" and not cpu_supports_fp16():
        raise UserError("--dtype=fp16 was asked for, but this CPU cannot run fp16; use bf16 or fp32.")
    return dtype


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


def largest_batch(fits, limit: int = 1024, multiple_of: int | None = None) -> int:
    """The largest power-of-two micro-batch up to `limit` for which `fits(batch)` (a trial forward
    and backward) returns True, among those that divide `multiple_of`; 0 if none fits. Doubling
    stops at the first failure, as memory use grows with the batch."""
    best, b = 0, 1
    while b <= limit and (multiple_of is None or multiple_of % b == 0):
        if not fits(b):
            break
        best, b = b, b * 2
    return best


def probe_batch_size(model, block_size: int, device, dtype, multiple_of: int = 1024) -> int:
    """--batch_size=auto: the largest power-of-two micro-batch (dividing `multiple_of`) whose
    forward and backward fit on this GPU, with the memory of AdamW's two moments held aside. The
    trial batches are random tokens; the gradients they leave are cleared."""
    reserve = [torch.empty_like(p) for p in model.parameters() for _ in range(2)]

    def fits(b: int) -> bool:
        try:
            x = torch.randint(0, model.config.vocab_size, (b, block_size + 1), device=device)
            with autocast(device, dtype):
                _, loss = model(x[:, :-1], x[:, 1:], reduction="sum")
            loss.backward()
            torch.cuda.synchronize(device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    try:
        return largest_batch(fits, limit=multiple_of, multiple_of=multiple_of)
    finally:
        del reserve
        torch.cuda.reset_peak_memory_stats(device)


def auto_batch_size(model, block_size: int, tokens_per_step: int, d, dtype) -> int:
    """--batch_size=auto: the largest power-of-two micro-batch that fits on the GPU, the same on
    every rank, dividing the sequences each rank takes per step; accumulation follows from it."""
    from minitrain.training import dist

    if d.device.type != "cuda":
        raise UserError("--batch_size=auto measures GPU memory; on a CPU give a number.")
    per_rank = tokens_per_step // (d.world_size * block_size) if tokens_per_step else 1024
    B = int(dist.all_reduce_min(probe_batch_size(model, block_size, d.device, dtype, per_rank), d))
    if B == 0:
        raise UserError(oom_sentence())
    dist.print0(f"--batch_size=auto: {B} sequences per micro-batch fit")
    return B
