"""Run train_gpt2.py, but the first time, rank 1 dies (os._exit) on its 8th batch: a crashed
worker for torchrun --max-restarts to recover from with --resume=auto."""

import os
import sys
from pathlib import Path

import train_gpt2
from minitrain.config import run_cli
from minitrain.data import tokens as data

marker = Path(os.environ["CRASH_MARKER"])
real_get_batch = data.get_batch
calls = {"n": 0}


def get_batch(*args, **kwargs):
    calls["n"] += 1
    if os.environ.get("RANK") == "1" and calls["n"] == 8 and not marker.exists():
        marker.write_text("crashed once")
        os._exit(1)
    return real_get_batch(*args, **kwargs)


data.get_batch = get_batch
sys.argv[0] = "train_gpt2.py"
run_cli(train_gpt2.main, train_gpt2.Config)
