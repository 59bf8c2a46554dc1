"""Writing a file so that a crash at any moment leaves the old file or the new one, never a mix."""

import os
import tempfile
from pathlib import Path


class atomic_write:
    """`with atomic_write(path) as f:` writes to a temporary file beside `path` that replaces it on
    success (flush, fsync, rename: POSIX rename is atomic within one file system). On an exception
    the temporary file is removed and `path` is left as it was."""

    def __init__(self, path, mode="wb"):
        self.path, self.mode = Path(path), mode

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
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
