"""Prepared token shards on disk: opening a shard folder (checked), and the cache of shards that
train_gpt2.py keeps for a text --data, keyed by the source, the tokenizer and the split rule."""

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from minitrain import UserError
from minitrain.data import prepared, sources
from minitrain.data.prepare import cleans, cpu_count, prepare
from minitrain.data.prepared import FORMAT_VERSION
from minitrain.data.shards import HEADER_BYTES, find_shards, ids_digest
from minitrain.data.tokenizer import eot_id, find_eot, load_tokenizer
from minitrain.data.tokens import Tokens, fingerprint


def open_folder(folder, tokenizer=None, need_val: bool = True, whole: bool = False):
    """(train Tokens, validation Tokens or None) of a shard folder, checked: shards present and
    intact, and, when the folder records its tokenizer, the same vocabulary as `tokenizer`. The
    Tokens hold a shared lock on the folder while they live, so no prepare --overwrite replaces
    it under a running job. With `whole`: (every shard of both splits, None), as --val_data reads
    a folder."""

    folder = Path(os.path.expanduser(str(folder)))
    hold = prepared.Hold(folder)  # first: what is checked below is what will be read
    train, val = find_shards(folder)
    meta = prepared.read_meta(folder) if (folder / "meta.json").is_file() else None
    if meta is not None:  # a prepared folder: exactly the shards it lists, each complete
        check_listed(folder, meta, train + val)
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
    limit = tokenizer.get_vocab_size() if tokenizer is not None else 0
    tokens = (
        Tokens(train, holds=(hold,), vocab_size=limit),
        Tokens(val, holds=(hold,), vocab_size=limit) if val else None,
    )
    for paths, t in zip((train, val), tokens):
        if t is not None and t.itemsize == 2 and limit > 2**16:
            raise UserError(f"{paths[0]} holds uint16 ids but the tokenizer has {limit} tokens.")
    eot = find_eot(tokenizer) if tokenizer is not None else None
    if meta is not None and eot is not None and meta["eot_id"] != eot:
        # the same vocabulary, another end of document (a base model and its instruct version)
        raise UserError(
            f"{folder} ends its documents with token id {meta['eot_id']}, the run's tokenizer with "
            f"{eot}: prepare the data again with this tokenizer."
        )
    return tokens


def check_listed(folder: Path, meta: dict, found: list[Path]) -> None:
    """A prepared folder holds exactly the shards its meta.json lists, each with the token count
    written there: a shard lost or added since (a copy interrupted, a file moved in) would train on
    another corpus than the one prepared, or on part of it, without a word."""
    listed = {s["file"]: s["tokens"] for split in ("train", "val") for s in meta[split]["shards"]}
    names = {p.name for p in found}
    missing, extra = sorted(set(listed) - names), sorted(names - set(listed))
    if missing:
        raise UserError(
            f"{folder} lacks {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}, which its "
            f"meta.json lists: the folder is incomplete; copy it again, or prepare it again."
        )
    if extra:
        raise UserError(
            f"{folder} holds {extra[0]}{f' and {len(extra) - 1} more' if len(extra) > 1 else ''}, which its "
            f"meta.json does not list: move unlisted shards out, or prepare the folder again."
        )
    for p in found:
        n = (p.stat().st_size - HEADER_BYTES) // (2 if meta["dtype"] == "uint16" else 4)
        if n != listed[p.name]:
            raise UserError(f"{p} holds {n:,} tokens, but {folder}/meta.json says {listed[p.name]:,}: it changed.")


def cached(
    spec, tokenizer, val_fraction: float, cache_dir, num_proc: int = 0, progress: bool = True, clean=None
) -> Path:
    """The shard folder of a text source for `tokenizer`, the split rule and the cleaning options
    `clean` (minitrain.options.CleanOptions; None: every document): prepared on the first call (in
    parallel), reused after. The key is cheap: the files' paths, sizes and modification times, not
    their content; the shards are checked (header, size) each time they are opened."""

    spec = sources.resolve(spec)  # its files found once
    # the tokenizer: its vocabulary and rules, and the id that ends a document (tokenizer_config.json's
    # eos_token where the vocabulary has no <|endoftext|>: Llama 3's base and instruct models differ)
    parts = [FORMAT_VERSION, sources.signature(spec), tokenizer.to_str(), eot_id(tokenizer), val_fraction]
    if cleans(clean):  # the options as sorted JSON; none at all keeps the key of an uncleaned cache
        parts.append(json.dumps(asdict(clean), sort_keys=True))
    key = fingerprint(*parts)
    folder = Path(os.path.expanduser(str(cache_dir))) / f"shards-{key}"
    if (folder / "meta.json").is_file():
        problem = _check_cached(folder)
        if problem is None:
            return folder
        fd = prepared.lock_for_replace(folder, "the damaged token cache")
        try:  # only what a prepare writes goes; a run still reading the folder keeps it (refused above)
            prepared.remove_owned(folder, prepared.owned_files(folder, "the token cache", damaged=True))
        finally:
            os.close(fd)
        print(f"warning: the token cache {folder} {problem}; tokenizing again", file=sys.stderr, flush=True)
    print(f"tokenizing {spec} into {folder}", flush=True)
    meta = prepare(
        spec,
        folder,
        tokenizer,
        val_fraction=val_fraction,
        num_proc=num_proc or cpu_count(),
        progress=progress,
        keep_existing=True,  # content-addressed: a folder another run wrote meanwhile is the same work
        clean=clean,
    )
    print(
        f"{meta['train']['tokens']:,} training and {meta['val']['tokens']:,} validation tokens "
        f"({meta['tokens_per_sec']:,} tokens/s, {meta['num_proc']} processes)",
        flush=True,
    )
    if meta["clean"] is not None:
        removed = meta["clean"]["removed"].items()
        gone = ", ".join(f"{r['train']['documents'] + r['val']['documents']:,} {rule}" for rule, r in removed)
        print(f"cleaning removed documents: {gone} (the rules of python -m minitrain.prepare)", flush=True)
    return folder


def _check_cached(folder: Path) -> str | None:
    """What is wrong with a cached shard folder, or None: every shard that meta.json lists is there
    with the checksum recorded when it was written (hashing reads ~1 GB/s; only the cache is
    checked so, a --data folder of shards gets the header and size check of each open)."""

    try:
        meta = prepared.read_meta(folder)
    except UserError:
        return "has an unreadable meta.json"
    listed = [(s["file"], s["ids_blake2b"]) for s in meta["train"]["shards"] + meta["val"]["shards"]]
    for name, checksum in listed:
        if not (folder / name).is_file():
            return f"lacks {name}"
        if ids_digest(folder / name) != checksum:
            return f"has a shard, {name}, that does not match the checksum recorded when it was written"
    return None
