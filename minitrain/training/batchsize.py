"""Batch sizes: --batch_size=auto, the largest power-of-two micro-batch whose forward and backward fit
on the GPU, the same on every rank (accumulation then follows from the tokens per step); and
whether the data holds the global batch a step takes."""

import torch

from minitrain import UserError
from minitrain.data.tokens import TokenSource
from minitrain.training import dist
from minitrain.training.precision import autocast, oom_sentence


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


def auto_batch_size(model, block_size: int, tokens_per_step: int, world, dtype) -> int:
    """--batch_size=auto: the largest power-of-two micro-batch that fits on the GPU, the same on
    every rank, dividing the sequences each rank takes per step; accumulation follows from it."""
    if world.device.type != "cuda":
        raise UserError("--batch_size=auto measures GPU memory; on a CPU give a number.")
    per_rank = tokens_per_step // (world.world_size * block_size) if tokens_per_step else 1024
    B = int(dist.all_reduce_min(probe_batch_size(model, block_size, world.device, dtype, per_rank), world))
    if B == 0:
        raise UserError(oom_sentence())
    dist.print0(f"--batch_size=auto: {B} sequences per micro-batch fit")
    return B


def training_blocks(train_tokens: TokenSource, val_tokens: TokenSource, T: int, blocks_per_step: int) -> int:
    """The training split's number of blocks of T, once it is known to hold a global batch of
    `blocks_per_step` (and the validation split a block); a warning when short shards leave more
    than 5 % of the tokens out (blocks do not cross a shard's end)."""
    n_train_blocks, unused = train_tokens.num_blocks(T), train_tokens.unused(T)
    if n_train_blocks < blocks_per_step and unused > len(train_tokens) / 2:
        raise UserError(
            f"most training tokens lie in shard tails shorter than a block of {T} + 1 tokens (blocks do not cross "
            f"a shard's end): prepare the data with a larger --shard_tokens, or lower --block_size."
        )
    if n_train_blocks < blocks_per_step:
        raise UserError(
            f"the training split has {n_train_blocks} blocks of {T} tokens, fewer than "
            f"one global batch of {blocks_per_step}: lower --batch_size or --block_size."
        )
    if val_tokens.num_blocks(T) == 0:
        raise UserError(f"the validation split is shorter than one block of {T} tokens.")
    if unused > 0.05 * len(train_tokens):
        share = unused / len(train_tokens)
        dist.print0(
            f"warning: {share:.0%} of the training tokens are never trained: blocks do not cross a shard's end, "
            f"and these shards are short (prepare with a larger --shard_tokens)"
        )
    return n_train_blocks
