"""train_mrpc.py: data formats, metrics, fine-tuning the real MiniLM, resume, errors."""

import json
import subprocess

import pytest
import torch
import transformers

import train_mrpc
from minitrain import UserError, pairs
from minitrain.metrics import accuracy, classification_metrics, confusion, f1, macro_f1
from tests.helpers import PY, ROOT, metrics
from tests.mrpc_data import make_pairs, write_csv, write_glue, write_jsonl, write_msr

TRAIN, DEV, TEST = make_pairs(256, 0), make_pairs(64, 1), make_pairs(40, 2)


def args(model, data_dir, out_dir, **kw):
    a = dict(
        model=str(model),
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        batch_size=16,
        lr=1e-4,
        epochs=2,
        progress=False,
        log_interval=1,
    )
    a.update(kw)
    return train_mrpc.Config(**a)


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


def test_metrics_against_hand_computed_values():
    preds, labels = [1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0]
    # tp=2, fp=1, fn=1: F1 = 2*2 / (2*2 + 1 + 1) = 2/3; accuracy 4/6
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    assert f1(preds, labels) == pytest.approx(2 / 3)
    m = classification_metrics(confusion(preds, labels, 2))
    assert m["accuracy"] == pytest.approx(4 / 6) and m["f1"] == pytest.approx(2 / 3)
    # no positive predictions at all: F1 is 0, not a division by zero
    assert f1([0, 0, 0], [1, 0, 1]) == 0.0
    assert classification_metrics(confusion([0, 0, 0], [1, 0, 1], 2))["f1"] == 0.0
    # three classes: macro-F1 is the mean of the per-class F1s
    p3, y3 = [0, 1, 2, 2, 1], [0, 1, 2, 1, 1]
    want = (1.0 + 0.8 + 2 / 3) / 3
    assert macro_f1(p3, y3, 3) == pytest.approx(want)
    assert classification_metrics(confusion(p3, y3, 3))["macro_f1"] == pytest.approx(want)


def test_fine_tuning_minilm_reaches_90_percent(minilm_dir, tmp_path):
    data = write_glue(tmp_path / "glue", TRAIN, DEV, TEST, unlabelled_test=True)
    result = train_mrpc.main(args(minilm_dir, data, tmp_path / "run", epochs=3))
    epochs = [r["epoch"] for r in result["history"]]
    assert epochs == [1, 2, 3]
    assert result["best"]["accuracy"] > 0.9
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    per_epoch = [r for r in rows if "epoch" in r]
    assert [r["epoch"] for r in per_epoch] == [1, 2, 3]
    assert all({"val_loss", "accuracy", "f1"} <= r.keys() for r in per_epoch)
    preds = (tmp_path / "run/test_predictions.tsv").read_text().splitlines()
    assert preds[0] == "index\tprediction" and len(preds) == len(TEST) + 1
    # the exported best model loads in transformers with the same logits
    ours = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "run/final")
    from minitrain.bert import BertForSequenceClassification

    mine = BertForSequenceClassification.from_pretrained(tmp_path / "run/final").eval()
    ids = torch.tensor([[101, 2023, 2003, 102, 2008, 102]])
    with torch.no_grad():
        diff = (ours.eval()(input_ids=ids).logits - mine(ids)[0]).abs().max().item()
    assert diff <= 1e-5


def test_labelled_test_split_is_scored(minilm_dir, tmp_path):
    data = write_msr(tmp_path / "msr", TRAIN, TEST)
    result = train_mrpc.main(args(minilm_dir, data, tmp_path / "run", epochs=1))
    assert 0.0 <= result["test"]["accuracy"] <= 1.0 and "f1" in result["test"]


def test_resume_mid_epoch_reproduces_losses(minilm_dir, tmp_path):
    data = write_glue(tmp_path / "glue", TRAIN[:96], DEV[:32])
    kw = dict(epochs=1, batch_size=8, save_interval=5, keep_last=0, dtype="fp32")
    train_mrpc.main(args(minilm_dir, data, tmp_path / "full", **kw))
    train_mrpc.main(
        args(
            minilm_dir,
            data,
            tmp_path / "resumed",
            resume=str(tmp_path / "full/ckpt-0000005.pt"),
            **kw,
        )
    )
    full = metrics(tmp_path / "full", "train_loss")
    resumed = metrics(tmp_path / "resumed", "train_loss")
    assert sorted(resumed) == list(range(6, 13))
    assert all(full[s] == resumed[s] for s in resumed), (full, resumed)


def test_offline_hub_data_fails_in_one_sentence(minilm_dir, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [PY, str(ROOT / "train_mrpc.py"), f"--model={minilm_dir}", f"--out_dir={tmp_path / 'x'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 2, out.stderr
    assert "--data_dir" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_group_by_length_pads_less_and_keeps_every_example(minilm_dir):
    from minitrain.tokenizer import load_tokenizer

    ex = pairs.tokenize_pairs(
        [(a, b, y, i) for i, (a, b, y) in enumerate(TRAIN)], load_tokenizer(minilm_dir), 128
    )

    def padded_tokens(order):
        return sum(
            collated["input_ids"].numel()
            for collated in (
                pairs.collate(ex, order[i : i + 16], 0) for i in range(0, len(order), 16)
            )
        )

    plain = pairs.epoch_order(ex, 0, 0, False, 16)
    grouped = pairs.epoch_order(ex, 0, 0, True, 16)
    assert sorted(plain) == sorted(grouped) == list(range(len(TRAIN)))
    assert padded_tokens(grouped) < padded_tokens(plain)


@pytest.mark.parametrize(
    "break_it,message",
    [
        (
            lambda d: (d / "dev.tsv").write_text((d / "dev.tsv").read_text() + "1\tx\ty\n"),
            "dev.tsv:66: expected 5 tab-separated columns, found 3",
        ),
        (
            lambda d: (d / "test.tsv").write_text(
                (d / "test.tsv").read_text().replace("\n1\t", "\n7\t", 1)
            ),
            "the test split has labels [0, 1, 7], outside the 0..1",
        ),
        (lambda d: (d / "train.tsv").write_text(""), "train.tsv is empty"),
    ],
)
def test_bad_mrpc_input_exits_2_with_one_sentence(minilm_dir, tmp_path, break_it, message):
    data = write_glue(tmp_path / "glue", TRAIN[:20], DEV, TEST)
    break_it(data)
    out = subprocess.run(
        [
            PY,
            str(ROOT / "train_mrpc.py"),
            f"--model={minilm_dir}",
            f"--data_dir={data}",
            f"--out_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
