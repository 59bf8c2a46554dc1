"""Token shards in llm.c's `.bin` layout, the format `prepare` writes and training memory-maps.

A shard is a header of 256 little-endian int32 followed by the token ids:
- header[0] the magic number, header[1] the version, header[2] the number of tokens;
- 20240520 / 1: uint16 ids (GPT-2's 50,257 tokens fit);  20240801 / 7: uint32 ids (larger vocabularies).
The rest of the header is zero. These are the files llm.c's and build-nanogpt's `fineweb.py` write,
so their folders train here too. A folder holds `NAME_val_NNNNNN.bin` and `NAME_train_NNNNNN.bin`
(llm.c's unnumbered `NAME_val.bin` / `NAME_train.bin` too).
"""

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from minitrain import UserError
from minitrain.atomic import atomic_write, digest

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
FORMATS = {20240520: (1, np.uint16), 20240801: (7, np.uint32)}  # magic: (version, token dtype)


def dtype_for(vocab_size: int):
    """uint16 when every id fits (half the disk and the page cache), else uint32."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def write_shard(path, ids: np.ndarray) -> str:
    """One shard from ids in memory, atomically: a reader sees the whole file or none (a killed
    writer leaves a temporary file that no shard pattern matches). Returns the file's checksum."""
    magic = 20240520 if ids.dtype == np.uint16 else 20240801
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = magic, FORMATS[magic][0], len(ids)
    raw = header.tobytes() + np.ascontiguousarray(ids).astype(ids.dtype.newbyteorder("<"), copy=False).tobytes()
    with atomic_write(path) as f:
        f.write(raw)
    return digest(raw)


def read_shard(path) -> np.ndarray:
    """A shard's token ids, memory-mapped (nothing is read until used), after checking its header
    and that the file holds exactly the tokens the header counts."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"the token shard {path} cannot be read ({e.strerror}).") from None
    if len(header) < HEADER_INTS or int(header[0]) not in FORMATS:
        raise UserError(
            f"{path} is not a token shard: its header does not start with the magic number 20240520 or 20240801."
        )
    version, dtype = FORMATS[int(header[0])]
    if int(header[1]) != version:
        raise UserError(f"{path} has shard format version {int(header[1])}; this reader knows version {version}.")
    n = int(header[2])
    expected = HEADER_BYTES + n * np.dtype(dtype).itemsize
    if size != expected:
        raise UserError(
            f"{path} is truncated or damaged: its header counts {n:,} tokens ({expected:,} bytes) but the file "
            f"has {size:,} bytes."
        )
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=HEADER_BYTES, shape=(n,))


# NAME_SPLIT_NNNNNN.bin (or NAME_SPLIT.bin): the split is the marker right before the index, so a
# NAME that holds "_train_" or "_val_" itself (wiki_train_2023_val_000000.bin) is not misread
SHARD_FILE = re.compile(r"(.+)_(train|val)(_\d+)?\.bin")


def shard_split(name: str) -> str | None:
    """'train' or 'val' for a shard's file name, None for any other file."""
    m = SHARD_FILE.fullmatch(name)
    return m.group(2) if m else None


def find_shards(folder) -> tuple[list[Path], list[Path]]:
    """(train shards, validation shards) of a folder, each in name order."""
    found = {"train": [], "val": []}
    for p in sorted(Path(folder).glob("*.bin")):
        if shard_split(p.name) and p.is_file():
            found[shard_split(p.name)].append(p)
    return found["train"], found["val"]


def is_shard_folder(spec: str) -> bool:
    """A folder with llm.c token shards of either split (a folder of validation shards is one too)."""
    folder = Path(os.path.expanduser(spec))
    return folder.is_dir() and any(shard_split(p.name) for p in folder.glob("*.bin"))


class ShardWriter:
    """One split's token ids, streamed into shards of `shard_tokens` ids
    (`{prefix}_{split}_{index:06d}.bin`): ids go to a hidden temporary file as they come, the
    header is filled in when the shard is complete, and the file is renamed into place. Memory
    does not depend on the shard size or the corpus: nothing is buffered but the ids given."""

    def __init__(self, folder: Path, prefix: str, split: str, shard_tokens: int, dtype):
        self.folder, self.prefix, self.split = Path(folder), prefix, split
        self.shard_tokens, self.dtype = shard_tokens, np.dtype(dtype).newbyteorder("<")
        self.file, self.filled, self.tokens, self.shards = None, 0, 0, []

    def add(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.file is None:
                self.path = self.folder / f"{self.prefix}_{self.split}_{len(self.shards):06d}.bin"
                self.tmp = self.path.with_name(f".{self.path.name}.tmp")
                self.file = open(self.tmp, "wb")
                self.file.write(bytes(HEADER_BYTES))  # filled in when the shard is complete
                self.hash = hashlib.blake2b(digest_size=16)
            take = min(len(ids), self.shard_tokens - self.filled)
            raw = ids[:take].astype(self.dtype).tobytes()
            self.file.write(raw)
            self.hash.update(raw)
            self.filled, self.tokens, ids = self.filled + take, self.tokens + take, ids[take:]
            if self.filled == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        """Complete the current shard: header, fsync, rename (atomic: a reader never sees half)."""
        if self.file is None:
            return
        magic = 20240520 if self.dtype.itemsize == 2 else 20240801
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[:3] = magic, FORMATS[magic][0], self.filled
        self.file.seek(0)
        self.file.write(header.tobytes())
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        self.shards.append({"file": self.path.name, "tokens": int(self.filled), "ids_blake2b": self.hash.hexdigest()})
        self.file, self.filled = None, 0

    def close(self) -> None:
        """Drop an unfinished shard (after a failure)."""
        if self.file is not None:
            self.file.close()
            os.unlink(self.tmp)
            self.file = None


def ids_digest(path) -> str:
    """The checksum of a shard's ids (its body after the header), as ShardWriter records it."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
