"""Several documents in one row: positions that restart at each document and attention that stays
inside it. Any causal model takes the same `doc_ids` (B, T) argument and calls these two functions
(GPT-2 here; a Llama-family model passes the positions to its rotary embedding instead of a
learned position table).

`doc_ids[b, t]` names the document of token t in row b; documents are runs of equal ids (packed
prompt/completion examples, the text between end-of-text ids, a row's padding). Token t then sees
tokens s <= t of its own document only, at positions counted from its document's start, which is
exactly what it would see if its document were alone in a row: packed == padded.
"""

import torch


def positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) position of each token inside its document: 0 at every document's first token."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)  # (B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]  # (B, T): a new document begins here
    # the index of the latest start at or before t, carried along the row by a running maximum
    first = torch.where(starts, idx, 0).cummax(dim=1).values  # (B, T)
    return idx - first


def attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean mask for scaled_dot_product_attention, True where query t may attend to
    key s: s <= t and both in the same document (block-diagonal and causal; shared by the heads).
    Every query sees at least itself, so no row of the softmax is empty."""
    T = doc_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()  # (T, T)
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]  # (B, 1, T, T)


def split_at(input_ids: torch.Tensor, eot: int) -> torch.Tensor:
    """(B, T) document ids of text rows in which each end-of-text id `eot` starts a new document
    (it is that document's first token, at position 0, as generation from an empty prompt starts):
    the running count of end-of-text ids. Training's --doc_mask and its validation both call this."""
    return (input_ids == eot).cumsum(dim=1)
