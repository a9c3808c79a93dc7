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


__all__ = ["EventWriter", "crc32c", "record"]
