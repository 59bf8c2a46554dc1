"""minitrain/pairs.py: sentence-pair formats, bad rows, length grouping."""

import pytest

from minitrain import UserError
from minitrain.data import pairs
from tests.mrpc_data import make_pairs, write_csv, write_glue, write_jsonl, write_msr

TRAIN, DEV, TEST = make_pairs(256, 0), make_pairs(64, 1), make_pairs(40, 2)


def test_every_format_gives_the_same_examples(tmp_path):
    glue = pairs.load_local(write_glue(tmp_path / "glue", TRAIN, DEV), 0.1)
    csv_ = pairs.load_local(write_csv(tmp_path / "csv", TRAIN, DEV), 0.1)
    jsonl = pairs.load_local(write_jsonl(tmp_path / "jsonl", TRAIN, DEV), 0.1)
    msr = pairs.load_local(write_msr(tmp_path / "msr", TRAIN + DEV, TEST), 0.2)
    for split in ("train", "validation"):
        assert glue[split] == csv_[split] == jsonl[split]
    assert [r[:3] for r in glue["train"]] == TRAIN
    assert any('"' in r[1] for r in glue["train"])  # quote characters survive (no CSV quoting)
    # no dev file: a deterministic validation split is carved from train
    assert len(msr["validation"]) == round(0.2 * len(TRAIN + DEV))
    assert msr == pairs.load_local(tmp_path / "msr", 0.2)
    assert [r[:3] for r in msr["test"]] == TEST


def test_bad_rows_fail_with_file_and_line(tmp_path):
    folder = write_glue(tmp_path / "bad", TRAIN[:5], DEV[:5])
    lines = (folder / "train.tsv").read_text().splitlines(keepends=True)
    (folder / "train.tsv").write_text("".join(lines[:3]) + "1\tonly three\tcolumns\n")
    with pytest.raises(UserError, match=r"train.tsv:4: expected 5 tab-separated columns, found 3"):
        pairs.load_local(folder, 0.1)
    (folder / "train.tsv").write_text("".join(lines[:2]) + "yes\t1\t2\ta\tb\n")
    with pytest.raises(UserError, match=r"train.tsv:3: the label 'yes' is not an integer"):
        pairs.load_local(folder, 0.1)
    (folder / "train.tsv").write_text("")
    with pytest.raises(UserError, match=r"train.tsv is empty"):
        pairs.load_local(folder, 0.1)
    (tmp_path / "j").mkdir()
    (tmp_path / "j/train.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "label": 1.5}\n')
    with pytest.raises(UserError, match=r"train.jsonl:1: the label 1.5 is not an integer"):
        pairs.load_local(tmp_path / "j", 0.5)


def test_group_by_length_pads_less_and_keeps_every_example(minilm_dir):
    from minitrain.data.tokenizer import load_tokenizer

    ex = pairs.tokenize_pairs([(a, b, y, i) for i, (a, b, y) in enumerate(TRAIN)], load_tokenizer(minilm_dir), 128)

    def padded_tokens(order):
        return sum(
            collated["input_ids"].numel()
            for collated in (pairs.collate(ex, order[i : i + 16], 0) for i in range(0, len(order), 16))
        )

    plain = pairs.epoch_order(ex, 0, 0, False, 16)
    grouped = pairs.epoch_order(ex, 0, 0, True, 16)
    assert sorted(plain) == sorted(grouped) == list(range(len(TRAIN)))
    assert padded_tokens(grouped) < padded_tokens(plain)
