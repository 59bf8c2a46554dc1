"""python -m minitrain.prepare with a pause after each shard is completed, so that a test can kill
it midway (argv: prepare's options)."""

import sys
import time

from minitrain.data import shards
from minitrain.tools import prepare

real = shards.ShardWriter.flush


def slow_flush(self):
    name = self.path.name if self.file is not None else None
    real(self)
    if name:
        print(f"WROTE {name}", flush=True)
        time.sleep(0.3)


shards.ShardWriter.flush = slow_flush
if __name__ == "__main__":
    from minitrain.cli import run_cli

    sys.argv[0] = "prepare"
    run_cli(prepare.main, prepare.PrepareConfig)
