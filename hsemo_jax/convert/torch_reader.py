"""Read PyTorch checkpoints without torch and without running code from the pickle.

Supported format: the zip archive written by ``torch.save`` since torch 1.6::

    <root>/data.pkl      pickle (protocol 2) of the saved object; tensors are
                         persistent ids ('storage', StorageType, key, location, numel)
    <root>/data/<key>    raw bytes of one storage: numel elements of StorageType's dtype
    <root>/byteorder     "little" or "big" (absent in old files: little)

The pickle is read by a restricted unpickler. A global is resolved only if it is
one of the small safe functions implemented here (tensor/parameter rebuilders,
OrderedDict, set, ...) or a name under a trusted model-definition prefix, which
becomes an `InertObject` placeholder class: nothing is imported and no code from
the file runs. Every other global raises `UnsafePickleError` before anything is
executed.

Tensors come back as ``np.ndarray`` (bfloat16 as ``ml_dtypes.bfloat16``),
copied out of their storage with the saved size, stride and storage offset.
"""

from __future__ import annotations

import _compat_pickle
import collections
import hashlib
import io
import pickle
import zipfile
import zlib
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from hsemo_jax.errors import CheckpointError, UnsafePickleError

__all__ = [
    "InertObject",
    "extract_state_dict",
    "load_torch_file",
    "read_state_dict",
    "sha256_file",
]

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
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

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
        self._storages: dict[str, np.ndarray] = {}
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
            f"{self._path}: refuses global '{qualname}' in data.pkl: it is not on the "
            "allow-list of tensor rebuilders and model-definition classes; nothing was executed"
        )

    def persistent_load(self, pid) -> np.ndarray:
        """``('storage', StorageType, key, location, numel)`` -> 1-D array of the storage."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise self._error(f"expected a persistent id ('storage', type, key, location, numel), found {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise self._error(f"malformed storage persistent id {pid!r}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, stype, numel)
        storage = self._storages[key]
        if storage.dtype != stype.dtype or storage.size != numel:
            raise self._error(f"storage '{key}' is referenced with conflicting type/numel {stype.name}/{numel}")
        return storage

    def _read_storage(self, key: str, stype: _StorageType, numel: int) -> np.ndarray:
        record = f"{self._root}/data/{key}"
        raw = _read_record(self._zf, record, self._path)
        nbytes = numel * stype.dtype.itemsize
        if len(raw) < nbytes:
            raise self._error(
                f"record '{record}' is truncated: {stype.name} of {numel} elements needs "
                f"{nbytes} bytes, found {len(raw)}"
            )
        arr = np.frombuffer(raw, dtype=stype.dtype, count=numel)
        if self._byteorder == "big" and stype.dtype.itemsize > 1:
            uint = np.dtype(f">u{stype.dtype.itemsize}")
            arr = arr.view(uint).astype(uint.newbyteorder("=")).view(stype.dtype)
        return arr

    def _rebuild_tensor(self, storage, storage_offset, size, stride, *_ignored) -> np.ndarray:
        """torch._utils._rebuild_tensor(_v2): a copy of the strided view into ``storage``.

        Extra v2 arguments (requires_grad, backward_hooks, metadata) are ignored.
        """
        if not isinstance(storage, np.ndarray):
            raise self._error(f"tensor rebuild expects a storage, found {type(storage).__name__}")
        dims = (storage_offset, *size, *stride)
        if not all(isinstance(d, int) and d >= 0 for d in dims) or len(size) != len(stride):
            raise self._error(f"invalid tensor geometry: offset {storage_offset}, size {size}, stride {stride}")
        if all(n > 0 for n in size):
            needed = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
            if needed > storage.size:
                raise self._error(
                    f"tensor of size {tuple(size)}, stride {tuple(stride)}, offset {storage_offset} "
                    f"needs {needed} storage elements, storage has {storage.size}"
                )
        base = storage[storage_offset:] if storage_offset < storage.size else storage[:0]
        view = np.lib.stride_tricks.as_strided(
            base, shape=tuple(size), strides=tuple(s * storage.itemsize for s in stride), writeable=False
        )
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


def _rebuild_parameter(data, _requires_grad, _backward_hooks, _state=None):
    """torch._utils._rebuild_parameter(_with_state): the parameter's data array."""
    return data


def _rebuild_from_type_v2(func, _new_type, args, _state):
    """torch._tensor._rebuild_from_type_v2: the inner rebuilt tensor, subclass dropped."""
    return func(*args)


def _size(dims=()) -> tuple:
    """torch.Size(dims) -> tuple of ints."""
    return tuple(dims)


def _read_record(zf: zipfile.ZipFile, record: str, path) -> bytes:
    """Bytes of one zip entry; CheckpointError naming the file and record if missing/corrupt."""
    try:
        return zf.read(record)
    except KeyError:
        raise CheckpointError(f"{path}: missing record '{record}' in the zip archive") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read record '{record}': {e}") from None


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
    if head[:1] == b"\x80" and head[2:14] == _LEGACY_MAGIC:
        raise CheckpointError(
            f"{path}: legacy (pre-1.6) torch.save format is not supported; re-save it with "
            "torch>=1.6: torch.save(torch.load(f, weights_only=False), f2)"
        )
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path}: zip archive is truncated or corrupt (no central directory)")
    raise CheckpointError(f"{path}: not a PyTorch zip checkpoint (expected a zip archive written by torch.save)")


def load_torch_file(path) -> object:
    """Unpickle a torch.save zip checkpoint safely.

    Returns the saved object tree: tensors/parameters as np.ndarray, dicts,
    lists, tuples, scalars, and InertObject placeholders for model classes.
    Raises CheckpointError for unreadable/malformed files and UnsafePickleError
    for globals outside the allow-list.
    """
    with _open_zip(path) as zf:
        roots = sorted({n[: -len("/data.pkl")] for n in zf.namelist() if n.endswith("/data.pkl")})
        roots = [r for r in roots if "/" not in r]
        if len(roots) != 1:
            raise CheckpointError(
                f"{path}: expected exactly one '<root>/data.pkl' record in the zip archive, found {len(roots)}"
            )
        root = roots[0]
        byteorder = "little"
        if f"{root}/byteorder" in zf.namelist():
            byteorder = _read_record(zf, f"{root}/byteorder", path).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(
                    f"{path}: record '{root}/byteorder' must be 'little' or 'big', found {byteorder!r}"
                )
        data_pkl = io.BytesIO(_read_record(zf, f"{root}/data.pkl", path))
        try:
            return _Unpickler(data_pkl, zf, root, path, byteorder).load()
        except CheckpointError:
            raise
        except Exception as e:  # malformed pickle: any error the opcodes can raise
            raise CheckpointError(f"{path}: malformed '{root}/data.pkl': {type(e).__name__}: {e}") from None


def _describe(obj) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        return f"{type(obj).__name__} with keys {keys[:10]}{' ...' if len(keys) > 10 else ''}"
    if isinstance(obj, InertObject) or (isinstance(obj, type) and issubclass(obj, InertObject)):
        return f"object of class '{obj.qualname}'"
    return type(obj).__name__


def _module_state_dict(module, path, prefix: str, ancestors: tuple) -> dict[str, np.ndarray]:
    """torch ``Module.state_dict()`` of a placeholder module: same names, same order.

    Parameters (``_parameters``) then persistent buffers (``_buffers`` minus
    ``_non_persistent_buffers_set``) of each module, None entries skipped, then
    its children (``_modules``) recursively under ``prefix + name + '.'``.
    """
    where = prefix[:-1] or "<root>"
    state = module.state if isinstance(module, InertObject) else None
    if not isinstance(state, Mapping) or not isinstance(state.get("_modules"), Mapping):
        raise CheckpointError(f"{path}: module '{where}' is not a pickled nn.Module: found {_describe(module)}")
    if id(module) in ancestors:
        raise CheckpointError(f"{path}: module '{where}' contains itself")
    params, buffers = state.get("_parameters", {}), state.get("_buffers", {})
    skip = state.get("_non_persistent_buffers_set", set())
    if not (isinstance(params, Mapping) and isinstance(buffers, Mapping) and isinstance(skip, (set, frozenset))):
        raise CheckpointError(f"{path}: module '{where}' has malformed _parameters/_buffers")
    out: dict[str, np.ndarray] = {}
    entries = [*params.items(), *((k, v) for k, v in buffers.items() if k not in skip)]
    for name, value in entries:
        if value is None:
            continue
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: '{prefix}{name}' is {_describe(value)}, expected a tensor")
        out[prefix + name] = value
    for name, child in state["_modules"].items():
        if child is not None:
            out.update(_module_state_dict(child, path, f"{prefix}{name}.", (*ancestors, id(module))))
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
        sd = _module_state_dict(obj, path, "", ())
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


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_size`` chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
