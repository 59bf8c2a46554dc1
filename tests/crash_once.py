"""Run train_gpt2.py, but the first time, rank 1 dies (os._exit) on its 8th batch (Tokens.batch): a crashed
worker for torchrun --max-restarts to recover from with --resume=auto."""

import os
import sys
from pathlib import Path

import train_gpt2
from minitrain.cli import run_cli
from minitrain.data import tokens as data

marker = Path(os.environ["CRASH_MARKER"])
real_batch = data.Tokens.batch
calls = {"n": 0}


def batch(*args, **kwargs):
    calls["n"] += 1
    if os.environ.get("RANK") == "1" and calls["n"] == 8 and not marker.exists():
        marker.write_text("crashed once")
        os._exit(1)
    return real_batch(*args, **kwargs)


data.Tokens.batch = batch
sys.argv[0] = "train_gpt2.py"
run_cli(train_gpt2.main, train_gpt2.Config)
