"""minitrain/logger.py: metrics.jsonl across resumes."""

import json

from minitrain.training.logger import Logger


def test_resume_drops_later_lines_and_a_torn_last_line(tmp_path):
    with Logger(tmp_path, progress=False) as log:
        for step in (1, 2, 3, 4):
            log.log(step, train_loss=float(step))
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 5, "train_lo')  # a crash in the middle of a write
    with Logger(tmp_path, initial=3, progress=False) as log:  # resumed from the step-3 checkpoint
        log.log(4, train_loss=40.0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["train_loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_non_finite_values_are_written_as_strings(tmp_path):
    with Logger(tmp_path, progress=False) as log:
        log.log(1, train_loss=float("nan"), grad_norm=float("inf"))
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 1, "train_loss": "nan", "grad_norm": "inf"}
