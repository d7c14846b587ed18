"""Fetch HSEmotion's published models by name, convert them once, and cache the result.

    resolve_model("mbf_va_mtl")          -> ~/.cache/hsemo-jax/models/mbf_va_mtl/
    resolve_model("my_model.pt")         -> ~/.cache/hsemo-jax/models/sha256-<hex>/
    resolve_model("converted/dir")       -> converted/dir  (has hsemo_model.json)

Cache layout (root: `$HSEMO_JAX_CACHE`, else `~/.cache/hsemo-jax`):

    downloads/<name>.pt          the published PyTorch file, downloaded or placed there by hand
    models/<name>/               the converted model directory of a published model
    models/sha256-<hex>/         the converted model directory of a local .pt/.pth file
    downloads/mtcnn/pnet.pt ...  other published files (`fetch_file`): MTCNN's weights

Every published file, downloaded or placed, is checked against the git blob id the registry pins
for it (`hsemo_jax.models.registry.PUBLISHED`); a converted directory records the SHA-256 and blob
id of the file it was converted from, and is converted again when the file at `downloads/` is no
longer that file. A file placed by hand is never deleted: one that is not the published file is
refused, naming it and both hashes.

Downloads use only the standard library (`urllib.request`). They are streamed to
`<file>.part`, checked (length, hashes) and renamed into place with `os.replace`, so an
interrupted or corrupted download never leaves a file that looks complete. Without internet
access, place the published file at `downloads/<name>.pt` yourself, or pass the .pt file or a
converted directory directly.
"""
from __future__ import annotations

import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from hsemo_jax.checkpoint import META_FILE, read_info
from hsemo_jax.digests import FileDigests, file_digests
from hsemo_jax.errors import CheckpointError, InputError, InputWarning
from hsemo_jax.models import registry
from hsemo_jax.paths import cache_dir

__all__ = ["resolve_model", "load_published", "download", "published_names", "fetch_file",
           "load_mtcnn"]

BASE_URL_ENV = "HSEMO_JAX_BASE_URL"
TORCH_SUFFIXES = (".pt", ".pth")
DEFAULT_TIMEOUT = 60.0  # seconds without progress (connect or read) before giving up
_CHUNK = 1 << 16


def published_names() -> tuple[str, ...]:
    return tuple(registry.PUBLISHED)


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


def _mismatch(file: Path, digests: FileDigests, *, sha256: str | None = None,
              git_blob: str | None = None, name: str | None = None) -> str | None:
    """Why `file` is not what is expected (a user's SHA-256, the registry's pinned blob id), or None."""
    if git_blob is not None and digests.git_blob != git_blob:
        return (f"{file}: not the published {name}.pt: its git blob id is {digests.git_blob}, "
                f"hsemo_jax.models.registry pins {git_blob}")
    if sha256 is not None and digests.sha256 != sha256:
        return f"{file}: SHA-256 mismatch: expected {sha256} (expected_sha256), got {digests.sha256}"
    return None


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


_MODEL_ALTERNATIVE = "pass the .pt file / a converted directory to --model"


def _offline_error(name: str, url: str, reason, dest: Path, alternative: str) -> InputError:
    return InputError(
        f"cannot download {name} from {url} ({reason}). Download it on a machine with internet "
        f"access and place it at {dest}, or {alternative}")


def download(url: str, dest: str | os.PathLike, *, name: str | None = None,
             expected_sha256: str | None = None, expected_git_blob: str | None = None,
             progress: bool = True, timeout: float = DEFAULT_TIMEOUT,
             alternative: str = _MODEL_ALTERNATIVE) -> FileDigests:
    """Download `url` to `dest` atomically; returns the file's digests.

    Streams to `<dest>.part`, checks Content-Length, `expected_sha256` and `expected_git_blob`,
    then renames the file into place. Cannot connect (offline, DNS, refused, HTTP error) ->
    InputError saying where to place the file by hand (or the `alternative`); connection lost, truncated body or timeout
    while reading, or a hash mismatch -> CheckpointError. On any error neither `.part` nor `dest`
    is left.
    """
    dest = Path(dest)
    name = name or dest.stem
    expected = _norm_hash(expected_sha256, "expected_sha256")
    part = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "hsemo-jax"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise _offline_error(name, url, f"HTTP {e.code} {e.reason}", dest, alternative) from None
    except urllib.error.URLError as e:
        raise _offline_error(name, url, e.reason, dest, alternative) from None
    except (OSError, http.client.HTTPException) as e:
        raise _offline_error(name, url, e or type(e).__name__, dest, alternative) from None

    dest.parent.mkdir(parents=True, exist_ok=True)
    with response:
        length = response.headers.get("Content-Length")
        try:
            total = int(length) if length is not None else None
        except ValueError:
            total = None
        bar = _Progress(dest.name, total, progress)
        done, ok = 0, False
        try:
            with open(part, "wb") as f:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(done)
            if total is not None and done != total:
                raise CheckpointError(
                    f"download of {name} from {url} was interrupted: got {done} of {total} bytes; "
                    "nothing was cached, try again")
            digests = file_digests(part)
            wrong = _mismatch(dest, digests, sha256=expected, git_blob=expected_git_blob, name=name)
            if wrong:
                raise CheckpointError(f"{wrong}, for the download from {url}; nothing was cached")
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
                _unlink(part)  # ours: a download that did not complete
            bar.close(done, ok)
    return digests


# ------------------------------------------------------------------------------------ resolve


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / META_FILE).is_file()


def _converted_source(model_dir: Path) -> dict:
    """What a cached model was converted from (`source` of its metadata); {} if it is unusable."""
    if not _is_model_dir(model_dir):
        return {}
    try:
        source = read_info(model_dir).source
    except CheckpointError:
        return {}
    return source if isinstance(source, dict) else {}


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
    digests = file_digests(path)
    wrong = _mismatch(path, digests, sha256=expected)
    if wrong:
        raise CheckpointError(wrong)
    out = cache_dir() / "models" / f"sha256-{digests.sha256}"
    if _converted_source(out).get("sha256") == digests.sha256:
        return out
    return _convert(path, out, arch=None)


def _resolve_published(name: str, *, base_url: str | None, expected: str | None,
                       progress: bool, timeout: float) -> Path:
    pub = registry.PUBLISHED[name]
    root = cache_dir()
    model_dir = root / "models" / name
    dest = root / "downloads" / f"{name}.pt"
    if pub.git_blob is None:
        warnings.warn(f"{name}: hsemo_jax.models.registry pins no hash for this published file; "
                      f"{dest} is used unverified", InputWarning, stacklevel=3)

    # 1. The published file is in the cache (downloaded earlier, or placed there by hand): it must
    #    be the published file; the conversion is reused if it was made from this very file.
    if dest.is_file():
        digests = file_digests(dest)
        wrong = _mismatch(dest, digests, sha256=expected, git_blob=pub.git_blob, name=name)
        if wrong:
            raise CheckpointError(
                f"{wrong}. The file was left as it is: replace it with {pub.url(name)}, or remove "
                "it to download it again (or pass your own .pt file to --model)")
        if _converted_source(model_dir).get("sha256") == digests.sha256:
            return model_dir
        return _convert(dest, model_dir, arch=pub.arch, num_classes=pub.num_classes)

    # 2. Converted earlier, and the download removed since: the conversion records its source.
    source = _converted_source(model_dir)
    if source and (pub.git_blob is None or source.get("git_blob") == pub.git_blob) and (
            expected is None or source.get("sha256") == expected):
        return model_dir

    # 3. Download, then convert.
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
    if base:
        url = (base if base.endswith("/") else base + "/") + f"{name}.pt"
    else:
        url = pub.url(name)
    download(url, dest, name=name, expected_sha256=expected, expected_git_blob=pub.git_blob,
             progress=progress, timeout=timeout)
    try:
        return _convert(dest, model_dir, arch=pub.arch, num_classes=pub.num_classes)
    except BaseException:
        _unlink(dest)  # our own download, which cannot be converted: not worth keeping
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

    `expected_sha256` checks the .pt file; a published file is also checked against the git blob id
    the registry pins for it. `progress` shows a download progress line on stderr (one updating
    line on a terminal, start/end lines otherwise).
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
    from hsemo_jax.checkpoint import load_model

    return load_model(resolve_model(name, **kw))


# ------------------------------------------------------------------------------- other files


def fetch_file(name: str, *, base_url: str | None = None, progress: bool = True,
               timeout: float = DEFAULT_TIMEOUT, alternative: str = "pass the file's directory") -> Path:
    """A published file (`hsemo_jax.models.registry.PUBLISHED_FILES`, e.g. "mtcnn/pnet.pt") at
    `<cache>/downloads/<name>`, downloaded on first use from its URL (or `base_url + name`,
    `$HSEMO_JAX_BASE_URL`) and checked against its pinned SHA-256 on every use. A file there that
    is not the published one is refused and left as it is."""
    if name not in registry.PUBLISHED_FILES:
        raise InputError(f"{name}: unknown published file; expected one of {', '.join(registry.PUBLISHED_FILES)}")
    pub = registry.PUBLISHED_FILES[name]
    dest = cache_dir() / "downloads" / name
    if dest.is_file():
        digests = file_digests(dest)
        if digests.sha256 != pub.sha256:
            raise CheckpointError(
                f"{dest}: not the published {name}: its SHA-256 is {digests.sha256}, hsemo_jax.models.registry "
                f"pins {pub.sha256}. The file was left as it is: replace it with {pub.url}, or remove it to "
                "download it again")
        return dest
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
    url = (base if base.endswith("/") else base + "/") + name if base else pub.url
    download(url, dest, name=name, expected_sha256=pub.sha256, progress=progress, timeout=timeout,
             alternative=alternative)
    return dest


def load_mtcnn(weights: str | os.PathLike | None = None, **fetch):
    """MTCNN (`hsemo_jax.models.mtcnn`) with facenet-pytorch's weights: from a directory holding
    pnet.pt, rnet.pt and onet.pt (its data/ folder), or, with None, the published files fetched
    once and cached (`fetch_file`; `fetch` is passed on)."""
    from hsemo_jax.convert.mtcnn import NETS, read_mtcnn

    if weights is None:
        alternative = "pass a directory with pnet.pt, rnet.pt and onet.pt (--detector-model)"
        return read_mtcnn({n: fetch_file(f"mtcnn/{n}.pt", alternative=alternative, **fetch) for n in NETS})
    folder = Path(weights).expanduser()
    files = {n: folder / f"{n}.pt" for n in NETS}
    missing = [n for n, f in files.items() if not f.is_file()]
    if missing:
        raise InputError(f"{folder}: expected a directory with MTCNN's {', '.join(f'{n}.pt' for n in NETS)} "
                         f"(facenet-pytorch's data/ folder); missing {', '.join(f'{n}.pt' for n in missing)}")
    return read_mtcnn(files)
