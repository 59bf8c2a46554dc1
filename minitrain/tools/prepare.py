"""python -m minitrain.prepare: a text source -> token shards (see minitrain/data/prepare.py).

python -m minitrain.prepare --data shakespeare --out data/shakespeare
python -m minitrain.prepare --data 'web/*.jsonl.gz' --out data/web --tokenizer gpt2 --val_tokens 10000000
python -m minitrain.prepare --data hf:HuggingFaceFW/fineweb-edu:sample-10BT --out data/edu10B --tokenizer gpt2

Refused, in one sentence and before any work: an --out that is, holds or lies inside the --data
source; an --out that holds anything but an earlier prepare's files (its meta.json, tokenizer.json
and the shards that meta.json lists: nothing else is ever deleted); --overwrite of a folder that a
training run is reading ("in use by a running job"). Of two prepares to one --out at once, the
second to finish fails and the first one's shards stay.

--num_proc workers are spawned, and each imports this module (it is __main__): so it imports no
torch at module level (~300 MB and ~1 s a worker); what needs torch is imported inside main.
"""

import itertools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

from minitrain import UserError
from minitrain.atomic import check_writable_folder
from minitrain.config import NonNegativeInt, PositiveInt, Range, check
from minitrain.data import prepared, sources
from minitrain.data.dedup import RULES
from minitrain.data.prepare import bpe_sample, cpu_count, prepare
from minitrain.options import CleanOptions


@dataclass
class PrepareConfig(CleanOptions):
    """Tokenize a text source into llm.c-style token shards that train_gpt2.py --data DIR trains on.
    --out must be apart from --data; --overwrite replaces only an earlier prepare's folder (its
    meta.json, tokenizer.json and listed shards, nothing else in it), never one a run is reading."""

    data: str = "shakespeare"  # 'shakespeare', .txt/.jsonl(.gz)/.parquet files, a folder, a glob, hf:NAME[:CONFIG]
    out: str = ""  # the folder to write: new, or empty, or an earlier prepare's (--overwrite); apart from --data
    tokenizer: str = ""  # a tokenizer folder or hub id (gpt2); empty trains a byte-level BPE on a sample
    vocab_size: PositiveInt = 2048  # the BPE's vocabulary when one is trained
    sample_bytes: PositiveInt = 100_000_000  # text the BPE is trained on, at most
    text_field: str = "text"  # the text's field in JSONL records, parquet columns and hf: data sets
    shard_tokens: PositiveInt = 100_000_000  # token ids per shard file
    val_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.1  # share of documents for validation (0: none)
    val_tokens: NonNegativeInt = 0  # if > 0: the first documents, up to this many tokens, are validation instead
    num_proc: PositiveInt | Literal["auto"] = "auto"  # tokenizing processes (auto: one per core)
    progress: bool = True  # show a progress bar
    overwrite: bool = False  # replace an earlier prepare in --out (refused if it holds other files or a run reads it)
    keep_removed: NonNegativeInt = 0  # write up to N removed documents of each rule to OUT/removed.jsonl


def main(cfg: PrepareConfig) -> dict:
    from minitrain.data import completions
    from minitrain.data.tokenizer import cached_bpe, eot_id, load_tokenizer

    check(cfg)
    if not cfg.out:
        raise UserError("--out is required: the folder to write the shards to.")
    out = Path(os.path.expanduser(cfg.out))
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder.")
    src = sources.resolve(cfg.data)  # its files found once, for the check below and the work
    check_apart(src, out)
    clean = CleanOptions(**{f: getattr(cfg, f) for f in CleanOptions.__dataclass_fields__})
    if completions.is_completions(src):  # examples are read by train_gpt2.py itself, prompts masked
        raise UserError(
            f"{cfg.data!r} holds prompt/completion records: train_gpt2.py reads them directly (pass the file as "
            f"--data); prepare tokenizes text into shards."
        )
    replacing = None
    if out.is_dir() and any(out.iterdir()):
        prepared.owned_files(out)  # a prepare's folder with nothing else in it, or refused
        if not cfg.overwrite:
            raise UserError(f"--out {out} already holds prepared shards: pass --overwrite to replace them.")
        replacing = prepared.Replacing(out)  # locked from now on: no run starts reading it meanwhile
    try:
        check_writable_folder(out.parent, "--out's parent")
        if cfg.tokenizer:
            tok = load_tokenizer(cfg.tokenizer)
        else:
            texts = bpe_sample(src, cfg.text_field, cfg.val_fraction, cfg.val_tokens, cfg.sample_bytes)
            tok = cached_bpe(texts, cfg.vocab_size, None)
        eot_id(tok)  # documents need an end-of-text token between them
        num_proc = cpu_count() if cfg.num_proc == "auto" else cfg.num_proc
        meta = prepare(
            src,
            out,
            tok,
            text_field=cfg.text_field,
            shard_tokens=cfg.shard_tokens,
            val_fraction=cfg.val_fraction,
            val_tokens=cfg.val_tokens,
            num_proc=num_proc,
            progress=cfg.progress,
            replacing=replacing,  # the old folder goes only once the new one is complete
            clean=clean,
            keep_removed=cfg.keep_removed,
        )
    finally:
        if replacing is not None:
            replacing.close()
    print(
        f"{out}: {meta['train']['tokens']:,} training tokens in {len(meta['train']['shards'])} shards "
        f"({meta['train']['documents']:,} documents), {meta['val']['tokens']:,} validation tokens in "
        f"{len(meta['val']['shards'])} ({meta['val']['documents']:,} documents); "
        f"{meta['tokens_per_sec']:,} tokens/s with {meta['num_proc']} process(es)."
    )
    if meta["clean"] is not None:
        print(f"{out}: removed {removed_line(meta['clean']['removed'])}.")

    return {**meta, "out": str(out), "config": asdict(cfg)}


def removed_line(removed: dict) -> str:
    """What the cleaning removed, per rule: "exact 12 documents (3,456 tokens; 2 copies of validation), ..."."""
    parts = []
    for rule in RULES:
        r = removed[rule]
        docs, tokens = r["train"]["documents"] + r["val"]["documents"], r["train"]["tokens"] + r["val"]["tokens"]
        copies = f"; {r['train_copies_of_val']} training copies of validation" if r.get("train_copies_of_val") else ""
        if docs:
            parts.append(f"{rule} {docs:,} documents ({tokens:,} tokens{copies})")
    return ", ".join(parts) or "nothing"


def check_apart(src: sources.Source, out: Path) -> None:
    """Refuse an --out that is, holds or lies inside what --data reads, compared both as written
    and as resolved real paths (links either way): a prepare, and above all an --overwrite, must
    never touch the text it reads."""
    if src.is_hf:
        return
    outs = {os.path.abspath(out), os.path.realpath(out)}
    base = _base(src.spec)  # the folder, file or glob base (the shakespeare package's texts)
    for root in {os.path.abspath(base), os.path.realpath(base)}:
        if any(there == root or _inside(there, root) or _inside(root, there) for there in outs):
            raise UserError(
                f"--out {out} is, holds or lies inside --data {src.spec!r} ({root}): write the shards to a folder "
                f"apart from the text."
            )
    for f in src.files:
        if any(_inside(p, there) for p in (os.path.abspath(f), os.path.realpath(f)) for there in outs):
            raise UserError(
                f"--out {out} holds {f}, which --data reads: write the shards to a folder apart from the text."
            )


def _base(spec: str) -> str:
    """The folder or file a --data spec names; for a glob, the folder before its first wildcard."""
    if spec == sources.DEFAULT_CORPUS:
        return os.path.dirname(os.path.realpath(sources.shakespeare_files()[0]))
    parts = Path(os.path.expanduser(spec)).parts
    plain = list(itertools.takewhile(lambda p: not any(c in p for c in "*?["), parts))
    return str(Path(*plain)) if plain else "."


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


if __name__ == "__main__":
    from minitrain.cli import run_cli

    run_cli(main, PrepareConfig)
