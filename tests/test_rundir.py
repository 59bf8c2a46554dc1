"""The run folder across resumes (training/rundir.py): a branch of a run, the best checkpoint, a
refused --new_data, a killed write's leftovers. Each compares the folder with what the run's own
checkpoints say it should hold."""

import pytest

from minitrain import UserError
from minitrain.training import rundir
from minitrain.training.state import load
from tests.helpers import metrics, run_main

RUN = dict(max_steps=12, eval_interval=3, save_interval=3, keep_last=0)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_resuming_an_older_checkpoint_of_the_folder_needs_overwrite_and_drops_the_later_branch(
    corpus, cache, tmp_path, parallel
):
    out = tmp_path / "run"
    suffix = "" if parallel == "fsdp" else ".pt"
    run_main(corpus, out, cache, parallel=parallel, **RUN)
    older = out / f"ckpt-0000006{suffix}"
    branch = dict(RUN, parallel=parallel, keep_last=1, lr=5.0, resume=str(older))  # lr 5: every later loss worse
    with pytest.raises(UserError, match="holds later checkpoints of the run"):
        run_main(corpus, out, cache, **branch)
    assert [p.name for p in rundir.list_checkpoints(out)][-1] == f"ckpt-0000012{suffix}"  # refused: untouched
    run_main(corpus, out, cache, overwrite=True, **branch)
    [last] = rundir.list_checkpoints(out)  # --keep_last 1 kept the branch's own newest checkpoint
    state = load(last)
    assert last.name == f"ckpt-0000012{suffix}" and state.config["lr"] == 5.0
    assert state.best["step"] <= 6 and rundir.best_step(out) == state.best["step"]  # not the old branch's 12
    assert f"step {state.best['step']} " in (out / "final/README.md").read_text()
    assert sorted(metrics(out, "val_loss")) == [0, 3, 6, 9, 12]


def test_a_best_step_a_crash_kept_from_being_marked_is_marked_at_resume(corpus, cache, tmp_path):
    """Killed between writing ckpt-6 (which records itself as the best) and switching best.pt to
    it: the resumed run makes best.pt that checkpoint, and exports it."""
    import os

    out = tmp_path / "run"
    run_main(corpus, out, cache, **dict(RUN, max_steps=6))
    assert load(out / "ckpt-0000006.pt").best["step"] == 6
    os.unlink(out / "best.pt")
    os.link(out / "ckpt-0000003.pt", out / "best.pt")  # what the crash left
    run_main(corpus, out, cache, **dict(RUN, max_steps=9, lr=5.0, resume="auto"))
    assert rundir.best_step(out) == 6 and "step 6 " in (out / "final/README.md").read_text()


def test_a_refused_new_data_run_keeps_the_best_checkpoint_and_a_stopped_run_continues_on_new_data(
    corpus, cache, tmp_path
):
    out, other = tmp_path / "run", tmp_path / "other.txt"
    other.write_text(corpus.read_text()[::-1][:30000])
    stop = dict(max_steps=12, eval_interval=3, save_interval=3, patience=1, min_delta=10.0)
    first = run_main(corpus, out, cache, **stop)
    assert first["stopped_early"] and (out / "best.pt").is_file()
    with pytest.raises(UserError, match="holds a model of shape"):
        run_main(other, out, cache, **dict(stop, resume="auto", new_data=True, n_embd=64))
    assert (out / "best.pt").is_file()  # the refused run deleted nothing
    second = run_main(other, out, cache, **dict(stop, resume="auto", new_data=True, patience=0))
    assert second["step"] == 12 and not second["stopped_early"]  # not "nothing left to do"
    assert load(out / "best.pt").data["data"] == str(other)  # judged on the new data


def test_a_killed_writes_temporary_files_go_and_nothing_else(corpus, cache, tmp_path):
    out = tmp_path / "run"
    run_main(corpus, out, cache, **dict(RUN, max_steps=3))
    leftovers = [out / ".ckpt-0000006.pt.k2j9x1.tmp", out / ".best.pt.a8b7c6.tmp", out / ".metrics.jsonl.q1w2e3.tmp"]
    mine = [out / ".notes.txt.tmp", out / ".ckpt-notes.tmp"]  # not names a minitrain write uses
    for p in leftovers + mine:
        p.write_text("x")
    (out / ".ckpt-0000009.partial").mkdir()  # a sharded checkpoint's write, killed
    (out / ".ckpt-0000009.partial/__0_0.distcp").write_text("x")
    (out / "best.tmp").symlink_to(".best-ckpt-0000009")  # mark_best's link, killed before its rename
    leftovers += [out / ".ckpt-0000009.partial", out / "best.tmp"]
    run_main(corpus, out, cache, **dict(RUN, max_steps=6, resume="auto"))
    assert not any(p.exists() or p.is_symlink() for p in leftovers) and all(p.exists() for p in mine)


def test_a_run_continued_from_best_keeps_that_state_as_its_step_checkpoint(corpus, cache, tmp_path, capsys):
    """--resume=OUT/best.pt --overwrite --new_data: the later checkpoints go and so does best
    (judged on the old data), but the state the run continues from stays, as ckpt-STEP."""
    out, other = tmp_path / "run", tmp_path / "other.txt"
    other.write_text(corpus.read_text()[::-1][:30000])
    run_main(corpus, out, cache, **dict(RUN, max_steps=6, keep_last=1))
    run_main(corpus, out, cache, **dict(RUN, max_steps=12, keep_last=1, lr=5.0, resume="auto"))
    assert rundir.best_step(out) == 6 and not (out / "ckpt-0000006.pt").exists()  # pruned: best.pt is its copy
    capsys.readouterr()
    run_main(
        other,
        out,
        cache,
        **dict(RUN, max_steps=6, keep_last=1, resume=str(out / "best.pt"), overwrite=True, new_data=True),
    )
    assert "as ckpt-0000006.pt" in capsys.readouterr().out
    assert [p.name for p in rundir.list_checkpoints(out)] == ["ckpt-0000006.pt"]
    assert load(out / "ckpt-0000006.pt").step == 6 and not (out / "best.pt").exists()


def test_overwrite_with_another_folders_checkpoint_replaces_the_run_there(corpus, cache, tmp_path):
    """--resume=A/ckpt --out_dir=B --overwrite: B's old run goes (its log rows, checkpoints, best),
    so B holds A's run continued, not a mix of both."""
    a, b = tmp_path / "a", tmp_path / "b"
    run_main(corpus, b, cache, **RUN)
    run_main(corpus, a, cache, **dict(RUN, max_steps=3, lr=1e-3, seed=7))
    run_main(
        corpus, b, cache, **dict(RUN, max_steps=6, lr=1e-3, seed=7, resume=str(a / "ckpt-0000003.pt"), overwrite=True)
    )
    assert [p.name for p in rundir.list_checkpoints(b)] == ["ckpt-0000006.pt"]
    assert sorted(metrics(b, "val_loss")) == [6]  # A's steps 0-3 are in A's log, B's old ones are gone
    assert load(b / "best.pt").config["seed"] == 7
