"""A text source -> token shards, in parallel and in bounded memory.

    python -m minitrain.prepare --data shakespeare --out data/shakespeare
    python -m minitrain.prepare --data 'web/*.jsonl.gz' --out data/web --tokenizer gpt2 --val_tokens 10000000
    python -m minitrain.prepare --data hf:HuggingFaceFW/fineweb-edu:sample-10BT --out data/edu10B --tokenizer gpt2

How: the main process streams the source's documents (minitrain.sources) in batches of about a
half a megabyte to `--num_proc` worker processes that tokenize them; at most two batches per worker are
in flight, and results come back in order. Each document's ids, then the end-of-text id, go to the
validation or the training ShardWriter, which writes a shard whenever its buffer of
`--shard_tokens` ids is full. So memory is one shard plus a few batches, whatever the corpus.

Everything is written into a hidden `.OUT.partial-PID` folder beside `--out` and renamed to `--out`
at the end, with `meta.json` (counts, tokenizer, source, split rule) and `tokenizer.json`: a killed
prepare leaves no folder that training would read, and a rerun starts afresh.

train_gpt2.py goes through the same code for a text `--data`: the shards are then cached under
`--cache_dir`, keyed by the source (paths, sizes, modification times), the tokenizer and the split.
"""

import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np

from minitrain import UserError
from minitrain.atomic import atomic_write, check_writable_folder
from minitrain.config import NonNegativeInt, PositiveInt, Range, check, run_cli
from minitrain.data import sources
from minitrain.data.shards import ShardWriter, dtype_for, find_shards, is_shard_folder

FORMAT_VERSION = 1  # of the cached shards: a change of the rules makes new cache keys
BATCH_CHARS = 512 << 10  # text per batch sent to a worker
SMALL_SOURCE = 8 << 20  # a source smaller than this is tokenized in this process: workers would cost more


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# tokenizing in worker processes

_worker_tokenizer = None


def _start_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    os.environ["RAYON_NUM_THREADS"] = "1"  # one core per process: the processes are the parallelism
    from tokenizers import Tokenizer

    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _encode(texts: list[str], tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
    """(the ids of all texts, concatenated, as uint32; each text's number of ids)."""
    tok = tokenizer or _worker_tokenizer
    fast = getattr(tok, "encode_batch_fast", tok.encode_batch)  # the same ids, without character offsets
    encodings = fast(texts)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.uint32, count=lengths.sum())
    return ids, lengths


def _batches(pieces, stats: dict):
    """Pieces grouped into batches of about BATCH_CHARS characters: (texts, [(split, end)])."""
    texts, metas, chars = [], [], 0
    for text, split, end in pieces:
        texts.append(text)
        metas.append((split, end))
        chars += len(text)
        if chars >= BATCH_CHARS:
            stats["chars"] += chars
            yield texts, metas
            texts, metas, chars = [], [], 0
    if texts:
        stats["chars"] += chars
        yield texts, metas


def encoded(batches, tokenizer, num_proc: int):
    """(metas, ids, lengths) for each batch, in order. With num_proc > 1, worker processes encode
    while this one reads and writes; at most 2 x num_proc batches are in flight, so a slow disk
    or a fast reader never piles text up in memory."""
    if num_proc == 1:
        for texts, metas in batches:
            yield metas, *_encode(texts, tokenizer)
        return
    # spawn, not fork: the caller may be a training process with threads (and CUDA) running. An
    # executor, not a Pool: a worker that dies (killed for memory) fails the run instead of hanging it.
    ctx = multiprocessing.get_context("spawn")
    start = dict(mp_context=ctx, initializer=_start_worker, initargs=(tokenizer.to_str(),))
    with ProcessPoolExecutor(num_proc, **start) as pool:
        pending = deque()
        try:
            for texts, metas in batches:
                pending.append((metas, pool.submit(_encode, texts)))
                if len(pending) >= 2 * num_proc:
                    metas, result = pending.popleft()
                    yield metas, *result.result()
            while pending:
                metas, result = pending.popleft()
                yield metas, *result.result()
        except BrokenProcessPool:
            raise UserError("a tokenizing worker process died (out of memory?); try fewer --num_proc.") from None
        finally:
            for _, result in pending:
                result.cancel()


# ----------------------------------------------------------------------------------------------
# the pipeline


def prepare(
    spec: str,
    out,
    tokenizer,
    *,
    text_field: str = "text",
    shard_tokens: int = 100_000_000,
    val_fraction: float = 0.1,
    val_tokens: int = 0,
    num_proc: int = 1,
    progress: bool = False,
    prefix: str = "",
    piece_bytes: int = sources.PIECE_BYTES,
) -> dict:
    """Tokenize a source into shards in `out` (which must not exist yet, or be empty); returns
    meta.json's content. Documents are separated by the end-of-text id, as in GPT-2's training."""
    from minitrain.data.tokenizer import EOT, eot_id

    out = Path(os.path.expanduser(str(out)))
    eot = np.array([eot_id(tokenizer)], dtype=np.uint32)
    dtype = dtype_for(tokenizer.get_vocab_size())
    prefix = prefix or _prefix(spec)
    total = sources.total_bytes(spec)
    if total is not None and total < SMALL_SOURCE:
        num_proc = 1
    _remove_stale_partials(out)
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    work.mkdir(parents=True)
    val = ShardWriter(work, prefix, "val", shard_tokens, dtype)
    train = ShardWriter(work, prefix, "train", shard_tokens, dtype)
    try:
        documents = {"train": 0, "val": 0}
        stats, start, doc_split = {"chars": 0}, time.perf_counter(), None
        pieces = sources.pieces(spec, text_field, val_fraction, val_tokens, piece_bytes)
        bar = _bar(total, progress)
        for metas, ids, lengths in encoded(_batches(pieces, stats), tokenizer, num_proc):
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for (split, end), a, b in zip(metas, offsets[:-1], offsets[1:]):
                if doc_split is None:  # a document starts: where it goes
                    doc_split = split if split != "first" else "val" if val.tokens < val_tokens else "train"
                writer = val if doc_split == "val" else train
                writer.add(ids[a:b])
                if end:
                    writer.add(eot)
                    documents[doc_split] += 1
                    doc_split = None
            bar.update(stats["chars"] - bar.n)
            bar.set_postfix(tokens=f"{train.tokens + val.tokens:,}")
        bar.close()
        seconds = time.perf_counter() - start
        _check_splits(spec, documents, val_fraction, val_tokens)
        val.flush()
        train.flush()
        n_tokens = train.tokens + val.tokens
        meta = {
            "format": "llm.c token shards (256 int32 header, then the ids)",
            "version": FORMAT_VERSION,
            "source": spec,
            "text_field": text_field,
            "split": {"val_fraction": val_fraction, "val_tokens": val_tokens},
            "tokenizer": "tokenizer.json",
            "vocab_size": tokenizer.get_vocab_size(),
            "eot": EOT,
            "eot_id": int(eot[0]),
            "dtype": np.dtype(dtype).name,
            "shard_tokens": shard_tokens,
            "train": {"tokens": train.tokens, "documents": documents["train"], "shards": train.shards},
            "val": {"tokens": val.tokens, "documents": documents["val"], "shards": val.shards},
            "seconds": round(seconds, 3),
            "tokens_per_sec": round(n_tokens / max(seconds, 1e-9)),
            "num_proc": num_proc,
        }
        with atomic_write(work / "tokenizer.json", "w") as f:
            f.write(tokenizer.to_str())
        with atomic_write(work / "meta.json", "w") as f:
            json.dump(meta, f, indent=2)
        _publish(work, out)
    except BaseException:
        val.close()
        train.close()
        shutil.rmtree(work, ignore_errors=True)
        raise
    return meta


def _prefix(spec: str) -> str:
    if spec.startswith("hf:"):
        name = spec[3:].replace(":", "_")
    else:
        name = Path(spec.split("*")[0].rstrip("/") or "data").name
    name = "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("._") or "data"
    return name.removesuffix(".txt").removesuffix(".jsonl")


def _bar(total: int | None, progress: bool):
    """Bytes of text read, with tokens/s; none for a small source (it is done in a moment)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="tokenizing",
        disable=not progress or (total is not None and total < SMALL_SOURCE),
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _check_splits(spec: str, documents: dict, val_fraction: float, val_tokens: int) -> None:
    if documents["train"] + documents["val"] == 0:
        raise UserError(f"--data {spec!r} is empty: there is no text in it.")
    if documents["train"] == 0:
        raise UserError(f"every document of {spec!r} went to validation: lower --val_tokens or --val_fraction.")
    if documents["val"] == 0 and (val_fraction > 0 or val_tokens > 0):
        raise UserError(
            f"none of the {documents['train']} documents of {spec!r} fell into the validation split: "
            f"raise --val_fraction, or set --val_tokens, or give a separate validation source."
        )


def _remove_stale_partials(out: Path) -> None:
    """The hidden folders of prepares that were killed (their process is gone)."""
    for old in out.parent.glob(f".{out.name}.partial-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(work: Path, out: Path) -> None:
    """Rename the finished folder into place: atomic, so `out` is complete or absent."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists():  # another process finished the same work first (a shared cache)
        shutil.rmtree(work)
        return
    os.rename(work, out)


# ----------------------------------------------------------------------------------------------
# a prepared folder, and the cache that train_gpt2.py uses for a text --data


def open_folder(folder, tokenizer=None, need_val: bool = True):
    """(train Tokens, validation Tokens or None) of a shard folder, checked: shards present and
    intact, and, when the folder records its tokenizer, the same vocabulary as `tokenizer`."""
    from minitrain.data.tokens import Tokens

    folder = Path(os.path.expanduser(str(folder)))
    train, val = find_shards(folder)
    if not train:
        raise UserError(f"{folder} has no training shards (*_train_*.bin).")
    if need_val and not val:
        raise UserError(f"{folder} has no validation shards (*_val_*.bin): prepare it with a validation split.")
    if tokenizer is not None and (folder / "tokenizer.json").is_file():
        from minitrain.data.tokenizer import load_tokenizer

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


def cached(spec: str, tokenizer, val_fraction: float, cache_dir, num_proc: int = 0, progress: bool = True) -> Path:
    """The shard folder of a text source for `tokenizer` and the split rule: prepared on the first
    call (in parallel), reused after. The key is cheap: the files' paths, sizes and modification
    times, not their content; the shards are checked (header, size) each time they are opened."""
    from minitrain.data.tokens import fingerprint

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


SAMPLE_BYTES = 100_000_000  # the most text a BPE is trained on


def run_tokenizer(resume_path, init_from: str, folder: str, spec: str, vocab_size: int, val_fraction, cache_dir):
    """A training run's tokenizer: a resumed run's own (beside its checkpoint); a fine-tuned
    model's (`init_from`); a given `folder`'s; a shard folder's `tokenizer.json`; else a byte-level
    BPE trained on a sample of the source's training documents, cached."""
    from minitrain.data.tokenizer import cached_bpe, load_tokenizer
    from minitrain.data.tokens import fingerprint

    if resume_path is not None and (Path(resume_path).parent / "tokenizer.json").is_file():
        return load_tokenizer(Path(resume_path).parent)
    if init_from != "scratch":
        return load_tokenizer(init_from)
    if folder:
        return load_tokenizer(folder)
    if is_shard_folder(spec):
        if not (Path(os.path.expanduser(spec)) / "tokenizer.json").is_file():
            raise UserError(
                f"{spec} has token shards but no tokenizer.json: name their tokenizer with --tokenizer "
                f"(gpt2 for llm.c's and build-nanogpt's FineWeb shards) or --init_from."
            )
        return load_tokenizer(spec)
    key = fingerprint(sources.signature(spec), val_fraction, SAMPLE_BYTES)
    return cached_bpe(bpe_sample(spec, "text", val_fraction, 0, SAMPLE_BYTES), vocab_size, cache_dir, key)


def training_data(spec, tokenizer, val_fraction, cache_dir, progress=True, val_spec="", block_size=None):
    """(train, validation) for train_gpt2.py's --data and --val_data: prompt/completion records as
    completions.Examples; a shard folder as it is; any other source through its cached shards
    (val_fraction 0: all of it in train, no validation)."""
    from minitrain.data import completions
    from minitrain.data.tokenizer import eot_id
    from minitrain.data.tokens import Tokens

    if completions.is_completions(spec):
        return completions.load(spec, tokenizer, eot_id(tokenizer), block_size, val_fraction, val_spec)
    if val_spec and completions.is_completions(val_spec):
        raise UserError(f"--val_data {val_spec!r} is prompt/completion data, but --data is text.")
    if val_spec:  # all of --data trains; all of --val_data validates
        train, _ = training_data(spec, tokenizer, 0.0, cache_dir, progress)
        val, held = training_data(val_spec, tokenizer, 0.0, cache_dir, progress)  # a shard folder: all of it
        return train, val if held is None else Tokens(held.shards + val.shards)
    folder = spec if is_shard_folder(spec) else cached(spec, tokenizer, val_fraction, cache_dir, progress=progress)
    return open_folder(folder, tokenizer, need_val=val_fraction > 0)


def _check_cached(folder: Path) -> str | None:
    """What is wrong with a cached shard folder, or None: every shard that meta.json lists is there
    with the checksum recorded when it was written (hashing reads ~1 GB/s; only the cache is
    checked so, a --data folder of shards gets the header and size check of each open)."""
    from minitrain.data.shards import ids_digest

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


def bpe_sample(spec: str, text_field: str, val_fraction: float, val_tokens: int, sample_bytes: int):
    """Texts to train a BPE on: the source's training documents (with --val_tokens, whose split
    needs a tokenizer, the first documents of all), up to about `sample_bytes` characters."""
    left = sample_bytes
    for text, split, _ in sources.pieces(spec, text_field, val_fraction, val_tokens):
        if split == "val":
            continue
        yield text[:left]
        left -= len(text)
        if left <= 0:
            return


# ----------------------------------------------------------------------------------------------
# python -m minitrain.data.prepare


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
    from minitrain.data.tokenizer import cached_bpe, eot_id, load_tokenizer

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
