"""FSDP2 (--parallel fsdp) and its sharded checkpoints (DCP), under torchrun on CPU (gloo): each
compared with a run computed another way (one process, the hand-written DDP, an uninterrupted run)."""

import shutil

import pytest
import torch

from minitrain.models.llama import Llama, LlamaConfig
from minitrain.training.state import load
from tests.helpers import (
    EQ_LR,
    EQ_RUN,
    assert_same_params,
    close,
    final_params,
    max_param_diff,
    metrics,
    run_script,
    tiny_gpt2_args,
)
from tests.test_faults import cli_fails, tiny_argv


def train(corpus, cache, out, nproc=1, **kw):
    return run_script("train_gpt2.py", tiny_gpt2_args(corpus, out, cache, **dict(EQ_RUN, **kw)), nproc=nproc)


@pytest.mark.xdist_group("shared_run")
@pytest.mark.parametrize("accum", [1, 2])
def test_fsdp_two_processes_equal_one_process_and_the_hand_written_ddp(shared_run, accum):
    """FSDP on 2 processes == 1 process (no FSDP) with the double batch == DDP on the same 2:
    losses, the logged gradient norm (a gradient summed instead of averaged over the ranks, as
    pytorch/pytorch#162338 once did on gloo, doubles it while AdamW would hide it in the weights)
    and the final weights; with clipping active and with accumulation."""
    one = shared_run(batch_size=4, grad_accum_steps=accum, **EQ_RUN)
    ddp = shared_run(2, batch_size=2, grad_accum_steps=accum, **EQ_RUN)
    fsdp = shared_run(2, batch_size=2, grad_accum_steps=accum, parallel="fsdp", **EQ_RUN)
    assert "2 processes x 2 sequences" in fsdp.with_suffix(".stdout").read_text()
    norms = metrics(one, "grad_norm")
    assert min(norms.values()) > 0.05  # the clipping is exercised
    for other in (ddp, fsdp):
        assert close(metrics(one, "train_loss"), metrics(other, "train_loss"), 1e-6)
        assert close(metrics(one, "val_loss"), metrics(other, "val_loss"), 1e-6)
        other_norms = metrics(other, "grad_norm")
        assert all(abs(other_norms[s] - norms[s]) <= 1e-5 * norms[s] for s in norms)
        assert_same_params(final_params(one), final_params(other))
    assert (fsdp / "ckpt-0000003/.metadata").is_file() and (fsdp / "best").is_dir()


def test_fsdp_in_bf16_follows_ddp_in_bf16(corpus, cache, tmp_path):
    """bf16: FSDP gathers bf16 weights (MixedPrecisionPolicy) and reduces gradients in fp32; DDP
    autocasts fp32 weights and reduces bf16-computed gradients in fp32 too. The two round at
    different places, so the bound is bf16's: 8 bits of mantissa, ~0.4 % per rounding."""
    train(corpus, cache, tmp_path / "ddp", 2, batch_size=2, dtype="bf16")
    train(corpus, cache, tmp_path / "fsdp", 2, batch_size=2, dtype="bf16", parallel="fsdp")
    ddp, fsdp = metrics(tmp_path / "ddp", "train_loss"), metrics(tmp_path / "fsdp", "train_loss")
    assert close(ddp, fsdp, 0.01 * max(ddp.values()))
    assert max_param_diff(final_params(tmp_path / "ddp"), final_params(tmp_path / "fsdp")) <= 5 * EQ_LR


@pytest.fixture(scope="module")
def sharded_run(corpus, cache, tmp_path_factory):
    """8 steps of FSDP on 2 processes x 3 sequences, a sharded checkpoint every 4 steps."""
    out = tmp_path_factory.mktemp("sharded") / "run"
    train(corpus, cache, out, 2, max_steps=8, save_interval=4, batch_size=3, parallel="fsdp")
    return out


def test_sharded_resume_is_exact_on_the_same_processes(corpus, cache, tmp_path, sharded_run):
    ckpt = sharded_run / "ckpt-0000004"
    assert sorted(p.name for p in ckpt.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"]
    kw = dict(max_steps=8, save_interval=4, batch_size=3, parallel="fsdp", resume=str(ckpt))
    train(corpus, cache, tmp_path / "resumed", 2, **kw)
    ref, resumed = metrics(sharded_run, "train_loss"), metrics(tmp_path / "resumed", "train_loss")
    assert sorted(resumed) == [5, 6, 7, 8] and all(resumed[s] == ref[s] for s in resumed)
    a, b = final_params(sharded_run), final_params(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: one thread per process


@pytest.mark.parametrize("nproc, batch", [(1, 6), (3, 2)])
def test_sharded_checkpoint_resumes_on_another_number_of_processes(corpus, cache, tmp_path, sharded_run, nproc, batch):
    """2 ranks -> 1 and -> 3: DCP reads each new shard from the pieces of the old ones; the global
    batch (6 sequences) is the same, so the run continues as it would have."""
    kw = dict(max_steps=8, save_interval=4, batch_size=batch, parallel="fsdp")
    proc = train(corpus, cache, tmp_path / "re", nproc, resume=str(sharded_run / "ckpt-0000004"), **kw)
    assert "resumed from" in proc.stdout
    ref, resumed = metrics(sharded_run, "train_loss"), metrics(tmp_path / "re", "train_loss")
    assert sorted(resumed) == [5, 6, 7, 8] and close({s: ref[s] for s in resumed}, resumed, 1e-6)
    assert_same_params(final_params(sharded_run), final_params(tmp_path / "re"))


def test_keep_last_best_and_resume_auto_with_sharded_checkpoints(corpus, cache, tmp_path):
    out = tmp_path / "run"
    kw = dict(max_steps=6, save_interval=2, eval_interval=2, keep_last=2, batch_size=2, parallel="fsdp")
    train(corpus, cache, out, 2, **kw)
    assert [p.name for p in sorted(out.glob("ckpt-*"))] == ["ckpt-0000004", "ckpt-0000006"]
    assert (out / "best").is_symlink() and (out / "best/.metadata").is_file()
    best = load(out / "best").best  # the evaluation with the lowest validation loss
    assert best["val_loss"] == min(metrics(out, "val_loss").values())
    assert f"step {best['step']} " in (out / "final/README.md").read_text()
    # evaluate and generate read a sharded checkpoint as they read a file: the export's weights
    from minitrain.models.hub import read_safetensors
    from minitrain.training.loader import load_model

    model, _ = load_model(str(out / "best"), "causal")
    exported = read_safetensors(out / "final/model.safetensors")
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight.t(), exported["transformer.h.1.mlp.c_fc.weight"])
    # a longer run continues from the newest complete checkpoint; a crashed write's hidden folder
    # and a folder without its index are not taken for one
    (out / ".ckpt-0000008.partial").mkdir()
    shutil.copytree(out / "ckpt-0000006", out / "ckpt-0000007")
    (out / "ckpt-0000007/.metadata").unlink()
    proc = train(corpus, cache, out, 2, **dict(kw, max_steps=8, resume="auto"))
    assert "resumed from" in proc.stdout and "ckpt-0000006" in proc.stdout
    assert "skipping unreadable checkpoint" in proc.stdout
    assert (out / "ckpt-0000008").is_dir() and not (out / ".ckpt-0000008.partial").exists()


@pytest.fixture(scope="module")
def llama_folder(sft_model, tmp_path_factory):
    """A small random Llama (untied head) as a Hugging Face folder, with sft_model's tokenizer."""
    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
    Llama(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(sft_model / name, folder / name)
    return folder


@pytest.mark.parametrize("family, lora", [("gpt2", 0), ("llama", 0), ("gpt2", 4)])
def test_fsdp_fine_tuning_exports_what_one_process_does(corpus, cache, tmp_path, sft_model, llama_folder, family, lora):
    """Fine-tuning a Hugging Face folder under FSDP (built on the meta device, each rank copying
    its slices of the memory-mapped weights: GPT-2's transposed Conv1D weights and padded
    vocabulary, Llama's untied head) exports the same final/ as one process without it; the same
    with LoRA (adapters put on the meta model, then sharded with the base; merged at the export)."""
    from minitrain.models.hub import read_safetensors

    base = sft_model if family == "gpt2" else llama_folder
    kw = dict(init_from=str(base), block_size=32, lora_rank=lora, export="final", lr=1e-3)
    train(corpus, cache, tmp_path / "one", batch_size=4, **kw)
    train(corpus, cache, tmp_path / "fsdp", 2, batch_size=2, parallel="fsdp", **kw)
    a = read_safetensors(tmp_path / "one/final/model.safetensors")
    b = read_safetensors(tmp_path / "fsdp/final/model.safetensors")
    assert_same_params(a, b)
    assert max_param_diff(a, read_safetensors(base / "model.safetensors")) > 1e-4  # trained weights, not the base
    if lora:  # the frozen base's fingerprint (a resume's check), gathered from the shards, is the whole model's
        one, sharded = load(tmp_path / "one/ckpt-0000003.pt").lora, load(tmp_path / "fsdp/ckpt-0000003").lora
        assert one["base"] == sharded["base"] and one["trainable"] == sharded["trainable"]


def test_llama_under_fsdp_with_activation_checkpointing_and_compile(corpus, cache, tmp_path):
    """The Llama family, and what must not change the result under FSDP: activation checkpointing
    (blocks recomputed in backward, gathered again) and torch.compile per block, against plain
    FSDP on the same 2 processes. (--cpu_offload needs a GPU: tests/test_gpu.py.)"""
    llama = dict(arch="llama", n_head=4, n_kv_head=2, batch_size=2, parallel="fsdp")
    train(corpus, cache, tmp_path / "plain", 2, **llama)
    train(corpus, cache, tmp_path / "options", 2, activation_checkpointing=True, **llama)
    assert close(metrics(tmp_path / "plain", "train_loss"), metrics(tmp_path / "options", "train_loss"), 1e-6)
    assert max_param_diff(final_params(tmp_path / "plain"), final_params(tmp_path / "options")) <= 1e-6
    train(corpus, cache, tmp_path / "compiled", 2, compile=True, **llama)
    assert close(metrics(tmp_path / "plain", "train_loss"), metrics(tmp_path / "compiled", "train_loss"), 1e-4)
    assert max_param_diff(final_params(tmp_path / "plain"), final_params(tmp_path / "compiled")) <= 1e-4


def test_bad_fsdp_input_one_sentence_exit_2(corpus, cache, tmp_path, sharded_run, capsys):
    """Options that conflict with --parallel fsdp, a checkpoint of the other kind, a checkpoint
    folder missing one rank's shard: one sentence, exit 2, no hang, nothing written."""
    bad = tmp_path / "bad"
    cases = [
        (dict(parallel="fsdp", ddp="torch"), "--ddp=torch"),
        (dict(parallel="fsdp", dtype="fp16"), "--dtype=fp16"),
        (dict(parallel="fsdp", compile_scope="model"), "--compile_scope=blocks"),
        (dict(cpu_offload=True), "--parallel fsdp"),
        (dict(parallel="fsdp", cpu_offload=True), "on a CPU they are there already"),
    ]
    for kw, words in cases:  # the command line's own checks: in this process (tests.test_faults.cli_fails)
        assert words in cli_fails(tiny_argv(corpus, bad, cache, **kw), capsys)
        assert not bad.exists()
    kw = dict(resume=str(sharded_run / "ckpt-0000004"), batch_size=3)
    proc = run_script("train_gpt2.py", tiny_gpt2_args(corpus, bad, cache, **kw), check=False)
    assert proc.returncode == 2 and "resume it with the --parallel" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not bad.exists()
    ddp_run = tmp_path / "ddp"
    train(corpus, cache, ddp_run, max_steps=2, save_interval=2, batch_size=2)
    args = tiny_gpt2_args(corpus, bad, cache, parallel="fsdp", resume=str(ddp_run / "ckpt-0000002.pt"))
    proc = run_script("train_gpt2.py", args, check=False)
    assert proc.returncode == 2 and "resume it with the --parallel" in proc.stderr
    damaged = tmp_path / "damaged"
    shutil.copytree(sharded_run / "ckpt-0000004", damaged / "ckpt-0000004")
    (damaged / "ckpt-0000004/__1_0.distcp").unlink()
    kw = dict(max_steps=8, batch_size=3, parallel="fsdp", resume=str(damaged / "ckpt-0000004"))
    proc = run_script("train_gpt2.py", tiny_gpt2_args(corpus, bad, cache, **kw), nproc=2, check=False, timeout=120)
    assert proc.returncode != 0 and "__1_0.distcp is missing" in proc.stderr, proc.stderr[-2000:]
    assert not (bad / "ckpt-0000008").exists()


def test_a_model_without_blocks_is_refused(tmp_path):
    from minitrain import UserError
    from minitrain.training import dist, fsdp

    with dist.process_group("cpu", group_of_one=True) as world:
        with pytest.raises(UserError, match="no transformer blocks"):
            fsdp.shard(torch.nn.Linear(4, 4), world, torch.float32, cpu_offload=False)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2)  # fmt: skip
    assert len(Llama(cfg).blocks()) == 2
