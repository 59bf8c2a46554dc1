"""minitrain/checkpoint.py: safe loading, the one checkpoint writer, the run folder."""

import os

import pytest
import torch

from minitrain import UserError
from minitrain.training import checkpoint
from minitrain.training.dist import Dist


def test_crafted_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "ckpt-0000001.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(
        UserError, match=r"is not a minitrain checkpoint: it holds Python objects that are not plain data"
    ):
        checkpoint.load(path)
    assert not (tmp_path / "pwned").exists()


def _state(step, value=1.0):
    return {"model": {"w": torch.full((2, 2), value), "n": torch.tensor(3)}, "step": step}


def test_save_step_writes_best_link_prunes_and_keeps_rng(tmp_path):
    d = Dist()
    for step, best in ((1, True), (2, False), (3, False)):
        path = checkpoint.save_step(_state(step), tmp_path, step, d, keep_last=2, is_best=best)
        assert path == tmp_path / f"ckpt-{step:07d}.pt"
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-0000002.pt", "ckpt-0000003.pt"]
    best = checkpoint.load(tmp_path / "best.pt")  # step 1 pruned, its best.pt link still there
    assert best["step"] == 1 and len(best["rng"]) == 1 and set(best["rng"][0]) >= {"python", "numpy", "torch"}
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_save_step_refuses_non_finite_weights(tmp_path):
    checkpoint.save_step(_state(1), tmp_path, 1, Dist(), keep_last=0)
    with pytest.raises(UserError, match=r"the weights are not finite at step 2; no checkpoint was written"):
        checkpoint.save_step(_state(2, float("nan")), tmp_path, 2, Dist(), keep_last=0)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-0000001.pt"]


def test_overwrite_deletes_what_runs_write_and_nothing_else(tmp_path):
    for name in ("ckpt-0000001.pt", "best.pt", "metrics.jsonl", "mine.txt", "notes.md"):
        (tmp_path / name).write_text("x")
    (tmp_path / "final").mkdir()
    with pytest.raises(UserError, match="already holds a run; continue it with --resume=auto"):
        checkpoint.open_run(tmp_path, "", False, Dist(), "train_gpt2")
    assert checkpoint.open_run(tmp_path, "", True, Dist(), "train_gpt2") == (None, None)
    assert len(list(tmp_path.iterdir())) == 6  # deciding changes nothing on disk
    checkpoint.start_run(tmp_path, True, ("final", "mine.txt"), Dist())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "notes.md"]  # .lock: who runs here
