"""minitrain/metrics.py: classification metrics from a confusion matrix, FLOPs, the stopwatch."""

import random
import time

import pytest
import torch

from minitrain.training.metrics import Stopwatch, classification_metrics, flops_per_token, perplexity


# Reference implementations from the definitions, on lists of predictions and labels (the product
# computes from an all-reducible confusion matrix instead).
def ref_accuracy(preds, labels):
    return sum(p == y for p, y in zip(preds, labels)) / len(labels)


def ref_f1(preds, labels, positive=1):
    tp = sum(p == positive and y == positive for p, y in zip(preds, labels))
    fp = sum(p == positive and y != positive for p, y in zip(preds, labels))
    fn = sum(p != positive and y == positive for p, y in zip(preds, labels))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def confusion(preds, labels, n):
    cm = torch.zeros(n, n, dtype=torch.long)
    for p, y in zip(preds, labels):
        cm[y, p] += 1
    return cm


def test_metrics_against_hand_computed_values():
    preds, labels = [1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0]
    # tp=2, fp=1, fn=1: F1 = 2*2 / (2*2 + 1 + 1) = 2/3; accuracy 4/6
    m = classification_metrics(confusion(preds, labels, 2))
    assert m["accuracy"] == pytest.approx(4 / 6) and m["f1"] == pytest.approx(2 / 3)
    # no positive predictions at all: F1 is 0, not a division by zero
    assert classification_metrics(confusion([0, 0, 0], [1, 0, 1], 2))["f1"] == 0.0
    # three classes: macro-F1 is the mean of the per-class F1s
    p3, y3 = [0, 1, 2, 2, 1], [0, 1, 2, 1, 1]
    assert classification_metrics(confusion(p3, y3, 3))["macro_f1"] == pytest.approx((1.0 + 0.8 + 2 / 3) / 3)


@pytest.mark.parametrize("num_labels", [2, 3, 5])
def test_metrics_equal_the_definitions_on_random_predictions(num_labels):
    rng = random.Random(num_labels)
    for _ in range(20):
        n = rng.randint(1, 40)
        preds = [rng.randrange(num_labels) for _ in range(n)]
        labels = [rng.randrange(num_labels) for _ in range(n)]
        m = classification_metrics(confusion(preds, labels, num_labels))
        assert m["accuracy"] == pytest.approx(ref_accuracy(preds, labels))
        assert m["f1"] == pytest.approx(ref_f1(preds, labels, positive=1))
        macro = sum(ref_f1(preds, labels, c) for c in range(num_labels)) / num_labels
        assert m["macro_f1"] == pytest.approx(macro)


def test_perplexity_and_flops():
    assert perplexity(0.0) == 1.0 and perplexity(2.0) == pytest.approx(7.389056, rel=1e-6)
    assert perplexity(1e6) < float("inf")  # no overflow on a diverged loss
    # GPT-2 124M at T=1024: 6N + 12 * L * C * T with N = 124M (PaLM appendix B)
    assert flops_per_token(124_000_000, 12, 768, 1024) == 6 * 124_000_000 + 12 * 12 * 768 * 1024


def test_stopwatch_leaves_out_paused_time(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    watch = Stopwatch()
    now[0] += 2.0  # training
    with watch.paused():
        now[0] += 50.0  # evaluation
    now[0] += 3.0  # training
    assert watch.lap() == 5.0
    now[0] += 1.0
    with watch.paused():
        now[0] += 7.0
    assert watch.lap() == 1.0  # each lap starts afresh
