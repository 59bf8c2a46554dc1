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
at the end, with `meta.json` (counts, tokenizer, source, split rule), `tokenizer.json` and, for a
tokenizer from a folder with settings (eos, bos, chat template), its `tokenizer_config.json`: a killed
prepare leaves no folder that training would read, and a rerun starts afresh (and removes the dead
one's hidden folder). What may replace or delete a prepared folder is minitrain.data.prepared.

With cleaning options (minitrain.options.CleanOptions) the workers also measure each piece
(minitrain.data.clean) and this process keeps or removes each document at its last piece, in
source order (minitrain.data.dedup). When copies are removed, the validation documents come first in
the stream (the source read for them, then for the training ones), so a training copy of a later
validation document is removed from training: each document is read, measured and tokenized once.

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
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from minitrain import UserError
from minitrain.atomic import atomic_write
from minitrain.data import prepared, sources
from minitrain.data.clean import NUM_PERM, analyse
from minitrain.data.dedup import RULES, Cleaner, Held, key_of
from minitrain.data.prepared import FORMAT, FORMAT_VERSION
from minitrain.data.shards import ShardWriter, dtype_for
from minitrain.options import CleanOptions

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


def cuts_keep_ids(tokenizer) -> bool:
    """Whether the ids of a text cut after a line break (between visible characters: where
    sources cuts a long document) are the ids of its pieces, concatenated. True for byte-level BPE
    (GPT-2, Llama 3, Qwen, SmolLM); False for a tokenizer that marks the start of every text
    (SentencePiece's Prepend("▁"): Llama 2, Mistral v0.1), whose every piece gains that mark."""
    for text in ("ab\ncd", "The end.\nNext line", "x\r\ny = 1"):
        cut = text.index("\n") + 1
        pieces = [tokenizer.encode(t, add_special_tokens=False).ids for t in (text[:cut], text[cut:])]
        if tokenizer.encode(text, add_special_tokens=False).ids != pieces[0] + pieces[1]:
            return False
    return True


def _work(texts: list[str], whole: list[bool], clean, tokenizer=None):
    """(ids, lengths, features) of a batch: tokenized, and measured for cleaning when `clean` is given."""
    ids, lengths = _encode(texts, tokenizer)
    return ids, lengths, analyse(texts, whole, clean) if clean is not None else None


def _batches(pieces, stats: dict):
    """Pieces grouped into batches of about BATCH_CHARS characters: (texts, [(split, end)], whole),
    `whole[i]` when piece i is a whole document."""
    texts, metas, whole, chars, after_end = [], [], [], 0, True
    for text, split, end in pieces:
        stats["cut"] += after_end and not end  # a document that comes in pieces
        texts.append(text)
        metas.append((split, end))
        whole.append(after_end and end)
        chars, after_end = chars + len(text), end
        if chars >= BATCH_CHARS:
            stats["chars"] += chars
            yield texts, metas, whole
            texts, metas, whole, chars = [], [], [], 0
    if texts:
        stats["chars"] += chars
        yield texts, metas, whole


def encoded(batches, tokenizer, num_proc: int, clean=None):
    """(texts, metas, whole, ids, lengths, features) for each batch, in order. With num_proc > 1,
    worker processes encode while this one reads and writes; at most 2 x num_proc batches are in
    flight, so a slow disk or a fast reader never piles text up in memory."""
    if num_proc == 1:
        for texts, metas, whole in batches:
            yield texts, metas, whole, *_work(texts, whole, clean, tokenizer)
        return
    # spawn, not fork: the caller may be a training process with threads (and CUDA) running. An
    # executor, not a Pool: a worker that dies (killed for memory) fails the run instead of hanging it.
    ctx = multiprocessing.get_context("spawn")
    start = dict(mp_context=ctx, initializer=_start_worker, initargs=(tokenizer.to_str(),))
    with ProcessPoolExecutor(num_proc, **start) as pool:
        pending = deque()
        try:
            for texts, metas, whole in batches:
                pending.append((texts, metas, whole, pool.submit(_work, texts, whole, clean)))
                if len(pending) >= 2 * num_proc:
                    *batch, result = pending.popleft()
                    yield *batch, *result.result()
            while pending:
                *batch, result = pending.popleft()
                yield *batch, *result.result()
        except BrokenProcessPool:
            raise UserError("a tokenizing worker process died (out of memory?); try fewer --num_proc.") from None
        finally:
            for *_, result in pending:
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
    clean: "CleanOptions | None" = None,
    keep_removed: int = 0,
) -> dict:
    """Tokenize a source into shards in `out` (which must not exist yet, or be empty, or be the
    earlier prepare that `replacing` holds); returns meta.json's content. Each document is followed
    by the end-of-text id, as in GPT-2's training (and preceded by the ids the tokenizer starts a
    text with, Llama 3's <|begin_of_text|>). If another process publishes `out` first, this one
    fails in one sentence, or, with `keep_existing` (a content-addressed cache), uses that.
    `clean`: remove copies and filter documents (minitrain.data.dedup; None: keep every document);
    `keep_removed`: write that many removed documents of each rule to removed.jsonl."""
    from minitrain.data.tokenizer import eot_id, prefix_ids, settings_of

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
    if clean is not None and clean.filters and sources.splits_lines(src, val_fraction, val_tokens):
        # a few hand-picked files, each cut into a head and a tail: a filter would judge a tail, not a document
        clean = replace(clean, filters=False)
    cleaner = Cleaner(clean, work, keep_removed) if cleans(clean) else None
    try:
        stats, start, before = {"chars": 0, "cut": 0}, time.perf_counter(), sources.signature(src)
        # validation first when copies are removed: a training copy of any validation document goes
        # (the source is then read twice, once per split: it must not change in between)
        val_first = cleaner is not None and cleaner.exact is not None and val_tokens == 0 and val_fraction > 0
        if val_first:
            pieces = itertools.chain(
                sources.pieces(src, text_field, val_fraction, 0, piece_bytes, only="val"),
                sources.pieces(src, text_field, val_fraction, 0, piece_bytes, only="train"),
            )
        else:
            pieces = sources.pieces(src, text_field, val_fraction, val_tokens, piece_bytes)
        bar = _bar(total, progress)
        batches = encoded(_batches(pieces, stats), tokenizer, num_proc, clean if cleaner else None)
        written, read = _documents(batches, (train, val), (bos, eot), val_tokens, cleaner, Held(work), bar, stats)
        bar.close()
        if stats["cut"] and not cuts_keep_ids(tokenizer):
            print(
                f"warning: {stats['cut']:,} documents longer than {piece_bytes >> 10} KB were tokenized in pieces, "
                f"and this tokenizer marks the start of every text: their ids differ from the whole "
                f"document's by that mark at each cut (one token per cut); split them into shorter documents "
                f"for exact ids.",
                file=sys.stderr,
                flush=True,
            )
        seconds = time.perf_counter() - start
        _check_splits(src, read, written, val_fraction, val_tokens)
        if sources.signature(src) != before:  # a file's size or modification time moved
            raise UserError(f"{spec} changed while it was read; prepare it again once it is complete.")
        val.flush()
        train.flush()
        removed = cleaner.report() if cleaner else {}
        n_tokens = train.tokens + val.tokens + sum(r[s]["tokens"] for r in removed.values() for s in ("train", "val"))
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
            "train": {"tokens": train.tokens, "documents": written["train"], "shards": train.shards},
            "val": {"tokens": val.tokens, "documents": written["val"], "shards": val.shards},
            "clean": None if cleaner is None else {**asdict(clean), "validation_first": val_first},
            "seconds": round(seconds, 3),
            "tokens_per_sec": round(n_tokens / max(seconds, 1e-9)),  # every document tokenized, removed ones too
            "num_proc": num_proc,
        }
        if cleaner is not None:
            meta["clean"]["removed"] = removed
            if cleaner.near:
                bands, rows = cleaner.bands_rows
                meta["clean"]["lsh"] = {"num_perm": NUM_PERM, "bands": bands, "rows": rows}
            if keep_removed:
                with atomic_write(work / prepared.REMOVED, "w") as f:
                    for rule in RULES:
                        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in cleaner.samples[rule])
        with atomic_write(work / prepared.TOKENIZER, "w") as f:
            f.write(tokenizer.to_str())
        if settings := settings_of(tokenizer):  # eos, bos, chat template: training on these shards alone finds them
            with atomic_write(work / prepared.TOKENIZER_SETTINGS, "w") as f:
                json.dump(settings, f, indent=2)
            meta["tokenizer_settings"] = prepared.TOKENIZER_SETTINGS  # written by prepare: may be replaced
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
        if cleaner is not None:
            cleaner.close()
    return meta


def cleans(clean) -> bool:
    """Whether options remove anything at all (dedup none and no filter keeps every document)."""
    if clean is None:
        return False
    filters = clean.filters and (
        clean.min_words > 0 or clean.max_non_alpha < 1 or clean.max_dup_lines < 1 or clean.max_word_length > 0
    )
    return clean.dedup != "none" or filters


def _documents(batches, writers, marks, val_tokens: int, cleaner, held: Held, bar, stats: dict):
    """Each document's ids, between the ids the tokenizer starts a text with (`marks`: (bos, eot);
    none for GPT-2) and the end-of-text id, to its split's writer, unless `cleaner` removes it
    (decided at its last piece; the ids of its earlier pieces are `held` till then). Returns
    (written, read) per split."""
    (train, val), (bos, eot) = writers, marks
    written, read, doc_split = {"train": 0, "val": 0}, {"train": 0, "val": 0}, None
    for texts, metas, whole, ids, lengths, feats in batches:
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for i, ((split, end), a, b) in enumerate(zip(metas, offsets[:-1], offsets[1:])):
            starts = doc_split is None
            if starts:  # a document starts: where it goes
                doc_split = split if split != "first" else "val" if val.tokens < val_tokens else "train"
            writer = val if doc_split == "val" else train
            if starts and cleaner is None:
                writer.add(bos)
            if cleaner is not None:
                rule = _judge(cleaner, feats, i, texts[i], whole[i], end, doc_split, read)
                if not end:
                    held.add(ids[a:b])
                    continue
                if rule is not None:  # removed: counted with the start and end ids it would have had
                    cleaner.count(rule[0], doc_split, held.n + int(b - a) + len(bos) + 1, rule[1])
                    held.drop()
                else:
                    writer.add(bos)
                    held.drain(writer)
            if cleaner is None or rule is None:
                writer.add(ids[a:b])
            if end:
                if cleaner is None or rule is None:
                    writer.add(eot)
                    written[doc_split] += 1
                read[doc_split] += 1
                doc_split = None
        bar.update(stats["chars"] - bar.n)
        bar.set_postfix(tokens=f"{train.tokens + val.tokens:,}")
    return written, read


def _judge(cleaner, feats, i, text, whole, end, split, read):
    """(rule, what it found) that removes the document whose piece i this is, or None (kept, or
    not its last piece)."""
    if not end:
        cleaner.piece(feats, i, text)
        return None
    key = key_of(split, read[split])
    doc = cleaner.doc(feats, i, text, whole)
    rule, found = cleaner.judge(doc, key)
    if rule is None:
        return None
    cleaner.sample(rule, key, doc, found)
    return rule, found


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


def _check_splits(src, documents: dict, written: dict, val_fraction: float, val_tokens: int) -> None:
    """`documents`: read from the source per split; `written`: of those, kept by the cleaning."""
    if documents["train"] + documents["val"] == 0:
        raise UserError(f"{src.option} {src.spec!r} is empty: there is no text in it.")
    if documents["train"] == 0:
        raise UserError(f"every document of {src.spec!r} went to validation: lower --val_tokens or --val_fraction.")
    if documents["val"] == 0 and (val_fraction > 0 or val_tokens > 0):
        raise UserError(
            f"none of the {documents['train']} documents of {src.spec!r} fell into the validation split: "
            f"raise --val_fraction, or set --val_tokens, or give a separate validation source."
        )
    for split, name in (("train", "training"), ("val", "validation")):
        if documents[split] and not written[split]:
            raise UserError(
                f"the cleaning removed all {documents[split]} {name} documents of {src.spec!r}: see --dedup and "
                f"the filters (--min_words, --max_non_alpha, --max_dup_lines, --max_word_length, or --filters false)."
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
    (".NAME.bin.tmp"), meta.json, the tokenizer's two files, removed.jsonl and their atomic_write
    temporary files."""
    own = ("meta.json", prepared.TOKENIZER, prepared.TOKENIZER_SETTINGS, prepared.REMOVED)
    if prepared.SHARD_NAME.match(name) or name in own:
        return True
    return name.endswith(".tmp") and (
        bool(prepared.SHARD_NAME.match(name[1:-4])) or name.startswith(tuple(f".{x}." for x in own))
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
