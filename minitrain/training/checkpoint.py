"""The whole training state as plain data, written atomically, read with weights_only=True.

A checkpoint holds: the model (unwrapped, uncompiled), optimizer, GradScaler, step, the data
position, RNG states, the config, and the best validation loss so far. Files are named
`ckpt-0000200.pt` in the run folder; `best.pt` is the best of them (a hard link to it).
"""

import contextlib
import fcntl
import os
import pickle
import random
import re
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import torch

from minitrain import UserError, first_line
from minitrain.atomic import atomic_write, check_writable_folder
from minitrain.training.dist import barrier, broadcast_object
from minitrain.training.logger import Logger

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


def restore_training(ckpt: dict, optimizer, scaler, d, seed: int) -> None:
    """A checkpoint's optimizer, loss scaler and random state. With the world size it was saved
    with, every rank continues its own random stream; with another, each rank starts a stream
    seeded by the step (not a replay of the run's first steps)."""
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    if len(ckpt["rng"]) == d.world_size:
        set_rng_state(ckpt["rng"][d.rank])
    else:
        torch.manual_seed(seed + d.rank + 1_000_003 * ckpt["step"])


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
    floats = [t for t in state["model"].values() if t.is_floating_point()]
    if floats and sum(t.isfinite().logical_not().sum() for t in floats).item():  # one host sync
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


def load_best(model, out_dir) -> dict | None:
    """Put best.pt's weights into `model` (for the export); its state, or None when there is none."""
    path = Path(out_dir) / "best.pt"
    if not path.is_file():
        return None
    from minitrain.models import lora

    state = load(path)
    lora.load_state(model, state["model"])  # with LoRA: the adapters
    return state


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


def load(path, script: str | None = None) -> dict:
    """A checkpoint's contents, read with weights_only=True (plain data only: loading never runs
    code). With `script`, refuse one that is not a minitrain checkpoint of that script."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a checkpoint file (torch.save writes a zip archive; this is none).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist.") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder; pass a ckpt-*.pt file in it.") from None
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} is not a minitrain checkpoint: it holds Python objects that are not plain data, and "
            f"loading those could run code, so it is refused."
        ) from None
    except Exception as e:
        raise UserError(f"{path} is not a checkpoint file ({first_line(e)}).") from None
    if script is not None:
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            raise UserError(f"{path} is not a minitrain checkpoint (it has no model and step).")
        found = state.get("script") or ("train_gpt2" if "model_config" in state else "train_mrpc")
        if found != script:
            raise UserError(f"{path} is a {found}.py checkpoint; {script}.py cannot resume from it.")
    return state


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


def holds_run(out_dir: Path) -> bool:
    """Whether a folder holds (part of) a run: step checkpoints, best.pt, final/ or a metrics log."""
    names = ("best.pt", "final", "metrics.jsonl")
    return out_dir.is_dir() and (bool(list_checkpoints(out_dir)) or any((out_dir / n).exists() for n in names))


def find_resume(resume: str, out_dir: Path, overwrite: bool) -> Path | None:
    """The checkpoint this run continues from (None: a new run), refusing whatever would mix two
    runs in one folder or replace a run that was not asked to be replaced."""
    if resume and resume != "auto":
        path = Path(resume)
        if path.is_dir():
            raise UserError(f"--resume={resume} is a folder; pass a checkpoint file in it, or use --resume=auto.")
        if not path.is_file():
            raise UserError(f"--resume={resume} is not a checkpoint file (or use --resume=auto).")
        if holds_run(out_dir) and path.resolve().parent != out_dir.resolve() and not overwrite:
            raise UserError(
                f"--out_dir={out_dir} holds another run; continuing {path}'s run there would mix the two. "
                f"Resume into {path.parent} or an empty folder, or pass --overwrite."
            )
        return path
    if resume == "auto":
        path = latest(out_dir)
        if path is not None:
            return path
        left = [p.name for p in list_checkpoints(out_dir)] + [n for n in ("best.pt", "final") if (out_dir / n).exists()]
        if left and not overwrite:
            raise UserError(
                f"--resume=auto found no readable step checkpoint in {out_dir}, but it holds {', '.join(left)}; "
                f"resume one of them with --resume=FILE, pick another --out_dir, or pass --overwrite."
            )
        # a folder with logs only may be replaced: what a torchrun restart after an early crash needs
        print(f"--resume=auto: no checkpoint in {out_dir}, starting a new run", flush=True)
        return None
    if holds_run(out_dir) and not overwrite:
        raise UserError(
            f"--out_dir={out_dir} already holds a run; continue it with --resume=auto, "
            f"pick another --out_dir, or pass --overwrite to replace it."
        )
    return None


def open_run(out_dir: Path, resume: str, overwrite: bool, d, script: str) -> tuple[Path | None, dict | None]:
    """Where this run starts: (checkpoint path, its contents), or (None, None) for a new run. Rank 0
    decides and every rank gets the same answer, or the same one-sentence refusal. Nothing on disk
    changes here: `start_run` prepares the folder once every check has passed."""
    decision = None
    if d.is_main:
        try:
            decision = ("ok", find_resume(resume, out_dir, overwrite))
        except UserError as e:
            decision = ("error", str(e))
    status, value = broadcast_object(decision, d)
    if status == "error":
        raise UserError(value)
    return value, (load(value, script) if value else None)


def start_run(out_dir: Path, new: bool, outputs, d) -> None:
    """Right before training: a new run deletes what an earlier run wrote into out_dir (the run
    was allowed to replace it: --overwrite, or --resume=auto over logs only): step checkpoints,
    best.pt, the logs and the script's `outputs`; anything else in the folder is left alone."""
    if d.is_main and new:
        for name in ("best.pt", *Logger.FILES, *outputs):
            p = out_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        for p in list_checkpoints(out_dir):
            p.unlink()
    if d.is_main:  # who holds the lock (see `locked`), for the message a second run gets
        (out_dir / ".lock").write_text(f"pid {os.getpid()} on {socket.gethostname()}")
    barrier(d)


@contextlib.contextmanager
def locked(out_dir: str, d):
    """`with locked(cfg.out_dir, d) as out_dir:` holds an exclusive lock on the run folder (rank 0,
    an flock on the folder itself), so a second run started on the same folder is refused; the
    kernel drops the lock when a process dies, so a crash leaves no stale lock. Once training
    starts, out_dir/.lock names the process (see start_run). A folder this creates and a refused
    run leaves empty is removed again: a refused run leaves the file system as it found it."""
    error, path, created, fd = None, Path(os.path.expanduser(str(out_dir))), False, None
    if d.is_main:
        try:
            path = check_writable_folder(out_dir, "--out_dir")
            created = not path.exists()
            try:
                path.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise UserError(f"--out_dir={path} cannot be created or opened ({e.strerror}).") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = None
                who = (path / ".lock").read_text().strip() if (path / ".lock").is_file() else "starting up"
                raise UserError(
                    f"--out_dir={path} is in use by another run ({who}); wait for it to end or pick another --out_dir."
                ) from None
        except UserError as e:
            error = str(e)
            if created and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    error = broadcast_object(error, d)
    if error:
        raise UserError(error)
    try:
        yield path
    finally:
        if fd is not None:
            (path / ".lock").unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            if created and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
