"""Frames on the socket between the grader and a sandboxed job.

A frame is one kind byte, a 4-byte big-endian length and the payload:

- ``J``: JSON (both directions; the only kind the grader *reads* besides ``B``);
- ``B``: bytes of a ``torch.save`` blob, a value returned by a learner's function (the grader
  loads it with ``weights_only=True``: tensors and plain containers only, never code);
- ``P``: a pickle, sent by the grader only (a job may unpickle what the grader sends; the grader
  never unpickles what a job sends).
"""
from __future__ import annotations

import json
import socket
import struct
import time

__all__ = ["send_json", "send_bytes", "send_pickle", "recv_frame", "FrameError", "MAX_FRAME"]

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">cI")


class FrameError(Exception):
    """The connection closed or sent something that is not a frame."""


def _send(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    sock.sendall(_HEADER.pack(kind, len(payload)) + payload)


def send_json(sock: socket.socket, obj) -> None:
    _send(sock, b"J", json.dumps(obj, default=str).encode())


def send_bytes(sock: socket.socket, data: bytes) -> None:
    _send(sock, b"B", data)


def send_pickle(sock: socket.socket, data: bytes) -> None:
    _send(sock, b"P", data)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame before the deadline")
            sock.settimeout(left)
        else:
            sock.settimeout(None)
        try:
            chunk = sock.recv(min(n - got, 1 << 20))
        except socket.timeout as exc:
            raise TimeoutError("no frame before the deadline") from exc
        if not chunk:
            raise FrameError("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, deadline: float | None = None,
               allowed: bytes = b"JB") -> tuple[str, object]:
    """The next frame as ``(kind, payload)``: JSON is decoded, other kinds stay bytes.
    ``deadline`` is a ``time.monotonic()`` value; past it, :class:`TimeoutError`."""
    kind, size = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if kind not in [allowed[i:i + 1] for i in range(len(allowed))] or size > MAX_FRAME:
        raise FrameError(f"unexpected frame {kind!r} of {size} bytes")
    payload = _recv_exact(sock, size, deadline)
    if kind == b"J":
        try:
            return "J", json.loads(payload)
        except ValueError as exc:
            raise FrameError("a JSON frame that is not JSON") from exc
    return kind.decode(), payload
