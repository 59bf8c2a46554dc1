"""train_gpt2.py: accumulation, exact resume, schedules, parameter groups, precision, CLI, e2e."""

import pytest
import torch
import transformers

import train_gpt2
from minitrain.models.gpt2 import GPT2, GPT2Config
from minitrain.training.precision import cpu_supports_fp16
from tests.helpers import (
    ROOT,
    final_params,
    max_param_diff,
    metrics,
    run_main,
    split_key_bias,
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
    grad_diff = max((a.grad - b.grad).abs().max().item() for a, b in zip(big.parameters(), acc.parameters()))
    naive_diff = max((a.grad - b.grad).abs().max().item() for a, b in zip(big.parameters(), naive.parameters()))
    assert grad_diff <= 1e-7 and naive_diff > 1e-4  # the test can tell the two apart
    for model in (big, acc):
        torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    diff = max((a - b).abs().max().item() for a, b in zip(big.parameters(), acc.parameters()))
    assert diff <= 1e-6


def test_script_accumulation_equals_big_batch(corpus, cache, tmp_path):
    run_main(corpus, tmp_path / "acc", cache, batch_size=2, grad_accum_steps=4, max_steps=3)
    run_main(corpus, tmp_path / "big", cache, batch_size=8, grad_accum_steps=1, max_steps=3)
    (acc, acc_keys), (big, big_keys) = (split_key_bias(final_params(tmp_path / n)) for n in ("acc", "big"))
    assert max_param_diff(acc, big) <= 1e-6
    assert max_param_diff(acc_keys, big_keys) <= 3 * 3e-3  # rounding noise that Adam scales up to ~lr
    a, b = metrics(tmp_path / "acc", "train_loss"), metrics(tmp_path / "big", "train_loss")
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_resume_is_exact(corpus, cache, tmp_path):
    kw = dict(max_steps=8, save_interval=4, dropout=0.1)
    run_main(corpus, tmp_path / "full", cache, **kw)
    run_main(corpus, tmp_path / "resumed", cache, resume=str(tmp_path / "full/ckpt-0000004.pt"), **kw)
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


def test_bf16_autocast_runs_and_stays_finite(corpus, cache, tmp_path):
    result = run_main(corpus, tmp_path / "bf16", cache, dtype="bf16", max_steps=4)
    assert torch.isfinite(torch.tensor(result["val_loss"]))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics(tmp_path / "bf16", "train_loss").values())


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
    from minitrain.tools import generate

    gen = generate.GenerateConfig(model=str(out / "final"), prompt="KING:", max_new_tokens=12)
    texts = generate.main(gen)
    assert texts[0].startswith("KING:") and texts == generate.main(gen)


def test_fine_tune_from_local_hf_folder(corpus, cache, tmp_path):
    """--init_from a Hugging Face folder loads its weights and keeps its tokenizer."""
    from minitrain.data.tokenizer import train_bpe

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
    assert (tmp_path / "ft/final/tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    with pytest.raises(train_gpt2.UserError, match="larger than the model's 64 positions"):
        run_main(corpus, tmp_path / "ft2", cache, init_from=str(folder), block_size=65)


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
    import math

    from minitrain.data import sources
    from minitrain.data.tokenizer import load_tokenizer

    # by hand: the training part of the text (its head: 1 document), encoded, then end-of-text
    tok = load_tokenizer(tmp_path / "e")
    (head, split, end), *_ = sources.pieces(str(corpus), val_fraction=0.1)
    assert split == "train" and end
    n_blocks = (len(tok.encode(head).ids) + 1 - 1) // 32

    assert result["step"] == math.ceil(0.01 * (n_blocks // 8))


def test_keep_last_prunes_and_best_is_kept(corpus, cache, tmp_path):
    out = tmp_path / "k"
    run_main(corpus, out, cache, max_steps=12, save_interval=3, eval_interval=3, keep_last=2)
    from minitrain.training.rundir import list_checkpoints

    assert [p.name for p in list_checkpoints(out)] == ["ckpt-0000009.pt", "ckpt-0000012.pt"]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["evals"][-1] == best["best"]  # best.pt holds the evaluation it is best by
    assert any((out / "tensorboard").iterdir())  # TensorBoard event files


def test_first_logged_loss_after_resume_is_the_mean_of_the_steps_summed(corpus, cache, tmp_path):
    """Resumed at step 6 with --log_interval 10: step 10 logs the mean of steps 7-10 (4 steps), not
    their sum / 10."""
    kw = dict(max_steps=10, save_interval=6)
    run_main(corpus, tmp_path / "full", cache, log_interval=1, **kw)
    resume = str(tmp_path / "full/ckpt-0000006.pt")
    run_main(corpus, tmp_path / "resumed", cache, log_interval=10, resume=resume, **kw)
    per_step, resumed = metrics(tmp_path / "full", "train_loss"), metrics(tmp_path / "resumed", "train_loss")
    assert sorted(resumed) == [10]
    assert resumed[10] == pytest.approx(sum(per_step[s] for s in (7, 8, 9, 10)) / 4, rel=1e-6)


def test_tokens_per_sec_counts_training_steps_only(corpus, cache, tmp_path, monkeypatch):
    """A clock that jumps 1000 s in every evaluation, every checkpoint write and the first training
    step (where torch.compile compiles): no logged throughput may include any of those jumps, and
    the first step's time is logged apart as warmup_s."""
    import time

    from minitrain.training import evaluate, rundir

    real, offset = time.perf_counter, [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + offset[0])

    def slowed(fn):
        def run(*args, **kwargs):
            offset[0] += 1000.0
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(evaluate, "lm_loss", slowed(evaluate.lm_loss))
    monkeypatch.setattr(rundir, "save_step", slowed(rundir.save_step))
    first_training_forward = slowed(GPT2.forward)
    seen = []

    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled() and not seen:
            seen.append(1)
            return first_training_forward(self, *args, **kwargs)
        return GPT2.forward.__wrapped__(self, *args, **kwargs)

    forward.__wrapped__ = GPT2.forward
    monkeypatch.setattr(GPT2, "forward", forward)
    out = tmp_path / "t"
    run_main(corpus, out, cache, max_steps=8, log_interval=2, eval_interval=3, save_interval=3)
    tokens_per_sec = metrics(out, "tokens_per_sec")
    assert sorted(tokens_per_sec) == [2, 4, 6, 8] and seen
    window_tokens = 2 * 4 * 32  # 2 steps of 4 sequences x 32 tokens
    assert all(window_tokens / v < 100 for v in tokens_per_sec.values()), tokens_per_sec
    assert metrics(out, "warmup_s")[1] >= 1000


def test_export_best_holds_the_step_with_the_lowest_validation_loss(corpus, cache, tmp_path, monkeypatch):
    """Validation losses made up so that step 6 is the best of 3, 6, 9 and 12: final/ must hold step
    6's weights (not the last step's), say so, and load in transformers with the same logits."""
    from minitrain.training import evaluate

    fake = iter([5.0, 4.0, 3.0, 3.5, 3.8])  # steps 0, 3, 6, 9, 12
    monkeypatch.setattr(evaluate, "lm_loss", lambda *a, **k: next(fake))
    out = tmp_path / "best"
    result = run_main(corpus, out, cache, max_steps=12, eval_interval=3, save_interval=3)
    assert "step 6 (the lowest validation loss, 3.0000)" in (out / "final/README.md").read_text()
    ckpt6 = torch.load(out / "ckpt-0000006.pt", weights_only=True)
    ours = GPT2(GPT2Config(**ckpt6["model_config"]))
    ours.load_state_dict(ckpt6["model"])
    ref = transformers.GPT2LMHeadModel.from_pretrained(out / "final").eval()
    ids = torch.tensor([[1, 5, 9, 200, 17]])
    with torch.no_grad():
        assert (ours.eval()(ids)[0][..., :384] - ref(ids).logits).abs().max().item() <= 1e-5
    last = GPT2.from_pretrained(out / "final").state_dict()
    assert not torch.equal(
        last["transformer.h.0.mlp.c_fc.weight"], final_params(out)["transformer.h.0.mlp.c_fc.weight"]
    )
    assert result["step"] == 12
    # --export final: the last step
    fake = iter([5.0, 4.0, 3.0, 3.5, 3.8])
    run_main(corpus, tmp_path / "last", cache, max_steps=12, eval_interval=3, save_interval=3, export="final")
    assert "step 12 (the last)" in (tmp_path / "last/final/README.md").read_text()


def test_patience_stops_early_and_a_resume_has_nothing_left_to_do(corpus, cache, tmp_path):
    # min_delta 100: no evaluation after step 0 counts as an improvement, whatever the losses
    kw = dict(max_steps=20, eval_interval=2, save_interval=10, patience=2, min_delta=100.0)
    out = tmp_path / "early"
    result = run_main(corpus, out, cache, **kw)
    assert result["step"] == 4 and result["stopped_early"]
    assert checkpoint_names(out) == ["ckpt-0000004.pt"] and (out / "final/model.safetensors").is_file()
    before = (out / "metrics.jsonl").read_text()
    again = run_main(corpus, out, cache, resume="auto", **kw)
    assert again["stopped_early"] and again["step"] == 4 and (out / "metrics.jsonl").read_text() == before
    # more patience: the run goes on from step 4 and stops again two evaluations later
    more = run_main(corpus, out, cache, resume="auto", **dict(kw, patience=3))
    assert more["step"] == 6 and more["stopped_early"]


def checkpoint_names(out):
    from minitrain.training.rundir import list_checkpoints

    return [p.name for p in list_checkpoints(out)]


def test_a_non_finite_step_is_skipped_exactly(corpus, cache, tmp_path, monkeypatch):
    """The skip happens on the device (no host sync): the weights and AdamW's state after the bad
    step 2 are those after step 1, and step 3 trains again."""
    calls = []
    real = GPT2.forward

    def nan_on_second_step(self, input_ids, labels=None, reduction="mean", doc_ids=None):
        logits, loss = real(self, input_ids, labels, reduction, doc_ids)
        if self.training and labels is not None:
            calls.append(1)
            if len(calls) == 2:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT2, "forward", nan_on_second_step)
    out = tmp_path / "skip"
    run_main(corpus, out, cache, max_steps=3, save_interval=1, eval_interval=100)
    c1, c2, c3 = (torch.load(out / f"ckpt-000000{i}.pt", weights_only=True) for i in (1, 2, 3))
    assert all(torch.equal(c1["model"][k], c2["model"][k]) for k in c1["model"])
    assert not torch.equal(
        c2["model"]["transformer.h.0.mlp.c_fc.weight"], c3["model"]["transformer.h.0.mlp.c_fc.weight"]
    )
    steps = [next(iter(c["optimizer"]["state"].values()))["step"].item() for c in (c1, c2, c3)]
    assert steps == [1.0, 1.0, 2.0]  # the skipped update did not count
    assert metrics(out, "train_loss")[3] == metrics(out, "train_loss")[3]  # finite again


def test_multi_shard_folder_resumes_exactly_across_shards_and_epochs(shard_folder, cache, tmp_path):
    import json

    meta = json.loads((shard_folder / "meta.json").read_text())
    assert len(meta["train"]["shards"]) > 10
    kw = dict(max_steps=90, save_interval=40, eval_interval=45, dropout=0.1)  # 79 steps per epoch
    full = run_main(shard_folder, tmp_path / "full", cache, **kw)
    resumed = run_main(shard_folder, tmp_path / "resumed", cache, resume=str(tmp_path / "full/ckpt-0000040.pt"), **kw)
    assert torch.load(tmp_path / "full/ckpt-0000090.pt", weights_only=True)["epoch"] == 1
    a, b = metrics(tmp_path / "full", "train_loss"), metrics(tmp_path / "resumed", "train_loss")
    assert sorted(b) == list(range(41, 91)) and all(a[s] == b[s] for s in b)  # bit for bit
    assert full["val_loss"] == resumed["val_loss"]
    pa, pb = final_params(tmp_path / "full"), final_params(tmp_path / "resumed")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_an_llm_c_folder_needs_its_tokenizer_named(shard_folder, cache, tmp_path, capsys):
    """A folder as llm.c's fineweb.py writes it: shards only, no tokenizer.json or meta.json."""
    import shutil

    from tests.test_faults import cli_fails, tiny_argv

    bare = tmp_path / "fineweb10B"
    bare.mkdir()
    for p in shard_folder.glob("*.bin"):
        shutil.copy(p, bare / p.name.replace("text_", "fineweb_"))
    line = cli_fails(tiny_argv(bare, tmp_path / "out", cache, max_steps=2), capsys)
    assert "has token shards but no tokenizer.json: name their tokenizer with --tokenizer" in line
    assert not (tmp_path / "out").exists()
    ok = run_main(bare, tmp_path / "ok", cache, max_steps=2, tokenizer=str(shard_folder))
    same = run_main(shard_folder, tmp_path / "same", cache, max_steps=2)
    assert ok["val_loss"] == same["val_loss"]


def test_the_gpt2_124m_preset_runs_shrunk_on_cpu(shard_folder, tmp_path, capsys):
    """configs/gpt2-124m.toml with the model and batch shrunk and the data replaced: the file stays
    valid (every key an option, every value accepted), and its schedule is the one it states."""
    import tomllib

    from minitrain.config import parse_args

    preset = tomllib.loads((ROOT / "configs/gpt2-124m.toml").read_text())
    assert preset["tokens_per_step"] == 524288 and preset["block_size"] == 1024 and preset["min_lr"] == 6e-5
    shrink = dict(
        data=shard_folder, tokenizer=shard_folder, n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4,
        tokens_per_step=256, max_steps=3, eval_interval=3, eval_batches=1, compile="false", device="cpu",
        out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", num_samples=1, max_new_tokens=4, progress="false",
    )  # fmt: skip
    argv = ["--config", str(ROOT / "configs/gpt2-124m.toml"), *[f"--{k}={v}" for k, v in shrink.items()]]
    import sys

    old, sys.argv = sys.argv, ["train_gpt2.py", *argv]
    try:
        cfg = parse_args(train_gpt2.Config)
    finally:
        sys.argv = old
    assert (cfg.lr, cfg.warmup_steps, cfg.weight_decay, cfg.beta2, cfg.dtype) == (6e-4, 715, 0.1, 0.95, "bf16")
    result = train_gpt2.main(cfg)
    assert result["step"] == 3 and result["val_loss"] == result["val_loss"]
    assert (tmp_path / "out/final/config.json").is_file()
