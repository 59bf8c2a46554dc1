"""minitrain/evaluate.py: the validation loss and the classifier metrics, against direct computation."""

import torch

from minitrain import data, evaluate, pairs
from minitrain.bert import BertForSequenceClassification
from minitrain.dist import Dist
from minitrain.gpt2 import GPT2, GPT2Config
from minitrain.metrics import classification_metrics


def test_lm_loss_is_the_mean_over_every_target_of_the_blocks():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2, embd_pdrop=0.5))
    tokens = torch.randint(0, 50, (8 * 7 + 1,)).numpy()
    model.train()
    got = evaluate.lm_loss(model, tokens, n_blocks=5, block_size=8, batch_size=2, d=Dist(), dtype=torch.float32)
    assert model.training  # left as it was found
    # by hand: the first 5 blocks, inputs tokens[i*8 : i*8+8], targets one position later
    model.eval()
    x = torch.stack([torch.from_numpy(tokens[i * 8 : i * 8 + 8].astype("int64")) for i in range(5)])
    y = torch.stack([torch.from_numpy(tokens[i * 8 + 1 : i * 8 + 9].astype("int64")) for i in range(5)])
    with torch.no_grad():
        logits, _ = model(x)
        want = torch.nn.functional.cross_entropy(logits[..., :50].reshape(-1, 50), y.reshape(-1)).item()
    assert abs(got - want) <= 1e-6
    assert data.num_blocks(tokens, 8) == 7


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
