"""Fetch HSEmotion's published models by name, convert them once, and cache the result.

    resolve_model("mbf_va_mtl")          -> ~/.cache/hsemo-jax/models/mbf_va_mtl/
    resolve_model("my_model.pt")         -> ~/.cache/hsemo-jax/models/sha256-<hex>/
    resolve_model("converted/dir")       -> converted/dir  (has hsemo_model.json)

Cache layout (root: `$HSEMO_JAX_CACHE`, else `~/.cache/hsemo-jax`):

    downloads/<name>.pt          the published PyTorch file, as downloaded
    downloads/<name>.pt.sha256   its SHA-256, recorded on the first download (trust on first use)
    models/<name>/               the converted model directory of a published model
    models/sha256-<hex>/         the converted model directory of a local .pt/.pth file

Downloads use only the standard library (`urllib.request`). They are streamed to
`<file>.part`, checked (length, SHA-256) and renamed into place with `os.replace`, so an
interrupted or corrupted download never leaves a file that looks complete. Without internet
access, place the published file at `downloads/<name>.pt` yourself: it is then used as is
(and its SHA-256 recorded), or pass the .pt file or a converted directory directly.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from hsemo_jax.checkpoint import META_FILE, read_info
from hsemo_jax.errors import CheckpointError, InputError
from hsemo_jax.fileio import atomic_write
from hsemo_jax.models import registry
from hsemo_jax.paths import cache_dir

__all__ = ["KNOWN_SHA256", "cache_dir", "resolve_model", "load_published", "download",
           "published_names"]

BASE_URL_ENV = "HSEMO_JAX_BASE_URL"
TORCH_SUFFIXES = (".pt", ".pth")
DEFAULT_TIMEOUT = 60.0  # seconds without progress (connect or read) before giving up
_CHUNK = 1 << 16

# Published file name -> expected lowercase hex SHA-256. Empty for now: entries are added here when
# the published files have been verified. Until then the hash of the first successful download
# is recorded next to it (`<name>.pt.sha256`) and every later use is checked against that.
KNOWN_SHA256: dict[str, str] = {}


def published_names() -> tuple[str, ...]:
    return tuple(registry.PUBLISHED)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _norm_hash(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    h = value.strip().lower()
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise InputError(f"{what}: not a hex SHA-256 ({value!r})")
    return h


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _read_record(record: Path) -> str | None:
    """The recorded SHA-256 (`sha256sum` format: first token), or None if there is no record."""
    try:
        text = record.read_text()
    except FileNotFoundError:
        return None
    return _norm_hash(text.split()[0] if text.split() else "", str(record))


def _check_hash(file: Path, actual: str, expected: dict[str, str], *, delete: Path | None) -> None:
    """Raise CheckpointError if `actual` differs from any expected hash (source -> hash)."""
    for source, want in expected.items():
        if want != actual:
            if delete is not None:
                _unlink(delete)
            raise CheckpointError(
                f"{file}: SHA-256 mismatch: expected {want} ({source}), got {actual}; "
                "the file was deleted and nothing was cached. If the published file legitimately "
                "changed, delete the recorded hash and try again")


# ----------------------------------------------------------------------------------- download


class _Progress:
    """One updating line on stderr: `downloading NAME: 1.2/3.4 MB (35%)`."""

    def __init__(self, label: str, total: int | None, enabled: bool):
        self.label, self.total = label, total
        self.enabled = enabled
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.last = 0.0
        if enabled and not self.tty:  # logs: a start line and an end line, no carriage returns
            sys.stderr.write(f"downloading {label} ({self._size(total)})\n")
            sys.stderr.flush()

    @staticmethod
    def _size(n: int | None) -> str:
        return "unknown size" if n is None else f"{n / 1e6:.1f} MB"

    def _line(self, done: int) -> str:
        if self.total:
            return (f"downloading {self.label}: {done / 1e6:.1f}/{self.total / 1e6:.1f} MB "
                    f"({100 * done // self.total}%)")
        return f"downloading {self.label}: {done / 1e6:.1f} MB"

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.tty and now - self.last >= 0.1:
            self.last = now
            sys.stderr.write("\r" + self._line(done))
            sys.stderr.flush()

    def close(self, done: int, ok: bool) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r" + self._line(done) + ("\n" if ok else " - failed\n"))
        elif ok:
            sys.stderr.write(f"downloaded {self.label}: {done} bytes\n")
        sys.stderr.flush()


def _offline_error(name: str, url: str, reason, dest: Path) -> InputError:
    return InputError(
        f"cannot download {name} from {url} ({reason}). Download it on a machine with internet "
        f"access and place it at {dest}, or pass the .pt file / a converted directory to --model")


def download(url: str, dest: str | os.PathLike, *, name: str | None = None,
             expected_sha256: str | None = None, progress: bool = True,
             timeout: float = DEFAULT_TIMEOUT) -> str:
    """Download `url` to `dest` atomically; returns the file's SHA-256.

    Streams to `<dest>.part`, checks Content-Length and `expected_sha256`, then renames the
    file into place. Cannot connect (offline, DNS, refused, HTTP error) -> InputError saying
    where to place the file by hand; connection lost, truncated body or timeout while reading,
    or a hash mismatch -> CheckpointError. On any error neither `.part` nor `dest` is left.
    """
    dest = Path(dest)
    name = name or dest.stem
    expected = _norm_hash(expected_sha256, "expected_sha256")
    part = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "hsemo-jax"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise _offline_error(name, url, f"HTTP {e.code} {e.reason}", dest) from None
    except urllib.error.URLError as e:
        raise _offline_error(name, url, e.reason, dest) from None
    except (OSError, http.client.HTTPException) as e:
        raise _offline_error(name, url, e or type(e).__name__, dest) from None

    dest.parent.mkdir(parents=True, exist_ok=True)
    with response:
        length = response.headers.get("Content-Length")
        try:
            total = int(length) if length is not None else None
        except ValueError:
            total = None
        bar = _Progress(dest.name, total, progress)
        digest, done, ok = hashlib.sha256(), 0, False
        try:
            with open(part, "wb") as f:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    bar.update(done)
            if total is not None and done != total:
                raise CheckpointError(
                    f"download of {name} from {url} was interrupted: got {done} of {total} bytes; "
                    "nothing was cached, try again")
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise CheckpointError(
                    f"{dest}: SHA-256 mismatch for the download from {url}: expected {expected}, "
                    f"got {actual}; nothing was cached")
            os.replace(part, dest)
            ok = True
        except (socket.timeout, TimeoutError) as e:
            raise CheckpointError(f"download of {name} from {url} timed out after {done} bytes "
                                  f"({e or 'no data for ' + str(timeout) + ' s'}); nothing was cached, "
                                  "try again") from None
        except (OSError, http.client.HTTPException) as e:
            raise CheckpointError(f"download of {name} from {url} failed after {done} bytes "
                                  f"({type(e).__name__}: {e}); nothing was cached, try again") from None
        finally:
            if not ok:
                _unlink(part)
            bar.close(done, ok)
    return actual


# ------------------------------------------------------------------------------------ resolve


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / META_FILE).is_file()


def _converted_source_hash(model_dir: Path) -> str | None:
    """SHA-256 of the file a cached model was converted from; None if the cache entry is unusable."""
    if not _is_model_dir(model_dir):
        return None
    try:
        return str(read_info(model_dir).source.get("sha256", "")).lower()
    except CheckpointError:
        return None


def _convert(src: Path, out: Path, arch: str | None, num_classes: int | None = None) -> Path:
    from hsemo_jax.convert import convert  # heavy (model code); only when actually converting

    info = convert(src, out, arch=arch, overwrite=True)  # atomic: nothing at `out` on error
    if num_classes is not None and info.num_classes != num_classes:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise CheckpointError(f"{src}: expected {num_classes} outputs for {out.name}, "
                              f"the checkpoint has {info.num_classes}")
    return out


def _resolve_local_file(path: Path, expected: str | None) -> Path:
    actual = _sha256_file(path)
    if expected is not None and actual != expected:
        raise CheckpointError(f"{path}: SHA-256 mismatch: expected {expected}, got {actual}")
    out = cache_dir() / "models" / f"sha256-{actual}"
    if _converted_source_hash(out) == actual:
        return out
    return _convert(path, out, arch=None)


def _resolve_published(name: str, *, base_url: str | None, expected: str | None,
                       progress: bool, timeout: float) -> Path:
    pub = registry.PUBLISHED[name]
    root = cache_dir()
    model_dir = root / "models" / name
    dest = root / "downloads" / f"{name}.pt"
    record = dest.with_name(dest.name + ".sha256")

    wanted: dict[str, str] = {}
    if expected is not None:
        wanted["expected_sha256"] = expected
    elif name in KNOWN_SHA256:
        wanted["hsemo_jax.hub.KNOWN_SHA256"] = _norm_hash(KNOWN_SHA256[name], f"KNOWN_SHA256[{name!r}]")
    recorded = _read_record(record)
    if recorded is not None:
        wanted[f"recorded in {record}"] = recorded

    # 1. Already converted: no network, no re-hashing of the download.
    converted = _converted_source_hash(model_dir)
    if converted is not None:
        for source, want in wanted.items():
            if want != converted:
                raise CheckpointError(
                    f"{model_dir}: converted from a file with SHA-256 {converted}, expected {want} "
                    f"({source}); delete {model_dir} (and {dest}) to fetch it again")
        return model_dir

    # 2. The published file is in the cache (downloaded earlier, or placed there by hand).
    fresh = False
    if dest.is_file():
        actual = _sha256_file(dest)
        _check_hash(dest, actual, wanted, delete=dest)
    else:
        base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
        if base:
            url = (base if base.endswith("/") else base + "/") + f"{name}.pt"
        else:
            url = pub.url(name)
        actual = download(url, dest, name=name, expected_sha256=expected, progress=progress,
                          timeout=timeout)
        fresh = True
        _check_hash(dest, actual, wanted, delete=dest)  # vs. KNOWN_SHA256 and the recorded hash

    new_record = recorded is None
    if new_record:  # trust on first use
        atomic_write(record, f"{actual}  {dest.name}\n")

    # 3. Convert once.
    try:
        return _convert(dest, model_dir, arch=pub.arch, num_classes=pub.num_classes)
    except BaseException:
        if fresh:  # a download that cannot be converted is not worth keeping (or trusting)
            _unlink(dest)
            if new_record:
                _unlink(record)
        raise


def resolve_model(name_or_dir: str | os.PathLike, *, base_url: str | None = None,
                  progress: bool = True, expected_sha256: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT) -> Path:
    """A converted model directory for a directory, a .pt/.pth file, or a published model name.

    - a directory with `hsemo_model.json`: returned as is;
    - a `.pt`/`.pth` file: converted once into `<cache>/models/sha256-<hex>/`;
    - a published name (`hsemo_jax.models.registry.PUBLISHED`): `<cache>/models/<name>/`,
      downloaded (to `<cache>/downloads/<name>.pt`) and converted on first use. The file comes
      from `base_url + name + '.pt'` if `base_url` or `$HSEMO_JAX_BASE_URL` is set (mirrors,
      tests), else from the official HSEmotion URL.

    `expected_sha256` checks the .pt file (overrides `KNOWN_SHA256`); the hash of the first
    download of a published file is recorded and checked on every later use. `progress` shows a
    download progress line on stderr (one updating line on a terminal, start/end lines otherwise).
    `timeout`: seconds without progress before a connection or download is abandoned.
    """
    expected = _norm_hash(expected_sha256, "expected_sha256")
    text = os.fspath(name_or_dir)
    path = Path(text).expanduser()
    if _is_model_dir(path):
        return path
    if path.is_file():
        if path.suffix.lower() not in TORCH_SUFFIXES:
            raise InputError(f"{path}: expected a PyTorch file ({'/'.join(TORCH_SUFFIXES)}), "
                             "a converted model directory or a published model name")
        return _resolve_local_file(path, expected)
    if text in registry.PUBLISHED:
        return _resolve_published(text, base_url=base_url, expected=expected, progress=progress,
                                  timeout=timeout)
    if path.is_dir():
        read_info(path)  # raises: not a converted model directory
    looks_like_path = (os.sep in text or bool(os.altsep and os.altsep in text)
                       or path.suffix.lower() in TORCH_SUFFIXES)
    what = "no such file or directory" if looks_like_path else "unknown model"
    raise InputError(f"{text}: {what}; expected a converted model directory, a .pt/.pth file, or "
                     f"one of the published models: {', '.join(registry.PUBLISHED)}")


def load_published(name: str, **kw):
    """`hsemo_jax.load_model(resolve_model(name, **kw))`: a ready-to-run model, fetched if needed."""
    from hsemo_jax import load_model

    return load_model(resolve_model(name, **kw))
