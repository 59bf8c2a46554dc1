"""Data parallelism under torchrun on CPU (gloo, 2 processes)."""

import pytest
import torch

from tests.helpers import (
    EQ_LR,
    EQ_RUN,
    RESTART_RUN,
    assert_same_params,
    close,
    final_params,
    max_param_diff,
    metrics,
    run_script,
    tiny_gpt2_args,
)

# BERT's fine-tuning rate: the near-zero gradient entries of a real encoder (not only the key
# bias) meet the same amplification as GPT-2's key bias (see helpers.EQ_LR); on MiniLM it
# measured 1.4e-6 at lr 2e-4 and 1.3e-7 at 2e-5.
MRPC_LR = 2e-5


def test_replicas_identical_and_gradients_averaged():
    proc = run_script("tests/ddp_worker.py", {}, nproc=2)
    assert "replicas identical after every step" in proc.stdout


@pytest.mark.xdist_group("shared_run")
@pytest.mark.parametrize("accum", [1, 2])
def test_two_processes_equal_one_process_with_double_batch(shared_run, accum):
    one = shared_run(batch_size=4, grad_accum_steps=accum, **EQ_RUN)
    two = shared_run(2, batch_size=2, grad_accum_steps=accum, **EQ_RUN)
    assert min(metrics(one, "grad_norm").values()) > EQ_RUN["max_grad_norm"]  # the clipping acts
    assert_same_params(final_params(one), final_params(two))
    for key in ("train_loss", "val_loss"):
        assert close(metrics(one, key), metrics(two, key), 1e-5)


@pytest.mark.xdist_group("shared_run")
def test_minitrain_ddp_equals_torch_ddp(shared_run):
    ours = shared_run(2, batch_size=2, grad_accum_steps=2, **EQ_RUN)
    reference = shared_run(2, batch_size=2, grad_accum_steps=2, ddp="torch", **EQ_RUN)
    assert_same_params(final_params(ours), final_params(reference))
    assert close(metrics(ours, "train_loss"), metrics(reference, "train_loss"), 1e-6)


def test_checkpoint_from_two_processes_resumes_in_one(shard_folder, cache, tmp_path):
    """On a folder of ~20 shards (a global batch crosses shard ends): 2 processes, then 1 from
    their checkpoint, equal 2 all along."""
    kw = dict(max_steps=8, save_interval=4, lr=EQ_LR)
    run_script(
        "train_gpt2.py",
        tiny_gpt2_args(shard_folder, tmp_path / "two", cache, batch_size=2, **kw),
        nproc=2,
    )
    ckpt = tmp_path / "two/ckpt-0000004.pt"
    assert len(torch.load(ckpt, weights_only=True)["rng"]) == 2
    run_script(
        "train_gpt2.py",
        tiny_gpt2_args(shard_folder, tmp_path / "one", cache, batch_size=4, resume=str(ckpt), **kw),
    )
    two, one = metrics(tmp_path / "two", "train_loss"), metrics(tmp_path / "one", "train_loss")
    assert sorted(one) == [5, 6, 7, 8]
    assert all(abs(one[s] - two[s]) < 1e-5 for s in one), (one, two)
    assert max_param_diff(final_params(tmp_path / "one"), final_params(tmp_path / "two")) <= 1e-6


def test_readme_torchrun_command_finishes(corpus, cache, tmp_path):
    """`torchrun --nproc_per_node=2 train_gpt2.py` with small settings, on the default corpus."""
    args = dict(
        out_dir=tmp_path / "run",
        cache_dir=cache,
        max_steps=4,
        n_layer=1,
        n_embd=32,
        n_head=2,
        block_size=32,
        batch_size=4,
        eval_interval=4,
        eval_batches=2,
        num_samples=1,
        max_new_tokens=8,
        vocab_size=512,
    )
    proc = run_script("train_gpt2.py", args, nproc=2)
    assert "2 processes x 4 sequences" in proc.stdout
    assert (tmp_path / "run/final/model.safetensors").is_file()


def test_mrpc_two_processes_equal_one_process(minilm_dir, tmp_path):
    from tests.mrpc_data import make_pairs, write_glue

    data = write_glue(tmp_path / "glue", make_pairs(64, 0), make_pairs(24, 1))
    base = dict(
        model=minilm_dir,
        data_dir=data,
        epochs=1,
        max_steps=3,
        dropout=0.0,
        lr=MRPC_LR,
        progress=False,
        log_interval=1,
        dtype="fp32",
        eval_batch_size=8,
    )
    run_script("train_mrpc.py", dict(base, out_dir=tmp_path / "one", batch_size=8))
    proc = run_script("train_mrpc.py", dict(base, out_dir=tmp_path / "two", batch_size=4), nproc=2)
    assert "2 processes x 4 pairs" in proc.stdout
    one, two = metrics(tmp_path / "one", "train_loss"), metrics(tmp_path / "two", "train_loss")
    assert one.keys() == two.keys() and all(abs(one[s] - two[s]) < 1e-5 for s in one)
    g1, g2 = metrics(tmp_path / "one", "grad_norm"), metrics(tmp_path / "two", "grad_norm")
    assert all(abs(g1[s] - g2[s]) <= 1e-5 * g1[s] for s in g1)  # the averaged gradient
    a1, a2 = metrics(tmp_path / "one", "accuracy"), metrics(tmp_path / "two", "accuracy")
    assert a1 == a2  # evaluation is reduced over ranks: the same global figures
    p1, p2 = final_params(tmp_path / "one"), final_params(tmp_path / "two")
    # The attention key bias has an exactly zero true gradient (softmax ignores a shift shared by
    # all keys), so what AdamW sees there is rounding noise, normalised up to ~lr-sized moves
    # (see EQ_LR). Every other parameter must agree to 1e-6.
    key_bias = [k for k in p1 if k.endswith("attention.self.key.bias")]
    # Adam moves a parameter by at most ~lr per step, whatever its gradient: that bounds them.
    assert max_param_diff({k: p1[k] for k in key_bias}, {k: p2[k] for k in key_bias}) <= 3 * MRPC_LR
    rest = [k for k in p1 if k not in key_bias]
    assert max_param_diff({k: p1[k] for k in rest}, {k: p2[k] for k in rest}) <= 1e-6


@pytest.mark.xdist_group("shared_run")
def test_torchrun_max_restarts_recovers_a_crashed_worker(corpus, cache, tmp_path, shared_run):
    ref = shared_run(2, parallel="ddp", **RESTART_RUN)
    out = tmp_path / "crashy"
    args = tiny_gpt2_args(corpus, out, cache, resume="auto", parallel="ddp", **RESTART_RUN)
    proc = run_script(
        "tests/crash_once.py",
        args,
        nproc=2,
        launcher_args=["--max-restarts=1"],
        env={"CRASH_MARKER": str(tmp_path / "crashed")},
    )
    assert (tmp_path / "crashed").exists()  # the worker did crash once
    assert "resumed from" in proc.stdout
    assert close(metrics(ref, "train_loss"), metrics(out, "train_loss"), 1e-6)
    assert max_param_diff(final_params(ref), final_params(out)) <= 1e-6


def test_minitrain_ddp_with_torch_compile(corpus, cache, tmp_path):
    kw = dict(max_steps=3, batch_size=2, lr=EQ_LR, n_layer=1)
    run_script("train_gpt2.py", tiny_gpt2_args(corpus, tmp_path / "eager", cache, **kw), nproc=2)
    run_script(
        "train_gpt2.py",
        tiny_gpt2_args(corpus, tmp_path / "compiled", cache, compile=True, **kw),
        nproc=2,
    )
    eager, compiled = (
        metrics(tmp_path / "eager", "train_loss"),
        metrics(tmp_path / "compiled", "train_loss"),
    )
    assert all(abs(eager[s] - compiled[s]) < 1e-4 for s in eager)
    assert max_param_diff(final_params(tmp_path / "eager"), final_params(tmp_path / "compiled")) < 1e-4


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_ddp_with_mixed_precision(corpus, cache, tmp_path, dtype):
    from minitrain.training.precision import cpu_supports_fp16

    if dtype == "fp16" and not cpu_supports_fp16():
        pytest.skip("this CPU cannot run fp16 autocast")
    out = tmp_path / dtype
    run_script(
        "train_gpt2.py",
        tiny_gpt2_args(corpus, out, cache, dtype=dtype, max_steps=4, batch_size=2),
        nproc=2,
    )
    losses = metrics(out, "train_loss")
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    scaler = torch.load(out / "ckpt-0000003.pt", weights_only=True)["scaler"]
    if dtype == "fp16":
        assert scaler["scale"] > 0  # loss scaling on, and its state saved for the resume
    else:
        assert scaler == {}  # bf16 has fp32's exponent range: no loss scaling


def test_patience_stops_every_rank_at_the_same_step(corpus, cache, tmp_path):
    kw = dict(max_steps=20, batch_size=2, eval_interval=2, save_interval=10, patience=2, min_delta=100.0)
    out = tmp_path / "early"
    proc = run_script("train_gpt2.py", tiny_gpt2_args(corpus, out, cache, **kw), nproc=2)
    assert "step 4: the validation loss has not improved by more than 100.0 in 2 evaluations" in proc.stdout
    assert sorted(p.name for p in out.glob("ckpt-*.pt")) == ["ckpt-0000004.pt"]
    assert (out / "final/model.safetensors").is_file() and (out / "report.png").is_file()
    proc = run_script("train_gpt2.py", tiny_gpt2_args(corpus, out, cache, resume="auto", **kw), nproc=2)
    assert "stopped early (--patience=2); nothing left to do" in proc.stdout


def test_evaluate_on_two_ranks_equals_one(corpus, cache, tmp_path):
    import json
    import subprocess

    from tests.helpers import PY, ROOT, script_env

    run_script("train_gpt2.py", tiny_gpt2_args(corpus, tmp_path / "run", cache, max_steps=2))
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"scores{nproc}.json"
        launcher = [PY] if nproc == 1 else [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        args = [f"--model={tmp_path / 'run/final'}", f"--data={corpus}", "--block_size=32", f"--cache_dir={cache}"]
        cmd = launcher + ["-m", "minitrain.evaluate", *args, "--progress=false", "--dtype=fp32", f"--out={out}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[nproc] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert (one["tokens"], one["bytes"]) == (two["tokens"], two["bytes"]) and one["tokens"] > 100_000
    assert abs(one["loss"] - two["loss"]) <= 1e-6 and abs(one["bits_per_byte"] - two["bits_per_byte"]) <= 1e-6


def test_compiled_blocks_keep_the_all_reduce_overlapped_with_backward():
    """--compile_scope blocks: BucketedDDP still launches each bucket's all-reduce while backward
    has blocks left to do, exactly as in eager mode (not all after one compiled backward)."""
    import re
    import subprocess

    from tests.helpers import PY, ROOT, script_env

    counts = {}
    for mode in ("eager", "blocks"):
        proc = subprocess.run(
            [PY, str(ROOT / "tests/overlap_worker.py"), mode],
            cwd=ROOT,
            env=script_env(),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        before, total = map(int, re.search(r"launches before block 0: (\d+) of (\d+)", proc.stdout).groups())
        counts[mode] = (before, total)
    assert counts["blocks"] == counts["eager"] and counts["eager"][0] >= counts["eager"][1] // 2
