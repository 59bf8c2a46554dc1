"""AdamW parameter groups and learning-rate schedules as pure functions of the step."""

import math
from typing import get_args

import torch

from minitrain.options import Schedule

SCHEDULES = get_args(Schedule)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings (dim >= 2), none on biases and LayerNorm gains.

    named_parameters() yields a tied parameter (GPT-2's wte / lm_head) once, so it is counted once.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model, lr, weight_decay, betas, device) -> torch.optim.AdamW:
    # The fused kernel updates every parameter in one pass (one launch on CUDA); PyTorch has it for
    # CUDA and, since 2.4, for CPU, where it is ~4x faster than the default per-tensor loop.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused)


def lr_at(step: int, *, schedule: str, lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate for optimizer step `step` (0-based).

    Linear warmup from lr/warmup to lr over `warmup_steps`, then
      linear:   straight down to min_lr at total_steps (the Hugging Face Trainer's default);
      cosine:   half a cosine down to min_lr at total_steps (Loshchilov & Hutter, SGDR);
      constant: lr.
    Past total_steps the rate stays at its final value.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        return lr + (min_lr - lr) * progress
    if schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def step_unless(optimizer, skip: torch.Tensor) -> None:
    """optimizer.step(), except when the 0-dim bool tensor `skip` is true (a non-finite gradient):
    the fused AdamW kernel reads the flag on the device, as GradScaler's inf check does, so the
    step needs no host sync; it then leaves weights, moments and step count as they were. Other
    optimizers check the flag on the host."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not skip.item():
        optimizer.step()


def report_skipped(log, step: int, n_skipped: float, n_bad: float, n_steps: int, max_bad_steps: int, out_dir) -> None:
    """At a log step: say how many of the last `n_steps` updates were skipped for a non-finite
    loss or gradient, and stop the run once `n_bad` in a row reach `max_bad_steps` (both scripts
    use this one rule and these sentences)."""
    from minitrain import UserError

    if n_skipped:
        log.write(f"step {step}: {n_skipped:.0f} of the last {n_steps} updates skipped (non-finite loss or gradient)")
    if n_bad >= max_bad_steps:
        raise UserError(
            f"{n_bad:.0f} consecutive steps had a non-finite loss or gradient; stopping. "
            f"The last good checkpoint is in {out_dir}."
        )
