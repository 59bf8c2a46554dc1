"""python -m minitrain.prepare: a text source -> token shards (see minitrain/data/prepare.py).

python -m minitrain.prepare --data shakespeare --out data/shakespeare
python -m minitrain.prepare --data 'web/*.jsonl.gz' --out data/web --tokenizer gpt2 --val_tokens 10000000
python -m minitrain.prepare --data hf:HuggingFaceFW/fineweb-edu:sample-10BT --out data/edu10B --tokenizer gpt2
"""

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

from minitrain import UserError
from minitrain.atomic import check_writable_folder
from minitrain.cli import run_cli
from minitrain.config import NonNegativeInt, PositiveInt, Range, check
from minitrain.data.prepare import bpe_sample, cpu_count, prepare
from minitrain.data.tokenizer import cached_bpe, eot_id, load_tokenizer


@dataclass
class PrepareConfig:
    """Tokenize a text source into llm.c-style token shards that train_gpt2.py --data DIR trains on."""

    data: str = "shakespeare"  # 'shakespeare', .txt/.jsonl(.gz)/.parquet files, a folder, a glob, hf:NAME[:CONFIG]
    out: str = ""  # the folder to write (must not exist, or be empty; --overwrite replaces a prepared one)
    tokenizer: str = ""  # a tokenizer folder or hub id (gpt2); empty trains a byte-level BPE on a sample
    vocab_size: PositiveInt = 2048  # the BPE's vocabulary when one is trained
    sample_bytes: PositiveInt = 100_000_000  # text the BPE is trained on, at most
    text_field: str = "text"  # the text's field in JSONL records, parquet columns and hf: data sets
    shard_tokens: PositiveInt = 100_000_000  # token ids per shard file
    val_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.1  # share of documents for validation (0: none)
    val_tokens: NonNegativeInt = 0  # if > 0: the first documents, up to this many tokens, are validation instead
    num_proc: PositiveInt | Literal["auto"] = "auto"  # tokenizing processes (auto: one per core)
    progress: bool = True  # show a progress bar
    overwrite: bool = False  # replace an earlier prepare in --out


def main(cfg: PrepareConfig) -> dict:

    check(cfg)
    if not cfg.out:
        raise UserError("--out is required: the folder to write the shards to.")
    out = Path(os.path.expanduser(cfg.out))
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "meta.json").is_file():
            raise UserError(f"--out {out} is not empty and holds no prepared shards: choose an empty or new folder.")
        if not cfg.overwrite:
            raise UserError(f"--out {out} already holds prepared shards: pass --overwrite to replace them.")
    check_writable_folder(out.parent, "--out's parent")
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    else:
        texts = bpe_sample(cfg.data, cfg.text_field, cfg.val_fraction, cfg.val_tokens, cfg.sample_bytes)
        tok = cached_bpe(texts, cfg.vocab_size, None)
    eot_id(tok)  # documents need an end-of-text token between them
    num_proc = cpu_count() if cfg.num_proc == "auto" else cfg.num_proc
    target = out
    if out.is_dir() and any(out.iterdir()):  # --overwrite: the old folder goes only once the new one is complete
        target = out.parent / f".{out.name}.new-{os.getpid()}"
    meta = prepare(
        cfg.data,
        target,
        tok,
        text_field=cfg.text_field,
        shard_tokens=cfg.shard_tokens,
        val_fraction=cfg.val_fraction,
        val_tokens=cfg.val_tokens,
        num_proc=num_proc,
        progress=cfg.progress,
    )
    if target != out:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(target, out)
        shutil.rmtree(old)
    print(
        f"{out}: {meta['train']['tokens']:,} training tokens in {len(meta['train']['shards'])} shards "
        f"({meta['train']['documents']:,} documents), {meta['val']['tokens']:,} validation tokens in "
        f"{len(meta['val']['shards'])} ({meta['val']['documents']:,} documents); "
        f"{meta['tokens_per_sec']:,} tokens/s with {meta['num_proc']} process(es)."
    )
    return {**meta, "out": str(out), "config": asdict(cfg)}


if __name__ == "__main__":
    run_cli(main, PrepareConfig)
