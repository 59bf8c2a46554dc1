"""What a run reports: a progress bar, metrics.jsonl, and the trackers --report_to names
(TensorBoard by default, W&B, MLflow: see tracking.py), which get every row metrics.jsonl gets.

Everything is written by rank 0 only; the other ranks get a logger that does nothing.
"""

import json
import math
import sys
from pathlib import Path

from minitrain import UserError
from minitrain.atomic import atomic_write
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
            keep = [row for row in read_rows(path) if row["step"] <= initial]
            with atomic_write(path, "w") as f:  # a kill mid-write keeps the whole old log
                f.write("".join(json.dumps(_as_logged(row)) + "\n" for row in keep))
        self.jsonl = open(path, "a")
        config, ids = (state.config, state.tracking) if state else ({}, None)
        self.trackers, ids = tracking.start(out_dir, config, ids, initial)
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


def _as_logged(row: dict) -> dict:
    """A row as Logger.log writes it: a value that is not finite as the string "nan", "inf", "-inf"."""
    return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def read_rows(path) -> list[dict]:
    """The rows of a metrics.jsonl, checked as Logger.log writes them: a JSON object per line with
    an integer `step` (and `epoch`) and numbers (non-finite ones as "nan", "inf", "-inf") for the
    rest. A blank line is skipped, and a torn last line (a crash mid-write) dropped; anything else
    is refused in one sentence naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror}).") from None
    last = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for n, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            if n == last:
                break
            raise UserError(f"{path}:{n + 1} is not UTF-8 text (bad byte at column {e.start + 1}).") from None
        except ValueError:
            if n == last:
                break  # torn by a crash mid-write: the run resumes from before it
            raise UserError(f"{path}:{n + 1} is not valid JSON, so not a line minitrain logged.") from None
        rows.append(_checked_row(row, f"{path}:{n + 1}"))
    return rows


def _checked_row(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"{where} is not a JSON object, so not a line minitrain logged.")
    for key in ("step", "epoch"):
        if (key in row or key == "step") and (type(row.get(key)) is not int or row[key] < 0):
            raise UserError(f"{where}: {key} is {row.get(key)!r}; minitrain logs it as a whole number, at least 0.")
    for key, v in row.items():
        if isinstance(v, str) and v in ("nan", "inf", "-inf"):
            row[key] = float(v)  # how Logger.log writes a value that is not finite
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{where}: {key} is {v!r}, not a number.")
    return row
