"""What a run reports: a progress bar, TensorBoard scalars and text, and metrics.jsonl.

Everything is written by rank 0 only; the other ranks get a logger that does nothing.
"""

import json
import math
import sys
from pathlib import Path


class Logger:
    """`with Logger(out_dir, ...) as log:` closes the progress bar and the files when the block ends."""

    FILES = ("metrics.jsonl", "tensorboard")  # what it writes into out_dir

    def __init__(self, out_dir, enabled=True, total=None, initial=0, progress=True, desc="train"):
        """`initial`: the step a resumed run starts from. Lines a crashed run logged after it are
        dropped, so metrics.jsonl holds each step once."""
        self.enabled = enabled
        self.writer = self.bar = self.jsonl = None
        if not enabled:
            return
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        if initial and path.exists():
            keep = [line for line in path.read_text().splitlines() if _step_of(line) <= initial]
            path.write_text("".join(line + "\n" for line in keep))
        self.jsonl = open(path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:  # tensorboard is in requirements.txt; tolerate its absence anyway
            print("tensorboard is not installed: no TensorBoard logs", file=sys.stderr)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                dynamic_ncols=True,
                file=sys.stdout,
                disable=None,
            )

    def log(self, step: int, **scalars) -> None:
        """One metrics.jsonl line and one TensorBoard scalar per value."""
        if not self.enabled:
            return
        row = {"step": step}
        for k, v in scalars.items():
            v = float(v) if not isinstance(v, (int, str)) else v
            row[k] = v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)
            if self.writer is not None and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_text(tag, text, step)

    def progress(self, n=1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def write(self, line: str) -> None:
        """Print above the progress bar without breaking it."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl line; a blank or torn line (a crash mid-write) counts as past
    every step, so that a resume drops it."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return math.inf
