"""Preemption, crashes, numerical faults and bad input: nothing lost, one sentence, exit 2."""

import signal
import subprocess
import time

import pytest
import torch

from minitrain import UserError
from minitrain.training import rundir
from tests.helpers import (
    final_params,
    metrics,
    run_main,
    run_script,
    start_script,
    tiny_gpt2_args,
)


def wait_for(predicate, proc, timeout=120):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.05)


def test_sigterm_saves_and_resume_matches_uninterrupted(corpus, cache, tmp_path):
    # all three runs in subprocesses with one thread each: bitwise equality needs the same
    # float summation order, and that depends on the number of threads
    kw = dict(max_steps=40, save_interval=100, eval_interval=100, dropout=0.1)
    run_script("train_gpt2.py", tiny_gpt2_args(corpus, tmp_path / "full", cache, **kw))
    out = tmp_path / "stopped"
    proc = start_script("train_gpt2.py", tiny_gpt2_args(corpus, out, cache, **kw))
    jsonl = out / "metrics.jsonl"
    wait_for(lambda: jsonl.exists() and len(metrics(out, "train_loss")) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped by a signal at step" in stdout and "--resume=auto" in stdout
    stopped_at = max(metrics(out, "train_loss"))
    assert stopped_at < 40 and rundir.latest(out).name == f"ckpt-{stopped_at:07d}.pt"
    run_script("train_gpt2.py", tiny_gpt2_args(corpus, out, cache, resume="auto", **kw))
    full, resumed = metrics(tmp_path / "full", "train_loss"), metrics(out, "train_loss")
    assert sorted(resumed) == list(range(1, 41))
    assert all(full[s] == resumed[s] for s in full)
    a, b = final_params(tmp_path / "full"), final_params(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_during_checkpoint_write_keeps_previous(corpus, cache, tmp_path):
    out = tmp_path / "killed"
    args = tiny_gpt2_args(corpus, out, cache, max_steps=12, save_interval=3)
    proc = start_script("tests/slow_save.py", args)
    # the second checkpoint's temporary file (not the tokenizer's, written at the start)
    wait_for(lambda: any(out.glob(".ckpt-0000006.pt.*.tmp")), proc)
    time.sleep(0.2)
    proc.kill()
    proc.communicate()
    assert [p.name for p in rundir.list_checkpoints(out)] == ["ckpt-0000003.pt"]
    assert rundir.latest(out).name == "ckpt-0000003.pt"
    result = run_main(corpus, out, cache, resume="auto", max_steps=12, save_interval=3)
    assert result["step"] == 12


def test_failed_checkpoint_write_stops_and_keeps_previous(corpus, cache, tmp_path, monkeypatch):
    real = rundir.save
    calls = []

    def disk_full(path, state):
        calls.append(path)
        if len(calls) > 1:  # ckpt-3 succeeds (best.pt is a link to it), ckpt-6 fails
            raise OSError(28, "No space left on device")
        real(path, state)

    monkeypatch.setattr(rundir, "save", disk_full)
    with pytest.raises(
        UserError,
        match=r"could not write checkpoint .*ckpt-0000006.pt \(No space "
        r"left on device\); the previous checkpoint is kept",
    ):
        run_main(corpus, tmp_path / "full", cache, max_steps=12, save_interval=3)
    assert [p.name for p in rundir.list_checkpoints(tmp_path / "full")] == ["ckpt-0000003.pt"]


def test_existing_out_dir_is_never_overwritten(corpus, cache, tmp_path):
    out = tmp_path / "run"
    run_main(corpus, out, cache, max_steps=3)
    before = (out / "metrics.jsonl").read_text()
    proc = run_script("train_gpt2.py", tiny_gpt2_args(corpus, out, cache, max_steps=3), check=False)
    assert proc.returncode == 2
    assert "already holds a run; continue it with --resume=auto" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "metrics.jsonl").read_text() == before
    run_main(corpus, out, cache, max_steps=3, overwrite=True)
    assert (out / "metrics.jsonl").read_text() != before


def test_non_finite_steps_are_skipped_then_the_run_stops(corpus, cache, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(UserError, match=r"3 consecutive steps had a non-finite loss or gradient"):
        run_main(
            corpus,
            out,
            cache,
            lr=1e30,
            warmup_steps=0,
            max_steps=20,
            max_bad_steps=3,
            save_interval=1,
            schedule="constant",
        )
    for path in rundir.list_checkpoints(out):  # every checkpoint written has finite weights
        state = torch.load(path, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.parametrize(
    "extra,message",
    [
        (dict(batch_size=0), "--batch_size=0 must be a positive number"),
        (dict(lr=-1), "--lr=-1.0 must be a positive number"),
        (dict(grad_accum_steps=-2), "--grad_accum_steps=-2 must be a positive number"),
        (
            dict(tokens_per_step=1000),
            "--tokens_per_step=1000 is not divisible by world_size x batch_size x block_size = 128",
        ),
        (
            dict(device="cuda"),
            "--device=cuda was asked for, but this machine has no usable CUDA GPU",
        ),
        (dict(data="/no/such.txt"), "is not a file, a folder, a glob"),
        (dict(init_from="gpt2", data=None), "could not download 'gpt2' from the Hugging Face hub"),
        (dict(schedule="wavy"), "--schedule='wavy' is not one of linear, cosine, constant"),
    ],
)
def test_bad_values_fail_in_one_sentence_and_write_nothing(corpus, cache, tmp_path, extra, message):
    # data=None: keep the test corpus (the case is about something else)
    args = tiny_gpt2_args(corpus, tmp_path / "out", cache, **{k: v for k, v in extra.items() if v is not None})
    proc = run_script("train_gpt2.py", args, check=False, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").glob("ckpt-*")) and not (tmp_path / "out/metrics.jsonl").exists()


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "is empty: there is no text in it"),
        (b"\x00\x01\x02binary", "looks like a binary file, not text"),
        (b"\xff\xfe\xfa not utf8", "is not UTF-8 text"),
    ],
)
def test_bad_data_files(cache, tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    proc = run_script("train_gpt2.py", tiny_gpt2_args(bad, tmp_path / "out", cache), check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_resume_with_another_model_shape_is_refused(corpus, cache, tmp_path):
    run_main(corpus, tmp_path / "a", cache, max_steps=3)
    with pytest.raises(
        UserError,
        match=r"the checkpoint holds a model of shape .* but "
        r"--init_from=scratch gives",
    ):
        run_main(
            corpus,
            tmp_path / "b",
            cache,
            n_layer=3,
            max_steps=6,
            resume=str(tmp_path / "a/ckpt-0000003.pt"),
        )


def test_sigterm_under_torchrun_every_rank_stops_at_the_same_step(corpus, cache, tmp_path):
    kw = dict(max_steps=60, batch_size=2, save_interval=100, eval_interval=100, dropout=0.1)
    run_script("train_gpt2.py", tiny_gpt2_args(corpus, tmp_path / "full", cache, **kw), nproc=2)
    out = tmp_path / "stopped"
    proc = start_script("train_gpt2.py", tiny_gpt2_args(corpus, out, cache, **kw), nproc=2, stderr=subprocess.STDOUT)
    wait_for(lambda: (out / "metrics.jsonl").exists() and len(metrics(out, "train_loss")) >= 5, proc)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
    output, _ = proc.communicate(timeout=120)
    assert "stopped by a signal at step" in output, output[-3000:]
    stopped_at = max(metrics(out, "train_loss"))
    assert rundir.latest(out).name == f"ckpt-{stopped_at:07d}.pt"
    run_script("train_gpt2.py", tiny_gpt2_args(corpus, out, cache, resume="auto", **kw), nproc=2)
    full, resumed = metrics(tmp_path / "full", "train_loss"), metrics(out, "train_loss")
    assert sorted(resumed) == list(range(1, 61))
    assert all(full[s] == resumed[s] for s in full)


def test_model_folder_and_tokenizer_problems_exit_2(corpus, cache, tmp_path, tiny_gpt2_dir):
    import shutil

    from minitrain.data.tokenizer import train_bpe

    # the tiny model has 101 tokens; a 384-token tokenizer does not belong to it
    folder = tmp_path / "model"
    shutil.copytree(tiny_gpt2_dir, folder)
    train_bpe([corpus.read_text()[:30000]], 384, folder / "tokenizer.json")

    def init_from_fails(run: str, init_from) -> str:
        """train_gpt2 fine-tuning from `init_from` stops with exit 2, no traceback; its stderr."""
        args = tiny_gpt2_args(corpus, tmp_path / run, cache, init_from=init_from)
        proc = run_script("train_gpt2.py", args, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        return proc.stderr

    assert "do not belong together" in init_from_fails("a", folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert "not a valid safetensors file" in init_from_fails("b", folder)
    assert "does not exist" in init_from_fails("c", tmp_path / "nothing")
