"""Packing (data/packing.py, models/documents.py; train_gpt2 --packing, --doc_mask): packed rows give
the padded rows' per-example losses, window loss and gradients; accumulation, 2 processes and
resume stay exact when packed; validation is unchanged; bad combinations are one sentence."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minitrain import UserError
from minitrain.data import completions
from minitrain.data.completions import Examples
from minitrain.data.packing import Layout, first_fit, pack
from minitrain.data.tokenizer import load_tokenizer
from minitrain.models import documents
from minitrain.models.gpt2 import GPT2, GPT2Config
from minitrain.models.llama import Llama, LlamaConfig
from tests.helpers import final_params, max_param_diff, metrics, run_main, run_script, split_key_bias, tiny_gpt2_args
from tests.test_completions import sft_args

T, V = 24, 64


def mixed_examples(n=14, seed=0) -> Examples:
    """Examples of 2 .. T + 1 ids (some fill the block), prompts of any length that leaves a target."""
    rng = np.random.default_rng(seed)
    seqs, prompt_lens = [], []
    for _ in range(n):
        L = int(np.clip(rng.lognormal(np.log(T / 3), 0.7), 2, T + 1))
        seqs.append(rng.integers(0, V - 1, L))
        prompt_lens.append(int(rng.integers(0, L - 1)))
    return Examples(seqs, prompt_lens, [""] * n, eot=V - 1)


def test_first_fit_places_every_example_once_within_the_row():
    lengths = [5, 20, 3, 24, 7, 7, 1, 12]
    bins = first_fit(lengths, 24)
    assert sorted(j for b in bins for j in b) == list(range(len(lengths)))
    assert all(sum(lengths[j] for j in b) <= 24 for b in bins)
    assert len(bins) == 4 and bins == first_fit(lengths, 24)  # 79 tokens: 4 rows; a function of the lengths
    assert bins[0] == [3]  # the longest first, alone: it fills its row


def test_packed_rows_hold_each_example_with_its_targets_and_document():
    ex = mixed_examples()
    ids = np.arange(len(ex.seqs))[::-1]
    x, y, doc = pack(ex, ids, T)
    px, py = ex.rows(ids, T)
    assert x.shape[0] < len(ids) and x.shape[1] <= T
    assert (y != -100).sum() == (py != -100).sum() == ex.targets(ids, T)
    pos = documents.positions(torch.from_numpy(doc))
    found = 0
    for r in range(x.shape[0]):
        for d in np.unique(doc[r]):
            at = np.flatnonzero(doc[r] == d)
            assert (np.diff(at) == 1).all() and pos[r, at].tolist() == list(range(len(at)))  # positions restart
            inputs = x[r, at].tolist()
            match = [i for i in ids if ex.example(i)[0].tolist() == inputs]
            if not match:  # the row's padding: end-of-text inputs, no target
                assert at[-1] == x.shape[1] - 1 and set(inputs) == {ex.eot} and (y[r, at] == -100).all()
                continue
            assert y[r, at].tolist() == ex.example(match[0])[1].tolist()
            found += 1
    assert found == len(ids)
    # the host-side count the log uses: the real tokens, and the rows x their length computed
    real, computed = Layout(T, None, False, True, ex.eot).count(ex, ids, len(ids))
    assert real == sum(len(ex.example(i)[0]) for i in ids) and computed == x.size
    assert Layout(T, False, False, True, ex.eot).count(ex, ids, len(ids)) == (real, px.size)


@pytest.fixture(scope="module")
def short_sft(corpus, tmp_path_factory):
    """Prompt/completion files of short examples of mixed lengths (a line's start, then 1 to 5 words
    of the next line): several fit a row of 48 tokens. train.jsonl (96 records), val.jsonl (16)."""
    folder = tmp_path_factory.mktemp("short_sft")
    lines = [line.strip() for line in corpus.read_text().splitlines() if len(line.split()) >= 4][:300]
    records = [
        {"prompt": lines[i][: 4 + 3 * (i % 5)] + "\n", "completion": " ".join(lines[i + 1].split()[: 1 + (i * 7) % 5])}
        for i in range(0, 224, 2)
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:96]))
    (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[96:]))
    return folder


def per_token_losses(model, x, y, doc_ids=None):
    h = model.hidden_states(x, doc_ids)  # (R, L, C)
    logits = F.linear(h, model.lm_head.weight, getattr(model, "pad_logit_bias", None)).float()
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)


def tiny_model(family: str):
    """A GPT-2 (learned positions) or a Llama-family model (rotary positions, grouped-query attention)."""
    if family == "gpt2":
        return GPT2(GPT2Config(vocab_size=V, n_positions=T, n_embd=32, n_layer=2, n_head=2)).float()
    config = LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=T,
    )  # fmt: skip
    return Llama(config).float()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_packed_equals_padded_losses_and_gradients(family):
    """fp32: every example's loss, the window's loss and every gradient of the packed rows equal the
    padded rows' (the same examples; the loss summed and divided by the window's targets)."""
    ex = mixed_examples()
    ids = list(range(len(ex.seqs)))
    torch.manual_seed(0)
    padded = tiny_model(family)
    packed = tiny_model(family)
    packed.load_state_dict(padded.state_dict())
    x, y = (torch.from_numpy(a) for a in ex.rows(ids, T))
    px, py, pdoc = (torch.from_numpy(a) for a in pack(ex, ids, T))
    # per example: the padded row's losses against the packed document's
    with torch.no_grad():
        lp, lk = per_token_losses(padded, x, y), per_token_losses(packed, px, py, pdoc)
    bins = first_fit(ex.lengths(ids, T), T)
    for r, b in enumerate(bins):
        for d, j in enumerate(b):
            mine = pdoc[r] == d
            assert torch.allclose(lk[r][mine].sum(), lp[j].sum(), rtol=0, atol=1e-6 * mine.sum().item())
    # the window: sum / targets, then every gradient
    window = (y != -100).sum()
    _, loss_padded = padded(x, y, reduction="sum")
    _, loss_packed = packed(px, py, reduction="sum", doc_ids=pdoc)
    assert abs(loss_padded.item() - loss_packed.item()) / window.item() <= 1e-6
    (loss_padded / window).backward()
    (loss_packed / window).backward()
    grads = {n: p.grad for n, p in padded.named_parameters()}
    diff = max((grads[n] - p.grad).abs().max().item() for n, p in packed.named_parameters())
    assert diff <= 1e-6, diff


def test_doc_mask_makes_each_document_see_only_itself():
    """Text split at end-of-text: each document in a row gives the hidden states it gives alone,
    from position 0 (an end-of-text id is its document's first token)."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=V, n_positions=T, n_embd=32, n_layer=2, n_head=2)).eval()
    eot = V - 1
    row = torch.tensor([[5, 6, 7, eot, 8, 9, eot, 10, 11, 12, 13, eot]])
    doc = (row == eot).cumsum(dim=1)
    assert documents.positions(doc).tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4, 0]]
    with torch.no_grad():
        together = model.hidden_states(row, doc)
        for d in doc.unique():
            alone = model.hidden_states(row[:, doc[0] == d])
            assert (together[:, doc[0] == d] - alone).abs().max().item() <= 1e-6
        assert (together - model.hidden_states(row)).abs().max().item() > 1e-3  # the mask does something


def test_packed_training_equals_padded_with_accumulation_and_two_processes(sft_model, short_sft, cache, tmp_path):
    """One step = the same 8 examples padded, packed, packed 4 x 2 accumulated, packed 2 processes x 4:
    the same losses and weights; validation (never packed) is unchanged; packing computes fewer tokens."""
    kw = sft_args(sft_model, short_sft, max_steps=3, eval_interval=3, dropout=0.0)
    run_main(None, tmp_path / "padded", cache, batch_size=8, packing=False, **kw)
    run_main(None, tmp_path / "packed", cache, batch_size=8, packing=True, **kw)
    run_main(None, tmp_path / "acc", cache, batch_size=2, grad_accum_steps=4, **kw)  # packing: auto, on
    run_script("train_gpt2.py", tiny_gpt2_args(None, tmp_path / "two", cache, batch_size=4, **kw), nproc=2)
    base = metrics(tmp_path / "padded", "train_loss")
    ref, ref_keys = split_key_bias(final_params(tmp_path / "padded"))
    for other in ("packed", "acc", "two"):
        got = metrics(tmp_path / other, "train_loss")
        assert got.keys() == base.keys() and all(abs(got[s] - base[s]) < 1e-5 for s in base), (other, got, base)
        params, keys = split_key_bias(final_params(tmp_path / other))
        assert max_param_diff(params, ref) <= 1e-6 and max_param_diff(keys, ref_keys) <= 3 * 1e-3, other
    val_packed, val_padded = metrics(tmp_path / "packed", "val_loss"), metrics(tmp_path / "padded", "val_loss")
    assert val_packed[0] == val_padded[0] and abs(val_packed[3] - val_padded[3]) < 1e-5  # scored padded, both
    eff_packed, eff_padded = (metrics(tmp_path / n, "packing_efficiency")[3] for n in ("packed", "padded"))
    assert 0 < eff_padded < eff_packed <= 1
    assert metrics(tmp_path / "packed", "tokens_per_sec")


def test_packed_resume_is_exact(sft_model, short_sft, cache, tmp_path):
    kw = sft_args(sft_model, short_sft, max_steps=4, save_interval=2, eval_interval=4, dropout=0.1, batch_size=6)
    run_main(None, tmp_path / "full", cache, **kw)
    run_main(None, tmp_path / "resumed", cache, resume=str(tmp_path / "full/ckpt-0000002.pt"), **kw)
    full, resumed = metrics(tmp_path / "full", "train_loss"), metrics(tmp_path / "resumed", "train_loss")
    assert sorted(resumed) == [3, 4] and all(full[s] == resumed[s] for s in resumed)  # bit for bit
    a, b = final_params(tmp_path / "full"), final_params(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_doc_mask_on_text_trains_and_validates_split_at_end_of_text(corpus, cache, tmp_path):
    """--doc_mask changes training and validation alike (validation splits its blocks at
    end-of-text as training does: the loss of the setting the model is trained in); the evaluate
    command with --doc_mask gives the run's validation loss again, without it the plain one."""
    from minitrain.tools import evaluate as evaluate_tool

    docs = tmp_path / "docs.jsonl"  # one document per line: an end-of-text id after each
    text = corpus.read_text()[:24000]
    docs.write_text("".join(json.dumps({"text": text[i : i + 300]}) + "\n" for i in range(0, len(text), 80)))
    kw = dict(max_steps=2, eval_interval=2, save_interval=2, eval_batches=0)
    run_main(docs, tmp_path / "plain", cache, **kw)
    run_main(docs, tmp_path / "masked", cache, doc_mask=True, **kw)
    plain, masked = (metrics(tmp_path / n, "train_loss") for n in ("plain", "masked"))
    assert plain[1] != masked[1]  # blocks that cross a document's end train differently
    v_plain, v_masked = (metrics(tmp_path / n, "val_loss") for n in ("plain", "masked"))
    assert abs(v_plain[0] - v_masked[0]) > 1e-4  # the same initial weights, scored split and not
    assert metrics(tmp_path / "masked", "packing_efficiency")[2] == 1.0  # text blocks are full
    for doc_mask in (True, False):
        cfg = evaluate_tool.EvalConfig(
            model=str(tmp_path / "masked/ckpt-0000002.pt"), data=str(docs), split="validation", block_size=32,
            doc_mask=doc_mask, dtype="fp32", cache_dir=str(cache), progress=False,
        )  # fmt: skip
        got = evaluate_tool.main(cfg)["loss"]
        assert (abs(got - v_masked[2]) <= 1e-6) == doc_mask, (got, v_masked[2])


def test_bad_combinations_are_one_sentence(corpus, sft_model, sft_data, cache, tmp_path):
    with pytest.raises(UserError, match="--packing=true needs prompt/completion data"):
        run_main(corpus, tmp_path / "a", cache, packing=True)
    with pytest.raises(UserError, match="--doc_mask=true is for text data"):
        run_main(None, tmp_path / "b", cache, **sft_args(sft_model, sft_data, doc_mask=True))
    with pytest.raises(UserError, match="needs an <|endoftext|> token"):
        Layout(T, None, True, False, None)
    proc = run_script("train_gpt2.py", tiny_gpt2_args(corpus, tmp_path / "c", cache, packing=True), check=False)
    assert proc.returncode == 2 and "--packing=true needs prompt/completion data" in proc.stderr


def test_examples_longer_than_the_block_are_cut_and_counted(sft_model):
    tok = load_tokenizer(sft_model)
    eot = tok.token_to_id("<|endoftext|>")
    ex = completions.tokenize([("To be", " or not to be, that is the question" * 4), ("a", "b")], tok, eot, 12)
    assert ex.cut == 1 and len(ex.seqs[0]) == 13 and ex.dropped == 0


def test_bench_trains_the_same_epoch_padded_and_packed(tmp_path):
    """bench.packing end to end on a tiny shape (its timings are not tested): the same final loss,
    the same real tokens, fewer computed ones when packed."""
    from bench.packing import main

    argv = ["--examples", "24", "--block_size", "32", "--batch_size", "8", "--n_layer", "1", "--n_embd", "32"]
    r = main(argv + ["--vocab", "64", "--rounds", "1", "--last", "1", "--out", str(tmp_path)])
    padded, packed = r["best"]["padded"], r["best"]["packed"]
    assert padded["real_tokens"] == packed["real_tokens"] and packed["computed_tokens"] < padded["computed_tokens"]
    assert r["final_loss_difference"] <= 1e-5 and list(tmp_path.glob("packing-*.json"))
