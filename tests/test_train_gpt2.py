"""train_gpt2.py: accumulation, exact resume, schedules, parameter groups, precision, CLI, e2e."""

import subprocess

import pytest
import torch
import transformers

import train_gpt2
from minitrain.config import parse_args
from minitrain.gpt2 import GPT2, GPT2Config
from minitrain.optim import lr_at, param_groups
from minitrain.precision import cpu_supports_fp16
from tests.helpers import (
    PY,
    ROOT,
    final_params,
    max_param_diff,
    metrics,
    run_main,
)


def test_accumulated_micro_batches_with_unequal_targets_equal_one_big_batch():
    """The loop's normalisation: sum of token losses / target tokens of the whole window."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    x = torch.randint(0, 64, (8, 16))
    y = torch.randint(0, 64, (8, 16))
    for i in range(8):  # micro-batches with very different numbers of target tokens
        y[i, : 2 * i] = -100
    big, acc, naive = GPT2(cfg), GPT2(cfg), GPT2(cfg)
    acc.load_state_dict(big.state_dict())
    naive.load_state_dict(big.state_dict())
    big(x, y)[1].backward()  # the plain mean over the batch of 8
    window_tokens = (y != -100).sum()
    for i in range(0, 8, 2):
        _, loss_sum = acc(x[i : i + 2], y[i : i + 2], reduction="sum")
        (loss_sum / window_tokens).backward()
        (naive(x[i : i + 2], y[i : i + 2])[1] / 4).backward()  # mean of means: the old HF bug
    grad_diff = max(
        (a.grad - b.grad).abs().max().item() for a, b in zip(big.parameters(), acc.parameters())
    )
    naive_diff = max(
        (a.grad - b.grad).abs().max().item() for a, b in zip(big.parameters(), naive.parameters())
    )
    assert grad_diff <= 1e-7 and naive_diff > 1e-4  # the test can tell the two apart
    for model in (big, acc):
        torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    diff = max((a - b).abs().max().item() for a, b in zip(big.parameters(), acc.parameters()))
    assert diff <= 1e-6


def test_script_accumulation_equals_big_batch(corpus, cache, tmp_path):
    run_main(corpus, tmp_path / "acc", cache, batch_size=2, grad_accum_steps=4, max_steps=3)
    run_main(corpus, tmp_path / "big", cache, batch_size=8, grad_accum_steps=1, max_steps=3)
    assert max_param_diff(final_params(tmp_path / "acc"), final_params(tmp_path / "big")) <= 1e-6
    a, b = metrics(tmp_path / "acc", "train_loss"), metrics(tmp_path / "big", "train_loss")
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_resume_is_exact(corpus, cache, tmp_path):
    kw = dict(max_steps=8, save_interval=4, dropout=0.1)
    run_main(corpus, tmp_path / "full", cache, **kw)
    run_main(
        corpus, tmp_path / "resumed", cache, resume=str(tmp_path / "full/ckpt-0000004.pt"), **kw
    )
    full, resumed = (
        metrics(tmp_path / "full", "train_loss"),
        metrics(tmp_path / "resumed", "train_loss"),
    )
    assert sorted(resumed) == [5, 6, 7, 8]
    assert all(full[s] == resumed[s] for s in resumed), (full, resumed)  # bit for bit
    a, b = final_params(tmp_path / "full"), final_params(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_auto_continues_in_out_dir(corpus, cache, tmp_path):
    out = tmp_path / "run"
    run_main(corpus, out, cache, max_steps=3)
    result = run_main(corpus, out, cache, max_steps=6, resume="auto")
    assert result["step"] == 6
    assert sorted(metrics(out, "train_loss")) == [1, 2, 3, 4, 5, 6]


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


def test_bf16_autocast_runs_and_stays_finite(corpus, cache, tmp_path):
    result = run_main(corpus, tmp_path / "bf16", cache, dtype="bf16", max_steps=4)
    assert torch.isfinite(torch.tensor(result["val_loss"]))
    assert all(
        torch.isfinite(torch.tensor(v)) for v in metrics(tmp_path / "bf16", "train_loss").values()
    )


@pytest.mark.skipif(not cpu_supports_fp16(), reason="this CPU cannot run fp16 autocast")
def test_fp16_with_grad_scaler_runs_and_stays_finite(corpus, cache, tmp_path):
    result = run_main(corpus, tmp_path / "fp16", cache, dtype="fp16", max_steps=4)
    assert torch.isfinite(torch.tensor(result["val_loss"]))
    ckpt = torch.load(tmp_path / "fp16/ckpt-0000004.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0  # the scaler was enabled and saved


def test_end_to_end_loss_falls_checkpoint_reloads_export_loads(corpus, cache, tmp_path):
    out = tmp_path / "e2e"
    result = run_main(
        corpus,
        out,
        cache,
        max_steps=30,
        eval_interval=15,
        num_samples=1,
        max_new_tokens=10,
        prompt="KING:",
    )
    assert result["val_loss"] < result["first_val_loss"] - 0.5
    train = metrics(out, "train_loss")
    assert train[30] < train[1]
    ckpt = torch.load(out / "ckpt-0000030.pt", weights_only=True)
    assert ckpt["step"] == 30 and (out / "best.pt").is_file()
    ours = GPT2(GPT2Config(**ckpt["model_config"]))
    ours.load_state_dict(ckpt["model"])
    ref = transformers.GPT2LMHeadModel.from_pretrained(out / "final").eval()
    tok = transformers.AutoTokenizer.from_pretrained(out / "final")
    ids = torch.tensor([tok("To be, or not to be")["input_ids"]])
    with torch.no_grad():
        assert (ours.eval()(ids)[0] - ref(ids).logits).abs().max().item() <= 1e-5
    # the sampling entry point works on the export, reproducibly
    from minitrain import generate

    gen = generate.GenerateConfig(model=str(out / "final"), prompt="KING:", max_new_tokens=12)
    texts = generate.main(gen)
    assert texts[0].startswith("KING:") and texts == generate.main(gen)


def test_fine_tune_from_local_hf_folder(corpus, cache, tmp_path):
    """--init_from a Hugging Face folder loads its weights and keeps its tokenizer."""
    from minitrain.tokenizer import train_bpe

    folder = tmp_path / "hf"
    folder.mkdir()
    tok = train_bpe([corpus.read_text()[:50000]], 300, folder / "tokenizer.json")
    eot = tok.token_to_id("<|endoftext|>")
    model = GPT2(
        GPT2Config(
            vocab_size=tok.get_vocab_size(),
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=eot,
            eos_token_id=eot,
        )
    )
    model.save_pretrained(folder)
    result = run_main(corpus, tmp_path / "ft", cache, init_from=str(folder), max_steps=4)
    assert result["step"] == 4
    assert (tmp_path / "ft/final/tokenizer.json").read_text() == (
        folder / "tokenizer.json"
    ).read_text()
    with pytest.raises(train_gpt2.UserError, match="larger than the model's 64 positions"):
        run_main(corpus, tmp_path / "ft2", cache, init_from=str(folder), block_size=65)


def test_cli_help_toml_and_unknown_key(tmp_path):
    out = subprocess.run(
        [PY, str(ROOT / "train_gpt2.py"), "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "--grad_accum_steps (default: 1)  micro-batches per optimizer step" in out.stdout
    toml = tmp_path / "run.toml"
    toml.write_text('lr = 0.01\nbatch_size = 3\nschedule = "linear"\ncompile = true\n')
    cfg = parse_args(
        train_gpt2.Config, ["--config", str(toml), "--batch_size", "5", "--compile=false"]
    )
    assert (cfg.lr, cfg.batch_size, cfg.schedule, cfg.compile) == (0.01, 5, "linear", False)
    out = subprocess.run(
        [PY, str(ROOT / "train_gpt2.py"), "--batch_sise=4"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "unknown option --batch_sise (did you mean --batch_size?)" in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run(
        [PY, str(ROOT / "train_gpt2.py"), "--lr=fast"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "--lr='fast' is not a valid float" in out.stderr


def test_epochs_and_tokens_per_step_set_the_run_length(corpus, cache, tmp_path):
    # tokens_per_step = 2 micro-batches of 4 x 32 tokens: accumulation 2, 8 sequences per step
    result = run_main(
        corpus,
        tmp_path / "e",
        cache,
        epochs=0.01,
        max_steps=0,
        tokens_per_step=256,
        eval_interval=1000,
        save_interval=1000,
    )
    n_blocks = None
    from minitrain import data

    train_docs, _ = data.read_documents(str(corpus), 0.1)
    tok_path = tmp_path / "e" / "tokenizer.json"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    ids = data.tokenize(train_docs, tok, tok.token_to_id("<|endoftext|>"))
    n_blocks = data.num_blocks(ids, 32)
    import math

    assert result["step"] == math.ceil(0.01 * (n_blocks // 8))


def test_data_folder_glob_and_local_hf_dataset(tmp_path):
    from minitrain import data

    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first document\n" * 50)
    (folder / "sub" / "b.txt").write_text("second document\n" * 50)
    (folder / "ignored.md").write_text("not text data")
    train, val = data.read_documents(str(folder), 0.1)
    assert len(train) == len(val) == 2  # < 10 documents: each one's tail is validation
    assert train[0].startswith("first") and val[1].startswith("second")
    g_train, g_val = data.read_documents(str(folder / "**" / "*.txt"), 0.1)
    assert (g_train, g_val) == (train, val)
    # hf:PATH goes through datasets.load_dataset, which also reads a local data set folder
    hf = tmp_path / "hfdata"
    hf.mkdir()
    (hf / "train.txt").write_text("".join(f"line {i} of the training text\n" for i in range(40)))
    (hf / "validation.txt").write_text("a validation line\n" * 5)
    h_train, h_val = data.read_documents(f"hf:{hf}", 0.1)
    assert len(h_train) == 40 and h_val == ["a validation line"] * 5


def test_token_cache_is_reused(corpus, cache, tmp_path, monkeypatch):
    from minitrain import data
    from minitrain.tokenizer import train_bpe

    docs = [corpus.read_text()[:20000]]
    tok = train_bpe(docs, 300)
    first = data.tokenize_cached(docs, tok, 0, tmp_path, "train")
    assert first.dtype == "uint16"

    def boom(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(data, "tokenize", boom)
    again = data.tokenize_cached(docs, tok, 0, tmp_path, "train")
    assert (first == again).all()


def test_keep_last_prunes_and_best_is_kept(corpus, cache, tmp_path):
    out = tmp_path / "k"
    run_main(corpus, out, cache, max_steps=12, save_interval=3, eval_interval=3, keep_last=2)
    from minitrain.checkpoint import list_checkpoints

    assert [p.name for p in list_checkpoints(out)] == ["ckpt-0000009.pt", "ckpt-0000012.pt"]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["val_loss"] == best["best_val_loss"]
    assert any((out / "tensorboard").iterdir())  # TensorBoard event files
