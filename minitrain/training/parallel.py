"""How the training loop's model is spread over the processes: compiled (per block, in place;
compile.py), then sharded (--parallel fsdp: fsdp.py) or wrapped for data parallelism
(--parallel ddp: ddp.py). `raw_model` stays the one that is saved and exported."""

from minitrain import UserError
from minitrain.training import ddp, fsdp
from minitrain.training.compile import compile_model


def check(opts) -> None:
    """--parallel's conflicts with the other options (a script's Config), before any work."""
    if opts.parallel == "fsdp":
        fsdp.check_options(opts.ddp, opts.dtype, opts.compile_scope, opts.batch_size)
    elif opts.cpu_offload:
        raise UserError("--cpu_offload is FSDP's: it needs --parallel fsdp.")


def parallelize(raw_model, opts, world, dtype):
    """What the loop calls: `raw_model` compiled, then sharded in place over the processes (FSDP:
    the same object, returned) or wrapped (DDP: a new module around it; in one process, itself)."""
    model = compile_model(raw_model, opts.compile, opts.compile_scope, world.device)
    if opts.parallel == "fsdp":
        return fsdp.shard(model, world, dtype, opts.cpu_offload)
    return ddp.wrap(model, opts.ddp, world)
