"""minitrain/optim.py: learning-rate schedules and AdamW parameter groups."""

import pytest

from minitrain.models.gpt2 import GPT2, GPT2Config
from minitrain.training.optim import lr_at, param_groups


def test_schedules():
    kw = dict(lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    for s in ("linear", "cosine", "constant"):
        assert lr_at(0, schedule=s, **kw) == pytest.approx(0.1)  # warmup starts at lr / warmup
        assert lr_at(9, schedule=s, **kw) == pytest.approx(1.0)  # end of warmup: the peak
        assert lr_at(10, schedule=s, **kw) == pytest.approx(1.0)
    assert lr_at(60, schedule="linear", **kw) == pytest.approx(0.55)  # halfway down
    assert lr_at(60, schedule="cosine", **kw) == pytest.approx(0.55)  # cos(pi/2) = 0
    assert lr_at(35, schedule="cosine", **kw) == pytest.approx(0.1 + 0.45 * (1 + 2**-0.5))
    for s in ("linear", "cosine"):
        assert lr_at(110, schedule=s, **kw) == pytest.approx(0.1)  # the end
        assert lr_at(500, schedule=s, **kw) == pytest.approx(0.1)  # past the end: stays there
    assert lr_at(500, schedule="constant", **kw) == 1.0


def test_param_groups_decay_matrices_only_and_count_tied_weight_once():
    model = GPT2(GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=2, n_head=2))
    decay, no_decay = param_groups(model, 0.1)
    named = dict(model.named_parameters())
    assert "lm_head.weight" not in named  # tied: named_parameters yields it as transformer.wte
    assert {id(p) for p in decay["params"]} == {id(p) for p in named.values() if p.dim() >= 2}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in named.values() if p.dim() < 2}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert sum(1 for p in decay["params"] if p is model.transformer.wte.weight) == 1
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
