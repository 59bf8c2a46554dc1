"""LoRA: low-rank adapters on frozen linear layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation").

A target layer y = x W^T + b becomes

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r)

with W and b frozen. B starts at zero, so training starts from the base model exactly; A starts
random (Kaiming-uniform, as nn.Linear and PEFT initialise). Only A and B (and, for a classifier,
its head) get gradients, optimizer state and checkpoint space: for GPT-2 124M at r = 8 on every
projection that is ~1.3M of 124M parameters. `merge` folds B A into W for the export, so the
exported folder is an ordinary model that gives the same outputs.

Written here rather than taken from PEFT, which needs transformers and accelerate.
"""

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from minitrain import UserError
from minitrain.models.hub import copy_into
from minitrain.options import LoRAOptions

DEFAULT_TARGETS = {  # the attention and MLP projections of each model
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "bert": ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
}
DEFAULT_TARGETS |= {"qwen2": DEFAULT_TARGETS["llama"], "qwen3": DEFAULT_TARGETS["llama"]}  # the same layer names


class LoRALinear(nn.Linear):
    """An nn.Linear whose weight and bias are frozen and that adds a trainable low-rank update.
    Its state_dict holds `weight`, `bias`, `lora_A`, `lora_B`: the base keys keep their names."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=base.weight.dtype))
        init_A_(self.lora_A)
        self.scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x):
        return (
            F.linear(x, self.weight, self.bias)
            + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scale
        )

    def delta(self) -> torch.Tensor:
        """The update of the weight: (alpha / r) B A, of rank <= r."""
        return (self.lora_B @ self.lora_A) * self.scale


def init_A_(a: torch.Tensor) -> torch.Tensor:
    """An adapter's A drawn in place as PEFT draws it (B starts at zero): kaiming uniform, a = sqrt(5)."""
    return nn.init.kaiming_uniform_(a, a=math.sqrt(5))


def _chosen(model: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    """The model's linear layers whose name is, or ends with, one of `targets`, in module order."""
    return {
        name: m
        for name, m in model.named_modules()
        if type(m) is nn.Linear and any(name == t or name.endswith("." + t) for t in targets)
    }


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def add(model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float, keep_trainable=()) -> dict:
    """Freeze `model` and put adapters on the linear layers whose name ends with one of `targets`
    ("c_attn" matches "transformer.h.0.attn.c_attn"). Parameters named in `keep_trainable` (a
    classifier's head) stay trainable. Returns counts for the report."""
    chosen = _chosen(model, targets)
    if not chosen:
        kinds = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m) is nn.Linear})
        raise UserError(
            f"--lora_targets={','.join(targets)} names no linear layer of the model (it has {', '.join(kinds)})."
        )
    smallest = min(min(m.in_features, m.out_features) for m in chosen.values())
    if rank > smallest:
        raise UserError(f"--lora_rank={rank} is larger than the smallest adapted dimension, {smallest}.")
    for p in model.parameters():
        p.requires_grad_(False)
    # a model built on the meta device (FSDP's loading) has no values yet: see sharded_adapters
    base = None if any(p.is_meta for p in model.parameters()) else base_fingerprint(model)
    for name, m in chosen.items():
        _replace(model, name, LoRALinear(m, rank, alpha, dropout))
    # Every adapter must be reached by the forward (checked with the adapters in place: a model may
    # take another path once they are there, as BERT leaves its fused q/k/v matmul); the run stops
    # here otherwise, so the model is not put back.
    never = [name for name in chosen if name not in called_linears(model, chosen)]
    if never:
        kinds = sorted({n.rsplit(".", 1)[-1] for n in never})
        raise UserError(
            f"--lora_targets={','.join(targets)}: {', '.join(kinds)} is never called as a layer by the model's "
            f"forward (an output layer tied to the token embedding is applied as a matrix), so its adapter would "
            f"never get a gradient; choose among the attention and MLP projections."
        )
    for name, p in model.named_parameters():
        if any(name.startswith(k) for k in keep_trainable):
            p.requires_grad_(True)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "rank": rank,
        "alpha": alpha,
        "dropout": dropout,
        "targets": list(targets),
        "keep_trainable": list(keep_trainable),
        "layers": len(chosen),
        "trainable": trainable,
        "total": total,
        "base": base,
    }


@torch.no_grad()
def attach(model: nn.Module, info: dict | None) -> None:
    """The adapters' layers of a LoRA description (`info`, from `add`) put on `model`, with no
    check and no initialisation that matters: for a model whose weights are copied in next (the
    full model gathered from FSDP's shards, training/fsdp.py). None: nothing to do."""
    if info is None:
        return
    for name, m in _chosen(model, info["targets"]).items():
        _replace(model, name, LoRALinear(m, info["rank"], info["alpha"], info["dropout"]))


class AdaptThenShard:
    """FSDP's loading (lm.build) calls this on the model on the meta device: the --lora_* options'
    adapters go on first (`info` describes them), then `shard` shards the model, adapters and all."""

    def __init__(self, opts: LoRAOptions, shard):
        self.opts, self.shard, self.info = opts, shard, None

    def __call__(self, model: nn.Module) -> None:
        self.info = from_options(model, self.opts, model.config.model_type)
        self.shard(model)


@torch.no_grad()
def sharded_adapters(model: nn.Module, info: dict | None) -> dict | None:
    """Adapters put on a model on the meta device, then sharded and loaded (FSDP): their initial
    values, drawn as LoRALinear draws them (A ~ kaiming uniform, B = 0, layer by layer, from the
    global generator), each rank copying its slice; and the frozen base's fingerprint (`info`'s
    "base", gathered a tensor at a time: the same as the unsharded model's). Every rank calls it."""
    if info is None:
        return None
    for m in model.modules():
        if isinstance(m, LoRALinear):
            copy_into(m.lora_A, init_A_(torch.empty(m.lora_A.shape, dtype=m.lora_A.dtype)))
            copy_into(m.lora_B, torch.zeros(m.lora_B.shape, dtype=m.lora_B.dtype))
    return {**info, "base": base_fingerprint(model)}


def called_linears(model: nn.Module, names: list[str]) -> set[str]:
    """Which of the named linear layers the model's forward calls as modules, found by one forward
    pass of two token ids with a hook on each (a layer whose weight the forward only reads, as
    GPT-2's tied output layer, is not called, so an adapter on it would never train)."""
    called, hooks = set(), []
    for name in names:
        hooks.append(model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: called.add(name)))
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros((1, 2), dtype=torch.long, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return called


def describe(info: dict) -> str:
    return (
        f"LoRA r={info['rank']} on {info['layers']} layers: {info['trainable'] / 1e6:.3f}M of "
        f"{info['total'] / 1e6:.2f}M parameters train ({100 * info['trainable'] / info['total']:.2f} %)"
    )


def check_resume(mine: dict | None, saved: dict | None) -> None:
    """A checkpoint's adapters (`saved`, its LoRA info) belong on the same frozen base, with the
    same shape of adapters, as this run's (`mine`)."""
    if (saved is None) != (mine is None):
        raise UserError(
            "the checkpoint was trained with LoRA and this run is not, or the other way round: "
            "resume with the run's own --lora_rank."
        )
    if mine is None:
        return
    for key, option in (("rank", "--lora_rank"), ("alpha", "--lora_alpha"), ("targets", "--lora_targets")):
        if saved[key] != mine[key]:
            raise UserError(
                f"the checkpoint's adapters have {option}={saved[key]}, not {mine[key]}: resume with the run's own."
            )
    if saved["base"] != mine["base"]:
        raise UserError("the checkpoint's adapters were trained on other base weights: resume with its --init_from.")


def rebuild(model: nn.Module, info: dict, state: dict) -> nn.Module:
    """A LoRA checkpoint's model: `model` (its base) with the adapters put back, then merged."""
    add(model, info["targets"], info["rank"], info["alpha"], info["dropout"], info.get("keep_trainable", ()))
    load_state(model, state)
    merge(model)
    return model


def targets_of(spec: str, kind: str) -> list[str]:
    return list(DEFAULT_TARGETS[kind]) if spec == "auto" else [t.strip() for t in spec.split(",") if t.strip()]


def from_options(model: nn.Module, opts: LoRAOptions, kind: str, keep_trainable=()) -> dict | None:
    """The --lora_* options applied to `model`: with --lora_rank > 0 it is frozen and adapters go on
    the target layers; returns their description (counts, the base's checksum), which the training
    state carries, or None without LoRA."""
    if not opts.lora_rank:
        return None
    targets = targets_of(opts.lora_targets, kind)
    return add(model, targets, opts.lora_rank, opts.lora_alpha, opts.lora_dropout, keep_trainable)


def base_state(model: nn.Module) -> dict:
    """The model's state_dict without its adapters' tensors: what a checkpoint of the base model
    fills (FSDP's loading puts the adapters on before the weights are copied in: lm.build)."""
    mine = {f"{n}.{t}" for n, m in model.named_modules() if isinstance(m, LoRALinear) for t in ("lora_A", "lora_B")}
    return {k: v for k, v in model.state_dict().items() if k not in mine}


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def state_to_save(model: nn.Module) -> dict:
    """What a checkpoint holds of the model: with adapters, only the trainable tensors (the base
    is rebuilt from --init_from / --model on resume); without, every weight."""
    if not has_adapters(model):
        return model.state_dict()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in trainable}


def load_state(model: nn.Module, state: dict) -> None:
    """The inverse of state_to_save: with adapters, exactly the trainable tensors must be there."""
    if not has_adapters(model):
        model.load_state_dict(state)
        return
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise UserError(
            "the checkpoint's adapters do not match this model's (another --lora_rank or --lora_targets?); "
            "resume with the run's own settings."
        )
    model.load_state_dict(state, strict=False)


def base_fingerprint(model: nn.Module) -> str:
    """A checksum of the frozen weights: a resume must put the adapters back on the same base."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in sorted(model.named_parameters()):
        if not p.requires_grad:
            full = p.full_tensor() if isinstance(p, DTensor) else p  # sharded (FSDP): gathered, a collective
            h.update(name.encode())
            h.update(full.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def merge(model: nn.Module) -> None:
    """W <- W + (alpha / r) B A in every adapted layer, which becomes a plain nn.Linear again: the
    model then has the base model's keys and gives the same outputs (up to float rounding)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.weight.device)
            plain.weight = nn.Parameter(m.weight + m.delta().to(m.weight.dtype))
            if m.bias is not None:
                plain.bias = nn.Parameter(m.bias.detach().clone())
            _replace(model, name, plain)


def adapters(model: nn.Module) -> dict:
    """The adapters alone (and a classifier's head), for `--lora_export adapters`."""
    return {k: v.detach().cpu().contiguous() for k, v in state_to_save(model).items()}


def merge_for_export(model: nn.Module, info: dict | None, export: str, base: str, folder=None) -> None:
    """Before an export: with adapters (`info`), write them alone to `folder` (when --lora_export
    is "adapters" and a folder is given: rank 0) and merge them into the weights; else nothing."""
    if info is None:
        return
    if export == "adapters" and folder is not None:
        save_adapters(adapters(model), info, base, folder)
    merge(model)


def save_adapters(tensors: dict, info: dict, base: str, folder) -> None:
    """adapter_model.safetensors (lora_A (r, in), lora_B (out, r) under each layer's name) and
    adapter_config.json (rank, alpha, targets, the base model)."""
    import json
    from pathlib import Path

    from minitrain.atomic import atomic_write
    from minitrain.models.hub import write_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, folder / "adapter_model.safetensors")
    config = {k: info[k] for k in ("rank", "alpha", "dropout", "targets", "keep_trainable")}
    config |= {"base_model": base, "update": "W + (alpha / rank) * lora_B @ lora_A"}
    with atomic_write(folder / "adapter_config.json", "w") as f:
        json.dump(config, f, indent=2)
