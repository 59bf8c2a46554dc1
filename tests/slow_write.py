"""Run train_gpt2.py with checkpoint writes that announce themselves and take a second and a half,
so that a test can send a signal while one is being written."""

import sys
import time

import torch

import train_gpt2
from minitrain.cli import run_cli
from minitrain.training import state

real_save = torch.save


def slow_save(obj, f, *args, **kwargs):
    print("WRITING CHECKPOINT", flush=True)
    time.sleep(1.5)
    return real_save(obj, f, *args, **kwargs)


state.torch.save = slow_save
sys.argv[0] = "train_gpt2.py"
run_cli(train_gpt2.main, train_gpt2.Config)
