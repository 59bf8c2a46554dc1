"""The whole training state as plain data, written atomically, read with weights_only=True.

A checkpoint holds: the model (unwrapped, uncompiled), optimizer, GradScaler, step, the data
position, RNG states, the config, and the best validation loss so far. Files are named
`ckpt-0000200.pt` in the run folder; `best.pt` is the best of them (a hard link to it).
"""

import os
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from minitrain import UserError, first_line
from minitrain.atomic import atomic_write
from minitrain.dist import barrier, broadcast_object
from minitrain.logger import Logger

CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


def rng_state() -> dict:
    """The random generators' states as plain Python lists (easy to gather across ranks)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def gather_rng_states(d) -> list[dict]:
    """Every rank's RNG states (a collective: all ranks call it), for rank 0 to save."""
    if not d.multi_process:
        return [rng_state()]
    states = [None] * d.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save(path, state: dict) -> None:
    """torch.save to a temporary file, fsync, rename: a crash never leaves a half file."""
    with atomic_write(path) as f:
        torch.save(state, f)


def save_step(state: dict, out_dir, step: int, d, *, keep_last: int, is_best: bool = False) -> Path:
    """Write `state` (what the script chose to save) as out_dir/ckpt-STEP.pt. Every rank calls it:

    - the RNG states of all ranks go into state["rng"], so that each rank continues its own random
      stream after a resume with the same number of processes;
    - weights that are not finite are refused: there would be nothing worth resuming;
    - rank 0 writes atomically, makes best.pt point at the file when `is_best`, and deletes all but
      the newest `keep_last` step checkpoints (0 keeps them all);
    - a failed write (disk full, ...) keeps the previous checkpoint and stops the run on every rank
      with one sentence. No rank goes on before the write is done.
    """
    state["rng"] = gather_rng_states(d)
    if not all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point()):
        raise UserError(f"the weights are not finite at step {step}; no checkpoint was written.")
    path, error = checkpoint_path(out_dir, step), None
    if d.is_main:
        try:
            save(path, state)
            if is_best:
                mark_best(path)
            prune(out_dir, keep_last)
        except OSError as e:
            error = (
                f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoint is kept, "
                f"and the run stops here."
            )
    error = broadcast_object(error, d)  # also the barrier that keeps every rank behind the write
    if error:
        raise UserError(error)
    return path


def mark_best(path) -> None:
    """Make `best.pt` (beside it) another name for the checkpoint just written at `path`: a hard
    link, so the state is not written twice (a copy where the file system has no links). The
    rename makes the switch atomic; pruning old step checkpoints later leaves best.pt intact."""
    path = Path(path)
    best, tmp = path.with_name("best.pt"), path.with_name("best.pt.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, best)


def load(path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist.") from None
    except Exception as e:
        raise UserError(f"checkpoint {path} could not be loaded safely ({first_line(e)}).") from None


def list_checkpoints(out_dir) -> list[Path]:
    """Complete checkpoints in `out_dir`, oldest first (never a crashed write's temp file)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(out_dir) -> Path | None:
    """The newest complete checkpoint; a damaged one (e.g. a copied-in partial file) is skipped.

    torch.save writes a zip archive whose directory is at the very end, so a truncated file has
    none: opening the directory checks completeness without reading (or unpickling) the tensors,
    which the caller loads once afterwards.
    """
    for path in reversed(list_checkpoints(out_dir)):
        try:
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("data.pkl") for name in archive.namelist()):
                    return path
        except (zipfile.BadZipFile, OSError):
            pass
        print(f"skipping unreadable checkpoint {path}", flush=True)
    return None


def prune(out_dir, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (best.pt is kept separately)."""
    if keep_last <= 0:
        return
    for path in list_checkpoints(out_dir)[:-keep_last]:
        path.unlink(missing_ok=True)


def checkpoint_path(out_dir, step: int) -> Path:
    return Path(out_dir) / f"ckpt-{step:07d}.pt"


def find_resume(resume: str, out_dir: Path) -> Path | None:
    """The checkpoint to continue from: --resume=auto picks the newest complete one in out_dir."""
    if not resume:
        return None
    if resume == "auto":
        path = latest(out_dir)
        if path is None:
            print(f"--resume=auto: no checkpoint in {out_dir}, starting a new run", flush=True)
        return path
    if not Path(resume).is_file():
        raise UserError(f"--resume={resume} is not a checkpoint file (or use --resume=auto).")
    return Path(resume)


def claim_out_dir(out_dir: Path, overwrite: bool, outputs=()) -> None:
    """A new run never silently overwrites another run's folder. With `overwrite`, what a run
    writes there is deleted first: step checkpoints, best.pt, the logs, and the script's own
    `outputs` (file or folder names); anything else in the folder is left alone."""
    used = out_dir.is_dir() and (list_checkpoints(out_dir) or (out_dir / "metrics.jsonl").exists())
    if used and not overwrite:
        raise UserError(
            f"--out_dir={out_dir} already holds a run; continue it with --resume=auto, "
            f"pick another --out_dir, or pass --overwrite to replace it."
        )
    if used:
        for name in ("best.pt", *Logger.FILES, *outputs):
            p = out_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        for p in list_checkpoints(out_dir):
            p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def open_run(out_dir: Path, resume: str, overwrite: bool, d, outputs=()) -> tuple[Path | None, dict | None]:
    """Where this run starts: (checkpoint path, its contents), or (None, None) for a new run.

    Rank 0 decides (and, for a new run, claims out_dir); every rank gets the same answer. With
    --resume=auto and nothing to resume, a folder holding only logs may be replaced: that is what
    a torchrun restart after a crash before the first checkpoint needs.
    """
    path = find_resume(resume, out_dir) if d.is_main else None
    path = broadcast_object(path, d)
    if d.is_main and path is None:
        claim_out_dir(out_dir, overwrite or resume == "auto", outputs)
    barrier(d)
    return path, (load(path) if path else None)
