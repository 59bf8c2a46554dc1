"""The data of a causal-LM run (train_gpt2.py, minitrain.evaluate): its tokenizer, and its
training and validation token sources, from --data and --val_data."""

import os
from pathlib import Path

from minitrain import UserError
from minitrain.data import completions, sources
from minitrain.data.cache import cached, open_folder
from minitrain.data.prepare import bpe_sample
from minitrain.data.tokenizer import cached_bpe, eot_id, load_tokenizer
from minitrain.data.tokens import fingerprint
from minitrain.options import CleanOptions

RUN_CLEANING = CleanOptions(filters=False)  # what train_gpt2 and evaluate do to a text --data
SAMPLE_BYTES = 100_000_000  # the most text a BPE is trained on


def pick_tokenizer(resume_path, init_from: str, folder: str, source, vocab_size: int, val_fraction, cache_dir):
    """A training run's tokenizer: a resumed run's own (beside its checkpoint); a fine-tuned
    model's (`init_from`); a given `folder`'s; a shard folder's `tokenizer.json`; else a byte-level
    BPE trained on a sample of the source's training documents, cached."""
    if resume_path is not None and (Path(resume_path).parent / "tokenizer.json").is_file():
        return load_tokenizer(Path(resume_path).parent)
    if init_from != "scratch":
        return load_tokenizer(init_from)
    if folder:
        return load_tokenizer(folder)
    src = sources.resolve(source)
    if src.is_shards:
        if not (Path(os.path.expanduser(src.spec)) / "tokenizer.json").is_file():
            raise UserError(
                f"{src.spec} has token shards but no tokenizer.json: name their tokenizer with --tokenizer "
                f"(gpt2 for llm.c's and build-nanogpt's FineWeb shards) or --init_from."
            )
        return load_tokenizer(src.spec)
    key = fingerprint(sources.signature(src), val_fraction, SAMPLE_BYTES)
    return cached_bpe(bpe_sample(src, "text", val_fraction, 0, SAMPLE_BYTES), vocab_size, cache_dir, key)


def open_splits(source, tokenizer, val_fraction, cache_dir, progress=True, val_source=None, block_size=None):
    """(train, validation) token sources for --data and --val_data (each a spec or a resolved
    sources.Source): prompt/completion records as completions.Examples; a shard folder as it is;
    any other source through its cached shards (val_fraction 0: all of it in train, no
    validation, which is None then)."""
    src = sources.resolve(source)
    val_src = sources.resolve(val_source) if val_source else None
    shared = sources.overlap(src, val_src) if val_src else None
    if shared:
        raise UserError(
            f"--val_data {val_src.spec!r} holds training data ({shared} is also in --data): a validation loss on "
            f"training text hides overfitting; pass a held-out source, or leave --val_data empty to hold out "
            f"--val_fraction of --data."
        )
    if completions.is_completions(src):
        return completions.load(src, tokenizer, eot_id(tokenizer), block_size, val_fraction, val_src)
    if val_src and completions.is_completions(val_src):
        raise UserError(f"--val_data {val_src.spec!r} is prompt/completion data, but --data is text.")
    if val_src:  # all of --data trains; all of --val_data validates
        train, _ = open_splits(src, tokenizer, 0.0, cache_dir, progress)
        if val_src.is_shards:  # a shard folder validates with all its shards, of either split
            return train, open_folder(val_src.spec, tokenizer, need_val=False, whole=True)[0]
        val, _ = open_splits(val_src, tokenizer, 0.0, cache_dir, progress)
        return train, val
    if src.is_shards:
        folder = src.spec
    else:  # exact copies removed, as `python -m minitrain.prepare` does by default; no quality filter:
        # a run (and evaluate, which reads the same cache) must not lose documents it was not asked to judge
        folder = cached(src, tokenizer, val_fraction, cache_dir, progress=progress, clean=RUN_CLEANING)
    return open_folder(folder, tokenizer, need_val=val_fraction > 0)


def identity(source, val_source, train, val, tokenizer) -> dict:
    """What a run trains and validates on, as a checkpoint records it: the sources as given, and a
    fingerprint of the tokenizer and every shard (name, size, checksum) or example. Two runs with
    the same fingerprint read the same token ids."""
    parts = [tokenizer.to_str(), *train.identity(), "|", *(val.identity() if val is not None else [])]
    return {"data": str(source), "val_data": str(val_source or ""), "fingerprint": fingerprint(parts)}
