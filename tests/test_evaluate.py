"""minitrain/evaluate.py: the validation loss and the classifier metrics, against direct computation."""

import math

import pytest
import torch

from minitrain.data import pairs
from minitrain.data import tokens as data
from minitrain.data.hellaswag import read_hellaswag
from minitrain.data.tokenizer import load_tokenizer
from minitrain.models.bert import BertForSequenceClassification
from minitrain.models.gpt2 import GPT2, GPT2Config
from minitrain.tools import evaluate as evaluate_tool
from minitrain.training import evaluate
from minitrain.training.dist import Dist
from minitrain.training.loader import load_model
from minitrain.training.metrics import classification_metrics


def test_lm_loss_is_the_mean_over_every_target_of_the_blocks():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2, embd_pdrop=0.5))
    tokens = torch.randint(0, 50, (8 * 7 + 1,)).numpy()
    model.train()
    got = evaluate.lm_loss(
        model, data.Tokens([tokens]), n_blocks=5, block_size=8, batch_size=2, world=Dist(), dtype=torch.float32
    )
    assert model.training  # left as it was found
    # by hand: the first 5 blocks, inputs tokens[i*8 : i*8+8], targets one position later
    model.eval()
    x = torch.stack([torch.from_numpy(tokens[i * 8 : i * 8 + 8].astype("int64")) for i in range(5)])
    y = torch.stack([torch.from_numpy(tokens[i * 8 + 1 : i * 8 + 9].astype("int64")) for i in range(5)])
    with torch.no_grad():
        logits, _ = model(x)
        want = torch.nn.functional.cross_entropy(logits[..., :50].reshape(-1, 50), y.reshape(-1)).item()
    assert abs(got - want) <= 1e-6
    assert data.Tokens([tokens]).num_blocks(8) == 7


def test_lm_loss_with_doc_mask_scores_each_document_alone():
    """A --doc_mask run's validation: each block split at end-of-text ids equals each document of
    the block scored in a row of its own (from position 0), their losses summed over all targets."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2)).eval()
    eot = 49
    tokens = torch.randint(0, 49, (8 * 5 + 1,))
    tokens[[3, 9, 10, 20, 31, 32, 33]] = eot  # documents of 0-6 tokens, one across a block's end
    tokens = tokens.numpy()
    args = dict(n_blocks=5, block_size=8, batch_size=2, world=Dist(), dtype=torch.float32)
    got = evaluate.lm_loss(model, data.Tokens([tokens]), doc_eot=eot, **args)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(5):
            x = torch.from_numpy(tokens[i * 8 : i * 8 + 8].astype("int64"))
            y = torch.from_numpy(tokens[i * 8 + 1 : i * 8 + 9].astype("int64"))
            starts = [0] + [t for t in range(1, 8) if x[t] == eot] + [8]  # an end-of-text begins a document
            for a, b in zip(starts, starts[1:]):
                logits, _ = model(x[None, a:b])
                total += torch.nn.functional.cross_entropy(logits[0, :, :50], y[a:b], reduction="sum").item()
                count += b - a
    assert abs(got - total / count) <= 1e-6
    assert abs(got - evaluate.lm_loss(model, data.Tokens([tokens]), **args)) > 1e-3  # the split does something


def test_classify_equals_the_metrics_of_the_models_own_predictions(tiny_bert_dir):
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    g = torch.Generator().manual_seed(0)
    n = 23
    lengths = torch.randint(3, 12, (n,), generator=g).tolist()
    examples = {
        "input_ids": [torch.randint(1, 99, (k,), generator=g).tolist() for k in lengths],
        "token_type_ids": [[0] * (k // 2) + [1] * (k - k // 2) for k in lengths],
        "labels": torch.randint(0, 3, (n,), generator=g).tolist(),
        "index": list(range(100, 100 + n)),
    }
    examples["labels"][5] = -1  # an unlabelled example: predicted, not scored
    metrics, preds = evaluate.classify(model, examples, 4, 0, 1, 3, Dist(), torch.float32)
    cm, loss_sum = torch.zeros(3, 3, dtype=torch.long), 0.0
    with torch.no_grad():
        for i in range(n):  # one example at a time, no padding at all
            batch = pairs.collate(examples, [i], 0)
            logits, _ = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            assert preds[100 + i] == logits.argmax(-1).item()
            y = examples["labels"][i]
            if y >= 0:
                cm[y, logits.argmax(-1).item()] += 1
                loss_sum += torch.nn.functional.cross_entropy(logits, torch.tensor([y])).item()
    want = classification_metrics(cm)
    assert {k: metrics[k] for k in want} == want
    assert abs(metrics["loss"] - loss_sum / (n - 1)) <= 1e-6


# ----------------------------------------------------------------------------------------------
# python -m minitrain.training.evaluate


def test_lm_on_an_exported_model_equals_transformers(corpus, cache, tmp_path, sft_model):
    import numpy as np
    import transformers

    folder = sft_model  # a small random GPT-2 with its own BPE, exported (tests/conftest.py)
    tok = load_tokenizer(folder)
    text = tmp_path / "held_out.txt"
    text.write_text(corpus.read_text()[50000:56000])
    cfg = evaluate_tool.EvalConfig(
        dtype="fp32", model=str(folder), data=str(text), block_size=16, cache_dir=str(cache), progress=False
    )
    got = evaluate_tool.main(cfg)
    # transformers on the same folder: the tokens of the text and an end-of-text, blocks of 16 + 1
    ids = np.array(tok.encode(text.read_text()).ids + [tok.token_to_id("<|endoftext|>")])
    n = (len(ids) - 1) // 16
    x = torch.tensor(np.stack([ids[i * 16 : i * 16 + 16] for i in range(n)]))
    y = torch.tensor(np.stack([ids[i * 16 + 1 : i * 16 + 17] for i in range(n)]))
    ref = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(ref(x).logits.reshape(-1, 300), y.reshape(-1)).item()
    assert got["tokens"] == n * 16 and abs(got["loss"] - want) <= 1e-5
    n_bytes = len(tok.decode(y.reshape(-1).tolist()).encode("utf-8"))  # the text the targets stand for
    assert got["bytes"] == n_bytes
    assert got["bits_per_byte"] == pytest.approx(want * n * 16 / math.log(2) / n_bytes, rel=1e-5)


def test_lm_on_a_runs_validation_text_reproduces_its_final_val_loss(corpus, cache, tmp_path):
    from tests.helpers import metrics, run_main

    out = tmp_path / "run"
    run_main(corpus, out, cache, max_steps=6, eval_batches=0, export="final")
    val_loss, val_bpb = metrics(out, "val_loss")[6], metrics(out, "val_bpb")[6]
    for model in (out / "final", out / "ckpt-0000006.pt"):
        cfg = evaluate_tool.EvalConfig(
            dtype="fp32",
            model=str(model),
            data=str(corpus),
            split="validation",
            block_size=32,
            cache_dir=str(cache),
            progress=False,
        )
        got = evaluate_tool.main(cfg)
        assert abs(got["loss"] - val_loss) <= 1e-6 and abs(got["bits_per_byte"] - val_bpb) <= 1e-6, (got, val_loss)


def test_hellaswag_scores_equal_a_hand_computation(corpus, tmp_path, sft_model):
    import json

    folder = sft_model  # a small random GPT-2 with its own BPE, exported (tests/conftest.py)
    tok = load_tokenizer(folder)
    examples = [
        ("The king walked into the hall and", ["sat upon his throne.", "ate the moon", "is a fish", "no."], 0),
        ("Romeo looked at Juliet,", ["and smiled.", "then the sea went dry and the stars", "x", "and he"], 3),
        ("To be, or not to be:", ["that is the question.", "quite", "an apple a day keeps", "sing!"], 1),
    ]
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text(
        "".join(
            json.dumps({"ctx": c, "endings": e, "label": y, "ind": i}) + "\n" for i, (c, e, y) in enumerate(examples)
        )
    )
    got = evaluate_tool.main(
        evaluate_tool.EvalConfig(
            dtype="fp32", task="hellaswag", model=str(folder), data=str(path), batch_size=2, progress=False
        )
    )
    model = GPT2.from_pretrained(folder).eval()
    correct = correct_norm = 0
    for context, endings, label in examples:
        sums, means = [], []
        for ending in endings:  # one sequence at a time, no padding
            ctx, end = tok.encode(context).ids, tok.encode(" " + ending).ids
            row = torch.tensor([ctx + end])
            with torch.no_grad():
                logp = model(row)[0][0, :, :300].log_softmax(-1)
            nll = [-logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(end)]
            sums.append(sum(nll))
            means.append(sum(nll) / len(nll))
        correct += min(range(4), key=sums.__getitem__) == label
        correct_norm += min(range(4), key=means.__getitem__) == label
    assert got["examples"] == 3
    assert got["acc"] == pytest.approx(correct / 3) and got["acc_norm"] == pytest.approx(correct_norm / 3)


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "hellaswag_val.jsonl:2: not a JSON object"),
        ('{"ctx": "a", "endings": ["b", "c"]}', "hellaswag_val.jsonl:2: needs ctx \\(text\\), endings"),
        ('{"ctx": "a", "endings": ["b", "c"], "label": 5}', "hellaswag_val.jsonl:2: needs ctx \\(text\\), endings"),
    ],
)
def test_bad_hellaswag_lines_name_file_and_line(tmp_path, line, message):
    from minitrain import UserError

    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text('{"ctx": "a", "endings": ["b", "c"], "label": 1}\n' + line + "\n")
    with pytest.raises(UserError, match=message):
        read_hellaswag(path)


def test_a_checkpoint_of_the_other_script_is_refused(tmp_path):
    from minitrain import UserError

    torch.save({"model": {"classifier.weight": torch.zeros(2, 4)}, "history": []}, tmp_path / "ckpt-0000001.pt")
    with pytest.raises(UserError, match="is not a train_gpt2.py checkpoint"):
        load_model(str(tmp_path / "ckpt-0000001.pt"), "causal")
    torch.save({"model": {}, "model_config": {}}, tmp_path / "ckpt-0000002.pt")
    with pytest.raises(UserError, match="is not a train_mrpc.py checkpoint"):
        load_model(str(tmp_path / "ckpt-0000002.pt"), "classifier")
