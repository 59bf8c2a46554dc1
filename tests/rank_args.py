"""Run train_gpt2.py under torchrun with extra options on rank 1 only (MINITRAIN_RANK1_ARGS): a
misconfigured multi-node launch, for the test that every rank must run the same options."""

import os
import sys

import train_gpt2
from minitrain.cli import run_cli

if os.environ.get("RANK") == "1":
    sys.argv += os.environ.get("MINITRAIN_RANK1_ARGS", "").split()
sys.argv[0] = "train_gpt2.py"
run_cli(train_gpt2.main, train_gpt2.Config)
