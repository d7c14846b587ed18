"""A file's SHA-256 and git blob id, from one read in 1 MiB chunks.

The git blob id is what git (and GitHub) names a file's content by, `sha1(b"blob <size>\\0" +
content)`: published files that live in a git repository can be pinned by it without downloading
them (`git ls-tree` lists it).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from hsemo_jax.errors import InputError

__all__ = ["FileDigests", "file_digests"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileDigests:
    size: int
    sha256: str  # lowercase hex
    git_blob: str  # lowercase hex SHA-1 of b"blob <size>\0" + content


def file_digests(path: str | os.PathLike) -> FileDigests:
    """SHA-256 and git blob id of `path`; InputError if it changes size while it is read."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        sha256, blob = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
        done = 0
        while chunk := f.read(_CHUNK):
            sha256.update(chunk)
            blob.update(chunk)
            done += len(chunk)
    if done != size:
        raise InputError(f"{path}: changed while it was read ({size} bytes, then {done}); try again")
    return FileDigests(size, sha256.hexdigest(), blob.hexdigest())
