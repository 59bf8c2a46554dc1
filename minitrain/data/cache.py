"""Prepared token shards on disk: opening a shard folder (checked), and the cache of shards that
train_gpt2.py keeps for a text --data, keyed by the source, the tokenizer and the split rule."""

import json
import os
import shutil
import sys
from pathlib import Path

from minitrain import UserError
from minitrain.data import sources
from minitrain.data.prepare import FORMAT_VERSION, cpu_count, prepare
from minitrain.data.shards import find_shards, ids_digest
from minitrain.data.tokenizer import load_tokenizer
from minitrain.data.tokens import Tokens, fingerprint


def open_folder(folder, tokenizer=None, need_val: bool = True, whole: bool = False):
    """(train Tokens, validation Tokens or None) of a shard folder, checked: shards present and
    intact, and, when the folder records its tokenizer, the same vocabulary as `tokenizer`. With
    `whole`: (every shard of both splits, None), as --val_data reads a folder."""

    folder = Path(os.path.expanduser(str(folder)))
    train, val = find_shards(folder)
    if whole:
        train, val = val + train, []
    if not train:
        raise UserError(f"{folder} has no training shards (*_train_*.bin).")
    if need_val and not val:
        raise UserError(f"{folder} has no validation shards (*_val_*.bin): prepare it with a validation split.")
    if tokenizer is not None and (folder / "tokenizer.json").is_file():
        if load_tokenizer(folder).get_vocab() != tokenizer.get_vocab():
            raise UserError(
                f"{folder} was tokenized with another vocabulary than the run's tokenizer "
                f"(its tokenizer.json): train with that tokenizer, or prepare the data again."
            )
    tokens = Tokens(train), Tokens(val) if val else None  # every header checked
    limit = tokenizer.get_vocab_size() if tokenizer is not None else 0
    for paths, t in zip((train, val), tokens):
        if t is not None and t.itemsize == 2 and limit > 2**16:
            raise UserError(f"{paths[0]} holds uint16 ids but the tokenizer has {limit} tokens.")
    return tokens


def cached(spec, tokenizer, val_fraction: float, cache_dir, num_proc: int = 0, progress: bool = True) -> Path:
    """The shard folder of a text source for `tokenizer` and the split rule: prepared on the first
    call (in parallel), reused after. The key is cheap: the files' paths, sizes and modification
    times, not their content; the shards are checked (header, size) each time they are opened."""

    spec = sources.resolve(spec)  # its files found once
    key = fingerprint(FORMAT_VERSION, sources.signature(spec), tokenizer.to_str(), val_fraction)
    folder = Path(os.path.expanduser(str(cache_dir))) / f"shards-{key}"
    if (folder / "meta.json").is_file():
        problem = _check_cached(folder)
        if problem is None:
            return folder
        print(f"warning: the token cache {folder} {problem}; tokenizing again", file=sys.stderr, flush=True)
        shutil.rmtree(folder)
    print(f"tokenizing {spec} into {folder}", flush=True)
    meta = prepare(
        spec, folder, tokenizer, val_fraction=val_fraction, num_proc=num_proc or cpu_count(), progress=progress
    )
    print(
        f"{meta['train']['tokens']:,} training and {meta['val']['tokens']:,} validation tokens "
        f"({meta['tokens_per_sec']:,} tokens/s, {meta['num_proc']} processes)",
        flush=True,
    )
    return folder


def _check_cached(folder: Path) -> str | None:
    """What is wrong with a cached shard folder, or None: every shard that meta.json lists is there
    with the checksum recorded when it was written (hashing reads ~1 GB/s; only the cache is
    checked so, a --data folder of shards gets the header and size check of each open)."""

    try:
        meta = json.loads((folder / "meta.json").read_text())
        listed = [(s["file"], s["ids_blake2b"]) for s in meta["train"]["shards"] + meta["val"]["shards"]]
    except (ValueError, KeyError, TypeError):
        return "has an unreadable meta.json"
    for name, checksum in listed:
        if not (folder / name).is_file():
            return f"lacks {name}"
        if ids_digest(folder / name) != checksum:
            return f"has a shard, {name}, that does not match the checksum recorded when it was written"
    return None
