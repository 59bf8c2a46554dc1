"""How training micro-batches are laid out in rows: padded, packed, or split at end-of-text.

- Padded (prompt/completion data, --packing=false): one example per row, padded to the longest
  example of the micro-batch (completions.Examples.batch).
- Packed (prompt/completion data, the default): the B examples of a micro-batch are placed into as
  few rows of T tokens as first-fit decreasing finds, each example's positions restarting at 0 and
  its attention kept inside it (`doc_ids`, read by the model: models/documents.py). A step holds
  the same examples either way, so the loss and the update are the same; only the padding's
  computation goes. The placement is a function of the micro-batch's example ids alone, which are
  a function of (seed, epoch, position): a resume and any number of processes pack identically.
- Text (--doc_mask): blocks are full already; with --doc_mask each end-of-text id starts a new
  document (document ids are the running count of end-of-text ids), so attention never reaches
  into the previous document and positions restart there, as nanochat and Llama 3 pre-train.

Evaluation and generation never go through here: validation stays padded (one example per row);
text validation of a --doc_mask run splits its blocks at end-of-text the same way
(models/documents.split_at, training/evaluate.lm_loss).
"""

from typing import NamedTuple

import numpy as np
import torch

from minitrain import UserError
from minitrain.data.completions import IGNORE, Examples
from minitrain.data.tokens import TokenSource, to_device
from minitrain.models import documents


class Batch(NamedTuple):
    input_ids: torch.Tensor  # (R, L)
    labels: torch.Tensor  # (R, L): the next token, -100 on prompts and padding
    doc_ids: torch.Tensor | None  # (R, L): each token's document in its row; None: one per row


def first_fit(lengths, capacity: int) -> list[list[int]]:
    """Bins of indices into `lengths` whose sums fit `capacity`: first-fit decreasing (longest
    first, each into the first row with room; ties keep their order), which uses at most
    11/9 OPT + 1 rows (Johnson 1973). Deterministic: a function of the lengths alone."""
    order = sorted(range(len(lengths)), key=lambda j: -int(lengths[j]))
    bins, room = [], []
    for j in order:
        n = int(lengths[j])
        b = next((b for b, free in enumerate(room) if n <= free), len(bins))
        if b == len(bins):
            bins.append([])
            room.append(capacity)
        bins[b].append(j)
        room[b] -= n
    return bins


def pack(examples: Examples, ids, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inputs, targets and document ids (R, L) int64 of examples `ids` packed into R rows of at
    most T tokens (L: the fullest row). The rest of a row is padding (end-of-text inputs, -100
    targets) and a document of its own. Document ids are None when every row holds one example:
    then the plain causal path is exact (padding sits at the end)."""
    ids = [int(i) for i in ids]
    bins = first_fit(examples.lengths(ids, T), T)
    parts = [[examples.example(ids[j]) for j in b] for b in bins]
    L = max(sum(len(x) for x, _ in row) for row in parts)
    x = np.full((len(bins), L), examples.eot, dtype=np.int64)
    y = np.full((len(bins), L), IGNORE, dtype=np.int64)
    doc = np.empty((len(bins), L), dtype=np.int64)
    for r, row in enumerate(parts):
        at = 0
        for d, (inputs, targets) in enumerate(row):
            x[r, at : at + len(inputs)], y[r, at : at + len(inputs)], doc[r, at : at + len(inputs)] = inputs, targets, d
            at += len(inputs)
        doc[r, at:] = len(row)  # the padding
    return x, y, (None if all(len(b) == 1 for b in bins) else doc)


class Layout:
    """The training rows of a run (made once, from the options): `batch` makes a micro-batch's
    rows, `count` the real tokens and the computed ones (rows x their length) of a window."""

    def __init__(self, T: int, packing: bool | None, doc_mask: bool, is_examples: bool, eot: int | None):
        if packing and not is_examples:
            raise UserError(
                "--packing=true needs prompt/completion data (text blocks are full already); "
                "--doc_mask=true keeps the documents of a text block apart."
            )
        if doc_mask and is_examples:
            raise UserError(
                "--doc_mask=true is for text data; prompt/completion examples are kept apart already "
                "(--packing gives each example its own attention)."
            )
        if doc_mask and eot is None:
            raise UserError("--doc_mask=true needs an <|endoftext|> token to split documents; this tokenizer has none.")
        self.T, self.is_examples = T, is_examples
        self.packing = is_examples if packing is None else packing  # auto: on for prompt/completion data
        self.eot = eot if doc_mask else None

    def describe(self) -> str:
        """The layout in a few words, for the log."""
        if self.packing:
            return f"examples packed into rows of {self.T} tokens (first-fit decreasing), attention per example"
        if self.is_examples:
            return "one example per row, padded to the longest of its micro-batch (--packing=false)"
        if self.eot is not None:
            return f"blocks of {self.T} tokens; attention and positions restart at each end-of-text (--doc_mask)"
        return f"blocks of {self.T} tokens, attention across documents (as GPT-2 trained)"

    def batch(self, source: TokenSource, ids, device=None) -> Batch:
        """The rows of the examples or blocks `ids`, on `device`."""
        if self.packing:
            x, y, doc = pack(source, ids, self.T)
            doc = None if doc is None else to_device(torch.from_numpy(doc), device)
            return Batch(to_device(torch.from_numpy(x), device), to_device(torch.from_numpy(y), device), doc)
        x, y = source.batch(ids, self.T, device)
        doc = documents.split_at(x, self.eot) if self.eot is not None else None  # on the device
        return Batch(x, y, doc)

    def count(self, source: TokenSource, ids, B: int) -> tuple[int, int]:
        """(real input tokens, computed tokens: rows x row length) of the micro-batches of B
        consecutive `ids` (a step's window: every rank's micro-batches), worked out on the host
        from the lengths alone, as `batch` lays them out: no device sync."""
        real = computed = 0
        for a in range(0, len(ids), B):
            n = source.lengths(ids[a : a + B], self.T)
            real += int(n.sum())
            if self.packing:
                bins = first_fit(n, self.T)
                computed += len(bins) * max(int(n[b].sum()) for b in bins)
            else:
                computed += len(n) * int(n.max())
        return real, computed
