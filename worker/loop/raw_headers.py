"""Checks a consumed message's header keys before confluent-kafka converts them.

confluent-kafka (up to at least 2.16) converts header keys with `PyUnicode_FromString` and does not
stop when that fails: a key that is not UTF-8 leaves a NULL in the tuple it builds, and the process
soon dies of a segmentation fault (reproduced: a few such messages crash a consumer). So the intake
step must never call `Message.headers()` on such a message. This module reads the keys of the
message's still-unconverted librdkafka header list (`rd_kafka_header_get_all` through ctypes) and
says whether they are all UTF-8; when not, the intake replaces the headers with an empty list
(`Message.set_headers`) before anything converts them.

It relies on the layout of confluent-kafka's `Message` object (the C struct: PyObject_HEAD, then
the `topic`, `value`, `key` and `headers` object pointers, then the `rd_kafka_headers_t *`), which
has been the same since headers were added (0.11.4); `SUPPORTED` guards the versions checked.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

import confluent_kafka
from confluent_kafka import cimpl

log = logging.getLogger(__name__)

SUPPORTED = ((1, 0), (3, 0))
"""confluent-kafka versions [from, to) whose `Message` layout this module knows."""

_POINTER = ctypes.sizeof(ctypes.c_void_p)
_HEADERS_AT = 2 * _POINTER + 3 * _POINTER  # after PyObject_HEAD, topic, value, key
_C_HEADERS_AT = _HEADERS_AT + _POINTER


def _library() -> Any | None:
    version = tuple(int(part) for part in confluent_kafka.version()[0].split(".")[:2])
    if not SUPPORTED[0] <= version < SUPPORTED[1] or sys.implementation.name != "cpython":
        log.warning("header keys are not pre-checked", extra={"confluent_kafka": version})
        return None
    library = ctypes.CDLL(cimpl.__file__)
    get_all = library.rd_kafka_header_get_all
    get_all.restype = ctypes.c_int
    get_all.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    return get_all


_GET_ALL = _library()


def unreadable_header_key(message: confluent_kafka.Message) -> bytes | None:
    """The first header key of `message` that is not UTF-8 (None when all are, or when the headers
    were already converted or cannot be checked)."""
    if _GET_ALL is None or type(message) is not confluent_kafka.Message:
        return None
    address = id(message)
    if ctypes.c_void_p.from_address(address + _HEADERS_AT).value is not None:
        return None  # already converted: nothing left to check
    headers = ctypes.c_void_p.from_address(address + _C_HEADERS_AT).value
    if headers is None:
        return None
    name, value, size = ctypes.c_char_p(), ctypes.c_void_p(), ctypes.c_size_t()
    index = 0
    while (
        _GET_ALL(headers, index, ctypes.byref(name), ctypes.byref(value), ctypes.byref(size)) == 0
    ):
        key = name.value or b""
        try:
            key.decode()
        except UnicodeDecodeError:
            return key
        index += 1
    return None
