#!/usr/bin/env python3
"""Writes the seed corpora of vhost_user_fuzz and vhost_virtqueue_fuzz
(tests/fuzz/corpus/<target>/): well-formed sessions and rings plus a few
classic bad ones, so the fuzzers start from the interesting states."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- vhost_user_fuzz: header (request, flags, size), fd count byte, payload
def msg(req, payload=b"", fds=0, flags=1):
    return struct.pack("<III", req, flags, len(payload)) + bytes([fds]) + payload


GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE = 1, 2, 3, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES = 12, 13, 15, 16
GET_QUEUE_NUM, SET_VRING_ENABLE, GET_CONFIG, SET_CONFIG = 17, 18, 24, 25
RESET_DEVICE, GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG = 34, 36, 37, 38
NEED_REPLY = 1 | 8
FEATURES = (1 << 32) | (1 << 30) | (1 << 29) | (1 << 28)
u64 = lambda v: struct.pack("<Q", v)
state = lambda i, n: struct.pack("<II", i, n)
region = lambda gpa, size, uva, off: struct.pack("<QQQQ", gpa, size, uva, off)
addr = lambda i, d, a, u: struct.pack("<IIQQQQ", i, 0, d, u, a, 0)

negotiate = (msg(SET_OWNER) + msg(GET_FEATURES) + msg(SET_FEATURES, u64(FEATURES)) +
             msg(GET_PROTOCOL_FEATURES) + msg(SET_PROTOCOL_FEATURES, u64(0x2209 | 0x8000), flags=NEED_REPLY) +
             msg(GET_QUEUE_NUM) + msg(GET_MAX_MEM_SLOTS) + msg(GET_CONFIG, struct.pack("<III", 0, 60, 0) + bytes(60)))
ring = (msg(SET_VRING_NUM, state(0, 8), flags=NEED_REPLY) + msg(SET_VRING_BASE, state(0, 0)) +
        msg(SET_VRING_ADDR, addr(0, 0x10000, 0x10100, 0x10200)) + msg(SET_VRING_KICK, u64(0), fds=1) +
        msg(SET_VRING_CALL, u64(0), fds=1) + msg(SET_VRING_ENABLE, state(0, 1), flags=NEED_REPLY))
table = msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region(0, 0x4000, 0x10000, 0), fds=1)
write("vhost_user_fuzz", "qemu-like", negotiate + table + ring + msg(GET_VRING_BASE, state(0, 0)) + msg(RESET_DEVICE))
write("vhost_user_fuzz", "libblkio-like", negotiate + msg(ADD_MEM_REG, u64(0) + region(0, 0x4000, 0x10000, 0), fds=1) + ring +
      msg(ADD_MEM_REG, u64(0) + region(0x8000, 0x1000, 0x20000, 0x1000), fds=1) +
      msg(REM_MEM_REG, u64(0) + region(0x8000, 0x1000, 0x20000, 0x1000)) + msg(GET_VRING_BASE, state(0, 0)))
write("vhost_user_fuzz", "set-config", negotiate + msg(SET_CONFIG, struct.pack("<III", 32, 1, 0) + b"\x00", flags=NEED_REPLY))
write("vhost_user_fuzz", "bad-index", negotiate + msg(SET_VRING_NUM, state(7, 8)))
write("vhost_user_fuzz", "bad-size", msg(SET_FEATURES, b"\x01\x02\x03"))
write("vhost_user_fuzz", "too-many-fds", msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region(0, 4096, 0, 0), fds=7))
write("vhost_user_fuzz", "unknown", msg(99, b"abc"))

# ---- vhost_virtqueue_fuzz: [log2 num][flags][last_avail u16] then memory:
# descriptors at 0, avail at 0x200, used at 0x280 (guest base 0x40000).
BASE = 0x40000


def ring_image(num_log2, flags, descs, heads, extra=()):
    mem = bytearray(0x1000)
    for i, (a, ln, fl, nx) in enumerate(descs):
        struct.pack_into("<QIHH", mem, i * 16, a, ln, fl, nx)
    struct.pack_into("<HH", mem, 0x200, 0, len(heads))
    for i, h in enumerate(heads):
        struct.pack_into("<H", mem, 0x204 + 2 * i, h)
    for off, data in extra:
        mem[off:off + len(data)] = data
    return bytes([num_log2, flags, 0, 0]) + bytes(mem)


NEXT, WRITE, INDIRECT = 1, 2, 4
hdr = lambda t, sector: struct.pack("<IIQ", t, 0, sector)
read_req = ring_image(3, 1, [(BASE + 0x400, 16, NEXT, 1), (BASE + 0x600, 512, NEXT | WRITE, 2), (BASE + 0x900, 1, WRITE, 0)],
                      [0], [(0x400, hdr(0, 8))])
write("vhost_virtqueue_fuzz", "read", read_req)
write("vhost_virtqueue_fuzz", "write", ring_image(3, 0, [(BASE + 0x400, 16, NEXT, 1), (BASE + 0x600, 1024, NEXT, 2),
                                                         (BASE + 0x900, 1, WRITE, 0)], [0], [(0x400, hdr(1, 0))]))
# Header, data and status in one readable and one writable descriptor.
write("vhost_virtqueue_fuzz", "any-layout", ring_image(2, 0, [(BASE + 0x400, 16 + 512, NEXT, 1), (BASE + 0x800, 513, WRITE, 0)],
                                                       [0], [(0x400, hdr(1, 2))]))
ind = struct.pack("<QIHH", BASE + 0x400, 16, NEXT, 1) + struct.pack("<QIHH", BASE + 0x900, 1, WRITE, 0)
write("vhost_virtqueue_fuzz", "indirect-flush", ring_image(3, 2, [(BASE + 0xa00, 32, INDIRECT, 0)], [0],
                                                           [(0x400, hdr(4, 0)), (0xa00, ind)]))
dz = struct.pack("<QII", 16, 8, 1)
write("vhost_virtqueue_fuzz", "write-zeroes-unmap", ring_image(3, 1, [(BASE + 0x400, 32, NEXT, 1), (BASE + 0x900, 1, WRITE, 0)],
                                                               [0, 0], [(0x400, hdr(13, 0) + dz)]))
write("vhost_virtqueue_fuzz", "get-id", ring_image(3, 0, [(BASE + 0x400, 16, NEXT, 1), (BASE + 0x600, 21, WRITE, 0)], [0],
                                                   [(0x400, hdr(8, 0))]))
write("vhost_virtqueue_fuzz", "loop", ring_image(3, 0, [(BASE + 0x400, 16, NEXT, 1), (BASE + 0x600, 16, NEXT, 0)], [0]))
write("vhost_virtqueue_fuzz", "out-of-bounds", ring_image(3, 0, [(0xdead0000, 16, NEXT, 1), (BASE + 0x600, 1, WRITE, 0)], [0]))
write("vhost_virtqueue_fuzz", "broken-avail", ring_image(3, 0, [], [0] * 12))
