"""Scoring a model on held-out data, on every rank at once.

Each rank scores every W-th example (rank r takes r, r + W, ...) in eval mode and without
autograd; the sums (loss, token or pair counts, the confusion matrix) are all-reduced, so every
rank returns the same figures for the whole set, whatever the number of processes.
"""

import torch

from minitrain import data, dist, pairs
from minitrain.metrics import classification_metrics
from minitrain.precision import autocast


@torch.no_grad()
def lm_loss(model, tokens, n_blocks: int, block_size: int, batch_size: int, d, dtype) -> float:
    """Mean next-token loss over the first `n_blocks` blocks of `tokens` (every token of those
    blocks is a target exactly once: see data.get_batch)."""
    was_training = model.training
    model.eval()  # dropout off
    sums = torch.zeros(2, device=d.device, dtype=torch.float64)  # loss sum, target count
    mine = list(range(d.rank, n_blocks, d.world_size))
    for i in range(0, len(mine), batch_size):
        x, y = data.get_batch(tokens, mine[i : i + batch_size], block_size)
        x, y = x.to(d.device), y.to(d.device)
        with autocast(d.device, dtype):
            _, loss_sum = model(x, y, reduction="sum")
        sums[0] += loss_sum.double()
        sums[1] += y.numel()
    dist.all_reduce_sum(sums, d)
    model.train(was_training)
    return (sums[0] / sums[1]).item()


@torch.no_grad()
def classify(model, examples: dict, batch_size: int, pad_id: int, pad_to: int, num_labels: int, d, dtype):
    """(metrics, predictions) of a sentence-pair classifier: mean loss, accuracy, F1 and macro-F1
    over the labelled examples (label >= 0), and {example index: predicted label} of this rank's
    share of all examples."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_labels, num_labels, dtype=torch.long, device=d.device)  # cm[true, predicted]
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    preds = {}
    mine = list(range(d.rank, len(examples["labels"]), d.world_size))
    for i in range(0, len(mine), batch_size):
        ids = mine[i : i + batch_size]
        batch = {k: v.to(d.device) for k, v in pairs.collate(examples, ids, pad_id, pad_to).items()}
        y = batch.pop("labels")
        with autocast(d.device, dtype):
            logits, _ = model(**batch)
        p = logits.argmax(-1)
        preds.update(zip((examples["index"][j] for j in ids), p.tolist()))
        labelled = y >= 0
        if labelled.any():
            y, p, logits = y[labelled], p[labelled], logits[labelled]
            loss_sum += torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
            cm.index_put_((y, p), torch.ones_like(y), accumulate=True)
    dist.all_reduce_sum(cm, d)
    dist.all_reduce_sum(loss_sum, d)
    model.train(was_training)
    result = classification_metrics(cm.cpu())
    result["loss"] = loss_sum.item() / max(1, cm.sum().item())
    return result, preds
