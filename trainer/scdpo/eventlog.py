"""TensorBoard event files written directly, without importing TensorBoard.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, payload, masked
CRC-32C of the payload), each payload an ``Event`` protocol buffer. The trainer needs three
kinds: the file-version header, scalars (``Summary.Value.simple_value``) and the "session start"
marker that tells TensorBoard to drop points at or after a step (a resumed run rewrites steps a
killed run had logged past its last checkpoint). Encoding those few fields by hand keeps the
TensorBoard package and its protobuf runtime out of the training process; TensorBoard reads the
files as it reads its own writer's (tests/dpo/test_eventlog.py reads them with TensorBoard).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path
from typing import Optional


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()
_SERIAL = itertools.count()  # one process may open several writers in the same second


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord framing uses."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64 fields: negative numbers as ten-byte two's complement
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, wall_time: float, body: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(int(step)) + body


def record(payload: bytes) -> bytes:
    """One TFRecord frame around ``payload``."""
    header = struct.pack("<Q", len(payload))
    return (header + struct.pack("<I", _masked(crc32c(header))) + payload
            + struct.pack("<I", _masked(crc32c(payload))))


class EventWriter:
    """Appends scalar events to a new ``events.out.tfevents.*`` file in ``logdir``.

    ``purge_step``: as ``torch.utils.tensorboard.SummaryWriter``'s: TensorBoard discards points
    of earlier files of this run at or after that step. Each event is flushed as it is written,
    so a killed run leaves a readable file.
    """

    def __init__(self, logdir: str | os.PathLike, purge_step: Optional[int] = None):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{next(_SERIAL)}"
        self.path = self.logdir / name
        self._file = open(self.path, "ab")
        self._write(_event(0, now, _field(3, b"brain.Event:2")))
        if purge_step is not None:
            self._write(_event(purge_step, now, _field(7, b"\x08\x01")))  # session_log {status: START}

    def _write(self, event: bytes) -> None:
        self._file.write(record(event))
        self._file.flush()

    def add_scalar(self, tag: str, value: float, step: int, wall_time: Optional[float] = None) -> None:
        val = _field(1, tag.encode("utf-8")) + b"\x15" + struct.pack("<f", float(value))
        self._write(_event(step, time.time() if wall_time is None else wall_time, _field(5, _field(1, val))))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()





def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _fields(data: bytes):
    """``(number, wire type, value)`` of each field of a protocol buffer message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protocol buffer wire type {wire}")
        yield number, wire, value


def read_scalars(path: str | os.PathLike) -> list[tuple[str, int, float, float]]:
    """``(tag, step, wall_time, value)`` of every scalar in an event file (ours or TensorBoard's
    ``simple_value`` scalars), in file order. Frames with a bad checksum end the read (a file cut
    short by a kill)."""
    data = Path(path).read_bytes()
    out, pos = [], 0
    while pos + 12 <= len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[pos + 8:pos + 12])[0] != _masked(crc32c(header)):
            break
        payload = data[pos + 12:pos + 12 + length]
        end = pos + 12 + length + 4
        if len(payload) != length or end > len(data) or \
                struct.unpack("<I", data[end - 4:end])[0] != _masked(crc32c(payload)):
            break
        pos = end
        wall, step, summary = 0.0, 0, None
        for number, _, value in _fields(payload):
            if number == 1:
                (wall,) = struct.unpack("<d", value)
            elif number == 2:
                step = value
            elif number == 5:
                summary = value
        for number, _, value in _fields(summary or b""):
            if number != 1:
                continue
            tag, scalar = None, None
            for n2, _, v2 in _fields(value):
                if n2 == 1:
                    tag = v2.decode("utf-8", "replace")
                elif n2 == 2:
                    (scalar,) = struct.unpack("<f", v2)
            if tag is not None and scalar is not None:
                out.append((tag, step, wall, scalar))
    return out
__all__ = ["EventWriter", "crc32c", "read_scalars", "record"]
