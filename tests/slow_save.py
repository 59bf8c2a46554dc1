"""Run train_gpt2.py with a checkpoint writer that stalls halfway through its second checkpoint,
so that a test can kill the process (SIGKILL) in the middle of a write."""

import sys
import time

import torch

import train_gpt2
from minitrain.cli import run_cli
from minitrain.training import state

calls = {"n": 0}
real_save = torch.save


def stalling_save(obj, f, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] < 2:
        return real_save(obj, f, *args, **kwargs)
    f.write(b"PK\x03\x04 half a checkpoint")
    f.flush()
    print("STALLED IN SAVE", flush=True)
    time.sleep(600)


state.torch.save = stalling_save
sys.argv[0] = "train_gpt2.py"
run_cli(train_gpt2.main, train_gpt2.Config)
