"""Sentence pairs -> tokenized examples -> padded batches, for BERT classification (GLUE MRPC).

Accepted local formats, in `--data_dir`:
- GLUE's MRPC files: train.tsv, dev.tsv, test.tsv (tab-separated, a header row, columns
  Quality, #1 ID, #2 ID, #1 String, #2 String; GLUE's test.tsv has `index` in place of Quality
  and no labels);
- the original release: msr_paraphrase_train.txt, msr_paraphrase_test.txt (same columns);
- any sentence-pair task as CSV or JSONL files named train / dev or validation / test with
  columns sentence1, sentence2, label (label optional in test).
MRPC's sentences contain quote characters, so the TSV files are split on tabs with no quoting.
"""

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import torch

from minitrain import UserError, first_line
from minitrain.data import sources
from minitrain.data.tokens import fingerprint

MRPC_COLUMNS = 5
INTEGER = re.compile(r"^-?[0-9]+$")  # ASCII digits only: str.isdigit and int() also take "²" and "١"


def _read_mrpc_tsv(path: Path, labelled: bool | None = None):
    """Rows of an MRPC TSV file as (sentence1, sentence2, label or None, index)."""
    lines = sources.read_lines(path, "pairs")
    if not lines:
        raise UserError(f"{path} is empty.")
    header = lines[0].split("\t")
    if len(header) != MRPC_COLUMNS:
        raise UserError(
            f"{path}:1: the header has {len(header)} columns, MRPC files have "
            f"{MRPC_COLUMNS} (Quality, #1 ID, #2 ID, #1 String, #2 String)."
        )
    if labelled is None:
        labelled = header[0].strip().lower() != "index"
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != MRPC_COLUMNS:
            raise UserError(f"{path}:{n}: expected {MRPC_COLUMNS} tab-separated columns, found {len(cols)}.")
        first = cols[0].strip()
        if not INTEGER.match(first):
            what = "label" if labelled else "index"
            raise UserError(f"{path}:{n}: the {what} {first!r} is not an integer.")
        if labelled:
            rows.append((cols[3], cols[4], int(first), len(rows)))
        else:
            rows.append((cols[3], cols[4], None, int(first)))
    if not rows:
        raise UserError(f"{path} has a header but no examples.")
    return rows


def _read_table(path: Path):
    """Rows of a CSV or JSONL file with sentence1, sentence2 and (optionally) label."""
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty.")
    records, is_json = [], path.suffix == ".jsonl"
    text = sources.read_utf8(path, "pairs")  # the encoding checked once, with the line it fails on
    if is_json:
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not a JSON object ({e.msg}).") from None
    else:
        try:
            for n, rec in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
                if None in rec or None in rec.values():
                    raise UserError(f"{path}:{n}: the row has a different number of columns than the header.")
                records.append((n, rec))
        except csv.Error as e:  # a NUL byte, an unclosed quote at the end
            raise UserError(f"{path}: not a CSV file ({e}).") from None
    rows = []
    for n, rec in records:
        if not isinstance(rec, dict) or "sentence1" not in rec or "sentence2" not in rec:
            raise UserError(f"{path}:{n}: needs the columns sentence1, sentence2 and label.")
        label = rec.get("label")
        # JSON: an integer (not true, 1.0 or "1"); CSV: text of ASCII digits (int("١") is 1 in Python)
        if is_json and label is not None and type(label) is not int:
            raise UserError(f"{path}:{n}: the label {label!r} is not an integer.")
        if not is_json and label is not None and label != "":
            if not INTEGER.match(label.strip()):
                raise UserError(f"{path}:{n}: the label {label!r} is not an integer.")
            label = int(label)
        label = None if label == "" else label
        for key in ("sentence1", "sentence2"):
            sources.check_text(rec[key], f"{path}:{n}", key)
        rows.append((rec["sentence1"], rec["sentence2"], label, len(rows)))
    if not rows:
        raise UserError(f"{path} has no examples.")
    return rows


def _find(data_dir: Path, *names):
    for name in names:
        for suffix in ("", ".tsv", ".csv", ".jsonl", ".txt"):
            p = data_dir / f"{name}{suffix}"
            if p.is_file():
                return p
    return None


def read_pairs_file(path: Path):
    """Rows (sentence1, sentence2, label or None, index) of one TSV, MSR .txt, CSV or JSONL file."""
    if path.suffix in (".tsv", ".txt"):
        return _read_mrpc_tsv(path)
    return _read_table(path)


def load_local(data_dir, val_fraction: float) -> dict:
    """{'train': rows, 'validation': rows, 'test': rows or None}; rows are
    (sentence1, sentence2, label, index). Without a dev file, a fixed share of train (chosen by a
    permutation with a fixed seed, independent of the training seed) becomes validation."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"--data_dir={data_dir} is not a folder.")
    train = _find(data_dir, "train", "msr_paraphrase_train")
    if train is None:
        raise UserError(
            f"--data_dir={data_dir} has no training file (train.tsv, "
            f"msr_paraphrase_train.txt, train.csv or train.jsonl)."
        )
    splits = {"train": read_pairs_file(train)}
    dev = _find(data_dir, "dev", "validation", "valid")
    test = _find(data_dir, "test", "msr_paraphrase_test")
    splits["test"] = read_pairs_file(test) if test else None
    if dev is not None:
        splits["validation"] = read_pairs_file(dev)
    else:
        splits["train"], splits["validation"] = carve_validation(splits["train"], val_fraction)
    for name in ("train", "validation"):
        if any(r[2] is None for r in splits[name]):
            raise UserError(f"the {name} split of {data_dir} has examples without a label.")
    return splits


def carve_validation(rows, val_fraction: float):
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction={val_fraction} must be between 0 and 1.")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1234)).tolist()
    n_val = max(1, round(len(rows) * val_fraction))
    if n_val >= len(rows):
        raise UserError("the training file is too small to carve a validation split from it.")
    val = set(order[:n_val])
    return (
        [r for i, r in enumerate(rows) if i not in val],
        [r for i, r in enumerate(rows) if i in val],
    )


def load_hub_mrpc() -> dict:
    """GLUE MRPC from the Hugging Face hub (nyu-mll/glue, config mrpc)."""
    try:
        import datasets

        ds = datasets.load_dataset("nyu-mll/glue", "mrpc")
    except Exception as e:
        raise UserError(
            f"could not load GLUE MRPC from the Hugging Face hub ({first_line(e, 160)}); pass "
            f"--data_dir=DIR with train.tsv / dev.tsv (or msr_paraphrase_*.txt)."
        ) from None

    def rows(split):
        return [
            (
                r["sentence1"],
                r["sentence2"],
                None if r["label"] < 0 else int(r["label"]),
                int(r["idx"]),
            )
            for r in ds[split]
        ]

    return {"train": rows("train"), "validation": rows("validation"), "test": rows("test")}


def count_labels(splits: dict) -> int:
    """N, for labels 0..N-1 as train and validation define them; refuses other labels in test."""
    labels = [r[2] for r in splits["train"] + splits["validation"]]
    num_labels = max(labels) + 1
    if min(labels) < 0 or num_labels < 2:
        raise UserError(f"labels must be integers 0..N-1 with N >= 2; found {sorted(set(labels))}.")
    trained = {r[2] for r in splits["train"]}
    for name in ("validation", "test"):
        unseen = sorted({r[2] for r in splits[name] or [] if r[2] is not None} - trained)
        if unseen and (name == "validation" or max(unseen) < num_labels):
            raise UserError(
                f"the {name} split has label(s) {unseen} that the training split never has; "
                f"a classifier cannot learn them."
            )
    test_labels = [r[2] for r in splits["test"] or [] if r[2] is not None]
    if test_labels and not 0 <= min(test_labels) <= max(test_labels) < num_labels:
        raise UserError(
            f"the test split has labels {sorted(set(test_labels))}, outside the "
            f"0..{num_labels - 1} that train and validation define."
        )
    return num_labels


def tokenize_pairs(rows, tokenizer, max_length: int) -> dict:
    """Pair-encode with the model's tokenizer ([CLS] a [SEP] b [SEP], longest-first truncation),
    through datasets.map(batched=True). Returns lists of ids/type ids, labels and indices."""
    import datasets

    datasets.disable_progress_bars()
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, strategy="longest_first")

    def encode(batch):
        enc = tokenizer.encode_batch(list(zip(batch["s1"], batch["s2"])))
        return {"input_ids": [e.ids for e in enc], "token_type_ids": [e.type_ids for e in enc]}

    ds = datasets.Dataset.from_dict({"s1": [r[0] for r in rows], "s2": [r[1] for r in rows]})
    ds = ds.map(encode, batched=True, remove_columns=["s1", "s2"])
    return {
        "input_ids": ds["input_ids"][:],
        "token_type_ids": ds["token_type_ids"][:],
        "labels": [r[2] if r[2] is not None else -1 for r in rows],
        "index": [r[3] for r in rows],
    }


def collate(examples: dict, ids, pad_id: int, multiple_of: int = 1) -> dict:
    """Pad the chosen examples to the longest of them (rounded up to `multiple_of`)."""
    longest = max(len(examples["input_ids"][i]) for i in ids)
    T = -(-longest // multiple_of) * multiple_of
    B = len(ids)
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    types = np.zeros((B, T), dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    for row, i in enumerate(ids):
        n = len(examples["input_ids"][i])
        input_ids[row, :n] = examples["input_ids"][i]
        types[row, :n] = examples["token_type_ids"][i]
        mask[row, :n] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(types),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.tensor([examples["labels"][i] for i in ids]),
    }


def epoch_order(examples: dict, seed: int, epoch: int, group_by_length: bool, batch_size: int) -> list[int]:
    """A seeded permutation of the examples. With group_by_length, the permutation is cut into
    chunks of 50 batches and each chunk sorted by length (longest first), so a batch holds
    similar lengths and pads little, while the order of chunks stays random."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(examples["input_ids"]), generator=g).tolist()
    if group_by_length:
        chunk = 50 * batch_size
        lengths = examples["input_ids"]
        order = [
            i for s in range(0, len(order), chunk) for i in sorted(order[s : s + chunk], key=lambda i: -len(lengths[i]))
        ]
    return order


def identity(name: str, splits: dict) -> dict:
    """What an MRPC run trains and validates on, as a checkpoint records it: a fingerprint of every
    pair of every split."""
    return {"data": name, "val_data": "", "fingerprint": fingerprint(*(repr(rows) for rows in splits.values()))}
