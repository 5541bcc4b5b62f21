"""The frames between a python-backend stub and the kernel that serves its model, over one unix socket.

Imported by the kernel (``tritonnb.triton.channel``) and sent beside the stub's ``model.py``, where only the standard
library and numpy exist (numpy 1 or 2, on either side: the format carries raw bytes, not pickles).

A frame is a prefix (header length, body length), a JSON header and a body of raw tensor bytes::

    request header:  {"requests": [{"inputs": [[name, dtype, shape], ...], "parameters": {...}}, ...],
                      "stub_ns": <time the stub spent in its previous execute()>}
    response header: {"responses": [{"outputs": [[name, dtype, shape], ...]} | {"error": message}, ...]}
                     or {"error": message} when the whole batch failed

``dtype`` is numpy's dtype string (``<f4``), or ``bytes`` for a tensor of byte strings, which travels as Triton
serializes BYTES: each element as a little-endian uint32 length and its bytes. Tensors follow each other in the body
in header order, each starting on a multiple of ``ALIGN`` bytes (the header is padded with spaces to one too), so
that the arrays read from a frame are aligned.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

SOCKET_PARAMETER = "tritonnb-channel"  # the model config parameter: the kernel's socket of each version, as JSON
BYTES = "bytes"
PREFIX = struct.Struct("<IQ")  # header bytes, body bytes
LENGTH = struct.Struct("<I")
ALIGN = 64
PADDING = bytes(ALIGN)
MAX_HEADER = 64 << 20  # a longer header is no frame of ours
MAX_PARTS = 512  # buffers per sendmsg call, well under the system's IOV_MAX
Tensors = dict[str, np.ndarray]


def tensor_entries(tensors: Tensors, entries: list[list[Any]], buffers: list[Any]) -> None:
    """Describe each tensor in ``entries`` and append its bytes, padded to ``ALIGN``, to ``buffers``."""
    for name, array in tensors.items():
        if array.dtype.kind in "OSU":
            entries.append([name, BYTES, list(array.shape)])
            data: Any = bytes_buffer(array)
        else:
            array = np.require(array, requirements="C")  # keeps a 0-d array 0-d, unlike ascontiguousarray
            entries.append([name, array.dtype.str, list(array.shape)])
            data = array.data.cast("B") if array.size else b""
        buffers.append(data)
        pad = -memoryview(data).nbytes % ALIGN
        if pad:
            buffers.append(PADDING[:pad])


def bytes_buffer(array: np.ndarray) -> bytes:
    """A tensor of byte strings (or str, as UTF-8) as Triton serializes BYTES; TypeError for any other item."""
    parts = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            data = item.encode("utf-8")
        elif isinstance(item, (bytes, bytearray, memoryview)):
            data = bytes(item)
        else:
            raise TypeError(f"a bytes tensor holds a {type(item).__name__} item; expected bytes or str")
        parts.append(LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def read_tensors(entries: Iterable[list[Any]], body: memoryview, offset: int) -> tuple[Tensors, int]:
    """The tensors ``entries`` describe, read from ``body`` at ``offset`` (views of it); and the offset after them."""
    tensors = {}
    for name, dtype, shape in entries:
        count = math.prod(shape)
        if dtype == BYTES:
            items = np.empty(count, dtype=object)
            for index in range(count):
                (length,) = LENGTH.unpack_from(body, offset)
                offset += LENGTH.size
                items[index] = bytes(body[offset : offset + length])
                offset += length
            tensors[name] = items.reshape(shape)
        else:
            kind = np.dtype(dtype)
            tensors[name] = np.frombuffer(body, dtype=kind, count=count, offset=offset).reshape(shape)
            offset += count * kind.itemsize
        offset += -offset % ALIGN
    return tensors, offset


def send(sock: socket.socket, header: dict[str, Any], buffers: list[Any]) -> None:
    """Send one frame: one system call for a small one, without joining its buffers."""
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-(PREFIX.size + len(head)) % ALIGN)  # the body starts aligned
    views = [memoryview(buffer).cast("B") for buffer in buffers]
    prefix = PREFIX.pack(len(head), sum(view.nbytes for view in views))
    views = [memoryview(prefix), memoryview(head), *views]
    while views:
        sent = sock.sendmsg(views[:MAX_PARTS])
        while views and sent >= views[0].nbytes:
            sent -= views.pop(0).nbytes
        if sent:
            views[0] = views[0][sent:]


def receive(sock: socket.socket) -> tuple[dict[str, Any], memoryview] | None:
    """One frame's header and body (a writable buffer of its own); None once the other side has closed."""
    prefix = bytearray(PREFIX.size)
    if not _read_into(sock, memoryview(prefix)):
        return None
    head_size, body_size = PREFIX.unpack(prefix)
    if head_size > MAX_HEADER:
        raise ValueError(f"a frame header of {head_size} bytes: not a frame of this channel")
    frame = bytearray(PREFIX.size + head_size + body_size)  # the prefix's room keeps the body aligned as sent
    view = memoryview(frame)[PREFIX.size :]
    if not _read_into(sock, view):
        return None
    return json.loads(bytes(view[:head_size])), view[head_size:]


def _read_into(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from the socket; False if it closed first."""
    while view.nbytes:
        count = sock.recv_into(view)
        if count == 0:
            return False
        view = view[count:]
    return True


def requests_frame(requests: list[tuple[Tensors, dict[str, Any]]], stub_ns: int) -> tuple[dict[str, Any], list[Any]]:
    """The header and buffers of a batch of requests: (inputs, parameters) each."""
    described, buffers = [], []
    for tensors, parameters in requests:
        entries: list[list[Any]] = []
        tensor_entries(tensors, entries, buffers)
        described.append({"inputs": entries, "parameters": parameters})
    return {"requests": described, "stub_ns": stub_ns}, buffers


def responses_frame(responses: list[Tensors | str]) -> tuple[dict[str, Any], list[Any]]:
    """The header and buffers of a batch's answers: outputs, or an error message, per request."""
    described: list[dict[str, Any]] = []
    buffers: list[Any] = []
    for response in responses:
        if isinstance(response, str):
            described.append({"error": response})
        else:
            entries: list[list[Any]] = []
            tensor_entries(response, entries, buffers)
            described.append({"outputs": entries})
    return {"responses": described}, buffers


def read_requests(header: dict[str, Any], body: memoryview) -> list[tuple[Tensors, dict[str, Any]]]:
    """The (inputs, parameters) of each request in a frame."""
    requests, offset = [], 0
    for request in header["requests"]:
        tensors, offset = read_tensors(request["inputs"], body, offset)
        requests.append((tensors, request.get("parameters") or {}))
    return requests


def read_responses(header: dict[str, Any], body: memoryview) -> list[Tensors | str]:
    """The outputs, or error message, of each request in a frame."""
    responses: list[Tensors | str] = []
    offset = 0
    for response in header["responses"]:
        if "error" in response:
            responses.append(response["error"])
        else:
            tensors, offset = read_tensors(response["outputs"], body, offset)
            responses.append(tensors)
    return responses
