"""Writing a file so that a crash at any moment leaves the old file or the new one, never a mix."""

import hashlib
import os
import tempfile
from pathlib import Path

from minitrain import UserError


class atomic_write:
    """`with atomic_write(path) as f:` writes to a temporary file beside `path` that replaces it on
    success (flush, fsync, rename: POSIX rename is atomic within one file system). On an exception
    the temporary file is removed and `path` is left as it was."""

    def __init__(self, path, mode="wb"):
        self.path, self.mode = Path(path), mode

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide shards and exports from other users
        self.f = os.fdopen(fd, self.mode)
        return self.f

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.f.flush()
                os.fsync(self.f.fileno())
            self.f.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def digest(data: bytes) -> str:
    """A content checksum (BLAKE2b, 128 bits) of bytes in memory: the same as file_digest of a
    file holding them, without reading the file back."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digest(path) -> str:
    """A content checksum of a file (BLAKE2b, 128 bits), read in 1 MiB chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_writable_folder(path, option: str) -> Path:
    """Refuse, before any work, a folder option that names a file, lies inside a file, or where
    nothing can be written; returns the path. Creates nothing."""
    if not str(path).strip():
        raise UserError(f"{option} is empty; name the folder to write to.")
    path = Path(os.path.expanduser(str(path)))
    if path.exists() and not path.is_dir():
        raise UserError(f"{option}={path} is a file, not a folder.")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{option}={path} lies inside {ancestor}, which is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):  # also false on a read-only file system, for root too
        raise UserError(f"{option}={path} cannot be written: {ancestor} does not accept new files.")
    return path
