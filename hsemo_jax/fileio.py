"""Atomic file output: nothing half-written is ever left at the destination.

Every output is written under a temporary name in the destination's folder and renamed onto the
destination only when complete; on error the temporary file or folder is removed and an existing
destination is left as it was. Outputs get the permissions the process's umask gives (as `open`
would), not the 0600 / 0700 of `tempfile.mkstemp` / `mkdtemp`.

    atomic_write(path, data)          a whole text or bytes payload
    atomic_path(path)                 a temporary file path for writers that take a path or stream
    atomic_directory(path)            a temporary folder that takes `path`'s place when complete
    replace_directory(src, dest)      move a complete folder onto `dest`, replacing an old one
    write_arrays_with_meta(dir, ...)  a small model's arrays (.npz) and metadata (.json)
    read_npz(path)                    an .npz archive's arrays; a damaged one is an InputError
    check_writable(path)              before the work: can an output file be written at `path`?
    same_path(a, b)                   do two paths name one file (an output that is an input)?
    holds(folder, path)               is `path` the folder `folder` or inside it (a replaced output holding an input)?
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

from hsemo_jax.errors import InputError

_TRIES = 100


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (text as UTF-8 with newlines kept) to a temporary file in the destination's
    folder (created if missing), then `os.replace` it onto `path`; on any error the temporary file
    is removed and an existing `path` is left as it was."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                f.write(data)
        else:
            with open(tmp, "wb") as f:
                f.write(data)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield the path of a new empty file beside `path` (its folder created if missing) to write
    the output to; when the block ends without error the file replaces `path`, on error it is
    removed and an existing `path` is left as it was. `suffix` ends the temporary name, for
    writers that pick the format from it (".png")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh(path, suffix, lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside `path` (its parent created if missing) to build the output
    in; when the block ends without error the folder takes `path`'s place (`replace_directory`),
    on error it is deleted and an existing `path` is left as it was."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh(path, "", lambda p: os.mkdir(p, 0o777))
    try:
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename the complete folder `src` to `dest` (same file system). An existing `dest` is first
    renamed aside and deleted afterwards, so `dest` is the old folder or the new one, never a mix
    (it is absent only between the two renames)."""
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        os.replace(src, dest)
        return
    old = _fresh(dest, ".old", lambda p: os.mkdir(p, 0o700))
    try:
        os.replace(dest, old / dest.name)
        try:
            os.replace(src, dest)
        except BaseException:
            os.replace(old / dest.name, dest)  # the old folder goes back
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def check_writable(path: str | os.PathLike, what: str = "output", *,
                   inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check, before any work, that an output file can be written at `path` as `atomic_path`
    writes it: not one of the command's `inputs` (which it would replace), not an existing folder,
    no file where a folder on its way should be, and the nearest existing folder on its way open
    to a new file (a probe file is created there and removed; missing folders are left to the
    writer). Raises `InputError` naming `path` and the reason; creates nothing."""
    if isinstance(path, str) and path.endswith(("/", os.sep)):  # Path() would drop the slash: a file "out"
        raise InputError(f"{path}: the {what} is named as a folder (it ends in '/'); give a file name")
    path = Path(path)
    for src in inputs:
        if src is not None and same_path(path, src):
            raise InputError(f"{path}: the {what} would replace the input {src}; give another file name")
    if path.is_dir():
        raise InputError(f"{path}: the {what} is an existing folder; give a file name")
    folder = next(f for f in path.absolute().parents if f.exists() or f.is_symlink())
    if not folder.is_dir():
        raise InputError(f"{path}: cannot write the {what}: {folder} is a file, not a folder")
    try:
        os.unlink(_fresh(folder / path.name, "",
                         lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))))
    except OSError as e:
        raise InputError(f"{path}: cannot write the {what} into {folder} ({e.strerror or e})") from None
    return path


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name the same file or folder (through links and `..` when both exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing: compare the names
        return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def holds(folder: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies inside it, links resolved: replacing `folder` would lose it."""
    folder, path = Path(os.path.realpath(folder)), Path(os.path.realpath(path))
    return path == folder or folder in path.parents


def _fresh(path: Path, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create (with `create`, which must fail if the name exists) a new hidden sibling of `path`
    with a random name; the umask applies to the mode `create` asks for."""
    for _ in range(_TRIES):
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}{suffix}")
        try:
            create(tmp)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def write_arrays_with_meta(directory: str | os.PathLike, stem: str, arrays: dict, meta: dict) -> Path:
    """DIR/<stem>.npz (`arrays`, name -> array) + DIR/<stem>.json (`meta`). Both are encoded in
    memory first (a value JSON cannot hold raises here, before any file is touched), then each is
    written atomically, the .npz first. Returns DIR."""
    import io
    import json

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    text = json.dumps(meta, indent=1) + "\n"
    d = Path(directory)
    atomic_write(d / f"{stem}.npz", buf.getvalue())
    atomic_write(d / f"{stem}.json", text)
    return d


def read_npz(path: str | os.PathLike) -> dict:
    """Every array of the .npz archive at `path` ({name: array}, no pickles); a file that is not a
    complete .npz archive (empty, truncated, another format, a damaged member) is an `InputError`
    naming it, as the counterpart of `write_arrays_with_meta`."""
    import zipfile
    import zlib

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise InputError(f"{path}: not a readable .npz archive ({e or type(e).__name__})") from None
    except OSError as e:
        if e.filename is not None:  # the system refused the path: the CLI names it with the reason
            raise
        raise InputError(f"{path}: not a readable .npz archive ({e})") from None
