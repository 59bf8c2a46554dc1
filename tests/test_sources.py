"""minitrain/sources.py: documents of every kind of source, streamed, and the split rules."""

import gzip
import json

import pytest

from minitrain import UserError
from minitrain.data import sources


def docs(spec, **kw):
    """(split, text) of each document, its pieces joined."""
    out, parts = [], []
    for text, split, end in sources.pieces(spec, **kw):
        parts.append(text)
        if end:
            out.append((split, "".join(parts)))
            parts = []
    return out


def test_text_folders_globs_and_the_split_rules(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first document\n" * 50)
    (folder / "sub" / "b.txt").write_text("second document\n" * 50)
    (folder / "ignored.md").write_text("not text data")
    got = docs(str(folder))  # < 10 documents: each one's last lines are validation
    assert got == [
        ("train", "first document\n" * 45),
        ("val", "first document\n" * 5),
        ("train", "second document\n" * 45),
        ("val", "second document\n" * 5),
    ]
    assert docs(str(folder / "**" / "*.txt")) == got
    for i in range(12):  # 10 or more: whole files, by a fixed permutation
        (folder / f"c{i:02d}.txt").write_text(f"file {i}\n")
    many = docs(str(folder))
    assert len(many) == 14 and sum(s == "val" for s, _ in many) == round(14 * 0.1)
    assert many == docs(str(folder))
    assert {s for s, _ in docs(str(folder), val_tokens=100)} == {"first"}


def test_a_large_file_is_read_in_pieces_cut_at_safe_line_breaks(tmp_path):
    text = "".join(f"line {i}: caf\u00e9 \u2014 {'x' * (i % 7)}\r\n" if i % 5 else "\n  \n" for i in range(400))
    path = tmp_path / "big.txt"
    path.write_bytes(text.encode())
    pieces = list(sources._text_pieces(path, 64))
    assert len(pieces) > 50 and "".join(t for t, _ in pieces) == text and [e for _, e in pieces][-1]
    for t, _ in pieces[:-1]:  # each cut is right after "x\n" or "x\r\n", before a visible character
        assert t.endswith("\n") and not t.endswith(" \n") and not t.endswith("\n\n")


def test_jsonl_gz_and_parquet_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"record {i}", "id": i} for i in range(30)] + [{"text": "  "}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:10]) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[10:20])
    pq.write_table(pa.table({"body": [r["text"] for r in rows[20:]]}), tmp_path / "c.parquet")
    got = docs(str(tmp_path / "a.jsonl")) + docs(str(tmp_path / "b.jsonl.gz"))
    assert [t for _, t in got] == [f"record {i}" for i in range(20)]
    with pytest.raises(UserError, match=r"a.jsonl:1 has no 'body' field"):
        docs(str(tmp_path), text_field="body")
    got = docs(str(tmp_path / "c.parquet"), text_field="body")
    assert [t for _, t in got] == [f"record {i}" for i in range(20, 30)]
    # the records' rule: a fixed hash of the record number, the same every time
    splits = [s for s, _ in docs(str(tmp_path / "*.jsonl*"), val_fraction=0.3)]
    assert splits == [s for s, _ in docs(str(tmp_path / "*.jsonl*"), val_fraction=0.3)] and 0 < splits.count("val") < 20


@pytest.mark.parametrize(
    "line,words",
    [
        ('{"text": "fine"}\n{"text": "broken"\n', "bad.jsonl:2 is not valid JSON"),
        ('{"text": "fine"}\n\n["a list"]\n', "bad.jsonl:3 is not a JSON object"),
        ('{"body": "fine"}\n', "bad.jsonl:1 has no 'text' field"),
        ('{"text": 5}\n', "bad.jsonl:1: the 'text' field is int, not a string"),
    ],
)
def test_bad_jsonl_lines_are_named_by_file_and_line(tmp_path, line, words):
    (tmp_path / "bad.jsonl").write_text(line)
    with pytest.raises(UserError, match=words):
        docs(str(tmp_path / "bad.jsonl"))


def test_a_local_hf_data_set_is_streamed_with_its_validation_split(tmp_path, monkeypatch):
    import datasets

    hf = tmp_path / "hfdata"
    hf.mkdir()
    (hf / "train.txt").write_text("".join(f"line {i} of the training text\n" for i in range(40)))
    (hf / "validation.txt").write_text("a validation line\n" * 5)
    real = datasets.load_dataset
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(k) or real(*a, **k))
    got = docs(f"hf:{hf}")
    assert calls == [{"streaming": True}]
    assert got[:5] == [("val", "a validation line")] * 5 and len(got) == 45
    assert got[5:] == [("train", f"line {i} of the training text") for i in range(40)]
