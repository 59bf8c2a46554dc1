"""What a run reports: a progress bar, metrics.jsonl, and the trackers --report_to names
(TensorBoard by default, W&B, MLflow: see tracking.py), which get every row metrics.jsonl gets.

Everything is written by rank 0 only; the other ranks get a logger that does nothing.
"""

import json
import math
import sys
from pathlib import Path

from minitrain.training import tracking


class Logger:
    """`with Logger(out_dir, ...) as log:` closes the progress bar and the files when the block ends."""

    FILES = ("metrics.jsonl", *tracking.FILES)  # what it writes into out_dir

    def __init__(self, out_dir, enabled=True, total=None, initial=0, progress=True, desc="train", state=None):
        """`initial`: the step a resumed run starts from. Lines a crashed run logged after it are
        dropped, so metrics.jsonl holds each step once. `state`: the run's TrainState, whose config
        names the trackers (--report_to, --run_name, --project, --log_model) and is logged as their
        hyper-parameters; its `tracking` ids continue a resumed run's tracked runs, and are set for
        the next checkpoint. Without it: TensorBoard only."""
        self.enabled = enabled
        self.bar = self.jsonl = None
        self.trackers, self.out_dir = [], Path(out_dir)
        self.log_model = bool(state and state.config.get("log_model"))
        if not enabled:
            return
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        if initial and path.exists():
            keep = [line for line in path.read_text().splitlines() if _step_of(line) <= initial]
            path.write_text("".join(line + "\n" for line in keep))
        self.jsonl = open(path, "a")
        self.trackers, ids = tracking.start(out_dir, state.config if state else {}, state.tracking if state else None)
        if state is not None:
            state.tracking = ids or None
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
        """One metrics.jsonl line; each tracker gets its numbers at the same step."""
        if not self.enabled:
            return
        row, values = {"step": step}, {}
        for k, v in scalars.items():
            values[k] = v = float(v) if not isinstance(v, (int, str)) else v
            row[k] = v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        tracking.forward(self.trackers, "log", step, values)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            tracking.forward(self.trackers, "text", step, tag, text)

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

    def __exit__(self, exc_type, *exc):
        self.close(ok=exc_type is None)
        return False

    def close(self, ok: bool = True) -> None:
        """Close the progress bar and the files; the trackers upload the end-of-run files (report,
        final/README.md; final/ with --log_model) after a run that ended well, and finish."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        tracking.forward(self.trackers, "close", ok, self.log_model)
        self.trackers = []
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl line; a blank or torn line (a crash mid-write) counts as past
    every step, so that a resume drops it."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return math.inf
