"""minitrain/checkpoint.py: safe loading, the one checkpoint writer, the run folder."""

import os

import pytest
import torch

from minitrain import UserError
from minitrain.training import rundir, state
from minitrain.training.dist import Dist
from minitrain.training.state import TrainState


def test_crafted_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "ckpt-0000001.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(
        UserError, match=r"is not a minitrain checkpoint: it holds Python objects that are not plain data"
    ):
        state.load(path)
    assert not (tmp_path / "pwned").exists()


class _Model(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((2, 2), value))
        self.register_buffer("n", torch.tensor(3))


def _save(out_dir, step, d, value=1.0, **kw):
    """rundir.save_step of a TrainState at `step` with a small model, its optimizer and scaler."""
    model = _Model(value)
    state = TrainState("train_gpt2", {}, step=step, evals=[{"step": step, "val_loss": 1.0}])
    opt = torch.optim.AdamW(model.parameters())
    return rundir.save_step(state, model, opt, torch.amp.GradScaler("cpu", enabled=False), out_dir, d, **kw)


def test_save_step_writes_best_link_prunes_and_keeps_rng(tmp_path):
    d = Dist()
    for step, best in ((1, True), (2, False), (3, False)):
        path = _save(tmp_path, step, d, keep_last=2, is_best=best)
        assert path == tmp_path / f"ckpt-{step:07d}.pt"
    assert [p.name for p in rundir.list_checkpoints(tmp_path)] == ["ckpt-0000002.pt", "ckpt-0000003.pt"]
    best = state.load(tmp_path / "best.pt")  # step 1 pruned, its best.pt link still there
    assert best.step == 1 and len(best.rng) == 1 and set(best.rng[0]) >= {"python", "numpy", "torch"}
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_save_step_refuses_non_finite_weights(tmp_path):
    _save(tmp_path, 1, Dist(), keep_last=0, is_best=False)
    with pytest.raises(UserError, match=r"the weights are not finite at step 2; no checkpoint was written"):
        _save(tmp_path, 2, Dist(), float("nan"), keep_last=0, is_best=False)
    assert [p.name for p in rundir.list_checkpoints(tmp_path)] == ["ckpt-0000001.pt"]


def test_overwrite_deletes_what_runs_write_and_nothing_else(tmp_path):
    for name in ("ckpt-0000001.pt", "best.pt", "metrics.jsonl", "mine.txt", "notes.md"):
        (tmp_path / name).write_text("x")
    (tmp_path / "final").mkdir()
    with pytest.raises(UserError, match="already holds a run; continue it with --resume=auto"):
        rundir.open_run(tmp_path, "", False, Dist(), "train_gpt2")
    assert rundir.open_run(tmp_path, "", True, Dist(), "train_gpt2") == (None, None)
    assert len(list(tmp_path.iterdir())) == 6  # deciding changes nothing on disk
    rundir.start_run(tmp_path, None, None, ("final", "mine.txt"), Dist())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "notes.md"]  # .lock: who runs here


def test_best_is_left_alone_when_its_step_is_unknown_and_replaced_or_removed_otherwise(tmp_path):
    """rundir.match_best: an earlier format's best (no step) and an unreadable best.pt are not
    judged; a best of another step becomes the checkpoint of the run's best step, or goes."""
    d = Dist()
    for step in (3, 6):
        _save(tmp_path, step, d, float(step), keep_last=0, is_best=True)
    assert rundir.best_step(tmp_path) == 6
    rundir.match_best(tmp_path, {"step": None, "val_loss": 1.0}, False)  # format 1: left as it is
    assert rundir.best_step(tmp_path) == 6
    rundir.match_best(tmp_path, {"step": 3, "val_loss": 1.0}, False)
    assert rundir.best_step(tmp_path) == 3 and os.path.samefile(tmp_path / "best.pt", tmp_path / "ckpt-0000003.pt")
    (tmp_path / "ckpt-0000003.pt").unlink()
    rundir.match_best(tmp_path, {"step": 6, "val_loss": 1.0}, False)
    assert rundir.best_step(tmp_path) == 6
    (tmp_path / "ckpt-0000006.pt").unlink()
    rundir.match_best(tmp_path, {"step": 3, "val_loss": 1.0}, False)  # step 3's checkpoint is gone
    assert not (tmp_path / "best.pt").exists()
    (tmp_path / "best.pt").write_bytes(b"not a zip")
    rundir.match_best(tmp_path, None, False)  # unreadable: not judged
    assert (tmp_path / "best.pt").read_bytes() == b"not a zip"


def test_a_read_error_on_a_checkpoint_stops_resume_auto_instead_of_passing_it_over(tmp_path, monkeypatch):
    import errno
    import zipfile

    d = Dist()
    for step in (3, 6):
        _save(tmp_path, step, d, float(step), keep_last=0, is_best=False)
    real = zipfile.ZipFile

    def flaky(path, *a, **kw):
        if str(path).endswith("ckpt-0000006.pt"):
            raise OSError(errno.ESTALE, "Stale file handle")
        return real(path, *a, **kw)

    monkeypatch.setattr(zipfile, "ZipFile", flaky)
    with pytest.raises(UserError, match="Stale file handle.*rather than pass over"):
        rundir.latest(tmp_path)
    monkeypatch.setattr(zipfile, "ZipFile", real)
    (tmp_path / "ckpt-0000006.pt").write_bytes(b"truncated")  # a damaged file is passed over, as before
    assert rundir.latest(tmp_path) == tmp_path / "ckpt-0000003.pt"
