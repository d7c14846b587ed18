"""Atomic output: complete files and folders or none, the umask's permissions, nothing left behind."""
import os
import stat

import pytest

from hsemo_jax.fileio import atomic_directory, atomic_path, atomic_write, check_writable, replace_directory


@pytest.fixture
def umask():
    """Run the test under umask 027 (group may read, others nothing), then restore the old one."""
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_text_and_bytes(tmp_path):
    out = tmp_path / "new" / "a.csv"  # the folder is created
    atomic_write(out, "x,y\r\n1,2\n")
    assert out.read_bytes() == b"x,y\r\n1,2\n"  # newlines kept as given
    atomic_write(out, b"\x00\xff")
    assert out.read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.csv"]


def test_outputs_get_the_umask_permissions(tmp_path, umask):
    """Not mkstemp's 0600 or mkdtemp's 0700: what `open` / `mkdir` would give under the umask."""
    atomic_write(tmp_path / "a.txt", "a")
    with atomic_path(tmp_path / "b.png", suffix=".png") as tmp:
        assert tmp.name.endswith(".png") and tmp.parent == tmp_path
        tmp.write_bytes(b"b")
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("f")
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.png") == 0o666 & ~umask == 0o640
    assert _mode(tmp_path / "d") == 0o777 & ~umask == 0o750
    # replacing an existing file gives the new file the umask's permissions too
    (tmp_path / "a.txt").chmod(0o600)
    atomic_write(tmp_path / "a.txt", "again")
    assert _mode(tmp_path / "a.txt") == 0o640


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_failed_replace_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "a.txt"
    out.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(out, "new")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_directory_replaces_the_whole_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale").write_text("from an older save")
    with atomic_directory(out) as tmp:
        assert not out.joinpath("new").exists()  # nothing visible before the end
        (tmp / "new").write_text("n")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(out) as tmp:
            (tmp / "partial").write_text("p")
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_replace_directory_puts_the_old_folder_back_when_the_move_fails(tmp_path, monkeypatch):
    src, dest = tmp_path / "built", tmp_path / "final"
    src.mkdir()
    (src / "a").write_text("new")
    dest.mkdir()
    (dest / "a").write_text("old")
    real = os.replace
    calls = []

    def second_fails(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError("cross-device link")
        real(a, b)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="cross-device"):
        replace_directory(src, dest)
    monkeypatch.setattr(os, "replace", real)
    assert (dest / "a").read_text() == "old" and (src / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built", "final"]
    replace_directory(src, dest)
    assert (dest / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_check_writable_refuses_before_the_work_and_creates_nothing(tmp_path):
    from hsemo_jax.errors import InputError

    target = tmp_path / "new" / "deeper" / "out.csv"
    assert check_writable(target) == target
    assert list(tmp_path.iterdir()) == []  # neither the missing folders nor a probe are left
    with pytest.raises(InputError, match="existing folder"):
        check_writable(tmp_path, "CSV")
    with pytest.raises(InputError, match="named as a folder"):  # not a file "results"
        check_writable(str(tmp_path / "results") + "/", "CSV")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"file\b.*is a file, not a folder"):
        check_writable(tmp_path / "file" / "sub" / "out.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
