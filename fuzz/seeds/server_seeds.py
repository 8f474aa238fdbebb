#!/usr/bin/env python3
"""Writes starting inputs for the `server` fuzz target (one valid call of
each method, in its input format: method byte, flag byte, then messages as
u16-LE length + protobuf bytes) into the directory given (default
corpus/server). bench/fuzz.sh runs it when that corpus is empty."""
import os
import struct
import sys


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def ld(field, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vi(field, n):
    return varint(field << 3) + varint(n)


def ints(values):
    packed = b"".join(struct.pack("<q", v) for v in values)
    return ld(1, ld(1, packed))  # Numbers.ints(IntList.values)


def floats(values):
    packed = b"".join(struct.pack("<d", v) for v in values)
    return ld(2, ld(1, packed))


def call(method, *messages, flags=0):
    out = bytes([method, flags])
    for m in messages:
        out += struct.pack("<H", len(m)) + m
    return out


header = lambda path, size: ld(1, ld(1, path) + vi(2, size))
chunk = lambda data: ld(2, data)
SEEDS = {
    "upload": call(0, header("a.txt", 5), chunk(b"hello")),
    "upload-offset": call(1, ld(1, "a.txt") + vi(2, 5)),
    "upload-batch": call(2, header("d/b.txt", 3), chunk(b"abc"), header("c", 0)),
    "download": call(3, ld(1, "a.txt")),
    "stat": call(4, ld(1, "a.txt")),
    "list": call(5, ld(1, "d") + vi(2, 10)),
    "delete": call(6, ld(1, "a.txt") + vi(2, 1)),
    "rename": call(7, ld(1, "d") + ld(2, "e/f") + vi(3, 1)),
    "watch": call(8, vi(1, 0)),
    "add": call(9, ld(1, ints([1, 2, 3]))),
    "sort": call(10, vi(1, 2) + ld(2, floats([3.5, -1.0])) + vi(3, 4), ld(2, floats([0.0, 2.0]))),
    "submit": call(11, ld(1, "c") + ld(2, "j1") + ld(5, ld(1, ints([5, 4])) + vi(2, 1))),
    "callbacks": call(12, ld(1, "c")),
    "get-job": call(13, ld(1, "j1")),
    "get-job-result": call(14, ld(1, "j1")),
    "cancel-job": call(15, ld(1, "j1")),
    "list-jobs": call(16, ld(1, "c")),
}

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/server"
os.makedirs(out, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(data)
