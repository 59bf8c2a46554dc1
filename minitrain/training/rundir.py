"""The run folder: one run per folder (locked while it trains), what a new run may replace, which
checkpoint a run continues from, and the step checkpoints in it (ckpt-0000200.pt, best.pt)."""

import contextlib
import fcntl
import os
import re
import shutil
import socket
import zipfile
from pathlib import Path

from minitrain import UserError
from minitrain.atomic import check_writable_folder
from minitrain.models import lora
from minitrain.training.dist import barrier, broadcast_object
from minitrain.training.logger import Logger
from minitrain.training.state import TrainState, gather_rng_states, load, save

CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


def save_step(
    state: TrainState, raw_model, optimizer, scaler, out_dir, world, *, keep_last: int, is_best: bool
) -> Path:
    """Write the run's state at `state.step` as out_dir/ckpt-STEP.pt. Every rank calls it:

    - the model's weights (with LoRA the trainable tensors), the optimizer and the scaler go into
      `state`, and the RNG states of all ranks, so that each rank continues its own random stream
      after a resume with the same number of processes;
    - `is_best`: the latest evaluation (of this step) becomes `state.best`, and best.pt this file;
    - weights that are not finite are refused: there would be nothing worth resuming;
    - rank 0 writes atomically and deletes all but the newest `keep_last` step checkpoints (0 keeps
      them all);
    - a failed write (disk full, ...) keeps the previous checkpoint and stops the run on every rank
      with one sentence. No rank goes on before the write is done.
    """
    state.model = lora.state_to_save(raw_model)
    state.optimizer, state.scaler = optimizer.state_dict(), scaler.state_dict()
    state.rng = gather_rng_states(world)
    if is_best:
        state.best = state.evals[-1]
    floats = [t for t in state.model.values() if t.is_floating_point()]
    if floats and sum(t.isfinite().logical_not().sum() for t in floats).item():  # one host sync
        raise UserError(f"the weights are not finite at step {state.step}; no checkpoint was written.")
    path, error = checkpoint_path(out_dir, state.step), None
    if world.is_main:
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
    error = broadcast_object(error, world)  # also the barrier that keeps every rank behind the write
    if error:
        raise UserError(error)
    return path


def load_best(model, out_dir) -> TrainState | None:
    """Put best.pt's weights into `model` (for the export); its state, or None when there is none."""
    path = Path(out_dir) / "best.pt"
    if not path.is_file():
        return None
    state = load(path)
    lora.load_state(model, state.model)  # with LoRA: the adapters
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


def check_same_data(state: TrainState, data: dict, resume_path, new_data: bool, out_dir: Path, world) -> None:
    """A resumed run continues on the data it started with: a checkpoint records its data's identity
    (TrainState.data), and another identity is refused in one sentence naming both, since the best
    step and the export compare validation losses, which mean nothing across data sets. With
    --new_data (a curriculum) the run goes on: its evaluations, best step and place in the epoch
    restart, and best.pt (a step judged on the old data) is removed."""
    old = state.data
    if old is None or old.get("fingerprint") == data["fingerprint"]:
        state.data = data
        return
    if not new_data:

        def what(d):
            return f"--data={d.get('data')}" + (f" --val_data={d['val_data']}" if d.get("val_data") else "")

        same_name = what(old) == what(data)
        raise UserError(
            f"{resume_path} was trained on {what(old)}{' as it was then' if same_name else ''}, not on "
            f"{what(data)}{' as it is now (its shards or tokenizer changed)' if same_name else ''}; resume with "
            f"the checkpoint's data, or pass --new_data to continue on this data (evaluations and the best step "
            f"restart)."
        )
    print(f"--new_data: continuing {resume_path} on {data['data']}; evaluations and the best step restart", flush=True)
    state.data, state.evals, state.best, state.epoch, state.pos = data, [], None, 0, 0
    state.epoch_loss_sum, state.epoch_steps = 0.0, 0
    if world.is_main:
        (Path(out_dir) / "best.pt").unlink(missing_ok=True)
    barrier(world)


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


def open_run(out_dir: Path, resume: str, overwrite: bool, world, script: str) -> tuple[Path | None, TrainState | None]:
    """Where this run starts: (checkpoint path, its contents), or (None, None) for a new run. Rank 0
    decides and every rank gets the same answer, or the same one-sentence refusal. Nothing on disk
    changes here: `start_run` prepares the folder once every check has passed."""
    decision = None
    if world.is_main:
        try:
            decision = ("ok", find_resume(resume, out_dir, overwrite))
        except UserError as e:
            decision = ("error", str(e))
    status, value = broadcast_object(decision, world)
    if status == "error":
        raise UserError(value)
    return value, (load(value, script) if value else None)


def start_run(out_dir: Path, new: bool, outputs, world) -> None:
    """Right before training: a new run deletes what an earlier run wrote into out_dir (the run
    was allowed to replace it: --overwrite, or --resume=auto over logs only): step checkpoints,
    best.pt, the logs and the script's `outputs`; anything else in the folder is left alone, and in a
    folder that holds no run (no checkpoint, best.pt, final/ or metrics.jsonl) nothing is deleted: a
    `wandb/` or `mlflow.db` there is somebody else's."""
    if world.is_main and new and holds_run(out_dir):  # only what replaces a run: never files beside no run
        for name in ("best.pt", *Logger.FILES, *outputs):
            p = out_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        for p in list_checkpoints(out_dir):
            p.unlink()
    if world.is_main:  # who holds the lock (see `locked`), for the message a second run gets
        (out_dir / ".lock").write_text(f"pid {os.getpid()} on {socket.gethostname()}")
    barrier(world)


@contextlib.contextmanager
def locked(out_dir: str, world):
    """`with locked(cfg.out_dir, d) as out_dir:` holds an exclusive lock on the run folder (rank 0,
    an flock on the folder itself), so a second run started on the same folder is refused; the
    kernel drops the lock when a process dies, so a crash leaves no stale lock. Once training
    starts, out_dir/.lock names the process (see start_run). A folder this creates and a refused
    run leaves empty is removed again: a refused run leaves the file system as it found it."""
    error, path, created, fd = None, Path(os.path.expanduser(str(out_dir))), False, None
    if world.is_main:
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
    error = broadcast_object(error, world)
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
