"""minitrain/atomic.py: a failed write leaves the old file, a good one replaces it whole."""

import pytest

from minitrain.atomic import atomic_write


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.bin"
    with atomic_write(path) as f:
        f.write(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["state.bin"]
    with atomic_write(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"
