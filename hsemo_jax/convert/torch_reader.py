"""Read PyTorch checkpoints without torch and without running code from the pickle.

Supported formats: the zip archive written by ``torch.save`` since torch 1.6::

    <root>/data.pkl      pickle (protocol 2) of the saved object; tensors are
                         persistent ids ('storage', StorageType, key, location, numel)
    <root>/data/<key>    raw bytes of one storage: numel elements of StorageType's dtype
    <root>/byteorder     "little" or "big" (absent in old files: little)

and the legacy format of torch < 1.6 (``_use_new_zipfile_serialization=False``; facenet-pytorch's
MTCNN weights are such files): five pickles in a row, then the storages::

    magic number, protocol version (1001), system info ({'little_endian': ...})
    the saved object; tensors are persistent ids ('storage', StorageType, key, location, numel, None)
    the list of storage keys; then per key: its element count (int64), then its bytes

Legacy storages are allocated when the object pickle first names them and filled from the records
after it, so their tensors are read-only views into them (zip tensors are copies).

The pickle is read by a restricted unpickler. A global is resolved only if it is
one of the small safe functions implemented here (tensor/parameter rebuilders,
OrderedDict, set, ...) or a name under a trusted model-definition prefix, which
becomes an `InertObject` placeholder class: nothing is imported and no code from
the file runs. Every other global raises `UnsafePickleError` before anything is
executed.

Tensors come back as ``np.ndarray`` (bfloat16 as ``ml_dtypes.bfloat16``), copied out of their
storage with the saved size, stride and storage offset (a tensor that is its whole storage is
that storage, as in torch).

What a file can make this process do is bounded, whatever it claims: records are read in chunks of
at most 1 MiB; a storage record must hold exactly the bytes its storage type and element count
name; the storages read and the tensors built from them may need at most `MAX_TENSOR_BYTES`
together, data.pkl (the legacy pickles: each) at most `MAX_PICKLE_BYTES`, and legacy storages no
more than the file holds. Each refusal is a CheckpointError raised before the allocation it would
take.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import os
import pickle
import reprlib
import warnings
import zipfile
import zlib
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from hsemo_jax.errors import CheckpointError, InputWarning, UnsafePickleError

__all__ = [
    "MAX_DEPTH",
    "MAX_MODULES",
    "MAX_NAME",
    "MAX_PICKLE_BYTES",
    "MAX_TENSOR_BYTES",
    "InertObject",
    "extract_state_dict",
    "load_torch_file",
    "read_state_dict",
    "walk_modules",
]

# Bounds on what a checkpoint may make the reader allocate. The largest supported model
# (MobileViTv2-150) holds 42 MB of float32 tensors, a pickled timm model a data.pkl of 160 KB.
MAX_TENSOR_BYTES = 1 << 30  # storages read plus tensors built (room for optimizer state)
MAX_PICKLE_BYTES = 8 << 20  # data.pkl
MAX_MODULES = 100_000  # modules (a shared one once per name), and tensors, of a pickled module
MAX_DEPTH = 100  # and their nesting (timm's B2: 473 modules, 508 tensors; MobileViT: 7 deep)
MAX_NAME = 1000  # characters of a dotted tensor or module name
_CHUNK = 1 << 20  # bytes inflated or read per step
_MAX_NDIM = 32

_REPR = reprlib.Repr()  # for values from the file in messages: a few items, never the whole thing
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist, _REPR.maxdict = 3, 8, 8, 8
_REPR.maxstring = _REPR.maxother = 60
_brief = _REPR.repr

# torch storage class name -> element dtype of its zip record.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

# `torch.<name>` globals that become inert InertObject markers (dtypes, device, Tensor, layouts).
_TORCH_MARKERS = frozenset(
    {"device", "Tensor", "dtype", "strided", "contiguous_format", "preserve_format"}
    | {
        "float32", "float", "float16", "half", "bfloat16", "float64", "double",
        "int64", "long", "int32", "int", "int16", "short", "int8", "uint8", "bool",
    }
)  # fmt: skip

# Qualified-name prefixes of model-definition code whose classes/functions become
# InertObject placeholders (never imported, never called).
_TRUSTED_PREFIXES = (
    "torch.nn.",
    "timm.",
    "mobilefacenet",
    "backbones.",
    "networks.",
    "DDAM",
    "MixedFeatureNet",
    "models.",
    "__main__",
)

# First bytes of a legacy (pre-1.6) torch.save file: PROTO n, LONG1 10 bytes, magic number.
_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_MAGIC = b"\x8a\x0a" + _MAGIC_NUMBER.to_bytes(10, "little")
_LEGACY_PROTOCOL = 1001

_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")


class InertObject:
    """Placeholder for an object of a pickled class that is never imported.

    Subclasses are made per global (one per qualified name); the class itself is an
    inert marker for that global (e.g. ``torch.float32``), its instances stand for
    objects the pickle constructed.

    Attributes:
        qualname: ``"module.Name"`` of the pickled global (class attribute).
        args: positional constructor arguments (REDUCE / NEWOBJ), a tuple.
        kwargs: keyword constructor arguments (NEWOBJ_EX), a dict.
        state: what BUILD passed (for an nn.Module: its ``__dict__``), else None.
    """

    qualname = "InertObject"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args, **kwargs):
        """Arguments were recorded by ``__new__``; nothing runs."""

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<InertObject {self.qualname}>"


class _StorageType:
    """Marker for a torch storage class (e.g. ``torch.FloatStorage``): its element dtype."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype


class _Unpickler(pickle.Unpickler):
    """Restricted unpickler for ``<root>/data.pkl`` of an open torch zip archive."""

    def __init__(self, file, zf: zipfile.ZipFile, root: str, path, byteorder: str):
        super().__init__(file)
        self._zf, self._root, self._path, self._byteorder = zf, root, path, byteorder
        self._pickle_name = f"{root}/data.pkl" if zf is not None else "the object pickle"
        self._storages: dict[str, np.ndarray] = {}
        self._allocated = 0  # bytes of storages read and tensors built, against MAX_TENSOR_BYTES
        self._inert: dict[str, type] = {}
        self._implemented = {
            "torch._utils._rebuild_tensor": self._rebuild_tensor,
            "torch._utils._rebuild_tensor_v2": self._rebuild_tensor,
            "torch._utils._rebuild_parameter": _rebuild_parameter,
            "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
            "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
            "torch.Size": _size,
            "collections.OrderedDict": collections.OrderedDict,
            "builtins.set": set,
            "builtins.frozenset": frozenset,
            "builtins.slice": slice,
            "builtins.complex": complex,
            "builtins.bytes": self._bytes,
            "builtins.bytearray": self._bytearray,
            "_codecs.encode": self._latin1_encode,
        }

    def _error(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self._path}: {what}")

    def find_class(self, module: str, name: str):
        # Python-2 names (protocol 2 writes '__builtin__.set') -> Python-3 names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname in self._implemented:
            return self._implemented[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if (module == "torch" and name in _TORCH_MARKERS) or qualname.startswith(_TRUSTED_PREFIXES):
            if qualname not in self._inert:
                self._inert[qualname] = type(qualname, (InertObject,), {"qualname": qualname})
            return self._inert[qualname]
        raise UnsafePickleError(
            f"{self._path}: refuses global '{qualname}' in {self._pickle_name}: it is not on the "
            "allow-list of tensor rebuilders and model-definition classes; nothing was executed"
        )

    def persistent_load(self, pid) -> np.ndarray:
        """``('storage', StorageType, key, location, numel)`` -> 1-D array of the storage."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise self._error(
                f"expected a persistent id ('storage', type, key, location, numel), found {_brief(pid)}"
            )
        _, stype, key, _location, numel = pid
        if not (isinstance(stype, _StorageType) and isinstance(key, str) and len(key) <= 100
                and isinstance(numel, int) and numel >= 0):
            raise self._error(f"malformed storage persistent id {_brief(pid)}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, stype, numel)
        storage = self._storages[key]
        if storage.dtype != stype.dtype or storage.size != numel:
            raise self._error(f"storage '{key}' is referenced with conflicting type/numel {stype.name}/{numel}")
        return storage

    def _allocate(self, nbytes: int, what: str) -> None:
        """Count `nbytes` more against MAX_TENSOR_BYTES; CheckpointError before they are taken."""
        if self._allocated + nbytes > MAX_TENSOR_BYTES:
            raise self._error(
                f"{what} of {nbytes} bytes would bring the checkpoint's tensors to "
                f"{self._allocated + nbytes} bytes, more than {MAX_TENSOR_BYTES} bytes: no supported "
                "model comes near that"
            )
        self._allocated += nbytes

    def _read_storage(self, key: str, stype: _StorageType, numel: int) -> np.ndarray:
        record = f"{self._root}/data/{key}"
        info = _record_info(self._zf, record, self._path)
        nbytes = numel * stype.dtype.itemsize
        if info.file_size < nbytes:
            raise self._error(
                f"record '{record}' is truncated: {stype.name} of {numel} elements needs "
                f"{nbytes} bytes, found {info.file_size}"
            )
        if info.file_size > nbytes:
            raise self._error(
                f"record '{record}' is {info.file_size} bytes, expected {nbytes} "
                f"({stype.name} of {numel} elements)"
            )
        self._allocate(nbytes, f"storage '{record}'")
        raw = np.empty(nbytes, np.uint8)
        done = 0
        for chunk in _record_chunks(self._zf, info, self._path):
            raw[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
            done += len(chunk)
        if self._byteorder == "big" and stype.dtype.itemsize > 1:
            raw.view(f"u{stype.dtype.itemsize}").byteswap(inplace=True)
        return raw.view(stype.dtype)

    def _rebuild_tensor(self, storage, storage_offset, size, stride, *_ignored) -> np.ndarray:
        """torch._utils._rebuild_tensor(_v2): a copy of the strided view into ``storage``, or the
        storage itself when the tensor is all of it, contiguous.

        Extra v2 arguments (requires_grad, backward_hooks, metadata) are ignored.
        """
        if not isinstance(storage, np.ndarray):
            raise self._error(f"tensor rebuild expects a storage, found {type(storage).__name__}")
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= _MAX_NDIM):
            raise self._error(f"invalid tensor geometry: size and stride must be tuples of equal length "
                              f"(at most {_MAX_NDIM}), found {_brief(size)} and {_brief(stride)}")
        dims = (storage_offset, *size, *stride)
        if not all(isinstance(d, int) and d >= 0 for d in dims):
            raise self._error(
                f"invalid tensor geometry: offset {_brief(storage_offset)}, size {size}, stride {stride}"
            )
        numel = math.prod(size)
        if numel > 0:
            needed = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
            if needed > storage.size:
                raise self._error(
                    f"tensor of size {size}, stride {stride}, offset {storage_offset} "
                    f"needs {needed} storage elements, storage has {storage.size}"
                )
        nbytes = numel * storage.itemsize
        if nbytes > storage.nbytes:
            raise self._error(
                f"tensor of size {size}, stride {stride} would materialise {nbytes} bytes from a "
                f"storage of {storage.nbytes} bytes (zero or overlapping strides)"
            )
        contiguous = tuple(math.prod(size[i + 1 :]) for i in range(len(size)))
        if storage_offset == 0 and numel == storage.size and all(
            n == 1 or s == c for n, s, c in zip(size, stride, contiguous)
        ):
            return storage.reshape(size)
        base = storage[storage_offset:] if storage_offset < storage.size else storage[:0]
        view = np.lib.stride_tricks.as_strided(
            base, shape=size, strides=tuple(s * storage.itemsize for s in stride), writeable=False
        )
        return self._own(view, nbytes)

    def _own(self, view: np.ndarray, nbytes: int) -> np.ndarray:
        """A strided tensor view of a storage, as returned: a copy."""
        self._allocate(nbytes, f"tensor of size {view.shape}")
        return view.copy()

    def _latin1_encode(self, text, encoding="latin1") -> bytes:
        """``_codecs.encode(str, 'latin1')``: how protocol 2 pickles bytes."""
        if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
            raise self._error(f"_codecs.encode is only allowed for (str, 'latin1'), found encoding {encoding!r}")
        return text.encode("latin-1")

    def _bytes(self, *args) -> bytes:
        """``bytes()`` (protocol 2 pickles b'' this way) or ``bytes(<bytes>)``."""
        if args and not isinstance(args[0], (bytes, bytearray)):
            raise self._error(f"builtins.bytes is only allowed on bytes, found {type(args[0]).__name__}")
        return bytes(*args[:1])

    def _bytearray(self, data=b"", encoding="latin1") -> bytearray:
        """``bytearray(str, 'latin-1')`` (protocol 2) or ``bytearray(bytes)``."""
        return bytearray(self._latin1_encode(data, encoding) if isinstance(data, str) else self._bytes(data))


class _LegacyUnpickler(_Unpickler):
    """Restricted unpickler for the object pickle of a legacy (pre-1.6) file.

    A storage is allocated (zeros) when first named, counted against MAX_TENSOR_BYTES and against
    `available`, the bytes the file holds: its data follows the pickle (`_fill_legacy_storages`),
    so strided tensors stay views into it rather than copies of zeros.
    """

    def __init__(self, file, path, byteorder: str, available: int):
        super().__init__(file, None, "", path, byteorder)
        self._available = available

    def persistent_load(self, pid) -> np.ndarray:
        """``('storage', StorageType, key, location, numel, None)`` -> 1-D array (zeros until filled)."""
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise self._error(
                f"expected a persistent id ('storage', type, key, location, numel, view), found {_brief(pid)}"
            )
        _, stype, key, _location, numel, view = pid
        if not (isinstance(stype, _StorageType) and isinstance(key, str) and len(key) <= 100
                and isinstance(numel, int) and numel >= 0):
            raise self._error(f"malformed storage persistent id {_brief(pid)}")
        if view is not None:
            raise self._error(f"storage '{key}' is a view of another storage (torch < 0.4), which is not supported")
        if key not in self._storages:
            nbytes = numel * stype.dtype.itemsize
            if nbytes + 8 > self._available:
                raise self._error(f"storage '{key}' claims {nbytes} bytes ({stype.name} of {numel} elements), "
                                  f"more than the file holds")
            self._available -= nbytes + 8
            self._allocate(nbytes, f"storage '{key}'")
            self._storages[key] = np.zeros(numel, stype.dtype)
        storage = self._storages[key]
        if storage.dtype != stype.dtype or storage.size != numel:
            raise self._error(f"storage '{key}' is referenced with conflicting type/numel {stype.name}/{numel}")
        return storage

    def _own(self, view: np.ndarray, nbytes: int) -> np.ndarray:
        return view  # filled with its storage, after the pickle


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy format's small pickles (header, storage keys): no globals, no persistent ids."""

    def find_class(self, module: str, name: str):
        raise UnsafePickleError(f"refuses global '{module}.{name}' where plain data was expected")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent id where plain data was expected")


class _PickleReader:
    """The file as the unpicklers see it: each pickle may read at most MAX_PICKLE_BYTES."""

    def __init__(self, f, path):
        self._f, self._path, self.left = f, path, MAX_PICKLE_BYTES

    def _take(self, n: int) -> None:
        if n > self.left:
            raise CheckpointError(f"{self._path}: a pickle of this legacy file is larger than "
                                  f"{MAX_PICKLE_BYTES} bytes")
        self.left -= n

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.left + 1
        data = self._f.read(min(n, self.left + 1))
        self._take(len(data))
        return data

    def readline(self, limit: int = -1) -> bytes:
        line = self._f.readline(self.left + 1)
        self._take(len(line))
        return line


def _plain_load(reader: _PickleReader, path, what: str):
    reader.left = MAX_PICKLE_BYTES
    try:
        return _PlainUnpickler(reader).load()
    except CheckpointError:
        raise
    except Exception as e:  # malformed pickle: any error the opcodes can raise
        raise CheckpointError(f"{path}: malformed legacy {what}: {type(e).__name__}: {e}") from None


def _load_legacy(path) -> object:
    """`load_torch_file` for the legacy format (see the module docstring)."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read file: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        reader = _PickleReader(f, path)
        magic = _plain_load(reader, path, "header")
        protocol = _plain_load(reader, path, "header")
        info = _plain_load(reader, path, "header")
        if magic != _MAGIC_NUMBER or protocol != _LEGACY_PROTOCOL or not isinstance(info, dict):
            raise CheckpointError(f"{path}: legacy torch file with an unknown header "
                                  f"({_brief(magic)}, {_brief(protocol)}); expected protocol {_LEGACY_PROTOCOL}")
        byteorder = "little" if info.get("little_endian", True) else "big"
        reader.left = MAX_PICKLE_BYTES
        unpickler = _LegacyUnpickler(reader, path, byteorder, size - f.tell())
        try:
            obj = unpickler.load()
        except CheckpointError:
            raise
        except Exception as e:  # malformed pickle: any error the opcodes can raise
            raise CheckpointError(f"{path}: malformed legacy object pickle: {type(e).__name__}: {e}") from None
        keys = _plain_load(reader, path, "storage list")
        _fill_legacy_storages(f, path, keys, unpickler._storages, byteorder)
    return obj


def _fill_legacy_storages(f, path, keys, storages: dict[str, np.ndarray], byteorder: str) -> None:
    """Read each storage's record (element count, then bytes) in the order of `keys` into it."""
    if not (isinstance(keys, list) and sorted(keys) == sorted(storages)):
        raise CheckpointError(f"{path}: the legacy storage list {_brief(keys)} does not name the "
                              f"{len(storages)} storages the object pickle uses")
    for key in keys:
        storage = storages[key]
        head = f.read(8)
        count = int.from_bytes(head, byteorder) if len(head) == 8 else None
        if count != storage.size:
            raise CheckpointError(f"{path}: legacy storage '{key}' record says {count} elements, "
                                  f"expected {storage.size} (truncated or corrupt file)")
        raw, done = storage.view(np.uint8), 0
        while done < raw.size:
            chunk = f.read(min(_CHUNK, raw.size - done))
            if not chunk:
                raise CheckpointError(f"{path}: legacy storage '{key}' is truncated: "
                                      f"{done} of {raw.size} bytes")
            raw[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
            done += len(chunk)
        if byteorder == "big" and storage.itemsize > 1:
            storage.byteswap(inplace=True)


def _rebuild_parameter(data, _requires_grad, _backward_hooks, _state=None):
    """torch._utils._rebuild_parameter(_with_state): the parameter's data array."""
    return data


def _rebuild_from_type_v2(func, _new_type, args, _state):
    """torch._tensor._rebuild_from_type_v2: the inner rebuilt tensor, subclass dropped."""
    return func(*args)


def _size(dims=()) -> tuple:
    """torch.Size(dims) -> tuple of ints."""
    return tuple(dims)


def _record_info(zf: zipfile.ZipFile, record: str, path) -> zipfile.ZipInfo:
    """The zip entry `record`, if it can be read in bounded steps (stored or deflated, unencrypted)."""
    try:
        info = zf.getinfo(record)
    except KeyError:
        raise CheckpointError(f"{path}: missing record '{record}' in the zip archive") from None
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
        how = "encrypted" if info.flag_bits & 0x1 else f"compressed with method {info.compress_type}"
        raise CheckpointError(
            f"{path}: record '{record}' is {how}; torch.save stores records uncompressed "
            "(deflated ones are read too)"
        )
    return info


def _record_chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path):
    """The `info.file_size` bytes of one record, at most _CHUNK inflated at a time (CRC checked)."""
    try:
        with zf.open(info) as f:
            left = info.file_size
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise CheckpointError(
                        f"{path}: record '{info.filename}' is truncated: "
                        f"{info.file_size - left} of {info.file_size} bytes"
                    )
                left -= len(chunk)
                yield chunk
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: cannot read record '{info.filename}': {e}") from None


def _read_record(zf: zipfile.ZipFile, record: str, path, max_bytes: int, what: str) -> bytes:
    """Bytes of a small record (data.pkl, byteorder), refused if it is larger than `max_bytes`."""
    info = _record_info(zf, record, path)
    if info.file_size > max_bytes:
        raise CheckpointError(
            f"{path}: record '{record}' is {info.file_size} bytes, more than {max_bytes} bytes for {what}"
        )
    return b"".join(_record_chunks(zf, info, path))


def _open_zip(path) -> zipfile.ZipFile:
    """Open ``path`` as a torch zip archive or explain what the file is instead."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        if zipfile.is_zipfile(path):
            return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path}: corrupt zip archive: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read file: {e.strerror or e}") from None
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path}: zip archive is truncated or corrupt (no central directory)")
    raise CheckpointError(f"{path}: not a PyTorch zip checkpoint (expected a zip archive written by torch.save)")


def _is_legacy(path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False  # _open_zip explains
    return head[:1] == b"\x80" and head[2:14] == _LEGACY_MAGIC


def load_torch_file(path) -> object:
    """Unpickle a torch.save checkpoint (zip, or legacy pre-1.6) safely.

    Returns the saved object tree: tensors/parameters as np.ndarray, dicts,
    lists, tuples, scalars, and InertObject placeholders for model classes.
    Raises CheckpointError for unreadable/malformed files and UnsafePickleError
    for globals outside the allow-list.
    """
    if _is_legacy(path):
        return _load_legacy(path)
    with _open_zip(path) as zf:
        roots = sorted({n[: -len("/data.pkl")] for n in zf.namelist() if n.endswith("/data.pkl")})
        roots = [r for r in roots if r not in ("", ".", "..") and "/" not in r and "\\" not in r]
        if len(roots) != 1:
            raise CheckpointError(
                f"{path}: expected exactly one '<root>/data.pkl' record in the zip archive, found {len(roots)}"
            )
        root = roots[0]
        outside = [n for n in zf.namelist() if not n.startswith(f"{root}/") or ".." in n.split("/")]
        if outside:
            warnings.warn(
                f"{path}: ignored {len(outside)} zip member{'s' if len(outside) > 1 else ''} outside "
                f"'{root}/', which torch.save never "
                f"writes: {', '.join(_brief(n) for n in outside[:5])}{' ...' if len(outside) > 5 else ''}",
                InputWarning,
                stacklevel=2,
            )
        byteorder = "little"
        if f"{root}/byteorder" in zf.namelist():
            byteorder = _read_record(zf, f"{root}/byteorder", path, 16, "a byte order")
            byteorder = byteorder.decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(
                    f"{path}: record '{root}/byteorder' must be 'little' or 'big', found {byteorder!r}"
                )
        pickled = _read_record(zf, f"{root}/data.pkl", path, MAX_PICKLE_BYTES, "a checkpoint's pickle")
        data_pkl = io.BytesIO(pickled)
        try:
            return _Unpickler(data_pkl, zf, root, path, byteorder).load()
        except CheckpointError:
            raise
        except Exception as e:  # malformed pickle: any error the opcodes can raise
            raise CheckpointError(f"{path}: malformed '{root}/data.pkl': {type(e).__name__}: {e}") from None


def _describe(obj) -> str:
    if isinstance(obj, Mapping):
        return f"{type(obj).__name__} with keys {_brief(list(obj))}"
    if isinstance(obj, InertObject) or (isinstance(obj, type) and issubclass(obj, InertObject)):
        return f"object of class '{obj.qualname}'"
    return type(obj).__name__


def _module_fields(module, path, where: str) -> tuple[Mapping, list]:
    """(children, [(name, tensor)] of its parameters then persistent buffers) of a pickled nn.Module."""
    state = module.state if isinstance(module, InertObject) else None
    if not isinstance(state, Mapping) or not isinstance(state.get("_modules"), Mapping):
        raise CheckpointError(f"{path}: module '{where}' is not a pickled nn.Module: found {_describe(module)}")
    params, buffers = state.get("_parameters", {}), state.get("_buffers", {})
    skip = state.get("_non_persistent_buffers_set", set())
    if not (isinstance(params, Mapping) and isinstance(buffers, Mapping) and isinstance(skip, (set, frozenset))):
        raise CheckpointError(f"{path}: module '{where}' has malformed _parameters/_buffers")
    entries = []
    for name, value in [*params.items(), *((k, v) for k, v in buffers.items() if k not in skip)]:
        if value is None:
            continue
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: '{where}.{_brief(name)}' is {_describe(value)}, expected a tensor")
        entries.append((_checked_name(name, where + ".", path), value))
    return state["_modules"], entries


def walk_modules(root, path):
    """``(prefix, module, tensors)`` for each module of a pickled nn.Module tree, in torch's
    ``state_dict`` order: a module, then its children depth first. ``prefix`` is the module's
    dotted name plus "." ("" for the root); ``tensors`` its ``[(name, array)]``.

    Iterative, and bounded whatever the pickle builds: a module reached under several names (a
    shared child) is listed under each, as torch does, but checked once; more than `MAX_MODULES`
    listings, modules nested more than `MAX_DEPTH` deep, names longer than `MAX_NAME` characters
    or a module inside itself raise CheckpointError.
    """
    fields: dict[int, tuple] = {}  # id -> (children, tensors): a shared module is checked once
    stack, inside, listed = [(root, "", 0)], set(), 0
    while stack:
        module, prefix, depth = stack.pop()
        if module is None:  # leaving the subtree of id `prefix`
            inside.discard(prefix)
            continue
        where = prefix[:-1] or "<root>"
        if id(module) in inside:
            raise CheckpointError(f"{path}: module '{where}' contains itself")
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{path}: modules nested more than {MAX_DEPTH} deep (at '{where}')")
        if id(module) not in fields:
            fields[id(module)] = _module_fields(module, path, where)
        children, tensors = fields[id(module)]
        listed += 1
        yield prefix, module, tensors
        if listed + len(stack) + len(children) > MAX_MODULES:  # every pending child gets listed
            raise CheckpointError(
                f"{path}: the pickled module tree has more than {MAX_MODULES} modules, counting a "
                "shared module once per name it has; no supported model comes near that"
            )
        inside.add(id(module))
        stack.append((None, id(module), depth))
        for name, child in reversed(list(children.items())):
            if child is not None:
                stack.append((child, f"{prefix}{_checked_name(name, prefix, path)}.", depth + 1))


def _checked_name(name, prefix: str, path) -> str:
    if not isinstance(name, str) or len(prefix) + len(name) > MAX_NAME:
        raise CheckpointError(
            f"{path}: module '{prefix[:-1] or '<root>'}' holds an entry named {_brief(name)}: expected "
            f"a string, at most {MAX_NAME} characters with its module's name"
        )
    return name


def _module_state_dict(module, path) -> dict[str, np.ndarray]:
    """torch ``Module.state_dict()`` of a placeholder module: same names, same order.

    Parameters (``_parameters``) then persistent buffers (``_buffers`` minus
    ``_non_persistent_buffers_set``) of each module, None entries skipped, then its children
    (``_modules``) under ``prefix + name + '.'``; see `walk_modules` for the bounds.
    """
    out: dict[str, np.ndarray] = {}
    for prefix, _, tensors in walk_modules(module, path):
        if len(out) + len(tensors) > MAX_MODULES:
            raise CheckpointError(f"{path}: the pickled modules hold more than {MAX_MODULES} tensors")
        for name, value in tensors:
            out[prefix + name] = value
    return out


def _is_state_dict(obj) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    )


def extract_state_dict(obj, path) -> dict[str, np.ndarray]:
    """The ``name -> array`` state dict inside a loaded checkpoint object.

    Accepts (a) a pickled nn.Module (InertObject tree), (b) a plain state dict
    (non-empty str -> ndarray mapping), or (c) a dict wrapping either under
    'model_state_dict', 'state_dict' or 'model' (e.g. DDAMFN's
    {'iter', 'model_state_dict', 'optimizer_state_dict'}). A 'module.' prefix
    shared by all keys (DataParallel) is stripped. Anything else raises
    CheckpointError naming ``path`` and what was found.
    """
    where, seen = "", set()
    while isinstance(obj, Mapping) and not _is_state_dict(obj) and id(obj) not in seen:
        key = next((k for k in _WRAPPER_KEYS if k in obj), None)
        if key is None:
            break
        seen.add(id(obj))
        where, obj = f"{where}[{key!r}]", obj[key]
    if _is_state_dict(obj):
        sd = dict(obj)
    elif isinstance(obj, InertObject) and isinstance(obj.state, Mapping) and "_modules" in obj.state:
        sd = _module_state_dict(obj, path)
    else:
        raise CheckpointError(
            f"{path}: expected a state dict (str -> tensor), a pickled nn.Module, or a dict with one of "
            f"{list(_WRAPPER_KEYS)}; found {_describe(obj)}{f' at {where}' if where else ''}"
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_state_dict(path) -> dict[str, np.ndarray]:
    """``extract_state_dict(load_torch_file(path), path)``."""
    return extract_state_dict(load_torch_file(path), path)

