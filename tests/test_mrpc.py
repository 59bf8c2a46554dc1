"""train_mrpc.py: data formats, metrics, fine-tuning the real MiniLM, resume, errors."""

import json
import subprocess

import pytest
import torch
import transformers

import train_mrpc
from tests.helpers import PY, ROOT, metrics
from tests.mrpc_data import make_pairs, write_glue, write_msr

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
        dtype="fp32",  # resume and equivalence compare exact losses: no autocast, whatever the CPU has
    )
    a.update(kw)
    return train_mrpc.Config(**a)


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
    from minitrain.models.bert import BertForSequenceClassification

    mine = BertForSequenceClassification.from_pretrained(tmp_path / "run/final").eval()
    ids = torch.tensor([[101, 2023, 2003, 102, 2008, 102]])
    with torch.no_grad():
        diff = (ours.eval()(input_ids=ids).logits - mine(ids)[0]).abs().max().item()
    assert diff <= 1e-5


def test_labelled_test_split_is_scored_as_transformers_scores_the_export(minilm_dir, tmp_path):
    data = write_msr(tmp_path / "msr", TRAIN, TEST)
    result = train_mrpc.main(args(minilm_dir, data, tmp_path / "run", epochs=1))
    # the exported best model, scored independently: transformers' model and tokenizer, padded batch
    ref = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "run/final").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "run/final")
    enc = tok([a for a, _, _ in TEST], [b for _, b, _ in TEST], padding=True, return_tensors="pt")
    with torch.no_grad():
        preds = ref(**enc).logits.argmax(-1).tolist()
    labels = [y for _, _, y in TEST]
    tp = sum(p == y == 1 for p, y in zip(preds, labels))
    wrong = sum(p != y for p, y in zip(preds, labels))
    assert result["test"]["accuracy"] == pytest.approx(1 - wrong / len(TEST))
    assert result["test"]["f1"] == pytest.approx(2 * tp / (2 * tp + wrong))


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
    # resumed at step 5 with --log_interval 4: step 8 logs the mean of steps 6-8, not their sum / 4
    resume = str(tmp_path / "full/ckpt-0000005.pt")
    train_mrpc.main(args(minilm_dir, data, tmp_path / "every4", resume=resume, **dict(kw, log_interval=4)))
    every4 = metrics(tmp_path / "every4", "train_loss")
    assert sorted(every4) == [8, 12]
    assert every4[8] == pytest.approx((full[6] + full[7] + full[8]) / 3, rel=1e-6)
    assert every4[12] == pytest.approx(sum(full[s] for s in (9, 10, 11, 12)) / 4, rel=1e-6)


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


@pytest.mark.parametrize(
    "break_it,message",
    [
        (
            lambda d: (d / "dev.tsv").write_text((d / "dev.tsv").read_text() + "1\tx\ty\n"),
            "dev.tsv:66: expected 5 tab-separated columns, found 3",
        ),
        (
            lambda d: (d / "test.tsv").write_text((d / "test.tsv").read_text().replace("\n1\t", "\n7\t", 1)),
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


def test_metric_patience_and_evaluate_cli_on_the_export(minilm_dir, tmp_path):
    """--metric loss picks the epoch with the lowest validation loss; --patience stops after the
    epochs without improvement; python -m minitrain.evaluate on the export (and on best.pt) gives
    the test scores the run printed."""
    from minitrain.tools import evaluate

    data = write_msr(tmp_path / "msr", TRAIN[:128], TEST)
    kw = dict(epochs=4, metric="loss", patience=1, min_delta=10.0, keep_last=0)
    result = train_mrpc.main(args(minilm_dir, data, tmp_path / "run", **kw))
    assert [r["epoch"] for r in result["history"]] == [1, 2] and result["stopped_early"]
    assert result["best"] == min(result["history"], key=lambda r: r["val_loss"])
    for model in ("final", "best.pt"):
        cfg = evaluate.EvalConfig(
            dtype="fp32", task="mrpc", model=str(tmp_path / "run" / model), data_dir=str(data), split="test"
        )
        got = evaluate.main(cfg)
        assert got["pairs"] == len(TEST)
        assert got["accuracy"] == result["test"]["accuracy"] and got["f1"] == result["test"]["f1"], (got, result)
    again = train_mrpc.main(args(minilm_dir, data, tmp_path / "run", resume="auto", **kw))
    assert again["stopped_early"] and again["step"] == result["step"]
    assert (tmp_path / "run/report.png").is_file()
