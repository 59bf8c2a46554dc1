"""Sharded data parallelism: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) for the model
and DCP (`torch.distributed.checkpoint`) for its checkpoints. Chosen with `--parallel fsdp`; the
hand-written data parallelism of ddp.py stays the default for models that fit one device.

What each rank holds. Data parallelism (ddp.py) keeps a full copy of the weights, gradients and
AdamW's two moments on every rank: 16 bytes per parameter in fp32. FSDP ("fully sharded", Zhao et
al. 2023; ZeRO stage 3, Rajbhandari et al. 2020) splits every parameter along its first dimension
into W equal slices, and rank r keeps slice r only: of the weights, of the gradients and of the
optimizer state, so 16/W bytes per parameter. Each parameter is a DTensor: a global shape with a
local slice.

When the full parameters exist. Each transformer block (and the root: embeddings, final norm, head)
is one unit. Right before a unit's forward its parameters are all-gathered into full tensors, used,
and freed again after it (`reshard_after_forward`); backward gathers them once more, and each
gradient is reduce-scattered: summed over ranks and cut so that every rank receives only the mean
gradient of its own slice. At any moment a rank holds its shards plus one or two units in full
(FSDP2 prefetches the next unit's all-gather while the current one computes). The optimizer then
steps on the local slices alone: AdamW is elementwise, so the sharded update equals the full one.

With gradient accumulation, gradients are reduce-scattered after every micro-batch (FSDP2's
default) and accumulate sharded: the memory stays 1/W, at the price of one extra reduce-scatter
per micro-batch after the first; skipping them (`set_requires_gradient_sync(False)`) would keep full gradients, the very
memory FSDP exists to save.

Mixed precision (`--dtype bf16`): parameters are gathered in bf16 for compute and gradients
reduced in fp32 (`MixedPrecisionPolicy`); the sharded master weights and AdamW stay fp32.
`--cpu_offload` keeps shards, gradients and the optimizer step on the host (`CPUOffloadPolicy`),
copying each unit to the GPU for its forward and backward.

Checkpoints: every rank writes its own slices into one folder (DCP: one file per rank plus a
`.metadata` index of which slice of which tensor lies where), in parallel. A later run with another
number of ranks reads from every file the pieces its own slices need: resharding.
"""

import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from minitrain import UserError, first_line
from minitrain.models import lora, registry


def check_options(ddp: str, dtype: str, compile_scope: str, batch_size) -> None:
    """--parallel fsdp's conflicts with other options, before any work (one sentence each)."""
    if ddp != "minitrain":
        raise UserError(f"--ddp={ddp} chooses the data parallelism of --parallel ddp; --parallel fsdp shards instead.")
    if dtype == "fp16":
        raise UserError("--dtype=fp16 needs a loss scaler that FSDP's sharded gradients do not have here; use bf16.")
    if compile_scope != "blocks":
        raise UserError("--parallel fsdp compiles block by block: use --compile_scope=blocks.")
    if batch_size == "auto":
        raise UserError("--batch_size=auto measures an unsharded model; give --parallel fsdp a number.")


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def shard(model: nn.Module, world, dtype: torch.dtype, cpu_offload: bool) -> nn.Module:
    """Shard `model` in place over all ranks, one unit per block and one for the rest (the root),
    as torchtitan does. A model built on the meta device (lm.build) then gets memory for its shards
    only. Returns the model: the same object, now an FSDPModule."""
    blocks = model.blocks() if hasattr(model, "blocks") else None
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise UserError(f"--parallel fsdp: {type(model).__name__} has no transformer blocks to shard one by one.")
    if cpu_offload and world.device.type != "cuda":
        raise UserError("--cpu_offload moves FSDP's shards from a GPU to the host; on a CPU they are there already.")
    if dtype == torch.float16:  # --dtype auto on a GPU without bf16
        raise UserError("--parallel fsdp trains in bf16 or fp32, and this device has no bf16; use --dtype=fp32.")
    mesh = init_device_mesh(world.device.type, (world.world_size,))
    compute = dtype if dtype == torch.bfloat16 else None  # fp32: parameters are gathered as they are
    policy = dict(
        mesh=mesh,
        mp_policy=MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32),
        offload_policy=CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    )
    # Our blocks also return their attention's (key, value) cache, views that nothing changes in
    # place; FSDP2 warns about every returned view, which here is noise.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for block in blocks:
        fully_shard(block, **policy)
    fully_shard(model, **policy)
    if any(p.is_meta for p in model.parameters()):  # built on the meta device: memory for the shards
        model.to_empty(device="cpu" if cpu_offload else world.device)
    return model


def reshard_all(model: nn.Module) -> None:
    """Every unit resharded, each parameter a DTensor again: FSDP2 leaves the root's parameters
    gathered after a forward without backward (an evaluation), as plain tensors."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def local_shards(model: nn.Module) -> list[torch.Tensor]:
    """This rank's slice of every parameter."""
    reshard_all(model)
    return [p.to_local() for p in model.parameters()]


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s result over sharded gradients is a replicated DTensor: the plain tensor."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


# ----------------------------------------------------------------------------------------------
# state dicts and checkpoints


def _options(model, **kw) -> StateDictOptions:
    frozen = any(not p.requires_grad for p in model.parameters())  # LoRA: the base is not saved
    return StateDictOptions(ignore_frozen_params=frozen, **kw)


def save(folder, model: nn.Module, optimizer) -> None:
    """Every rank writes its slices of the model and optimizer into `folder` (a collective)."""
    msd, osd = get_state_dict(model, optimizer, options=_options(model))
    try:
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(folder))
    except CheckpointException as e:  # raised on every rank when any rank failed
        raise OSError(f"a rank could not write its shards: {first_line(e)}") from None


def load(folder, model: nn.Module, optimizer=None) -> None:
    """The inverse of `save`, on any number of ranks (each reads the pieces its slices need); a
    model that is not sharded (one process: evaluation, export) reads full tensors. A folder that
    lacks a file its index names is refused naming it, on every rank, before any collective."""
    check_complete(folder)
    opts = _options(model)
    state = {"model": get_model_state_dict(model, options=opts)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer, options=opts)
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(model, state["model"], options=opts)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)


def read_model(folder) -> dict:
    """A sharded checkpoint's model weights as full tensors, in this one process (evaluation,
    generation, tests): the tensors DCP's index lists under "model", each read from its pieces."""
    metadata = check_complete(folder)
    model = {
        name.removeprefix("model."): torch.empty(m.size, dtype=m.properties.dtype)
        for name, m in metadata.state_dict_metadata.items()
        if name.startswith("model.") and isinstance(m, TensorStorageMetadata)
    }
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore")
        dcp.load({"model": model}, checkpoint_id=str(folder), no_dist=True)
    return model


def check_complete(folder):
    """A DCP folder's index (`.metadata`), once every file it names is there; else one sentence
    naming the first missing one (a rank's shard), raised before any collective."""
    metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    for name in sorted({item.relative_path for item in metadata.storage_data.values()}):
        if not (Path(folder) / name).is_file():
            raise UserError(f"{folder} is incomplete: {name} is missing (a rank's shard); use an older checkpoint.")
    return metadata


@torch.no_grad()
def gather_model(model: nn.Module, world, lora_info: dict | None) -> nn.Module | None:
    """The full model on rank 0's host, for the export and sampling (every rank calls it; the
    others get None). Rank 0 builds an empty model of the same architecture (on the meta device,
    then given host memory once), and each parameter is all-gathered and copied into it one at a
    time: rank 0 never holds more than that one copy, and its device never the whole model."""
    plain = None
    if world.is_main:
        with torch.device("meta"):
            plain = registry.from_config_dict(asdict(model.config))
            lora.attach(plain, lora_info)  # the adapters' layers (merged at the export)
        plain.to_empty(device="cpu")
        plain.init_buffers()
    reshard_all(model)
    for name, p in model.named_parameters():
        full = p.full_tensor()  # a collective: every rank takes part
        if plain is not None:
            plain.get_parameter(name).copy_(full)
        del full
    if plain is not None:
        plain.activation_checkpointing = False
    return plain
