"""A text source -> token shards, in parallel and in bounded memory.

    python -m minitrain.prepare --data shakespeare --out data/shakespeare
    python -m minitrain.prepare --data 'web/*.jsonl.gz' --out data/web --tokenizer gpt2 --val_tokens 10000000
    python -m minitrain.prepare --data hf:HuggingFaceFW/fineweb-edu:sample-10BT --out data/edu10B --tokenizer gpt2

How: the main process streams the source's documents (minitrain.sources) in batches of about a
half a megabyte to `--num_proc` worker processes that tokenize them; at most two batches per worker are
in flight, and results come back in order. Each document's ids, then the end-of-text id, go to the
validation or the training ShardWriter, which writes a shard whenever its buffer of
`--shard_tokens` ids is full. So memory is one shard plus a few batches, whatever the corpus.

Everything is written into a hidden `.OUT.partial-PID-XXXX` folder beside `--out` and renamed to `--out`
at the end, with `meta.json` (counts, tokenizer, source, split rule) and `tokenizer.json`: a killed
prepare leaves no folder that training would read, and a rerun starts afresh (and removes the dead
one's hidden folder). What may replace or delete a prepared folder is minitrain.data.prepared.

train_gpt2.py goes through the same code for a text `--data`: the shards are then cached under
`--cache_dir` (minitrain.data.cache). The command line is minitrain/tools/prepare.py.

Worker processes are spawned and import this module: it imports numpy and the source readers
only, never torch (a worker would pay ~1 s and ~300 MB for it); the tokenizer and the module-level
helpers that need torch are imported inside the functions that use them.
"""

import fcntl
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from minitrain import UserError
from minitrain.atomic import atomic_write
from minitrain.data import prepared, sources
from minitrain.data.prepared import FORMAT, FORMAT_VERSION
from minitrain.data.shards import ShardWriter, dtype_for

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
    # no special tokens: a long document comes in pieces, and a tokenizer that starts every text
    # with <|begin_of_text|> would put one before each; prepare adds the prefix once per document
    encodings = fast(texts, add_special_tokens=False)
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
    source,
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
    replacing: "prepared.Replacing | None" = None,
    keep_existing: bool = False,
) -> dict:
    """Tokenize a source into shards in `out` (which must not exist yet, or be empty, or be the
    earlier prepare that `replacing` holds); returns meta.json's content. Each document is followed
    by the end-of-text id, as in GPT-2's training (and preceded by the ids the tokenizer starts a
    text with, Llama 3's <|begin_of_text|>). If another process publishes `out` first, this one
    fails in one sentence, or, with `keep_existing` (a content-addressed cache), uses that."""
    from minitrain.data.tokenizer import eot_id, prefix_ids

    out = Path(os.path.expanduser(str(out)))
    eot = np.array([eot_id(tokenizer)], dtype=np.uint32)
    bos = np.array(prefix_ids(tokenizer), dtype=np.uint32)  # what the family starts a text with (Llama 3)
    dtype = dtype_for(tokenizer.get_vocab_size())
    src = sources.resolve(source)  # a spec, or a source resolved by the caller: its files are found once
    spec = src.spec
    prefix = prefix or _prefix(spec)
    total = sources.total_bytes(src)
    if total is not None and total < SMALL_SOURCE:
        num_proc = 1
    _remove_stale_partials(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the pid tells a dead prepare's folder; the random tail keeps two prepares of one process apart
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    busy = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:  # held while this process writes: a later prepare knows the folder is not a dead one's
        fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass
    val = ShardWriter(work, prefix, "val", shard_tokens, dtype)
    train = ShardWriter(work, prefix, "train", shard_tokens, dtype)
    try:
        documents = {"train": 0, "val": 0}
        stats, start, doc_split = {"chars": 0}, time.perf_counter(), None
        pieces = sources.pieces(src, text_field, val_fraction, val_tokens, piece_bytes)
        bar = _bar(total, progress)
        for metas, ids, lengths in encoded(_batches(pieces, stats), tokenizer, num_proc):
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for (split, end), a, b in zip(metas, offsets[:-1], offsets[1:]):
                starts = doc_split is None
                if starts:  # a document starts: where it goes
                    doc_split = split if split != "first" else "val" if val.tokens < val_tokens else "train"
                writer = val if doc_split == "val" else train
                if starts and len(bos):
                    writer.add(bos)
                writer.add(ids[a:b])
                if end:
                    writer.add(eot)
                    documents[doc_split] += 1
                    doc_split = None
            bar.update(stats["chars"] - bar.n)
            bar.set_postfix(tokens=f"{train.tokens + val.tokens:,}")
        bar.close()
        seconds = time.perf_counter() - start
        _check_splits(src, documents, val_fraction, val_tokens)
        val.flush()
        train.flush()
        n_tokens = train.tokens + val.tokens
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "source": spec,
            "text_field": text_field,
            "split": {"val_fraction": val_fraction, "val_tokens": val_tokens},
            "tokenizer": "tokenizer.json",
            "vocab_size": tokenizer.get_vocab_size(),
            "eot": tokenizer.id_to_token(int(eot[0])),
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
        if not prepared.publish(work, out, replacing=replacing, keep_existing=keep_existing):
            shutil.rmtree(work)  # another process wrote the same cache first: ours is not needed
    except BaseException:
        val.close()
        train.close()
        shutil.rmtree(work, ignore_errors=True)  # this process's own hidden folder
        raise
    finally:
        os.close(busy)
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


def _check_splits(src, documents: dict, val_fraction: float, val_tokens: int) -> None:
    if documents["train"] + documents["val"] == 0:
        raise UserError(f"{src.option} {src.spec!r} is empty: there is no text in it.")
    if documents["train"] == 0:
        raise UserError(f"every document of {src.spec!r} went to validation: lower --val_tokens or --val_fraction.")
    if documents["val"] == 0 and (val_fraction > 0 or val_tokens > 0):
        raise UserError(
            f"none of the {documents['train']} documents of {src.spec!r} fell into the validation split: "
            f"raise --val_fraction, or set --val_tokens, or give a separate validation source."
        )


def _remove_stale_partials(out: Path) -> None:
    """The hidden folders of prepares that were killed: named so by a prepare, no longer locked
    by their writer (its flock went with its process; a pid check alone would misjudge a folder
    another host writes on a shared file system), and holding only what a prepare writes."""
    for old in out.parent.glob(f".{out.name}.partial-*"):
        pid = old.name.removeprefix(f".{out.name}.partial-").split("-")[0]
        if not (pid.isdigit() and old.is_dir()) or _alive(int(pid)):
            continue
        try:
            fd = os.open(old, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            names = [p for p in old.iterdir()]
            if all(p.is_file() and not p.is_symlink() and _written_by_prepare(p.name) for p in names):
                prepared.remove_owned(old, names)
        except OSError:  # still locked by a live writer, or not ours to judge
            pass
        finally:
            os.close(fd)


def _written_by_prepare(name: str) -> bool:
    """The names a prepare gives files in its hidden folder: shards, their temporary files
    (".NAME.bin.tmp"), meta.json and tokenizer.json and their atomic_write temporary files."""
    if prepared.SHARD_NAME.match(name) or name in ("meta.json", prepared.TOKENIZER):
        return True
    return name.endswith(".tmp") and (
        bool(prepared.SHARD_NAME.match(name[1:-4])) or name.startswith((".meta.json.", ".tokenizer.json."))
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def bpe_sample(spec, text_field: str, val_fraction: float, val_tokens: int, sample_bytes: int):
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
