"""Scoring a model on held-out data, on every rank at once (training's validation, and
`python -m minitrain.evaluate`, whose command line is minitrain/tools/evaluate.py).

Each rank scores every W-th example (rank r takes r, r + W, ...) in eval mode and without
autograd; the sums (loss, token or pair counts, the confusion matrix) are all-reduced, so every
rank returns the same figures for the whole set, whatever the number of processes.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minitrain.atomic import atomic_write
from minitrain.data import pairs
from minitrain.data.tokens import TokenSource
from minitrain.models import documents
from minitrain.training import dist
from minitrain.training.metrics import bits_per_byte, classification_metrics, perplexity
from minitrain.training.precision import autocast


def _bar(total: int, world, progress: bool, desc: str):
    return tqdm(total=total, desc=desc, disable=not (progress and world.is_main), dynamic_ncols=True, leave=False)


@torch.no_grad()
def lm_loss(
    model,
    tokens: TokenSource,
    n_blocks: int,
    block_size: int,
    batch_size: int,
    world,
    dtype,
    progress=False,
    doc_eot: int | None = None,
) -> float:
    """Mean next-token loss over the first `n_blocks` blocks of `tokens` (every token of those
    blocks but the first is a target exactly once: see data/tokens.py), or over the completion
    tokens of the first `n_blocks` prompt/completion examples. With `doc_eot` (a --doc_mask run's
    end-of-text id) each block is split into documents there, as training split it: attention and
    positions restart at each end-of-text."""
    was_training = model.training
    model.eval()  # dropout off
    sums = torch.zeros(2, device=world.device, dtype=torch.float64)  # loss sum, target count
    mine = list(range(world.rank, n_blocks, world.world_size))
    # every rank runs as many forwards as rank 0 (which has the most blocks): a sharded model's
    # forward is a collective (FSDP gathers each block's weights), so a rank that has run out
    # scores block 0 again and counts nothing
    n_batches = -(-len(range(0, n_blocks, world.world_size)) // batch_size)
    with _bar(len(mine), world, progress, "blocks") as bar:
        for i in range(0, n_batches * batch_size, batch_size):
            blocks = mine[i : i + batch_size]
            x, y = tokens.batch(blocks or [0], block_size, world.device)
            doc = documents.split_at(x, doc_eot) if doc_eot is not None else None
            with autocast(world.device, dtype):
                _, loss_sum = model(x, y, reduction="sum", doc_ids=doc)
            if blocks:
                sums[0] += loss_sum.double()
                sums[1] += (y != -100).sum()  # prompt/completion data: completion tokens only
                bar.update(len(x))
    dist.all_reduce_sum(sums, world)
    model.train(was_training)
    return (sums[0] / sums[1]).item()


class LMScores:
    """Language-model scores on the first `n_blocks` blocks of `tokens`: the mean loss over their
    targets, perplexity, and bits per byte (their loss over the bytes of text the targets stand
    for). The counts are taken once; each call scores a model: training's validation, and
    `python -m minitrain.evaluate --task lm`. `doc_eot`: split the blocks into documents at this
    end-of-text id (a --doc_mask run; see lm_loss)."""

    def __init__(self, tokens: TokenSource, n_blocks: int, block_size: int, batch_size: int, token_bytes, doc_eot=None):
        self.tokens, self.n_blocks, self.T, self.B, self.doc_eot = tokens, n_blocks, block_size, batch_size, doc_eot
        self.n_tokens = tokens.targets(range(n_blocks), block_size)  # prompt/completion: completion tokens
        self.n_bytes = tokens.target_bytes(n_blocks, block_size, token_bytes)

    def __call__(self, model, world, dtype, progress=False) -> dict:
        loss = lm_loss(model, self.tokens, self.n_blocks, self.T, self.B, world, dtype, progress, self.doc_eot)
        return {"loss": loss, "perplexity": perplexity(loss), "bpb": bits_per_byte(loss, self.n_tokens, self.n_bytes)}

    @staticmethod
    def line(s: dict) -> str:
        """The scores in a few words (keys with or without training's "val_" prefix)."""
        s = {k.removeprefix("val_"): v for k, v in s.items()}
        return f"loss {s['loss']:.4f}, perplexity {s['perplexity']:.1f}, {s['bpb']:.3f} bits/byte"


@torch.no_grad()
def classify(
    model, examples: dict, batch_size: int, pad_id: int, pad_to: int, num_labels: int, world, dtype, progress=False
):
    """(metrics, predictions) of a sentence-pair classifier: mean loss, accuracy, F1 and macro-F1
    over the labelled examples (label >= 0), and {example index: predicted label} of this rank's
    share of all examples."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_labels, num_labels, dtype=torch.long, device=world.device)  # cm[true, predicted]
    loss_sum = torch.zeros((), dtype=torch.float64, device=world.device)
    preds = {}
    mine = list(range(world.rank, len(examples["labels"]), world.world_size))
    with _bar(len(mine), world, progress, "pairs") as bar:
        for i in range(0, len(mine), batch_size):
            ids = mine[i : i + batch_size]
            batch = {k: v.to(world.device) for k, v in pairs.collate(examples, ids, pad_id, pad_to).items()}
            y = batch.pop("labels")
            with autocast(world.device, dtype):
                logits, _ = model(**batch)
            p = logits.argmax(-1)
            preds.update(zip((examples["index"][j] for j in ids), p.tolist()))
            labelled = y >= 0
            if labelled.any():
                y, p, logits = y[labelled], p[labelled], logits[labelled]
                loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
                cm.index_put_((y, p), torch.ones_like(y), accumulate=True)
            bar.update(len(ids))
    dist.all_reduce_sum(cm, world)
    dist.all_reduce_sum(loss_sum, world)
    model.train(was_training)
    result = classification_metrics(cm.cpu())
    result["loss"] = loss_sum.item() / max(1, cm.sum().item())
    return result, preds


@torch.no_grad()
def hellaswag(model, tokenizer, examples: list, batch_size: int, world, dtype, progress=False) -> dict:
    """HellaSwag in the completion style of the GPT-2 reproductions: each ending is scored by the
    loss of its tokens given the context (" " + ending, tokenized after the context's tokens);
    `acc` picks the lowest summed loss, `acc_norm` the lowest mean loss per ending token.
    `examples`: (context, endings, label) triples."""
    was_training = model.training
    model.eval()
    n_positions, vocab = model.config.n_positions, model.config.vocab_size
    correct = torch.zeros(2, dtype=torch.long, device=world.device)  # by summed loss, by mean loss
    mine = examples[world.rank :: world.world_size]
    with _bar(len(mine), world, progress, "examples") as bar:
        for i in range(0, len(mine), batch_size):
            rows, n_ctx, labels = [], [], []
            for context, endings, label in mine[i : i + batch_size]:
                ctx = tokenizer.encode(context).ids
                for ending in endings:
                    end = tokenizer.encode(" " + ending).ids
                    row = (ctx + end)[-(n_positions + 1) :]  # the context is cut on the left if too long
                    rows.append(row)
                    n_ctx.append(max(1, len(row) - len(end)))
                labels.append(label)
            T = max(len(r) for r in rows) - 1
            x = torch.zeros(len(rows), T, dtype=torch.long)
            y = torch.full((len(rows), T), -100, dtype=torch.long)  # targets: the ending's tokens only
            for r, (row, c) in enumerate(zip(rows, n_ctx)):
                x[r, : len(row) - 1] = torch.tensor(row[:-1])
                y[r, c - 1 : len(row) - 1] = torch.tensor(row[c:])
            x, y = x.to(world.device), y.to(world.device)
            with autocast(world.device, dtype):
                logits, _ = model(x)
            losses = F.cross_entropy(logits[..., :vocab].float().transpose(1, 2), y, reduction="none")  # (rows, T)
            summed = losses.sum(1).view(len(labels), -1)  # (examples, endings)
            mean = summed / (y != -100).sum(1).view(len(labels), -1)
            target = torch.tensor(labels, device=world.device)
            correct += torch.stack([(summed.argmin(1) == target).sum(), (mean.argmin(1) == target).sum()])
            bar.update(len(labels))
    dist.all_reduce_sum(correct, world)
    model.train(was_training)
    n, (by_sum, by_mean) = len(examples), correct.tolist()
    return {"examples": n, "acc": by_sum / max(1, n), "acc_norm": by_mean / max(1, n)}


def write_predictions(preds: dict, path: Path, world) -> int:
    """Rank 0 writes every rank's {index: predicted label} as `index<TAB>prediction` lines, in index
    order (atomically); returns how many."""
    gathered = [preds]
    if world.multi_process:
        gathered = [None] * world.world_size
        torch.distributed.all_gather_object(gathered, preds)
    merged = {k: v for part in gathered for k, v in part.items()}
    if world.is_main:
        with atomic_write(path, "w") as f:
            f.write("index\tprediction\n" + "".join(f"{i}\t{merged[i]}\n" for i in sorted(merged)))
    return len(merged)
