"""Atomic file output: nothing half-written is ever left at the destination."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (text as UTF-8 with newlines kept) to a temporary file in the destination's
    folder (created if missing), then `os.replace` it onto `path`; on any error the temporary file
    is removed and an existing `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        if isinstance(data, str):
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                f.write(data)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_arrays_with_meta(directory: str | os.PathLike, stem: str, arrays: dict, meta: dict) -> Path:
    """DIR/<stem>.npz (`arrays`, name -> array) + DIR/<stem>.json (`meta`), all or nothing.

    Both files are encoded in memory first (a value JSON cannot hold raises here, before any file
    is touched), then written to temporary files in DIR (created if missing), then moved into
    place with `os.replace`, the .npz first. On any error the temporary files are removed and the
    files already in DIR are left as they were. Returns DIR."""
    import io
    import json

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = {f"{stem}.npz": buf.getvalue(), f"{stem}.json": (json.dumps(meta, indent=1) + "\n").encode()}
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmps = {}
    try:
        for name, data in payload.items():
            fd, tmps[name] = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=d)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for name, tmp in tmps.items():
            os.replace(tmp, d / name)
    finally:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    return d
