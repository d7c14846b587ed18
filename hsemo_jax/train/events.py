"""A TensorBoard event-file writer for scalars, without TensorFlow or tensorboard installed.

The file is what `tf.summary.scalar` (TF1-style `simple_value`) writes: a TFRecord stream of
`tensorflow.Event` protocol buffers, the first one carrying `file_version = "brain.Event:2"`.
TFRecord framing: uint64 length (little-endian), uint32 masked CRC-32C of the length bytes, the
payload, uint32 masked CRC-32C of the payload. The protobuf fields are encoded by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }
"""
from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
    """One serialized `Event` proto."""
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(int(step))
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", float(v)))
            for tag, v in scalars.items())
        msg += _bytes_field(5, summary)
    return msg


def tfrecord(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))


class EventWriter:
    """`EventWriter(logdir).scalars(step, {"loss": 0.3})` -> logdir/events.out.tfevents.<time>.<host>."""

    def __init__(self, logdir: str | os.PathLike, suffix: str = ""):
        Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}{suffix}"
        self.path = Path(logdir) / name
        self._f = open(self.path, "ab")
        self._f.write(tfrecord(encode_event(time.time(), 0, file_version="brain.Event:2")))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float], wall_time: float | None = None) -> None:
        self._f.write(tfrecord(encode_event(time.time() if wall_time is None else wall_time, step,
                                            scalars=values)))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()
