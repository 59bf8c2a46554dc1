"""Reliability by class of fault (issue 17): every path a run touches fails in one sentence with
exit 2 and leaves the file system as it was; nothing read back from disk is trusted blindly; no
run is replaced without --overwrite; values are checked up front; signals and ranks."""

import gc
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_gpt2
import train_mrpc
from minitrain.cli import run_cli
from minitrain.data import sources
from minitrain.training import rundir
from tests.helpers import ROOT, metrics, run_main, script_cmd, script_env, start_script, tiny_gpt2_args


def snapshot(root) -> dict:
    """Every path below `root` with its size and modification time (folders too)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_size if not os.path.isdir(p) else 0, st.st_mtime_ns)
    return out


def cli_fails(argv, capsys, script=train_gpt2, code=2) -> str:
    """Run a script's command line in this process; it must exit with `code` and print exactly one
    line, `error: ...`, and no traceback. Returns that line."""
    old = sys.argv
    sys.argv = [script.__file__, *argv]
    try:
        with pytest.raises(SystemExit) as e:
            run_cli(script.main, script.Config)
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == code and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def tiny_argv(corpus, out_dir, cache, **kw) -> list[str]:
    return [f"--{k}={v}" for k, v in tiny_gpt2_args(corpus, out_dir, cache, **kw).items()]


# ----------------------------------------------------------------------------------------------
# file-system faults: one sentence, exit 2, nothing half-made


def _setup_fs_case(tmp, case):
    """(extra options, expected words) for one fault, building what it needs under tmp."""
    (tmp / "a_file").write_text("x")
    if case == "data unreadable":
        return dict(data="/proc/self/mem"), "cannot be read (Input/output error)"
    if case == "data folder without text":
        (tmp / "texts" / "not_a_file.txt").mkdir(parents=True)
        return dict(data=str(tmp / "texts")), "has no .txt, .jsonl, .jsonl.gz or .parquet files"
    if case == "out_dir is a file":
        return dict(out_dir=str(tmp / "a_file")), "is a file, not a folder"
    if case == "out_dir inside a file":
        return dict(out_dir=str(tmp / "a_file" / "run")), "which is a file, not a folder"
    if case == "out_dir read-only":
        return dict(out_dir="/sys/minitrain-run"), "--out_dir=/sys/minitrain-run cannot be"
    if case == "out_dir empty":
        return dict(out_dir=""), "--out_dir is empty"
    if case == "cache_dir is a file":
        return dict(cache_dir=str(tmp / "a_file")), "--cache_dir="
    if case == "config is a folder":
        (tmp / "cfg.toml").mkdir()
        return dict(config=str(tmp / "cfg.toml")), "is a folder; pass a .toml file"
    if case == "config not UTF-8":
        (tmp / "cfg.toml").write_bytes(b"lr = 0.1\n\xff\xfe\n")
        return dict(config=str(tmp / "cfg.toml")), "is not UTF-8 text"
    if case == "tokenizer missing":
        return dict(tokenizer=str(tmp / "no_tokenizer")), "does not exist"
    if case == "init_from config.json is a folder":
        (tmp / "model" / "config.json").mkdir(parents=True)
        return dict(init_from=str(tmp / "model")), "has no config.json"
    if case == "resume is a folder":
        return dict(resume=str(tmp)), "is a folder; pass a checkpoint file in it"
    if case == "resume is not a checkpoint":
        return dict(resume=str(tmp / "a_file")), "is not a checkpoint file"
    raise AssertionError(case)


def _writable(folder) -> bool:
    probe = os.path.join(folder, "minitrain-probe")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    os.rmdir(probe)
    return True


FS_CASES = [
    "data unreadable",
    "data folder without text",
    "out_dir is a file",
    "out_dir inside a file",
    "out_dir read-only",
    "out_dir empty",
    "cache_dir is a file",
    "config is a folder",
    "config not UTF-8",
    "tokenizer missing",
    "init_from config.json is a folder",
    "resume is a folder",
    "resume is not a checkpoint",
]


@pytest.mark.parametrize("case", FS_CASES)
def test_file_system_faults(corpus, tmp_path, capsys, case):
    if case == "out_dir read-only" and _writable("/sys"):
        pytest.skip("no read-only folder on this machine")
    extra, words = _setup_fs_case(tmp_path, case)
    options = dict(tiny_gpt2_args(corpus, tmp_path / "out", tmp_path / "cache"), **extra)
    config = options.pop("config", None)
    argv = [f"--{k}={v}" for k, v in options.items()] + (["--config", config] if config else [])
    before = snapshot(tmp_path)
    line = cli_fails(argv, capsys)
    assert words in line, line
    assert snapshot(tmp_path) == before  # not an empty out_dir, a tokenizer.json or a cache file


def test_disk_full_mid_run_keeps_the_previous_checkpoint(corpus, cache, tmp_path, capsys, monkeypatch):
    """A fault only a running job meets (the disk fills while the logger writes): one sentence,
    exit 2, and the last checkpoint still resumes."""
    from minitrain.training import logger

    real_log, calls = logger.Logger.log, []

    def log(self, step, **scalars):
        calls.append(step)
        if step == 5:
            raise OSError(28, "No space left on device", str(tmp_path / "out/metrics.jsonl"))
        real_log(self, step, **scalars)

    monkeypatch.setattr(logger.Logger, "log", log)
    line = cli_fails(tiny_argv(corpus, tmp_path / "out", cache, max_steps=8, save_interval=3), capsys)
    assert "No space left on device" in line and "metrics.jsonl" in line
    monkeypatch.setattr(logger.Logger, "log", real_log)
    assert rundir.latest(tmp_path / "out").name == "ckpt-0000003.pt"
    assert run_main(corpus, tmp_path / "out", cache, max_steps=8, save_interval=3, resume="auto")["step"] == 8


# ----------------------------------------------------------------------------------------------
# nothing read back from disk is trusted blindly


@pytest.mark.parametrize("damage", ["zeros", "other ids", "truncated"])
def test_a_damaged_token_cache_is_rebuilt_and_training_is_unchanged(corpus, tmp_path, capfd, damage):
    cache = tmp_path / "cache"
    # with the garbage collector off, the second run finds the cache folder free only if the first
    # released its lock on it when it ended (in one process, as a notebook or a sweep runs them)
    gc.disable()
    try:
        run_main(corpus, tmp_path / "clean", cache, max_steps=3)
        for path in cache.glob("shards-*/*_train_*.bin"):
            raw = bytearray(path.read_bytes())
            if damage == "zeros":
                raw = bytearray(len(raw))
            elif damage == "other ids":
                raw = raw[2:] + raw[:2]  # the same ids, shifted by one token: same size, other content
            else:
                raw = raw[: len(raw) // 2]
            path.write_bytes(bytes(raw))
        capfd.readouterr()
        run_main(corpus, tmp_path / "again", cache, max_steps=3)
    finally:
        gc.enable()
    assert "does not match the checksum recorded when it was written; tokenizing again" in capfd.readouterr().err
    assert metrics(tmp_path / "again", "train_loss") == metrics(tmp_path / "clean", "train_loss")


def test_a_damaged_tokenizer_cache_is_retrained(corpus, tmp_path, capfd):
    cache = tmp_path / "cache"
    run_main(corpus, tmp_path / "clean", cache, max_steps=2)
    (bpe,) = cache.glob("bpe-*.json")
    bpe.write_text(bpe.read_text().replace('"Ġt', '"Ġq', 1))  # a merge changed in place
    run_main(corpus, tmp_path / "again", cache, max_steps=2)
    assert "does not match its checksum; training again" in capfd.readouterr().out
    assert metrics(tmp_path / "again", "train_loss") == metrics(tmp_path / "clean", "train_loss")


def test_checkpoints_of_the_other_script_or_no_checkpoint_are_refused(corpus, cache, tmp_path, capsys, minilm_dir):
    torch.save({"script": "train_mrpc", "model": {}, "step": 1, "history": []}, tmp_path / "mrpc.pt")
    torch.save({"script": "train_gpt2", "model": {}, "step": 1, "model_config": {}}, tmp_path / "gpt2.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    argv = tiny_argv(corpus, tmp_path / "out", cache, resume=str(tmp_path / "mrpc.pt"))
    assert "is a train_mrpc.py checkpoint; train_gpt2.py cannot resume from it" in cli_fails(argv, capsys)
    argv = tiny_argv(corpus, tmp_path / "out", cache, resume=str(tmp_path / "list.pt"))
    assert "is not a minitrain checkpoint (it has no model and step)" in cli_fails(argv, capsys)
    argv = [
        f"--model={minilm_dir}",
        "--data_dir=unused",
        f"--out_dir={tmp_path / 'm'}",
        f"--resume={tmp_path / 'gpt2.pt'}",
    ]
    line = cli_fails(argv, capsys, script=train_mrpc)
    assert "is a train_gpt2.py checkpoint; train_mrpc.py cannot resume from it" in line
    assert "weights_only" not in line


# ----------------------------------------------------------------------------------------------
# no run is replaced without --overwrite


def test_no_run_is_replaced_silently(corpus, cache, tmp_path, capsys):
    run_main(corpus, tmp_path / "a", cache, max_steps=3)
    run_main(corpus, tmp_path / "b", cache, max_steps=3)
    before = snapshot(tmp_path)
    # a's checkpoint resumed into b's folder would mix the two runs
    argv = tiny_argv(corpus, tmp_path / "b", cache, max_steps=6, resume=str(tmp_path / "a/ckpt-0000003.pt"))
    assert "holds another run; continuing" in cli_fails(argv, capsys)
    # the step checkpoints are gone, best.pt and final/ are not: not a folder to start again in
    os.replace(tmp_path / "b/ckpt-0000003.pt", tmp_path / "moved.pt")
    before = snapshot(tmp_path)
    argv = tiny_argv(corpus, tmp_path / "b", cache, max_steps=6, resume="auto")
    assert "found no readable step checkpoint" in cli_fails(argv, capsys)
    assert snapshot(tmp_path) == before


def test_a_second_run_on_the_same_folder_is_refused_and_a_crash_leaves_no_stale_lock(corpus, cache, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_gpt2_args(corpus, out, cache, max_steps=100000, eval_interval=100000, save_interval=50)
    proc = start_script("train_gpt2.py", args, stderr=None)
    try:
        t0 = time.time()
        while not rundir.list_checkpoints(out):
            assert proc.poll() is None and time.time() - t0 < 120
            time.sleep(0.1)
        line = cli_fails(tiny_argv(corpus, out, cache, max_steps=10, resume="auto"), capsys)
        assert f"is in use by another run (pid {proc.pid} on " in line
    finally:
        proc.kill()
        proc.wait()
    # killed with -9: the kernel dropped its lock, so the run can be continued at once
    result = run_main(corpus, out, cache, max_steps=checkpoint_step(out) + 2, eval_interval=100000, resume="auto")
    assert result["step"] == checkpoint_step(out)


def checkpoint_step(out) -> int:
    return int(rundir.latest(out).stem.split("-")[1])


# ----------------------------------------------------------------------------------------------
# values, checked before any work


@pytest.mark.parametrize(
    "extra,words",
    [
        (dict(n_embd=30, n_head=4), "--n_embd=30 is not divisible by --n_head=4"),
        (dict(top_p=1.5), "--top_p=1.5 must be in (0, 1]"),
        (dict(temperature=float("nan")), "--temperature=nan must be a finite number"),
        (dict(beta1=1.0), "--beta1=1.0 must be in [0, 1)"),
        (dict(prompt="caf\udce9"), "--prompt is not valid text"),
    ],
)
def test_values_are_refused_before_any_work(corpus, tmp_path, capsys, extra, words):
    before = snapshot(tmp_path)
    assert words in cli_fails(tiny_argv(corpus, tmp_path / "out", tmp_path / "cache", **extra), capsys)
    assert snapshot(tmp_path) == before


def test_binary_data_is_found_past_the_first_8_kb(tmp_path):
    path = tmp_path / "mostly_text.txt"
    path.write_bytes(b"plain text\n" * 2000 + b"\x00\x01binary tail")
    with pytest.raises(sources.UserError, match="looks like a binary file"):
        sources.read_text_file(path)


def test_mrpc_labels_the_training_split_never_has_are_refused(tmp_path):
    from minitrain import UserError
    from minitrain.data import pairs
    from tests.mrpc_data import make_pairs, write_glue

    train = [(a, b, 0) for a, b, _ in make_pairs(20, 0)]  # only label 0 in training
    folder = write_glue(tmp_path / "glue", train, make_pairs(10, 1))
    with pytest.raises(UserError, match=r"the validation split has label\(s\) \[1\] that the training split never has"):
        pairs.count_labels(pairs.load_local(folder, 0.1))
    with pytest.raises(UserError, match=r"--max_length=4 must be at least 5"):
        from minitrain.config import check

        check(train_mrpc.Config(max_length=4))


def test_a_symlink_loop_reads_each_file_once(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("only once\n" * 50)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    assert sources.files(str(folder)) == [folder / "a.txt"]
    assert sources.files(str(folder / "**" / "*.txt")) == [folder / "a.txt"]


# ----------------------------------------------------------------------------------------------
# signals and ranks


def test_two_sigterms_during_the_checkpoint_write_exit_cleanly(corpus, cache, tmp_path):
    out = tmp_path / "run"
    args = tiny_gpt2_args(corpus, out, cache, max_steps=100000, eval_interval=100000, save_interval=100000)
    proc = start_script("tests/slow_write.py", args)
    while len(metrics(out, "train_loss") if (out / "metrics.jsonl").exists() else {}) < 3:
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    while proc.stdout.readline().strip() != "WRITING CHECKPOINT":  # the stop's checkpoint is being written
        assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped by a signal at step" in stdout and "Traceback" not in stderr
    step = checkpoint_step(out)
    assert torch.load(rundir.latest(out), weights_only=True)["step"] == step
    assert run_main(corpus, out, cache, max_steps=step + 2, resume="auto")["step"] == step + 2


def test_ctrl_c_while_preparing_data_exits_130_in_one_sentence(tmp_path):
    out = tmp_path / "run"
    args = dict(out_dir=out, cache_dir=tmp_path / "cache", vocab_size=4096, max_steps=5, progress=False)
    proc = start_script("train_gpt2.py", args)
    while not proc.stdout.readline().startswith("config:"):
        assert proc.poll() is None
    time.sleep(0.5)  # reading Shakespeare, training a BPE of 4096 tokens
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        "error: interrupted (Ctrl-C); nothing was trained, and no file was left half-written."
    ]
    assert not out.exists()


def test_ranks_with_different_options_are_refused_in_seconds(corpus, cache, tmp_path):
    args = tiny_gpt2_args(corpus, tmp_path / "out", cache, batch_size=2)
    t0 = time.time()
    proc = subprocess.run(
        script_cmd("tests/rank_args.py", args, nproc=2),
        cwd=ROOT,
        env=script_env(MINITRAIN_RANK1_ARGS="--lr=0.5"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and time.time() - t0 < 60
    sentence = "rank 1 has other options than rank 0 (lr); every rank must be started with the same options"
    assert (proc.stdout + proc.stderr).count(sentence) == 1, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()
