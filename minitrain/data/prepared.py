"""A prepared shard folder on disk: what recognises one (its meta.json), the only files a prepare may
delete from it, the locks that keep it from being replaced while it is read, and publishing a new
one in one atomic step.

The rule (issue 22): minitrain never deletes or replaces what it did not write. A folder is a
prepare's when its meta.json has prepare's `format` string and version and the keys prepare
writes; what may go is exactly the shards it lists, meta.json, tokenizer.json, removed.jsonl and
the tokenizer_config.json its meta.json says it wrote, and a folder that holds anything else is
refused, not cleaned.

Locks are flocks on the folder itself (no lock file to go stale; the kernel drops a dead process's
lock): a run that reads the shards holds a shared one for as long as its `Tokens` live; a prepare
that replaces the folder takes an exclusive one, without waiting, before it removes anything.
"""

import errno
import fcntl
import json
import os
import re
from pathlib import Path

from minitrain import UserError

FORMAT = "llm.c token shards (256 int32 header, then the ids)"  # meta.json's "format", as prepare writes it
FORMAT_VERSION = 1  # of the cached shards: a change of the rules makes new cache keys
META_KEYS = ("format", "version", "source", "tokenizer", "vocab_size", "eot_id", "dtype", "train", "val")
SHARD_NAME = re.compile(r"^[^/\\.][^/\\]*_(train|val)_\d{6}\.bin$")  # what ShardWriter names a shard
TOKENIZER = "tokenizer.json"
TOKENIZER_SETTINGS = "tokenizer_config.json"  # a tokenizer folder's settings (eos, bos, chat template), when it had any
REMOVED = "removed.jsonl"  # prepare --keep_removed: a sample of the documents the cleaning removed


def read_meta(folder) -> dict:
    """A prepared folder's meta.json, checked: a JSON object in prepare's format whose fields have
    the types prepare writes (shard names plain file names in the folder). One sentence otherwise."""
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror}).") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text (bad byte at offset {e.start}), so not a prepare's meta.json."
        ) from None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}), so not a prepare's meta.json.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or any(k not in meta for k in META_KEYS):
        raise UserError(f"{path} is not the meta.json python -m minitrain.prepare writes (no format {FORMAT!r}).")
    if type(meta["version"]) is not int or meta["version"] != FORMAT_VERSION:
        raise UserError(f"{path} has format version {meta['version']!r}; this minitrain writes {FORMAT_VERSION}.")
    for split in ("train", "val"):
        part = meta[split]
        shards = part.get("shards") if isinstance(part, dict) else None
        ok = isinstance(shards, list) and all(
            isinstance(s, dict)
            and isinstance(s.get("file"), str)
            and (m := SHARD_NAME.match(s["file"])) is not None
            and m.group(1) == split
            and type(s.get("tokens")) is int
            and isinstance(s.get("ids_blake2b"), str)
            for s in shards
        )
        if not ok or type(part.get("tokens")) is not int or type(part.get("documents")) is not int:
            raise UserError(
                f"{path}: {split!r} must hold tokens, documents and a list of shards "
                f'({{"file": "NAME_{split}_000000.bin", "tokens": ..., "ids_blake2b": ...}}), as prepare writes it.'
            )
    if type(meta["vocab_size"]) is not int or type(meta["eot_id"]) is not int or meta["tokenizer"] != TOKENIZER:
        raise UserError(f"{path}: vocab_size and eot_id must be integers and tokenizer {TOKENIZER!r}.")
    return meta


def owned_files(folder, what: str = "--out", damaged: bool = False) -> list[Path]:
    """The files of `folder` that a prepare wrote and a new prepare may delete: the shards its
    meta.json lists, meta.json, tokenizer.json, removed.jsonl and tokenizer_config.json where meta.json
    says it wrote one ("tokenizer_settings"). Refuses a folder that is not a prepare's, or
    that holds anything else (a file of the user's is never deleted with the shards). `damaged`:
    a training cache whose meta.json is unreadable; its shards are known by their names then."""
    folder = Path(folder)
    if damaged:
        shards = {p.name for p in folder.iterdir() if SHARD_NAME.match(p.name)}
        mine = shards | {"meta.json", TOKENIZER, TOKENIZER_SETTINGS, REMOVED}
    else:
        if not (folder / "meta.json").is_file():
            raise UserError(
                f"{what} {folder} is not empty and holds no prepared shards: choose an empty or new folder."
            )
        meta = read_meta(folder)
        listed = {s["file"] for split in ("train", "val") for s in meta[split]["shards"]}
        wrote = {TOKENIZER_SETTINGS} if meta.get("tokenizer_settings") == TOKENIZER_SETTINGS else set()
        mine = {"meta.json", TOKENIZER, REMOVED} | wrote | listed
    others = sorted(p.name for p in folder.iterdir() if p.name not in mine or p.is_symlink() or not p.is_file())
    if others:
        raise UserError(
            f"{what} {folder} holds {others[0]!r}, which python -m minitrain.prepare did not write there; "
            f"move it elsewhere or choose another folder (a prepare deletes only its own files)."
        )
    return [folder / name for name in sorted(mine) if (folder / name).is_file()]


def remove_owned(folder, files) -> None:
    """Delete a prepare's files (see owned_files), then the folder if nothing else is left in it."""
    for path in files:
        Path(path).unlink(missing_ok=True)
    try:
        Path(folder).rmdir()
    except OSError:  # something appeared in it meanwhile: it stays, with that in it
        pass


class Hold:
    """A shared lock on a shard folder while its shards are read: a prepare --overwrite of the
    folder is refused until every holder is gone (closed, or garbage-collected with the `Tokens`
    that keep it). Where the file system has no flock (some network mounts), nothing is held."""

    def __init__(self, folder):
        self.fd, folder = None, Path(folder)
        for _ in range(3):  # the folder may be replaced between the open and the lock: take the new one
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                return  # the caller's own checks say what is wrong with the folder
            busy = (
                f"{folder} is locked by a running job (a prepare --overwrite replacing it, or a training run "
                f"writing into it); wait for it to end, or read another folder."
            )
            if not _flock(fd, fcntl.LOCK_SH, busy):
                os.close(fd)
                return
            if _same(fd, folder):
                self.fd = fd
                return
            os.close(fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with the last descriptor of it
            self.fd = None

    def __del__(self):
        if self.fd is not None and os is not None:  # at interpreter exit `os` may be gone: the OS closes it
            self.close()


def lock_for_replace(folder, what: str) -> int:
    """An exclusive lock on a folder about to be replaced or deleted (its descriptor; close it to
    release). Refused while a run reads the folder (see Hold) or another prepare replaces it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    busy = (
        f"{what} {folder} is in use by a running job (a training run reading its shards, or another prepare); "
        f"wait for it to end, or choose another folder."
    )
    _flock(fd, fcntl.LOCK_EX, busy)  # without flock on this file system: go on without a lock
    return fd


def _flock(fd: int, kind: int, busy: str) -> bool:
    """Take a non-blocking flock of `kind` on `fd`: True when held, False where the file system has
    no flock; held by someone else: `fd` is closed and `busy` is the one sentence."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        os.close(fd)
        raise UserError(busy) from None
    except OSError:
        return False


def _same(fd: int, folder: Path) -> bool:
    """Whether `folder` still names the directory open as `fd` (a rename may have replaced it)."""
    try:
        a, b = os.fstat(fd), os.stat(folder)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Replacing:
    """An earlier prepare's folder that this prepare may replace, checked up front (owned_files) and
    locked exclusively from then on: no run starts reading it, and a second prepare --overwrite
    of it is refused at once. `publish` swaps it for the new folder; `close` releases the lock."""

    def __init__(self, out: Path):
        self.out = out
        owned_files(out)  # a prepare's folder, and nothing else in it
        self.fd = lock_for_replace(out, "--out")
        self.meta = (out / "meta.json").read_bytes()

    def still_there(self) -> bool:
        """Whether `out` is still the folder checked at the start (no other prepare replaced it)."""
        try:
            return _same(self.fd, self.out) and (self.out / "meta.json").read_bytes() == self.meta
        except OSError:
            return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def publish(work: Path, out: Path, *, replacing: Replacing | None = None, keep_existing: bool = False) -> bool:
    """Put the finished folder `work` at `out` by atomic renames, so `out` is complete or absent.

    - Without `replacing`, `out` must be absent or empty: rename(2) replaces an empty folder and
      fails on a non-empty one, so of two prepares only one publishes. If another process published
      first: with `keep_existing` (the content-addressed training cache: the same work) ours is not
      used and False is returned; else one sentence refuses.
    - With `replacing` (held since the checks), `out` must still be that folder: it is renamed
      aside, `work` renamed in, and only the old folder's own files deleted.
    Returns True when `work` is now `out`."""
    if replacing is None:
        try:
            os.rename(work, out)
            return True
        except OSError as e:
            if not out.is_dir() or e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if keep_existing:
            return False
        raise UserError(
            f"another prepare wrote --out {out} while this one ran; its shards are kept and this one's are "
            f"dropped: choose another --out, or run again with --overwrite to replace them."
        )
    if not replacing.still_there():
        raise UserError(
            f"another prepare replaced --out {out} while this one ran; its shards are kept and this one's are "
            f"dropped: run again to replace them."
        )
    files = owned_files(out)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(work, out)
    except OSError:  # another prepare published into the gap between the two renames
        if not out.exists():
            os.rename(old, out)
            raise
        raise UserError(
            f"another prepare wrote --out {out} while this one replaced it; its shards are kept, and the "
            f"replaced ones are in {old}."
        ) from None
    remove_owned(old, [old / p.name for p in files])
    return True
