"""`hsemo_jax.hub`: fetch a published model by name from a local HTTP server, convert once, cache.

No internet: every download comes from an http.server on 127.0.0.1 (ephemeral port) that can
serve normally, cut the body short, stall, or serve a different file on the next request.
"""
import hashlib
import io
import json
import shutil
import socket
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from hsemo_jax import hub
from hsemo_jax.checkpoint import FORMAT, META_FILE, ModelInfo
from hsemo_jax.convert import export_torch_state
from hsemo_jax.digests import FileDigests, file_digests
from hsemo_jax.errors import CheckpointError, InputError, InputWarning
from hsemo_jax.models import registry

NAME = "mbf_va_mtl"  # published name whose architecture is mobilefacenet (10 outputs)


def _checkpoint_bytes(model, bump: float = 0.0) -> tuple[bytes, dict]:
    sd = {k: v.copy() for k, v in export_torch_state(model, "mobilefacenet").items()}
    sd["fc.bias"] = sd["fc.bias"] + np.float32(bump)
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, buf)
    return buf.getvalue(), sd


@pytest.fixture(scope="module")
def checkpoints():
    """Two small real MobileFaceNet checkpoints that differ in one tensor: (bytes, state dict)."""
    assert registry.PUBLISHED[NAME].arch == "mobilefacenet"
    model = registry.build("mobilefacenet", 10, seed=0)
    return _checkpoint_bytes(model), _checkpoint_bytes(model, bump=1.0)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _pin(monkeypatch, data: bytes | None) -> None:
    """Pin NAME to `data`'s git blob id (None: nothing pinned), as the registry does the real file."""
    pub = registry.PUBLISHED[NAME]
    monkeypatch.setitem(registry.PUBLISHED, NAME,
                        registry.Published(pub.arch, pub.num_classes, None if data is None else _blob(data)))


class FileServer:
    """Serves `files[path]` (a list: request i gets item min(i, len-1)) in one of three modes:
    "ok", "truncate" (full Content-Length, then half the body and close), "stall" (half, then hang)."""

    def __init__(self):
        self.files: dict[str, list[bytes]] = {}
        self.mode = "ok"
        self.hits: list[str] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.hits.append(self.path)
                versions = owner.files.get(self.path)
                if versions is None:
                    self.send_error(404)
                    return
                data = versions[min(owner.hits.count(self.path) - 1, len(versions) - 1)]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if owner.mode == "ok":
                    self.wfile.write(data)
                    return
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                if owner.mode == "stall":
                    owner.release.wait(10)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def serve(self, name: str, *versions: bytes):
        self.files[f"/models/{name}.pt"] = list(versions)

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("HSEMO_JAX_CACHE", str(root))
    monkeypatch.delenv("HSEMO_JAX_BASE_URL", raising=False)
    return root


@pytest.fixture
def closed_url():
    """A base URL on a port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/models/"


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the (slow, orbax-writing) conversion by one that writes only `hsemo_model.json`,
    for tests about fetching and caching; the real conversion is exercised elsewhere here."""
    calls = []

    def convert(src, out, arch, num_classes=None):
        calls.append(src)
        source = {"file": src.name, "sha256": _sha(src.read_bytes()), "git_blob": _blob(src.read_bytes())}
        info = ModelInfo.for_arch(arch, num_classes, source=source)
        out.mkdir(parents=True, exist_ok=True)
        (out / META_FILE).write_text(json.dumps({"format": FORMAT, **asdict(info)}))
        return out

    monkeypatch.setattr(hub, "_convert", convert)
    return calls


def _assert_nothing_cached(cache):
    dl = cache / "downloads"
    assert not dl.exists() or not list(dl.iterdir()), list(dl.iterdir())
    assert not (cache / "models" / NAME).exists()


def test_cache_dir(monkeypatch, tmp_path):
    from hsemo_jax.paths import cache_dir

    monkeypatch.setenv("HSEMO_JAX_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HSEMO_JAX_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "hsemo-jax")


def test_file_digests(tmp_path):
    (tmp_path / "hello").write_bytes(b"hello\n")
    d = file_digests(tmp_path / "hello")
    assert d.git_blob == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object hello`
    assert d.sha256 == hashlib.sha256(b"hello\n").hexdigest() and d.size == 6
    data = np.random.default_rng(1).bytes(3 << 20 | 5)  # several chunks
    (tmp_path / "big").write_bytes(data)
    assert file_digests(tmp_path / "big") == FileDigests(len(data), _sha(data), _blob(data))


def test_every_published_file_is_pinned():
    for name, pub in registry.PUBLISHED.items():
        assert pub.git_blob is not None and len(pub.git_blob) == 40 and int(pub.git_blob, 16) >= 0, name


def test_download_convert_then_cache_without_network(cache, server, checkpoints, monkeypatch):
    (data, sd), _ = checkpoints
    _pin(monkeypatch, data)
    server.serve(NAME, data)
    out = hub.resolve_model(NAME, base_url=server.url, progress=False)
    assert out == cache / "models" / NAME and (out / META_FILE).is_file()
    assert server.hits == [f"/models/{NAME}.pt"]
    dl = cache / "downloads" / f"{NAME}.pt"
    assert dl.read_bytes() == data and [p.name for p in dl.parent.iterdir()] == [dl.name]

    server.stop()  # from now on any network access fails
    model = hub.load_published(NAME, base_url=server.url, progress=False)
    assert model.info.arch == "mobilefacenet" and model.info.num_classes == 10
    assert model.info.source["sha256"] == _sha(data) and model.info.source["git_blob"] == _blob(data)
    loaded = export_torch_state(model, "mobilefacenet")
    np.testing.assert_array_equal(loaded["fc.weight"], sd["fc.weight"])
    np.testing.assert_array_equal(loaded["fc.bias"], sd["fc.bias"])
    assert len(server.hits) == 1

    # The converted directory is gone but the download is not: re-converted, still offline,
    # after checking the file against the pinned hash.
    shutil.rmtree(out)
    calls = []
    monkeypatch.setattr(hub, "_convert", lambda src, out, arch, num_classes=None: calls.append(src) or out)
    assert hub.resolve_model(NAME, base_url=server.url, progress=False) == out
    assert calls == [dl] and len(server.hits) == 1


def test_download_progress_and_env_base_url(cache, server, checkpoints, monkeypatch, capfd):
    (data, _), _ = checkpoints
    _pin(monkeypatch, data)
    server.serve(NAME, data)
    dest = cache / "downloads" / f"{NAME}.pt"
    monkeypatch.setenv("HSEMO_JAX_BASE_URL", server.url.rstrip("/"))  # joined with a "/"
    monkeypatch.setattr(hub, "_convert", lambda src, out, arch, num_classes=None: out)  # not the point here
    assert hub.resolve_model(NAME, progress=True) == cache / "models" / NAME
    assert dest.read_bytes() == data and server.hits == [f"/models/{NAME}.pt"]
    err = capfd.readouterr().err
    assert f"downloading {NAME}.pt" in err and str(len(data)) in err

    assert hub.download(server.url + f"{NAME}.pt", cache / "x.pt", progress=False).sha256 == _sha(data)
    assert capfd.readouterr().err == ""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    hub.download(server.url + f"{NAME}.pt", cache / "y.pt")
    mb = f"{len(data) / 1e6:.1f}"
    assert term.getvalue().startswith("\r") and term.getvalue().endswith(f"{mb}/{mb} MB (100%)\n")
    assert (cache / "y.pt").read_bytes() == data


def test_interrupted_download_leaves_nothing(cache, server, checkpoints):
    (data, _), _ = checkpoints
    server.serve(NAME, data)
    server.mode = "truncate"
    with pytest.raises(CheckpointError, match=rf"interrupted: got {len(data) // 2} of {len(data)} bytes"):
        hub.resolve_model(NAME, base_url=server.url, progress=False)
    _assert_nothing_cached(cache)


def test_download_timeout_leaves_nothing(cache, server, checkpoints):
    (data, _), _ = checkpoints
    server.serve(NAME, data)
    server.mode = "stall"
    with pytest.raises(CheckpointError, match="timed out"):
        hub.resolve_model(NAME, base_url=server.url, progress=True, timeout=0.5)
    _assert_nothing_cached(cache)


def test_download_that_is_not_the_pinned_file_caches_nothing(cache, server, checkpoints, fake_convert,
                                                            monkeypatch):
    (first, _), (second, _) = checkpoints
    _pin(monkeypatch, first)
    server.serve(NAME, first, second)
    out = hub.resolve_model(NAME, base_url=server.url, progress=False)
    assert hub.resolve_model(NAME, base_url=server.url, progress=False) == out  # cached
    assert len(server.hits) == 1 and len(fake_convert) == 1
    shutil.rmtree(out)
    (cache / "downloads" / f"{NAME}.pt").unlink()

    with pytest.raises(CheckpointError) as exc:
        hub.resolve_model(NAME, base_url=server.url, progress=False)
    msg = str(exc.value)
    assert str(cache / "downloads" / f"{NAME}.pt") in msg and "nothing was cached" in msg
    assert _blob(first) in msg and _blob(second) in msg
    assert len(server.hits) == 2
    _assert_nothing_cached(cache)


def test_placed_file_that_is_not_the_published_one_is_refused_and_kept(cache, closed_url):
    """The real pin: a random file at downloads/enet_b0_8_va_mtl.pt was accepted without a word."""
    name = "enet_b0_8_va_mtl"
    dest = cache / "downloads" / f"{name}.pt"
    dest.parent.mkdir(parents=True)
    junk = np.random.default_rng(0).bytes(5000)
    dest.write_bytes(junk)
    with pytest.raises(CheckpointError) as exc:
        hub.resolve_model(name, base_url=closed_url, progress=False)
    assert str(exc.value).startswith(
        f"{dest}: not the published {name}.pt: its git blob id is {_blob(junk)}, hsemo_jax.models.registry "
        f"pins {registry.PUBLISHED[name].git_blob}. The file was left as it is")
    assert dest.read_bytes() == junk and not (cache / "models").exists()


def test_file_replaced_after_conversion_is_converted_again(cache, checkpoints, closed_url, fake_convert,
                                                           monkeypatch):
    """A different file placed later at the same path used to be ignored (the old conversion kept
    being used); once the conversion was removed, the file was deleted."""
    (first, _), (second, _) = checkpoints
    dest = cache / "downloads" / f"{NAME}.pt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(first)
    _pin(monkeypatch, first)
    out = hub.resolve_model(NAME, base_url=closed_url, progress=False)
    assert fake_convert == [dest]

    dest.write_bytes(second)  # not the pinned file: refused, kept, the old conversion not used
    for _ in range(2):
        with pytest.raises(CheckpointError, match=f"its git blob id is {_blob(second)}"):
            hub.resolve_model(NAME, base_url=closed_url, progress=False)
        assert dest.read_bytes() == second
        shutil.rmtree(out, ignore_errors=True)  # also once the conversion is gone

    _pin(monkeypatch, second)  # e.g. a release that pins a newly published file
    hub.resolve_model(NAME, base_url=closed_url, progress=False)
    assert fake_convert == [dest, dest]
    assert json.loads((out / META_FILE).read_text())["source"]["sha256"] == _sha(second)
    hub.resolve_model(NAME, base_url=closed_url, progress=False)
    assert len(fake_convert) == 2  # converted from this very file: reused

    _pin(monkeypatch, None)  # nothing pinned: any file there is used, with a warning, and followed
    dest.write_bytes(first)
    with pytest.warns(InputWarning, match=f"{NAME}: hsemo_jax.models.registry pins no hash") as seen:
        hub.resolve_model(NAME, base_url=closed_url, progress=False)
    assert len(seen) == 1 and "used unverified" in str(seen[0].message)
    assert len(fake_convert) == 3 and json.loads((out / META_FILE).read_text())["source"]["sha256"] == _sha(first)


@pytest.mark.parametrize("how", ["argument", "pinned"])
def test_wrong_expected_hash_caches_nothing(cache, server, checkpoints, monkeypatch, how):
    (data, _), _ = checkpoints
    server.serve(NAME, data)
    kw = {}
    if how == "argument":
        _pin(monkeypatch, data)
        wrong, got = "0" * 64, _sha(data)
        kw["expected_sha256"] = wrong
    else:
        _pin(monkeypatch, b"another file")
        wrong, got = _blob(b"another file"), _blob(data)
    with pytest.raises(CheckpointError) as exc:
        hub.resolve_model(NAME, base_url=server.url, progress=False, **kw)
    assert wrong in str(exc.value) and got in str(exc.value)
    assert str(cache / "downloads" / f"{NAME}.pt") in str(exc.value)
    _assert_nothing_cached(cache)


def test_offline_says_where_to_place_the_file(cache, closed_url):
    with pytest.raises(InputError) as exc:
        hub.resolve_model(NAME, base_url=closed_url, progress=False, timeout=5)
    assert not isinstance(exc.value, CheckpointError)
    msg = str(exc.value)
    assert f"cannot download {NAME} from {closed_url}{NAME}.pt" in msg
    assert f"place it at {cache / 'downloads' / f'{NAME}.pt'}" in msg and "--model" in msg
    _assert_nothing_cached(cache)


def test_http_error_is_an_input_error(cache, server):
    with pytest.raises(InputError, match="HTTP 404") as exc:
        hub.resolve_model(NAME, base_url=server.url, progress=False)
    assert not isinstance(exc.value, CheckpointError)
    _assert_nothing_cached(cache)


def test_file_placed_by_hand_is_used_offline(cache, checkpoints, closed_url, fake_convert, monkeypatch):
    (data, _), _ = checkpoints
    _pin(monkeypatch, data)
    dl = cache / "downloads"
    dl.mkdir(parents=True)
    (dl / f"{NAME}.pt").write_bytes(data)
    out = hub.resolve_model(NAME, base_url=closed_url, progress=False)
    assert out == cache / "models" / NAME and (out / META_FILE).is_file()
    assert [p.name for p in dl.iterdir()] == [f"{NAME}.pt"]
    assert fake_convert == [dl / f"{NAME}.pt"]


def test_unknown_name_lists_published_models(cache):
    with pytest.raises(InputError) as exc:
        hub.resolve_model("enet_b9_nope")
    assert "unknown model" in str(exc.value)
    for name in registry.PUBLISHED:
        assert name in str(exc.value)
    with pytest.raises(InputError, match="no such file"):
        hub.resolve_model("missing/model.pt")
    assert not cache.exists()


def test_local_file_converted_once_and_directories_passed_through(cache, tmp_path, checkpoints,
                                                                  monkeypatch):
    (data, _), _ = checkpoints
    src = tmp_path / "mine.pth"
    src.write_bytes(data)
    out = hub.resolve_model(src)
    assert out == cache / "models" / f"sha256-{_sha(data)}" and (out / META_FILE).is_file()

    def no_convert(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(hub, "_convert", no_convert)
    assert hub.resolve_model(str(src)) == out
    assert hub.resolve_model(out) == out  # a converted directory is returned as is
    with pytest.raises(CheckpointError, match="mismatch"):
        hub.resolve_model(src, expected_sha256="f" * 64)

    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(InputError, match="PyTorch file"):
        hub.resolve_model(other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an hsemo-jax model directory"):
        hub.resolve_model(tmp_path / "empty")


def test_official_url_without_base_url(cache, monkeypatch):
    seen = []

    def no_network(url, dest, **kw):
        seen.append((url, dest))
        raise InputError("offline")

    monkeypatch.setattr(hub, "download", no_network)
    with pytest.raises(InputError, match="offline"):
        hub.resolve_model(NAME, progress=False)
    assert seen == [(registry.PUBLISHED[NAME].url(NAME), cache / "downloads" / f"{NAME}.pt")]
    assert seen[0][0].startswith("https://github.com/HSE-asavchenko/face-emotion-recognition/")
