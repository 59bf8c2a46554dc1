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

import torch

from minitrain import UserError
from minitrain.atomic import check_writable_folder
from minitrain.models import lora
from minitrain.training import fsdp
from minitrain.training.dist import all_reduce_sum, barrier, broadcast_object
from minitrain.training.logger import Logger
from minitrain.training.state import (
    STATE_FILE,
    TrainState,
    gather_rng_states,
    load,
    restore_training,
    save,
    sharded_folder,
)

CKPT_RE = re.compile(r"^ckpt-(\d+)(\.pt)?$")  # a file, or a sharded run's folder


def save_step(
    state: TrainState, raw_model, optimizer, scaler, out_dir, world, *, keep_last: int, is_best: bool
) -> Path:
    """Write the run's state at `state.step` as out_dir/ckpt-STEP.pt, or, for a sharded model
    (FSDP), as the folder out_dir/ckpt-STEP/ (every rank's shards, and state.pt). Every rank calls it:

    - the model's weights (with LoRA the trainable tensors), the optimizer and the scaler go into
      `state` (sharded: into DCP's files, written by every rank in parallel), and the RNG states of
      all ranks, so that each rank continues its own random stream after a resume with the same
      number of processes;
    - `is_best`: the latest evaluation (of this step) becomes `state.best`, and best.pt (sharded:
      best/) this checkpoint;
    - weights that are not finite are refused: there would be nothing worth resuming;
    - the write is atomic (a file, or a folder written under a hidden name and renamed once every
      rank is done); rank 0 then deletes all but the newest `keep_last` step checkpoints (0 keeps
      them all);
    - a failed write (disk full, ...) keeps the previous checkpoint and stops the run on every rank
      with one sentence. No rank goes on before the write is done.
    """
    sharded = fsdp.is_sharded(raw_model)
    state.model = {} if sharded else lora.state_to_save(raw_model)
    state.optimizer, state.scaler = ({} if sharded else optimizer.state_dict()), scaler.state_dict()
    state.rng = gather_rng_states(world)
    if is_best:
        state.best = state.evals[-1]
    if not_finite(fsdp.local_shards(raw_model) if sharded else state.model.values(), sharded, world):
        raise UserError(f"the weights are not finite at step {state.step}; no checkpoint was written.")
    path, error = checkpoint_path(out_dir, state.step, sharded), None
    try:
        if sharded:
            save_sharded(path, state, raw_model, optimizer, world)
        elif world.is_main:
            save(path, state)
    except OSError as e:
        error = f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoint is kept, "
        error += "and the run stops here."
    if world.is_main and error is None:
        try:
            if is_best:
                mark_best(path)
            prune(out_dir, keep_last)
        except OSError as e:
            error = f"could not update {out_dir}'s best checkpoint or prune it ({e.strerror or e}); the run stops here."
    error = broadcast_object(error, world)  # also the barrier that keeps every rank behind the write
    if error:
        raise UserError(error)
    return path


def load_step(path: Path, state: TrainState, raw_model, optimizer, scaler, world, seed: int, dtype) -> None:
    """The inverse of save_step, once the model is built (and, under FSDP, sharded) and its
    optimizer made: the checkpoint's weights (with LoRA: the adapters), AdamW's moments, the loss
    scale and every rank's random stream. Sharded (a folder): every rank reads the slices of the
    weights and moments it holds."""
    if fsdp.is_sharded(raw_model):
        fsdp.load(path, raw_model, optimizer)
    else:
        lora.load_state(raw_model, state.model)
    restore_training(state, optimizer, scaler, world, seed, dtype)  # last: it sets the random streams


def save_sharded(path: Path, state: TrainState, model, optimizer, world) -> None:
    """The folder `path` written by every rank at once: DCP's files into a hidden `.NAME.partial`
    folder, then rank 0 adds state.pt and renames it, so a crash mid-write leaves only the hidden
    folder (removed by the next save) and the previous checkpoint stays the newest complete one."""
    partial = path.with_name(f".{path.name}.partial")
    if world.is_main and partial.exists():
        shutil.rmtree(partial)  # a crashed write of ours
    barrier(world)
    fsdp.save(partial, model, optimizer)  # a collective: every rank writes its file, rank 0 the index
    if world.is_main:
        save(partial / STATE_FILE, state)
        os.replace(partial, path)
        fsync_folder(path.parent)


def not_finite(weights, sharded: bool, world) -> bool:
    """Whether any of the weights is inf or nan (sharded: of any rank's slices); one host sync."""
    bad = sum((t.isfinite().logical_not().sum() for t in weights if t.is_floating_point()), torch.zeros(()))
    if sharded:
        bad = all_reduce_sum(bad.to(world.device), world)
    return bool(bad.item())


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_best(model, out_dir) -> TrainState | None:
    """Put the best checkpoint's weights into `model` (for the export); its state, or None when
    there is none. Sharded (FSDP: best/, a folder): every rank calls it."""
    out_dir = Path(out_dir)
    if fsdp.is_sharded(model):
        if not (out_dir / "best").is_dir():
            return None
        fsdp.load(out_dir / "best", model)
        return load(out_dir / "best")
    path = out_dir / "best.pt"
    if not path.is_file():
        return None
    state = load(path)
    lora.load_state(model, state.model)  # with LoRA: the adapters
    return state


def mark_best(path) -> None:
    """Make `best.pt` (beside it) another name for the checkpoint just written at `path`: a hard
    link, so the state is not written twice (a copy where the file system has no links). The
    rename makes the switch atomic; pruning old step checkpoints later leaves best.pt intact.
    A sharded checkpoint (a folder) gets a hidden folder of hard links to its files, and `best`
    becomes a symbolic link to it, switched by one rename as well."""
    path = Path(path)
    if path.is_dir():
        held = path.with_name(f".best-{path.name}")
        if held.exists():
            shutil.rmtree(held)
        _link_folder(path, held)
        link = path.with_name("best.tmp")
        link.unlink(missing_ok=True)
        os.symlink(held.name, link)
        os.replace(link, path.with_name("best"))
        for old in path.parent.glob(".best-ckpt-*"):
            if old != held:
                shutil.rmtree(old)
        return
    _link_as(path, path.with_name("best.pt"))


def _link_as(src: Path, dst: Path) -> None:
    """`dst` becomes another name for the checkpoint `src` (a file: a hard link; a sharded
    checkpoint's folder: a folder of them), made under a temporary name and renamed into place."""
    tmp = dst.with_name(f".{dst.name}.partial" if src.is_dir() else f"{dst.name}.tmp")
    remove(tmp)
    if src.is_dir():
        _link_folder(src, tmp)
    else:
        _link_or_copy(src, tmp)
    os.replace(tmp, dst)


def _link_folder(src: Path, dst: Path) -> None:
    """A new folder `dst` of hard links to (or copies of) the files of `src`: a sharded checkpoint
    under a second name, without writing its tensors again."""
    dst.mkdir()
    for f in src.iterdir():
        _link_or_copy(f, dst / f.name)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def remove_best(out_dir: Path) -> None:
    """Delete the best checkpoint: best.pt, or a sharded run's best link and the folder it names."""
    out_dir = Path(out_dir)
    (out_dir / "best.pt").unlink(missing_ok=True)
    (out_dir / "best").unlink(missing_ok=True)  # a symbolic link
    for held in out_dir.glob(".best-ckpt-*"):
        shutil.rmtree(held)


def check_same_data(state: TrainState, data: dict, resume_path, new_data: bool) -> None:
    """A resumed run continues on the data it started with: a checkpoint records its data's identity
    (TrainState.data), and another identity is refused in one sentence naming both, since the best
    step and the export compare validation losses, which mean nothing across data sets. With
    --new_data (a curriculum) the run goes on: its evaluations, best step and place in the epoch
    restart (best.pt, a step judged on the old data, goes in start_run, once every check has
    passed)."""
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


def list_checkpoints(out_dir) -> list[Path]:
    """Step checkpoints in `out_dir` (ckpt-STEP.pt files, or sharded ckpt-STEP/ folders), oldest
    first (never a crashed write's temp file or hidden folder)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def step_of(path: Path) -> int:
    """The step of a checkpoint: from its name (ckpt-STEP), else from its state (best.pt, best/)."""
    m = CKPT_RE.match(Path(path).name)
    return int(m.group(1)) if m else saved_step(path)


def saved_step(path: Path) -> int:
    """The step a checkpoint file (or a sharded folder's state.pt) records, read without its
    tensors (the file is memory-mapped; only the small pickle is read); -1 when unreadable."""
    path = Path(path) / STATE_FILE if Path(path).is_dir() else Path(path)
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step", -1)
    except Exception:  # not a checkpoint minitrain can read: no step of the run's
        return -1
    return step if type(step) is int else -1


def later_checkpoints(out_dir, step: int) -> list[Path]:
    """The step checkpoints of `out_dir` after `step`, oldest first."""
    return [p for p in list_checkpoints(out_dir) if step_of(p) > step]


def latest(out_dir) -> Path | None:
    """The newest complete checkpoint; a damaged one (e.g. a copied-in partial file) is skipped.

    torch.save writes a zip archive whose directory is at the very end, so a truncated file has
    none: opening the directory checks completeness without reading (or unpickling) the tensors,
    which the caller loads once afterwards. A sharded folder also needs DCP's index (.metadata).
    """
    for path in reversed(list_checkpoints(out_dir)):
        main = path / STATE_FILE if path.is_dir() else path
        try:
            with zipfile.ZipFile(main) as archive:
                index = not path.is_dir() or (path / ".metadata").is_file()
                if index and any(name.endswith("data.pkl") for name in archive.namelist()):
                    return path
        except (zipfile.BadZipFile, FileNotFoundError):  # truncated, or a folder without its state.pt
            pass
        except OSError as e:  # a read error says nothing of the file: never pass over (and later delete) it
            raise UserError(
                f"{main} cannot be read ({e.strerror or e}); the run stops rather than pass over a checkpoint "
                f"that may be complete. Run it again once the file system answers."
            ) from None
        print(f"skipping unreadable checkpoint {path}", flush=True)
    return None


def prune(out_dir, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (best is kept separately)."""
    if keep_last <= 0:
        return
    for path in list_checkpoints(out_dir)[:-keep_last]:
        remove(path)


def remove(path: Path) -> None:
    """Delete a file or a folder (a sharded checkpoint) of the run, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def checkpoint_path(out_dir, step: int, sharded: bool = False) -> Path:
    return Path(out_dir) / (f"ckpt-{step:07d}" if sharded else f"ckpt-{step:07d}.pt")


def holds_run(out_dir: Path) -> bool:
    """Whether a folder holds (part of) a run: step checkpoints, best, final/ or a metrics log."""
    names = ("best.pt", "best", "final", "metrics.jsonl")
    return out_dir.is_dir() and (
        bool(list_checkpoints(out_dir)) or any((out_dir / n).exists() or (out_dir / n).is_symlink() for n in names)
    )


def find_resume(resume: str, out_dir: Path, overwrite: bool) -> Path | None:
    """The checkpoint this run continues from (None: a new run), refusing whatever would mix two
    runs in one folder or replace a run that was not asked to be replaced."""
    if resume and resume != "auto":
        path = Path(resume)
        if path.is_dir() and not sharded_folder(path):
            raise UserError(f"--resume={resume} is a folder; pass a checkpoint file in it, or use --resume=auto.")
        if not path.exists():
            raise UserError(f"--resume={resume} is not a checkpoint file (or use --resume=auto).")
        inside = path.resolve().parent == out_dir.resolve()
        if holds_run(out_dir) and not inside and not overwrite:
            raise UserError(
                f"--out_dir={out_dir} holds another run; continuing {path}'s run there would mix the two. "
                f"Resume into {path.parent} or an empty folder, or pass --overwrite."
            )
        step = step_of(path) if inside and not overwrite else -1  # -1: unreadable, refused when loaded
        if step >= 0 and (later := later_checkpoints(out_dir, step)):
            more = f" and {len(later) - 1} more" if len(later) > 1 else ""
            raise UserError(
                f"--resume={resume} continues from step {step}, but {out_dir} holds later checkpoints of the run "
                f"({later[0].name}{more}): going on there would mix two branches of it. Continue the newest "
                f"(--resume=auto), resume into another --out_dir, or pass --overwrite to discard them."
            )
        return path
    if resume == "auto":
        path = latest(out_dir)
        if path is not None:
            return path
        left = [p.name for p in list_checkpoints(out_dir)]
        left += [n for n in ("best.pt", "best", "final") if (out_dir / n).exists()]
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


def open_run(
    out_dir: Path, resume: str, overwrite: bool, world, script: str, parallel: str = "ddp"
) -> tuple[Path | None, TrainState | None]:
    """Where this run starts: (checkpoint path, its contents), or (None, None) for a new run. Rank 0
    decides and every rank gets the same answer, or the same one-sentence refusal. Nothing on disk
    changes here: `start_run` prepares the folder once every check has passed. A sharded (FSDP)
    checkpoint continues under --parallel fsdp only, and a file checkpoint under ddp only."""
    decision = None
    if world.is_main:
        try:
            path = find_resume(resume, out_dir, overwrite)
            if path is not None and path.is_dir() != (parallel == "fsdp"):
                kind = "a sharded (--parallel fsdp)" if path.is_dir() else "an unsharded (--parallel ddp)"
                raise UserError(f"{path} is {kind} checkpoint; resume it with the --parallel it was written with.")
            decision = ("ok", path)
        except UserError as e:
            decision = ("error", str(e))
    status, value = broadcast_object(decision, world)
    if status == "error":
        raise UserError(value)
    return value, (load(value, script) if value else None)


def start_run(out_dir: Path, resume_path: Path | None, state: TrainState | None, outputs, world) -> None:
    """Right before training, once every check has passed, rank 0 makes out_dir this run's:

    - a new run, or one continued from another folder's checkpoint, deletes what an earlier run
      wrote into out_dir (the run was allowed to replace it: --overwrite, or --resume=auto over logs
      only): step checkpoints, best.pt, the logs and the script's `outputs`; anything else in the
      folder is left alone, and in a folder that holds no run (no checkpoint, best.pt, final/ or
      metrics.jsonl) nothing is deleted: a `wandb/` or `mlflow.db` there is somebody else's;
    - a run continued from a checkpoint of out_dir at step S deletes the step checkpoints after S
      (another branch of the run, which only --overwrite lets it continue from, or unreadable ones
      that --resume=auto passed over): they would outrank its own checkpoints in --keep_last's
      pruning and in a later --resume=auto; and best.pt becomes the checkpoint of the run's own best
      step (state.best), or goes when that checkpoint is gone, so that --export best never ships
      another branch's weights, nor misses a best step that a crash kept from being marked;
    - the temporary files of a write that a kill interrupted go (the folder is locked: nobody else
      writes them)."""
    new = resume_path is None or Path(resume_path).resolve().parent != out_dir.resolve()
    if world.is_main and new and holds_run(out_dir):  # only what replaces a run: never files beside no run
        remove_best(out_dir)
        for name in (*Logger.FILES, *outputs):
            p = out_dir / name
            remove(p)
        for p in list_checkpoints(out_dir):
            remove(p)
    if world.is_main and not new:
        keep_as_step(Path(resume_path), out_dir, state.step)
        for p in later_checkpoints(out_dir, state.step):
            print(f"removing {p}: a later step than the checkpoint this run continues from", flush=True)
            remove(p)
        match_best(out_dir, state.best, Path(resume_path).is_dir())
    if world.is_main:
        written = {*Logger.FILES, *outputs, "best.pt"}
        for p in list(out_dir.iterdir()):
            if is_leftover(p.name, written):
                remove(p)
        # who holds the lock (see `locked`), for the message a second run gets
        (out_dir / ".lock").write_text(f"pid {os.getpid()} on {socket.gethostname()}")
    barrier(world)


def is_leftover(name: str, written) -> bool:
    """Whether `name` is what a killed write of the run left in out_dir: atomic_write's
    `.NAME.RANDOM.tmp` of a step checkpoint or of a file the run writes there (`written`), a
    sharded checkpoint's hidden `.ckpt-STEP.partial/`, or _link_as's and mark_best's `NAME.tmp`."""
    if re.fullmatch(r"\.ckpt-\d+\.partial|(best|best\.pt|ckpt-\d+\.pt)\.tmp", name):
        return True
    m = re.fullmatch(r"\.(.+)\.[^./]+\.tmp", name)
    return m is not None and (m.group(1) in written or CKPT_RE.match(m.group(1)) is not None)


def keep_as_step(path: Path, out_dir: Path, step: int) -> None:
    """A run continued from best.pt (best/) keeps that state under its step's name as well, before
    best is switched or removed: the checkpoint it continues from is never deleted with best."""
    if CKPT_RE.match(path.name):
        return
    target = checkpoint_path(out_dir, step, path.is_dir())
    if target.exists():
        return
    _link_as(path, target)
    print(f"kept {path} as {target.name}, the step this run continues from", flush=True)


def best_step(out_dir: Path) -> int | None:
    """The step best.pt (a sharded run: best/) holds, or None when there is none."""
    link = out_dir / "best"
    if link.is_symlink():  # a sharded run's: best -> .best-ckpt-STEP
        m = re.fullmatch(r"\.best-ckpt-(\d+)", os.readlink(link))
        return int(m.group(1)) if m and link.is_dir() else None
    return saved_step(out_dir / "best.pt") if (out_dir / "best.pt").is_file() else None


def match_best(out_dir: Path, best: dict | None, sharded: bool) -> None:
    """Make best.pt (best/) the checkpoint of step `best["step"]`, or remove it (`best` None, or
    that step's checkpoint gone)."""
    if best is not None and best.get("step") is None:  # an earlier checkpoint format: step unknown
        return
    want, held = (best["step"] if best else None), best_step(out_dir)
    if held == want or held == -1:  # -1: best.pt unreadable; not judged here, left as it is
        return
    path = checkpoint_path(out_dir, want, sharded) if want is not None else None
    if path is not None and path.exists():
        mark_best(path)
        print(f"best checkpoint: {path.name}, the run's best evaluation", flush=True)
    elif held is not None or (out_dir / "best").is_symlink():
        remove_best(out_dir)
        print(f"removed the best checkpoint of step {held}: not this run's best step", flush=True)


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
