"""python -m minitrain.evaluate: score a saved model (an exported folder or a checkpoint).

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

from minitrain import UserError
from minitrain.atomic import atomic_write
from minitrain.cli import run_cli
from minitrain.config import NonNegativeInt, PositiveInt, Range, check
from minitrain.data import corpus, pairs
from minitrain.data.hellaswag import read_hellaswag
from minitrain.data.tokenizer import eot_id, token_bytes
from minitrain.data.tokens import Tokens
from minitrain.training import dist
from minitrain.training.evaluate import LMScores, classify, hellaswag, write_predictions
from minitrain.training.loader import load_model
from minitrain.training.precision import DtypeName, resolve_dtype


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
    doc_mask: bool = False  # lm: as a --doc_mask run trained: attention and positions restart at each end-of-text
    batch_size: PositiveInt = 8  # blocks, pairs or HellaSwag examples per batch
    max_length: PositiveInt = 128  # mrpc: longest pair in tokens (longest-first truncation)
    predictions: str = ""  # mrpc: also write index<TAB>prediction lines to this file
    out: str = ""  # also write the results as JSON to this file
    cache_dir: str = "~/.cache/minitrain"  # lm: where tokenized text is cached
    device: str = "auto"  # auto, cpu or cuda
    dtype: DtypeName = "auto"  # auto: bf16 where the hardware computes it (GPU, CPU with AVX-512 BF16/AMX), else fp32
    progress: bool = True  # show a progress bar


def main(cfg: EvalConfig) -> dict:
    check(cfg)
    with dist.process_group(cfg.device) as world:
        dtype = resolve_dtype(cfg.dtype, world.device)
        score = {"lm": score_lm, "mrpc": score_mrpc, "hellaswag": score_hellaswag}[cfg.task]
        result = {"task": cfg.task, "model": cfg.model, **score(cfg, world, dtype)}
        if world.is_main:
            print("\n".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()))
            if cfg.out:
                with atomic_write(cfg.out, "w") as f:
                    json.dump(result, f, indent=2)
        return result


def score_lm(cfg: EvalConfig, world, dtype) -> dict:
    """Tokens, mean loss, perplexity and bits per byte of a GPT-2 on text, in blocks of
    --block_size where every token but the first is predicted once (training's validation rule)."""
    if cfg.split == "test":
        raise UserError("--split=test is for --task=mrpc; text has all, train or validation.")
    model, tokenizer = load_model(cfg.model, "causal")
    model.to(world.device)
    T = cfg.block_size or model.config.n_positions
    if T > model.config.n_positions:
        raise UserError(f"--block_size={T} is larger than the model's {model.config.n_positions} positions.")
    split = "all" if cfg.split == "auto" else cfg.split
    # all: every document whole (a shard folder: all its shards); else training's split of them
    val_fraction = 0.0 if split == "all" else cfg.val_fraction
    with dist.main_first(world):  # rank 0 tokenizes a text source into cached shards
        train, val = corpus.open_splits(cfg.data, tokenizer, val_fraction, cfg.cache_dir, cfg.progress, None, T)
    every = (
        train
        if val is None
        else Tokens(val.shards + train.shards, holds=train.holds + val.holds, vocab_size=train.vocab_size)
    )
    tokens = {"all": every, "train": train, "validation": val}[split]
    n_blocks = tokens.num_blocks(T)
    if cfg.max_blocks:
        n_blocks = min(n_blocks, cfg.max_blocks)
    if n_blocks == 0:
        raise UserError(f"the text has {len(tokens)} tokens, less than one block of {T} + 1; lower --block_size.")
    scores = LMScores(
        tokens, n_blocks, T, cfg.batch_size, token_bytes(tokenizer), eot_id(tokenizer) if cfg.doc_mask else None
    )
    s = scores(model, world, dtype, cfg.progress)
    return {
        "split": split,
        "block_size": T,
        "tokens": scores.n_tokens,
        "bytes": scores.n_bytes,
        "loss": s["loss"],
        "perplexity": s["perplexity"],
        "bits_per_byte": s["bpb"],
    }


def score_hellaswag(cfg: EvalConfig, world, dtype) -> dict:
    examples = read_hellaswag(cfg.data)  # a bad file is refused before the model is loaded
    model, tokenizer = load_model(cfg.model, "causal")
    model.to(world.device)
    return hellaswag(model, tokenizer, examples, cfg.batch_size, world, dtype, cfg.progress)


def score_mrpc(cfg: EvalConfig, world, dtype) -> dict:
    """Accuracy, F1 (and macro-F1) of a sentence-pair classifier on labelled pairs; predictions of
    any pairs (labelled or not) with --predictions."""
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
    model, tokenizer = load_model(cfg.model, "classifier")  # after the pairs: a bad file is refused first
    model.to(world.device)
    num_labels = model.config.num_labels
    found = sorted({r[2] for r in rows if r[2] is not None})
    if found and not 0 <= found[0] <= found[-1] < num_labels:
        raise UserError(f"the pairs have labels {found}, but the model has {num_labels} (0..{num_labels - 1}).")
    examples = pairs.tokenize_pairs(rows, tokenizer, cfg.max_length)
    pad_to = 8 if world.device.type == "cuda" else 1
    pad_id = model.config.pad_token_id
    metrics, preds = classify(model, examples, cfg.batch_size, pad_id, pad_to, num_labels, world, dtype, cfg.progress)
    result = {"pairs": len(rows), "labelled": sum(r[2] is not None for r in rows)}
    if result["labelled"]:
        result |= {k: metrics[k] for k in ("loss", "accuracy", "f1", "macro_f1")}
    if cfg.predictions:
        write_predictions(preds, Path(cfg.predictions), world)
        result["predictions"] = cfg.predictions
    return result


if __name__ == "__main__":
    run_cli(main, EvalConfig)
