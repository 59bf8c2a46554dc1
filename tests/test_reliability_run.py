"""Reliability, third round (issue 22), the run's side, by class: the data a run continues on is the
data it started with (2); a result says what it is (4); refusals name the true cause (5); a signal
never turns a clean stop into a kill (6). Each refusal: exit 2, one `error:` line, no traceback, the
file system as it was."""

import json
import shutil
import signal
import time

import pytest
import torch

from minitrain.config import parse_args
from minitrain.data.prepare import prepare
from minitrain.data.tokenizer import train_bpe
from minitrain.tools import sweep
from minitrain.training import rundir
from tests.helpers import metrics, run_main, start_script, tiny_gpt2_args
from tests.test_faults import cli_fails, snapshot, tiny_argv


@pytest.fixture(scope="module")
def texts(tmp_path_factory, corpus):
    """Two text sources that differ, and a prepared shard folder (with its tokenizer) to grow."""
    root = tmp_path_factory.mktemp("texts")
    text = corpus.read_text()
    (root / "a.txt").write_text(text[:30000])
    (root / "b.txt").write_text(text[30000:60000])
    tok = train_bpe([text[:30000]], 300)
    prepare(str(root / "a.txt"), root / "shards", tok, shard_tokens=2000)
    return root


# ----------------------------------------------------------------------------------------------
# class 2: the data a run continues on is the data it started with


def _grow(folder):
    """A shard folder that gained a shard (a copy of its first, under a new number)."""
    first = sorted(folder.glob("*_train_*.bin"))[0]
    shutil.copy(first, first.with_name(first.name.replace("_000000", "_000099")))


def _shrink(folder):
    """A shard folder that lost its last training shard."""
    sorted(folder.glob("*_train_*.bin"))[-1].unlink()


@pytest.mark.parametrize(
    "change",
    ["another --data file", "another --val_data", "a shard folder that gained a shard", "a shard folder lost one"],
)
def test_resume_on_other_data_is_refused_naming_both(texts, cache, tmp_path, capsys, change):
    shards = tmp_path / "shards"
    shutil.copytree(texts / "shards", shards)
    (shards / "meta.json").unlink()  # an llm.c folder (no listing): the checkpoint's record is the only witness
    first = dict(data=str(texts / "a.txt"))
    then = dict(data=str(texts / "b.txt"))
    if change == "another --val_data":
        first, then = dict(first, val_data=str(texts / "b.txt")), dict(first, val_data=str(texts / "a.txt") + "x")
        (texts / "a.txtx").write_text((texts / "a.txt").read_text()[:5000])
    if change.startswith("a shard folder"):
        first = then = dict(data=str(shards))
    out = tmp_path / "run"
    run_main(texts / "a.txt", out, cache, max_steps=2, **first)
    if change == "a shard folder that gained a shard":
        _grow(shards)
    if change == "a shard folder lost one":
        _shrink(shards)
    before = snapshot(tmp_path)
    line = cli_fails(tiny_argv(texts / "a.txt", out, cache, max_steps=4, resume="auto", **then), capsys)
    assert "was trained on --data=" in line and "pass --new_data" in line, line
    if change == "another --data file":
        assert str(texts / "a.txt") in line and str(texts / "b.txt") in line
    if change.startswith("a shard folder"):
        assert "as it was then" in line and "its shards or tokenizer changed" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("change", ["lost a shard", "gained a shard", "a shard changed size"])
def test_a_prepared_folder_is_checked_against_its_meta_json(texts, cache, tmp_path, capsys, change):
    shards = tmp_path / "shards"
    shutil.copytree(texts / "shards", shards)
    if change == "lost a shard":
        _shrink(shards)
    if change == "gained a shard":
        _grow(shards)
    if change == "a shard changed size":
        last = sorted(shards.glob("*_train_*.bin"))[-1]
        last.write_bytes(last.read_bytes()[:-2])  # one uint16 id fewer: the header is rewritten below
        import numpy as np

        header = np.frombuffer(last.read_bytes()[:1024], dtype="<i4").copy()
        header[2] -= 1
        last.write_bytes(header.tobytes() + last.read_bytes()[1024:])
    before = snapshot(tmp_path)
    line = cli_fails(tiny_argv(texts / "a.txt", tmp_path / "run", cache, data=str(shards)), capsys)
    words = {
        "lost a shard": "which its meta.json lists",
        "gained a shard": "does not list",
        "a shard changed size": "it changed",
    }
    assert words[change] in line, line
    assert snapshot(tmp_path) == before


def test_new_data_continues_with_evaluations_restarted(texts, cache, tmp_path):
    out = tmp_path / "run"
    run_main(texts / "a.txt", out, cache, max_steps=2, eval_interval=2, save_interval=2)
    assert (out / "best.pt").exists()
    result = run_main(
        texts / "b.txt", out, cache, max_steps=4, eval_interval=2, save_interval=2, resume="auto", new_data=True
    )
    assert result["step"] == 4
    state = torch.load(out / "ckpt-0000004.pt", weights_only=True)
    assert [e["step"] for e in state["evals"]] == [2, 4]  # the resume step evaluated on the new data, then 4
    assert state["data"]["data"] == str(texts / "b.txt")
    assert torch.load(out / "best.pt", weights_only=True)["step"] in (2, 4) and state["best"]["step"] in (2, 4)


# ----------------------------------------------------------------------------------------------
# class 4: a result says what it is


def test_export_best_is_an_evaluated_step_and_says_so(corpus, cache, tmp_path):
    """Saves at 2, 4, 6, 8, evaluations at 0, 3, 6, 8: only 6 and 8 are evaluated saved steps, so
    best.pt (and final/) can only be one of them, labelled with its own validation loss."""
    out = tmp_path / "run"
    run_main(corpus, out, cache, max_steps=8, eval_interval=3, save_interval=2)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["step"] in (6, 8) and best["best"]["step"] == best["step"]
    val = {r["step"]: r["val_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if "val_loss" in r}  # fmt: skip
    readme = (out / "final/README.md").read_text()
    assert f"step {best['step']} (the lowest validation loss, {val[best['step']]:.4f})" in readme


@pytest.mark.parametrize(
    "extra, words",
    [
        (dict(lora_rank=2, lora_targets="lm_head"), "lm_head is never called as a layer by the model's forward"),
        (dict(lora_rank=2, lora_targets="c_attn,lm_head"), "lm_head is never called as a layer"),
        ("same file", "holds training data"),
        ("folder holding the file", "holds training data"),
    ],
)
def test_results_that_would_not_be_what_they_say_are_refused(corpus, cache, tmp_path, capsys, extra, words):
    if extra == "same file":
        extra = dict(val_data=str(corpus))
    if extra == "folder holding the file":
        folder = tmp_path / "texts"
        folder.mkdir()
        shutil.copy(corpus, folder / "c.txt")
        extra = dict(data=str(folder / "c.txt"), val_data=str(folder))
    before = snapshot(tmp_path)
    line = cli_fails(tiny_argv(corpus, tmp_path / "out", cache, **extra), capsys)
    assert words in line, line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("option", ["--lr=0.5", "--out_dir=elsewhere", "--schedule=cosine", "--max_steps=9"])
def test_sweep_refuses_options_it_sets_itself(tmp_path, option):
    from minitrain import UserError

    cfg = parse_args(sweep.SweepConfig, ["--lr", "1e-3,1e-2", "--out_dir", str(tmp_path / "s"), "--", option])
    with pytest.raises(UserError, match="would override what the sweep sets for each run"):
        sweep.main(cfg)
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------------------------
# class 5: refusals name the true cause


def test_refusals_name_the_true_cause(texts, corpus, cache, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    line = cli_fails(tiny_argv(corpus, tmp_path / "o1", cache, val_data=str(empty)), capsys)
    assert "--val_data" in line and "--val_fraction" not in line, line
    tiny = tmp_path / "tiny_shards"
    prepare(str(texts / "a.txt"), tiny, train_bpe([(texts / "a.txt").read_text()], 300), shard_tokens=20)
    line = cli_fails(tiny_argv(corpus, tmp_path / "o2", cache, data=str(tiny)), capsys)
    assert "--shard_tokens" in line and "lower --batch_size" not in line, line


def test_generate_reads_a_checkpoint(corpus, cache, tmp_path):
    from minitrain.tools import generate

    out = tmp_path / "run"
    run_main(corpus, out, cache, max_steps=2, save_interval=2)
    texts = generate.main(generate.GenerateConfig(model=str(out / "ckpt-0000002.pt"), prompt="KING:", max_new_tokens=4))
    assert texts[0].startswith("KING:")


# ----------------------------------------------------------------------------------------------
# class 6: a signal never turns a clean stop into a kill


@pytest.mark.parametrize("script", ["train_gpt2.py", "tests/slow_write.py"])
def test_a_storm_of_signals_after_a_stop_still_ends_cleanly(corpus, cache, tmp_path, script):
    """SIGTERM once training runs, then SIGTERM and SIGINT every 10 ms until the process has exited
    (through the checkpoint write, the logs' closing and the teardown): exit 0, the stop's
    checkpoint complete, no traceback."""
    out = tmp_path / "run"
    proc = start_script(
        script, tiny_gpt2_args(corpus, out, cache, max_steps=100000, eval_interval=10**5, save_interval=10**5)
    )
    while len(metrics(out, "train_loss") if (out / "metrics.jsonl").exists() else {}) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    n = 0
    while proc.poll() is None:
        proc.send_signal(signal.SIGINT if n % 2 else signal.SIGTERM)
        n += 1
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "stopped by a signal at step" in stdout and "Traceback" not in stderr and n > 3
    step = int(rundir.latest(out).stem.split("-")[1])
    assert torch.load(rundir.latest(out), weights_only=True)["step"] == step


def test_a_new_run_leaves_what_it_did_not_write(corpus, cache, tmp_path):
    """A folder that holds no run keeps everything in it when a run starts there (a W&B folder or
    an MLflow store beside it are somebody else's): nothing is deleted without --overwrite."""
    out = tmp_path / "run"
    (out / "wandb/run-1").mkdir(parents=True)
    (out / "wandb/run-1/run.wandb").write_text("theirs")
    (out / "mlflow.db").write_text("theirs")
    (out / "notes.txt").write_text("mine")
    run_main(corpus, out, cache, max_steps=2)
    assert (out / "wandb/run-1/run.wandb").read_text() == "theirs" and (out / "mlflow.db").read_text() == "theirs"
    assert (out / "notes.txt").read_text() == "mine"


def test_a_resume_in_another_precision_goes_on_and_says_so(corpus, cache, tmp_path, capfd):
    out = tmp_path / "run"
    run_main(corpus, out, cache, max_steps=2, save_interval=2)
    assert torch.load(out / "ckpt-0000002.pt", weights_only=True)["dtype"] == "float32"
    capfd.readouterr()
    assert run_main(corpus, out, cache, max_steps=4, save_interval=2, resume="auto", dtype="bf16")["step"] == 4
    assert "the checkpoint trained in float32, this run continues in bfloat16" in capfd.readouterr().out
    assert torch.load(out / "ckpt-0000004.pt", weights_only=True)["dtype"] == "bfloat16"
