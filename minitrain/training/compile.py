"""torch.compile for the training loop: per block in place (regional, as torchtitan does: the
state_dict keys stay, and data parallelism's hooks still fire block by block) or the whole model."""

import torch
import torch.nn as nn


def compile_model(raw_model: nn.Module, compile: bool | None, scope: str, device: torch.device) -> nn.Module:
    """The model to call: compiled (None: only on CUDA, where it pays off; scope 'blocks' compiles
    each block in place and returns `raw_model` itself, 'model' wraps the whole module). The
    uncompiled `raw_model` stays the one that is saved."""
    if not (compile if compile is not None else device.type == "cuda"):
        return raw_model
    if scope == "blocks":
        raw_model.compile_blocks()
        return raw_model
    return torch.compile(raw_model)
