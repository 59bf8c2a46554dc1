"""Token shards -> fixed-size blocks -> batches, for causal language modelling.

1. A source is tokenized into shards once (minitrain.prepare; cached for a text --data), each a
   memory-mapped array of token ids with an end-of-text id after every document.
2. Blocks: block i of a shard is ids[i*T : i*T + T + 1]; inputs are its first T ids, targets its
   last T. Consecutive blocks share one id, so every id but a shard's first is a target exactly once
   per epoch. Blocks never cross a shard's end.
3. Order: each epoch visits the shards in a seeded order and the blocks of each shard in a seeded
   order: the same sequence on every rank, for any number of ranks, and a function of (seed, epoch)
   only, so a resume at any step continues it exactly. At most two shards are mapped at a time,
   so memory does not grow with the number of shards.
"""

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from minitrain import UserError
from minitrain.data.shards import read_shard


class TokenSource(Protocol):
    """What the training loop and the evaluation need from a split of causal-LM data: text in token
    shards (`Tokens`, below) or prompt/completion examples (`completions.Examples`). Data is read
    as numbered blocks; `EpochOrder` orders them shard by shard."""

    def num_blocks(self, T: int) -> int: ...  # blocks of T targets (an example is one block)

    def blocks_per_shard(self, T: int) -> np.ndarray: ...

    def first_block(self, T: int) -> np.ndarray: ...  # the global number of each shard's first block

    def batch(self, block_ids, T: int, device=None) -> tuple[torch.Tensor, torch.Tensor]: ...  # inputs, targets

    def targets(self, block_ids, T: int) -> int: ...  # the targets these blocks' loss counts

    def lengths(self, block_ids, T: int) -> np.ndarray: ...  # each block's real input tokens (no padding)

    def target_bytes(self, n_blocks: int, T: int, table: np.ndarray) -> int: ...  # the text they stand for

    def sample_prompts(self, n: int) -> list[str] | None: ...  # prompts for the end-of-run samples

    def identity(self) -> list[str]: ...  # what identifies the content (a checkpoint records it)

    def unused(self, T: int) -> int: ...  # token ids that are never a target (shard tails)

    def close(self) -> None: ...  # the run ends: release what it holds (folder locks, mapped files)


class Tokens:
    """Token ids in one or more shards (paths, or arrays in memory), read as blocks. `holds`: the
    locks that keep the shards' folders from being replaced while these are read (kept until
    `close`, or as long as this object lives); `vocab_size` > 0: each shard's ids are checked to
    be below it when the shard is first mapped (an id past the tokenizer would index past the
    embedding)."""

    OPEN = 2  # shards kept mapped: the current one and the one a global batch may run on into

    def __init__(self, shards, *, holds=(), vocab_size: int = 0):
        self.shards, self.holds, self.vocab_size, self._checked = list(shards), tuple(holds), vocab_size, set()
        arrays = [read_shard(s) if isinstance(s, (str, Path)) else s for s in self.shards]  # headers checked
        self.sizes = [len(a) for a in arrays]
        self.itemsize = max((a.dtype.itemsize for a in arrays), default=0)  # 2: uint16 ids, 4: uint32
        self._mapped = OrderedDict()
        self._starts = {}

    def close(self) -> None:
        """Unmap the shards and release the folders' locks now, when the run ends, not whenever the
        garbage collector frees this object: in one process, a later run may replace the folder."""
        self._mapped.clear()
        for hold in self.holds:
            hold.close()

    def __len__(self) -> int:
        return sum(self.sizes)

    def blocks_per_shard(self, T: int) -> np.ndarray:
        return np.array([max(0, (n - 1) // T) for n in self.sizes], dtype=np.int64)

    def num_blocks(self, T: int) -> int:
        return int(self.blocks_per_shard(T).sum())

    def unused(self, T: int) -> int:
        """Token ids that are never a block's target: blocks do not cross a shard's end, so each
        shard's tail shorter than a block is left out (and a shard of T ids or fewer entirely)."""
        return sum(n - 1 - (n - 1) // T * T if n > 0 else 0 for n in self.sizes)

    def first_block(self, T: int) -> np.ndarray:
        """The global number of each shard's first block (blocks are numbered shard after shard)."""
        if T not in self._starts:
            self._starts[T] = np.concatenate([[0], np.cumsum(self.blocks_per_shard(T))])
        return self._starts[T]

    def shard(self, s: int) -> np.ndarray:
        if isinstance(self.shards[s], np.ndarray):
            return self.shards[s]
        if s not in self._mapped:
            self._mapped[s] = read_shard(self.shards[s])
            if self.vocab_size and s not in self._checked and len(self._mapped[s]):
                top = int(self._mapped[s].max())  # one pass over the shard, once per process
                if top >= self.vocab_size:
                    raise UserError(
                        f"{self.shards[s]} holds token id {top}, but the tokenizer has {self.vocab_size} tokens: "
                        f"the shards were made with another tokenizer; prepare them again or train with theirs."
                    )
                self._checked.add(s)
            while len(self._mapped) > self.OPEN:  # unmapping drops its pages from this process
                self._mapped.popitem(last=False)
        self._mapped.move_to_end(s)
        return self._mapped[s]

    def rows(self, block_ids, T: int) -> np.ndarray:
        """(len(block_ids), T + 1) int64: each block's ids."""
        starts = self.first_block(T)
        ids = np.asarray(block_ids, dtype=np.int64)
        which = np.searchsorted(starts, ids, side="right") - 1
        out = np.empty((len(ids), T + 1), dtype=np.int64)
        for r, (g, s) in enumerate(zip(ids.tolist(), which.tolist())):
            i = (g - int(starts[s])) * T
            out[r] = self.shard(s)[i : i + T + 1]
        return out

    def batch(self, block_ids, T: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets (B, T) int64 of the given blocks. On a CUDA `device` the
        rows go through page-locked memory and are copied asynchronously: a step's batches are
        made at its start, and their copy runs while the GPU still computes the previous step."""
        t = to_device(torch.from_numpy(self.rows(block_ids, T)), device)  # (B, T + 1)
        return t[:, :-1], t[:, 1:]

    def targets(self, block_ids, T: int) -> int:
        """The targets these blocks' loss counts: T each."""
        return len(block_ids) * T

    def lengths(self, block_ids, T: int) -> np.ndarray:
        """Each block's inputs: T, a block is always full."""
        return np.full(len(block_ids), T, dtype=np.int64)

    def sample_prompts(self, n: int) -> None:
        return None  # text: the samples start from --prompt

    def identity(self) -> list[str]:
        """Each shard's folder, name and token count, and the checksum of its ids where the folder's
        meta.json records one (a prepared folder): a shard added, removed, resized or rewritten
        changes it. In-memory arrays are hashed."""
        out, checksums = [], {}
        for s, n in zip(self.shards, self.sizes):
            if isinstance(s, np.ndarray):
                out.append(
                    f"array:{n}:{hashlib.blake2b(np.ascontiguousarray(s).tobytes(), digest_size=16).hexdigest()}"
                )
                continue
            s = Path(s)
            if s.parent not in checksums:
                checksums[s.parent] = _recorded_checksums(s.parent)
            out.append(f"{s.parent.name}/{s.name}:{n}:{checksums[s.parent].get(s.name, '')}")
        return out

    def target_bytes(self, n_blocks: int, T: int, table: np.ndarray) -> int:
        """The bytes of text that the targets of the first n_blocks blocks stand for."""
        total = 0
        for a in range(0, n_blocks, 1024):
            total += int(table[self.rows(range(a, min(n_blocks, a + 1024)), T)[:, 1:]].sum())
        return total


def _recorded_checksums(folder: Path) -> dict:
    """{shard name: ids checksum} from a prepared folder's meta.json ({} without a readable one)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        return {s["file"]: s["ids_blake2b"] for split in ("train", "val") for s in meta[split]["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class EpochOrder:
    """The blocks of one epoch in their seeded order, sliced as `order[a:b]` (global block ids):
    the shards in a permuted order, each shard's blocks permuted. Each permutation is a function
    of (seed, epoch, shard) alone and is made only when the slice reaches its shard."""

    def __init__(self, tokens: Tokens, T: int, seed: int, epoch: int):
        self.seed, self.epoch = seed, epoch
        self.starts = tokens.first_block(T)
        counts = tokens.blocks_per_shard(T)
        self.shard_order = torch.randperm(len(counts), generator=_generator(seed, epoch, -1)).numpy()
        self.counts = counts[self.shard_order]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # positions of each shard in the epoch
        self._perms = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _perm(self, k: int) -> np.ndarray:
        if k not in self._perms:
            s = int(self.shard_order[k])
            g = _generator(self.seed, self.epoch, s)
            self._perms[k] = self.starts[s] + torch.randperm(int(self.counts[k]), generator=g).numpy()
            while len(self._perms) > 2:
                self._perms.popitem(last=False)
        return self._perms[k]

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, _ = sl.indices(len(self))
        parts, p = [], start
        while p < stop:
            k = int(np.searchsorted(self.offsets, p, side="right") - 1)
            end = min(stop, int(self.offsets[k + 1]))
            parts.append(self._perm(k)[p - self.offsets[k] : end - self.offsets[k]])
            p = end
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _generator(seed: int, epoch: int, shard: int) -> torch.Generator:
    h = hashlib.blake2b(f"{seed}/{epoch}/{shard}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(h, "little") >> 1)


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


def accumulation_steps(tokens_per_step: int, grad_accum_steps: int, world_size: int, batch_size: int, T: int) -> int:
    """Micro-batches per optimizer step: derived from --tokens_per_step when it is set (it must be
    a multiple of one micro-step of every rank), else --grad_accum_steps."""
    if tokens_per_step == 0:
        return grad_accum_steps
    per_micro_step = world_size * batch_size * T
    if tokens_per_step % per_micro_step:
        raise UserError(
            f"--tokens_per_step={tokens_per_step} is not divisible by "
            f"world_size x batch_size x block_size = {per_micro_step}."
        )
    return tokens_per_step // per_micro_step


def to_device(t: torch.Tensor, device=None) -> torch.Tensor:
    """A CPU tensor on `device`: to CUDA through page-locked memory, copied asynchronously (the copy
    runs while the GPU still computes); unchanged for the CPU or no device."""
    if device is not None and torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t
