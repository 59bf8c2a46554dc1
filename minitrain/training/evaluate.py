"""Scoring a model on held-out data, on every rank at once; and `python -m minitrain.evaluate`.

Each rank scores every W-th example (rank r takes r, r + W, ...) in eval mode and without
autograd; the sums (loss, token or pair counts, the confusion matrix) are all-reduced, so every
rank returns the same figures for the whole set, whatever the number of processes.

    python -m minitrain.evaluate --model out/gpt2/final --data my_test.txt          # loss, perplexity, bits/byte
    python -m minitrain.evaluate --model out/gpt2/ckpt-0001000.pt --data shakespeare --split validation
    python -m minitrain.evaluate --task mrpc --model out/mrpc/final --data_dir glue/MRPC --predictions p.tsv
    python -m minitrain.evaluate --task hellaswag --model out/gpt2/final --data hellaswag_val.jsonl
    torchrun --nproc_per_node=8 -m minitrain.evaluate ...                             # all ranks score
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minitrain import UserError
from minitrain.atomic import atomic_write
from minitrain.config import NonNegativeInt, PositiveInt, Range, check, run_cli
from minitrain.data import pairs, prepare
from minitrain.data import tokens as data
from minitrain.models import lora
from minitrain.training import checkpoint, dist
from minitrain.training.metrics import bits_per_byte, classification_metrics, perplexity
from minitrain.training.precision import DtypeName, autocast, resolve_dtype


def _bar(total: int, d, progress: bool, desc: str):
    return tqdm(total=total, desc=desc, disable=not (progress and d.is_main), dynamic_ncols=True, leave=False)


@torch.no_grad()
def lm_loss(model, tokens, n_blocks: int, block_size: int, batch_size: int, d, dtype, progress=False) -> float:
    """Mean next-token loss over the first `n_blocks` blocks of `tokens` (every token of those
    blocks but the first is a target exactly once: see data.get_batch), or over the completion
    tokens of the first `n_blocks` prompt/completion examples."""
    was_training = model.training
    model.eval()  # dropout off
    sums = torch.zeros(2, device=d.device, dtype=torch.float64)  # loss sum, target count
    mine = list(range(d.rank, n_blocks, d.world_size))
    with _bar(len(mine), d, progress, "blocks") as bar:
        for i in range(0, len(mine), batch_size):
            x, y = data.get_batch(tokens, mine[i : i + batch_size], block_size)
            x, y = x.to(d.device), y.to(d.device)
            with autocast(d.device, dtype):
                _, loss_sum = model(x, y, reduction="sum")
            sums[0] += loss_sum.double()
            sums[1] += (y != -100).sum()  # prompt/completion data: completion tokens only
            bar.update(len(x))
    dist.all_reduce_sum(sums, d)
    model.train(was_training)
    return (sums[0] / sums[1]).item()


class LMScores:
    """Language-model scores on the first `n_blocks` blocks of `tokens`: the mean loss over their
    targets, perplexity, and bits per byte (their loss over the bytes of text the targets stand
    for). The counts are taken once; each call scores a model: training's validation, and
    `python -m minitrain.evaluate --task lm`."""

    def __init__(self, tokens, n_blocks: int, block_size: int, batch_size: int, token_bytes):
        self.tokens, self.n_blocks, self.T, self.B = tokens, n_blocks, block_size, batch_size
        self.n_tokens = tokens.targets(range(n_blocks), block_size)  # prompt/completion: completion tokens
        self.n_bytes = tokens.target_bytes(n_blocks, block_size, token_bytes)

    def __call__(self, model, d, dtype, progress=False) -> dict:
        loss = lm_loss(model, self.tokens, self.n_blocks, self.T, self.B, d, dtype, progress)
        return {"loss": loss, "perplexity": perplexity(loss), "bpb": bits_per_byte(loss, self.n_tokens, self.n_bytes)}

    @staticmethod
    def line(s: dict) -> str:
        return f"loss {s['loss']:.4f}, perplexity {s['perplexity']:.1f}, {s['bpb']:.3f} bits/byte"


@torch.no_grad()
def classify(
    model, examples: dict, batch_size: int, pad_id: int, pad_to: int, num_labels: int, d, dtype, progress=False
):
    """(metrics, predictions) of a sentence-pair classifier: mean loss, accuracy, F1 and macro-F1
    over the labelled examples (label >= 0), and {example index: predicted label} of this rank's
    share of all examples."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_labels, num_labels, dtype=torch.long, device=d.device)  # cm[true, predicted]
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    preds = {}
    mine = list(range(d.rank, len(examples["labels"]), d.world_size))
    with _bar(len(mine), d, progress, "pairs") as bar:
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
                loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
                cm.index_put_((y, p), torch.ones_like(y), accumulate=True)
            bar.update(len(ids))
    dist.all_reduce_sum(cm, d)
    dist.all_reduce_sum(loss_sum, d)
    model.train(was_training)
    result = classification_metrics(cm.cpu())
    result["loss"] = loss_sum.item() / max(1, cm.sum().item())
    return result, preds


@torch.no_grad()
def hellaswag(model, tokenizer, examples: list, batch_size: int, d, dtype, progress=False) -> dict:
    """HellaSwag in the completion style of the GPT-2 reproductions: each ending is scored by the
    loss of its tokens given the context (" " + ending, tokenized after the context's tokens);
    `acc` picks the lowest summed loss, `acc_norm` the lowest mean loss per ending token.
    `examples`: (context, endings, label) triples."""
    was_training = model.training
    model.eval()
    n_positions, vocab = model.config.n_positions, model.config.vocab_size
    correct = torch.zeros(2, dtype=torch.long, device=d.device)  # by summed loss, by mean loss
    mine = examples[d.rank :: d.world_size]
    with _bar(len(mine), d, progress, "examples") as bar:
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
            x, y = x.to(d.device), y.to(d.device)
            with autocast(d.device, dtype):
                logits, _ = model(x)
            losses = F.cross_entropy(logits[..., :vocab].float().transpose(1, 2), y, reduction="none")  # (rows, T)
            summed = losses.sum(1).view(len(labels), -1)  # (examples, endings)
            mean = summed / (y != -100).sum(1).view(len(labels), -1)
            target = torch.tensor(labels, device=d.device)
            correct += torch.stack([(summed.argmin(1) == target).sum(), (mean.argmin(1) == target).sum()])
            bar.update(len(labels))
    dist.all_reduce_sum(correct, d)
    model.train(was_training)
    n, (by_sum, by_mean) = len(examples), correct.tolist()
    return {"examples": n, "acc": by_sum / max(1, n), "acc_norm": by_mean / max(1, n)}


def write_predictions(preds: dict, path: Path, d) -> int:
    """Rank 0 writes every rank's {index: predicted label} as `index<TAB>prediction` lines, in index
    order (atomically); returns how many."""
    gathered = [preds]
    if d.multi_process:
        gathered = [None] * d.world_size
        torch.distributed.all_gather_object(gathered, preds)
    merged = {k: v for part in gathered for k, v in part.items()}
    if d.is_main:
        with atomic_write(path, "w") as f:
            f.write("index\tprediction\n" + "".join(f"{i}\t{merged[i]}\n" for i in sorted(merged)))
    return len(merged)


# ----------------------------------------------------------------------------------------------
# python -m minitrain.training.evaluate


@dataclass
class EvalConfig:
    """Score a saved model (an exported folder or a checkpoint). Every option is --key=value."""

    model: str = "out/gpt2/final"  # an exported Hugging Face folder, a hub id, or a minitrain .pt checkpoint
    task: Literal["lm", "mrpc", "hellaswag"] = "lm"  # what to score: language modelling, pair classification
    data: str = "shakespeare"  # lm: what train_gpt2.py's --data takes; hellaswag: a .jsonl; mrpc: one pairs file
    data_dir: str = ""  # mrpc: a folder that train_mrpc.py's --data_dir takes (instead of --data)
    split: Literal["auto", "all", "train", "validation", "test"] = "auto"  # auto: all of --data, dev of --data_dir
    val_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.1  # the held-out share, as the training run had it
    block_size: NonNegativeInt = 0  # lm: tokens per block (0: the model's context)
    max_blocks: NonNegativeInt = 0  # lm: score only the first N blocks (0: all)
    batch_size: PositiveInt = 8  # blocks, pairs or HellaSwag examples per batch
    max_length: PositiveInt = 128  # mrpc: longest pair in tokens (longest-first truncation)
    predictions: str = ""  # mrpc: also write index<TAB>prediction lines to this file
    out: str = ""  # also write the results as JSON to this file
    cache_dir: str = "~/.cache/minitrain"  # lm: where tokenized text is cached
    device: str = "auto"  # auto, cpu or cuda
    dtype: DtypeName = "auto"  # auto: bf16 on a GPU that has it, else fp32
    progress: bool = True  # show a progress bar


def main(cfg: EvalConfig) -> dict:
    check(cfg)
    with dist.process_group(cfg.device) as d:
        dtype = resolve_dtype(cfg.dtype, d.device)
        score = {"lm": score_lm, "mrpc": score_mrpc, "hellaswag": score_hellaswag}[cfg.task]
        result = {"task": cfg.task, "model": cfg.model, **score(cfg, d, dtype)}
        if d.is_main:
            print("\n".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()))
            if cfg.out:
                with atomic_write(cfg.out, "w") as f:
                    json.dump(result, f, indent=2)
        return result


def score_lm(cfg: EvalConfig, d, dtype) -> dict:
    """Tokens, mean loss, perplexity and bits per byte of a GPT-2 on text, in blocks of
    --block_size where every token but the first is predicted once (training's validation rule)."""
    from minitrain.data.tokenizer import token_bytes

    if cfg.split == "test":
        raise UserError("--split=test is for --task=mrpc; text has all, train or validation.")
    model, tokenizer = load_gpt2(cfg.model)
    model.to(d.device)
    T = cfg.block_size or model.config.n_positions
    if T > model.config.n_positions:
        raise UserError(f"--block_size={T} is larger than the model's {model.config.n_positions} positions.")
    split = "all" if cfg.split == "auto" else cfg.split
    # all: every document whole (a shard folder: all its shards); else training's split of them
    val_fraction = 0.0 if split == "all" else cfg.val_fraction
    with dist.main_first(d):  # rank 0 tokenizes a text source into cached shards
        train, val = prepare.training_data(cfg.data, tokenizer, val_fraction, cfg.cache_dir, cfg.progress, "", T)
    every = train if val is None else data.Tokens(val.shards + train.shards)
    tokens = {"all": every, "train": train, "validation": val}[split]
    n_blocks = tokens.num_blocks(T)
    if cfg.max_blocks:
        n_blocks = min(n_blocks, cfg.max_blocks)
    if n_blocks == 0:
        raise UserError(f"the text has {len(tokens)} tokens, less than one block of {T} + 1; lower --block_size.")
    scores = LMScores(tokens, n_blocks, T, cfg.batch_size, token_bytes(tokenizer))
    s = scores(model, d, dtype, cfg.progress)
    return {
        "split": split,
        "block_size": T,
        "tokens": scores.n_tokens,
        "bytes": scores.n_bytes,
        "loss": s["loss"],
        "perplexity": s["perplexity"],
        "bits_per_byte": s["bpb"],
    }


def score_hellaswag(cfg: EvalConfig, d, dtype) -> dict:
    model, tokenizer = load_gpt2(cfg.model)
    model.to(d.device)
    return hellaswag(model, tokenizer, read_hellaswag(cfg.data), cfg.batch_size, d, dtype, cfg.progress)


def score_mrpc(cfg: EvalConfig, d, dtype) -> dict:
    """Accuracy, F1 (and macro-F1) of a sentence-pair classifier on labelled pairs; predictions of
    any pairs (labelled or not) with --predictions."""
    from minitrain.data.tokenizer import load_tokenizer

    model = load_classifier(cfg.model).to(d.device)
    tokenizer = load_tokenizer(model.source_dir)
    if cfg.data_dir:
        split = "validation" if cfg.split == "auto" else cfg.split
        if split == "all":
            raise UserError("--split=all is for text; pairs have train, validation or test.")
        rows = pairs.load_local(cfg.data_dir, cfg.val_fraction)[split]
        if rows is None:
            raise UserError(f"--data_dir={cfg.data_dir} has no {split} file.")
    else:
        path = Path(cfg.data).expanduser()
        if not path.is_file():
            raise UserError(f"--data={cfg.data} is not a pairs file (TSV, CSV or JSONL); or pass --data_dir.")
        rows = pairs.read_pairs_file(path)
    num_labels = model.config.num_labels
    found = sorted({r[2] for r in rows if r[2] is not None})
    if found and not 0 <= found[0] <= found[-1] < num_labels:
        raise UserError(f"the pairs have labels {found}, but the model has {num_labels} (0..{num_labels - 1}).")
    examples = pairs.tokenize_pairs(rows, tokenizer, cfg.max_length)
    pad_to = 8 if d.device.type == "cuda" else 1
    pad_id = model.config.pad_token_id
    metrics, preds = classify(model, examples, cfg.batch_size, pad_id, pad_to, num_labels, d, dtype, cfg.progress)
    result = {"pairs": len(rows), "labelled": sum(r[2] is not None for r in rows)}
    if result["labelled"]:
        result |= {k: metrics[k] for k in ("loss", "accuracy", "f1", "macro_f1")}
    if cfg.predictions:
        write_predictions(preds, Path(cfg.predictions), d)
        result["predictions"] = cfg.predictions
    return result


# ----------------------------------------------------------------------------------------------
# loading what was saved


def load_gpt2(name: str):
    """(GPT2, tokenizer) from an exported folder or hub id, or from a train_gpt2.py checkpoint
    (whose run folder holds the tokenizer)."""
    from minitrain.data.tokenizer import load_tokenizer
    from minitrain.models.gpt2 import GPT2, GPT2Config

    path = Path(name).expanduser()
    if not path.is_file():
        model = GPT2.from_pretrained(name)
        return model, load_tokenizer(model.source_dir)
    ckpt = checkpoint.load(path)
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise UserError(f"{path} is not a train_gpt2.py checkpoint; pass one, or an exported model folder.")
    if ckpt.get("lora"):  # adapters only: the base from --init_from, the adapters merged in
        model = lora.rebuild(GPT2.from_pretrained(ckpt["config"]["init_from"]), ckpt["lora"], ckpt["model"])
    else:
        model = GPT2(GPT2Config(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    return model, load_tokenizer(path.parent)


def load_classifier(name: str):
    """A BertForSequenceClassification with its trained head, from an exported folder or a
    train_mrpc.py checkpoint."""
    from minitrain.models.bert import BertForSequenceClassification

    path = Path(name).expanduser()
    if not path.is_file():
        model = BertForSequenceClassification.from_pretrained(name)
        if model.head_is_new:
            raise UserError(f"{name} has no trained classification head; pass train_mrpc.py's final/ folder.")
        return model
    ckpt = checkpoint.load(path)
    if not isinstance(ckpt, dict) or "history" not in ckpt or "classifier.weight" not in ckpt.get("model", {}):
        raise UserError(f"{path} is not a train_mrpc.py checkpoint; pass one, or an exported model folder.")
    num_labels = ckpt["model"]["classifier.weight"].shape[0]
    model = BertForSequenceClassification.from_pretrained(ckpt["config"]["model"], num_labels=num_labels)
    if ckpt.get("lora"):  # adapters and head only: the encoder from --model, the adapters merged in
        return lora.rebuild(model, ckpt["lora"], ckpt["model"])
    model.load_state_dict(ckpt["model"])
    return model


def read_hellaswag(path) -> list:
    """(context, endings, label) of each line of a file in the layout of hellaswag_val.jsonl:
    {"ctx": ..., "endings": [4 strings], "label": 0..3, ...}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--data={path} is not a file; HellaSwag needs a .jsonl such as hellaswag_val.jsonl.")
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not a JSON object ({e.msg}).") from None
        ok = isinstance(rec, dict) and isinstance(rec.get("ctx"), str) and isinstance(rec.get("endings"), list)
        ok = ok and len(rec["endings"]) >= 2 and all(isinstance(e, str) for e in rec["endings"])
        if not ok or not isinstance(rec.get("label"), int) or not 0 <= rec["label"] < len(rec["endings"]):
            raise UserError(
                f"{path}:{n}: needs ctx (text), endings (a list of texts) and label (the right ending's index)."
            )
        examples.append((rec["ctx"], rec["endings"], rec["label"]))
    if not examples:
        raise UserError(f"{path} has no examples.")
    if len({len(e[1]) for e in examples}) > 1:
        raise UserError(f"{path}: every example needs the same number of endings.")
    return examples


if __name__ == "__main__":
    run_cli(main, EvalConfig)
