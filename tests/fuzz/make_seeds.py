#!/usr/bin/env python3
"""Writes the seed corpus for the NBD fuzz targets from hand-built valid
sessions (our own bytes, nothing captured). Re-run after changing the input
layout of a target: python3 tests/fuzz/make_seeds.py"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
IHAVEOPT = 0x49484156454F5054


def opt(code, data=b""):
    return struct.pack(">QII", IHAVEOPT, code, len(data)) + data


def info(name, reqs=()):
    n = name.encode()
    return struct.pack(">I", len(n)) + n + struct.pack(">H", len(reqs)) + b"".join(struct.pack(">H", r) for r in reqs)


def meta(name, queries):
    n = name.encode()
    out = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q)) + q.encode()
    return out


FLAGS = struct.pack(">I", 3)


def handshake_seeds():
    s = {}
    s["go_default"] = (0, FLAGS + opt(7, info("", [3])))
    s["export_name"] = (0, FLAGS + opt(1, b"second"))
    s["export_name_zeroes"] = (0, struct.pack(">I", 1) + opt(1, b""))
    s["list_abort"] = (0, FLAGS + opt(3) + opt(2))
    s["full_structured"] = (0, FLAGS + opt(3) + opt(8) + opt(9, meta("", [])) + opt(10, meta("", ["base:allocation"]))
                            + opt(6, info("second", [0, 1, 2, 3])) + opt(7, info("", [1, 2, 3])) + b"\x25\x60\x95\x13")
    s["extended"] = (0, FLAGS + opt(11) + opt(8) + opt(10, meta("", ["base:", "base:allocation", "x-a:b"])) + opt(7, info("")))
    s["block_size_reqd"] = (0, FLAGS + opt(7, info("second")) + opt(7, info("second", [3])))
    s["unknown_opts"] = (0, FLAGS + opt(4) + opt(99, b"xyz") + opt(5) + opt(7, info("nope")) + opt(2))
    s["tls_optional"] = (1, FLAGS + opt(5) + opt(8) + opt(5) + opt(7, info("", [3])))
    s["tls_required"] = (2, FLAGS + opt(3) + opt(7, info("")) + opt(5) + opt(3) + opt(7, info("second", [3])))
    s["tls_required_export_name"] = (2, FLAGS + opt(1))
    s["malformed"] = (0, FLAGS + opt(7, b"\x00\x00\x00\x09ab") + opt(9, b"\xff\xff\xff\xff") + opt(8, b"x") + opt(2))
    # Declared larger than Handshake::kMaxOptionPayload: streams past unbuffered
    # (the full TOO_BIG path needs 64 KiB of input and is a unit test instead).
    s["oversized_header"] = (0, FLAGS + struct.pack(">QII", IHAVEOPT, 7, 70000) + b"\0" * 100)
    return {k: bytes([m, i * 37 & 0xFF]) + v for i, (k, (m, v)) in enumerate(s.items())}


def setup(bits, min_shift, pref, max_block, size, size_shift=0):
    return struct.pack(">HBBIQ", bits, min_shift, pref | (size_shift << 2), max_block, size)


def req(flags, typ, cookie, off, length, ext=False):
    if ext:
        return struct.pack(">IHHQQQ", 0x21E41C71, flags, typ, cookie, off, length)
    return struct.pack(">IHHQQI", 0x25609513, flags, typ, cookie, off, length)


def request_seeds():
    s = {}
    allcaps = 0xFF | 512 | 1024
    s["compact_mix"] = setup(allcaps, 0, 0, 1 << 25, 1 << 30) + b"".join([
        req(0, 0, 1, 0, 4096), req(1, 1, 2, 4096, 16) + b"x" * 16, req(0, 3, 3, 0, 0),
        req(2, 6, 4, 0, 65536), req(16, 6, 5, 0, 512), req(8, 7, 6, 0, 1 << 20),
        req(0, 4, 7, 0, 4096), req(0, 5, 8, 0, 4096), req(4, 0, 9, 0, 512), req(0, 2, 10, 0, 0)])
    s["extended_mix"] = setup(allcaps | 256, 9, 1, 1 << 20, 1 << 40) + b"".join([
        req(32, 1, 1, 0, 512, True) + b"y" * 512, req(0, 7, 2, 0, 1 << 36, True),
        req(32, 7, 3, 0, 12, True) + b"\0" * 12, req(0, 4, 4, 512, 1 << 33, True),
        req(0, 0, 5, 0, 4096, True), req(0, 2, 6, 0, 0, True)])
    s["readonly_simple"] = setup(1 | 2, 12, 2, 1 << 20, 1 << 26) + b"".join([
        req(0, 1, 1, 0, 4096) + b"z" * 4096, req(0, 4, 2, 0, 4096), req(0, 0, 3, 512, 4096),
        req(0, 0, 4, 0, 2 << 20), req(0, 9, 5, 0, 1)])
    s["blockstatus_extents"] = setup(allcaps, 0, 0, 1 << 25, 1 << 34) + req(8, 7, 63, 0, 1 << 31) + bytes(range(200))
    return s


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


write("nbd_handshake_fuzz", handshake_seeds())
write("nbd_request_fuzz", request_seeds())
