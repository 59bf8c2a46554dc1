"""minitrain/report.py and minitrain/sweep.py: the pictures of runs, checked as files (a valid PNG
with the expected panels), not as looks."""

import struct
import subprocess
import zlib

import pytest

from minitrain import UserError
from minitrain.config import parse_args
from minitrain.tools import sweep
from minitrain.tools.sweep import SweepConfig
from minitrain.training import report
from tests.helpers import PY, ROOT, run_main, tiny_gpt2_args


def png_text(path) -> dict:
    """The tEXt chunks of a PNG file, after checking its signature and every chunk's CRC."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, text, kinds = 8, {}, []
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        kind, body = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", raw[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        kinds.append(kind)
        if kind == b"tEXt":
            key, _, value = body.partition(b"\x00")
            text[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    return text


def test_gpt2_run_writes_a_six_panel_report(corpus, cache, tmp_path):
    out = tmp_path / "a"
    run_main(corpus, out, cache, max_steps=6)
    assert png_text(out / "report.png")["Description"].startswith("6 panels: Loss; Validation loss against tokens")
    md = (out / "report.md").read_text()
    assert "![report](report.png)" in md and "| a | 6 |" in md


def test_several_runs_overlay_in_one_picture_and_mixed_kinds_are_refused(corpus, cache, tmp_path):
    for name, lr in (("lr-a", 3e-3), ("lr-b", 1e-2)):
        run_main(corpus, tmp_path / name, cache, max_steps=4, lr=lr)
    out = tmp_path / "cmp.png"
    proc = subprocess.run(
        [PY, "-m", "minitrain.report", str(tmp_path / "lr-a"), str(tmp_path / "lr-b"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert png_text(out)["Description"].startswith("6 panels")
    md = (tmp_path / "cmp.md").read_text()
    assert "| lr-a |" in md and "| lr-b |" in md
    (tmp_path / "mrpc").mkdir()
    (tmp_path / "mrpc/metrics.jsonl").write_text(
        '{"step": 4, "epoch": 1, "accuracy": 0.5, "f1": 0.4, "val_loss": 0.7}\n'
    )
    assert report.write_report([tmp_path / "mrpc"]) == [
        "Loss",
        "Accuracy and F1 per epoch",
        "Learning rate",
        "Gradient norm (before clipping)",
    ]
    assert png_text(tmp_path / "mrpc/report.png")["Description"].startswith("4 panels")
    with pytest.raises(UserError, match="report them apart"):
        report.write_report([tmp_path / "lr-a", tmp_path / "mrpc"])
    with pytest.raises(UserError, match="has no metrics.jsonl"):
        report.write_report([tmp_path / "nothing"])


def test_sweep_runs_each_learning_rate_and_plots_them(corpus, cache, tmp_path):
    args = tiny_gpt2_args(corpus, "unused", cache, eval_interval=2, save_interval=4)
    passthrough = [f"--{k}={v}" for k, v in args.items() if k not in ("out_dir", "max_steps", "lr")]
    out = tmp_path / "sweep"
    results = sweep.main(
        parse_args(SweepConfig, ["--lr", "1e-3,4e-3", "--max_steps", "4", "--out_dir", str(out), "--", *passthrough])
    )
    assert [(r["lr"], r["exit"], r["step"]) for r in results] == [(1e-3, 0, 4), (4e-3, 0, 4)]
    assert results[0]["val_loss"] != results[1]["val_loss"]
    assert png_text(out / "sweep.png")["Description"] == "1 panels: Learning-rate sweep"
    assert png_text(out / "report.png")["Description"].startswith("6 panels")
    assert "| 0.004 |" in (out / "sweep.md").read_text()
    with pytest.raises(UserError, match="already holds a run"):  # a second sweep into the same folder
        sweep.main(parse_args(SweepConfig, ["--lr", "1e-3", "--out_dir", str(out), "--", *passthrough]))
    with pytest.raises(UserError, match="every learning rate must be a positive number"):
        sweep.main(parse_args(SweepConfig, ["--lr", "1e-3,-2", "--out_dir", str(out)]))
