"""Hand-written torch.save archives for tests, without torch: pickle opcodes and zip records
written byte by byte, so a test can build what `torch.save` never would (a storage record that
inflates to 2 GiB, a tensor of 10**12 elements over one float, a 3000-deep module chain) in a
few kilobytes.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

# protocol-2 pickle opcodes
PROTO2, STOP, MARK, TUPLE, EMPTY_TUPLE, EMPTY_DICT = b"\x80\x02", b".", b"(", b"t", b")", b"}"
REDUCE, BUILD, SETITEMS, BINPERSID, NEWFALSE, POP = b"R", b"b", b"u", b"Q", b"\x89", b"0"


def global_(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def int_(n: int) -> bytes:
    if 0 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def str_(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def ints(values) -> bytes:
    return MARK + b"".join(int_(v) for v in values) + TUPLE


@dataclass(frozen=True)
class Tensor:
    """One `torch._utils._rebuild_tensor_v2` call on storage record `data/<key>`."""

    key: str
    numel: int  # of the storage
    size: tuple
    stride: tuple
    offset: int = 0
    storage: str = "FloatStorage"


def state_dict_pickle(tensors: dict[str, Tensor]) -> bytes:
    """data.pkl of an OrderedDict name -> tensor, as torch.save writes it."""
    out = PROTO2 + global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + MARK
    for name, t in tensors.items():
        pid = MARK + str_("storage") + global_("torch", t.storage) + str_(t.key) + str_("cpu")
        out += (str_(name) + global_("torch._utils", "_rebuild_tensor_v2") + MARK
                + pid + int_(t.numel) + TUPLE + BINPERSID
                + int_(t.offset) + ints(t.size) + ints(t.stride) + NEWFALSE
                + global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + TUPLE + REDUCE)
    return out + SETITEMS + STOP


def module_chain_pickle(depth: int, names: tuple[str, ...]) -> bytes:
    """data.pkl of `depth` nested nn.Sequential modules without tensors; each holds the one below
    under every name in `names` (one object: shared children). Memoized bottom-up, so the pickle
    grows linearly with depth whatever the fan-out."""
    out = PROTO2
    for level in range(depth):
        children = b""
        if level:
            children = MARK + b"".join(str_(n) + get(level - 1) for n in names) + SETITEMS
        out += (global_("torch.nn.modules.container", "Sequential") + EMPTY_TUPLE + REDUCE
                + EMPTY_DICT + MARK + str_("_modules") + EMPTY_DICT + children
                + str_("_parameters") + EMPTY_DICT + str_("_buffers") + EMPTY_DICT + SETITEMS
                + BUILD + put(level) + POP)
    return out + get(depth - 1) + STOP


@dataclass(frozen=True)
class Deflated:
    """A deflated record: `data` inflates to `size` bytes whose CRC-32 is `crc`."""

    data: bytes
    size: int
    crc: int


def deflated_zeros(size: int) -> Deflated:
    """`size` zero bytes (a multiple of 1 MiB), deflated to about size / 1000 bytes: one
    compressed MiB repeated (a full flush resets the compressor, so every segment is the same)."""
    chunk = 1 << 20
    assert size % chunk == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    zeros, crc = bytes(chunk), 0
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    return Deflated(segment * (size // chunk) + c.flush(), size, crc)


def write_zip(path, members: dict[str, bytes | Deflated]) -> None:
    """A zip archive of `members` (bytes: stored; Deflated: as given), record by record."""
    body, central = bytearray(), bytearray()
    for name, m in members.items():
        if isinstance(m, Deflated):
            method, crc, size, payload = 8, m.crc, m.size, m.data
        else:
            method, crc, size, payload = 0, zlib.crc32(m), len(m), m
        raw = name.encode()
        offset = len(body)
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(payload), size,
                            len(raw), 0) + raw + payload
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(payload),
                               size, len(raw), 0, 0, 0, 0, 0, offset) + raw
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                      len(body), 0)
    with open(path, "wb") as f:
        f.write(body + central + end)


def torch_archive(path, data_pkl: bytes | Deflated, records: dict[str, bytes | Deflated] = (),
                  extra: dict[str, bytes] = ()) -> None:
    """`archive/data.pkl`, `archive/byteorder`, `archive/data/<key>` for each record, then `extra`
    members under their own names."""
    members = {"archive/data.pkl": data_pkl, "archive/byteorder": b"little"}
    members.update({f"archive/data/{k}": v for k, v in dict(records).items()})
    members.update(dict(extra))
    write_zip(path, members)
