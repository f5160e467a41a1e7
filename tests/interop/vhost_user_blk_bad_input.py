#!/usr/bin/env python3
"""A hostile vhost-user front-end against a vhost-user-blk export.

Usage: vhost_user_blk_bad_input.py SOCKET BACKING_FILE SERIAL [readonly]

1. Malformed control messages, one connection each: the daemon must drop
   the connection (EOF), never crash.
2. A well-formed session over a memfd, then virtio-blk requests and bad
   descriptor chains on a ring we write ourselves: every chain comes back
   on the used ring with the right status (IOERR/UNSUPP for bad requests,
   nothing written for chains it cannot trust), and good requests still
   work after bad ones.
Exits non-zero with a message on the first failure."""
import mmap
import os
import select
import socket
import struct
import sys

SOCK, BACKING, SERIAL = sys.argv[1], sys.argv[2], sys.argv[3].encode()
GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE = 1, 2, 3, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES = 12, 13, 15, 16
SET_VRING_ENABLE, GET_CONFIG = 18, 24
NEED_REPLY = 1 | 8
F_VERSION_1, F_PROTOCOL, F_INDIRECT = 1 << 32, 1 << 30, 1 << 28
NEXT, WRITE, INDIRECT = 1, 2, 4
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
MEM = 1 << 20
UVA = 0x7F0000000000  # what we tell the daemon our mapping's address is
DESC, AVAIL, USED, DATA = 0, 0x1000, 0x2000, 0x10000
NUM = 8


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(SOCK)
    return s


def send(s, req, payload=b"", fds=(), flags=1):
    data = struct.pack("<III", req, flags, len(payload)) + payload
    if fds:
        socket.send_fds(s, [data], list(fds))
    else:
        s.sendall(data)


def recv_reply(s, req):
    hdr = b""
    while len(hdr) < 12:
        chunk = s.recv(12 - len(hdr))
        if not chunk:
            fail(f"connection closed while waiting for the reply to {req}")
        hdr += chunk
    r, flags, size = struct.unpack("<III", hdr)
    body = b""
    while len(body) < size:
        body += s.recv(size - len(body))
    if r != req or not flags & 4:
        fail(f"bad reply header {r} {flags:#x} to {req}")
    return body


def expect_dropped(s, what):
    """The daemon must close the connection (EOF)."""
    try:
        while True:
            d = s.recv(4096)
            if not d:
                break
    except socket.timeout:
        fail(f"{what}: connection not dropped within 10 s")
    except ConnectionResetError:
        pass
    s.close()
    print(f"ok: {what}: connection dropped")


# ---- 1. malformed control messages ----
def malformed():
    s = connect(); s.sendall(os.urandom(64)); expect_dropped(s, "random bytes")
    s = connect(); s.sendall(struct.pack("<III", GET_FEATURES, 1, 100000)); expect_dropped(s, "oversized payload length")
    s = connect(); send(s, 9999, b"xx"); expect_dropped(s, "unknown request code")
    s = connect(); send(s, SET_FEATURES, b"\x01"); expect_dropped(s, "SET_FEATURES with a 1-byte payload")
    s = connect(); send(s, GET_FEATURES, flags=1 | 4); expect_dropped(s, "a reply sent as a request")
    s = connect(); send(s, GET_FEATURES, flags=2); expect_dropped(s, "wrong version bits")
    s = connect(); send(s, SET_VRING_NUM, struct.pack("<II", 200, 8)); expect_dropped(s, "vring index 200")
    s = connect(); send(s, SET_VRING_NUM, struct.pack("<II", 0, 7)); expect_dropped(s, "queue size 7")
    fd = os.memfd_create("bad")
    os.ftruncate(fd, MEM)
    s = connect()
    send(s, SET_MEM_TABLE, struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 0, MEM, UVA, 0) * 2, fds=[fd])
    expect_dropped(s, "SET_MEM_TABLE: 2 regions, 1 fd")
    s = connect()
    send(s, SET_MEM_TABLE, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 4 * MEM, UVA, 0), fds=[fd])
    expect_dropped(s, "SET_MEM_TABLE: region larger than its memfd (would SIGBUS)")
    s = connect(); send(s, SET_VRING_KICK, struct.pack("<Q", 0x100)); expect_dropped(s, "polling kick (no fd)")
    s = connect(); s.sendall(struct.pack("<II", GET_FEATURES, 1)); s.shutdown(socket.SHUT_WR); expect_dropped(s, "half a header, then EOF")
    os.close(fd)


# ---- 2. a ring of our own ----
class Ring:
    def __init__(self):
        self.fd = os.memfd_create("guest")
        os.ftruncate(self.fd, MEM)
        self.m = mmap.mmap(self.fd, MEM)
        self.kick = os.eventfd(0, os.EFD_NONBLOCK)
        self.call = os.eventfd(0, os.EFD_NONBLOCK)
        self.avail_idx = 0
        self.used_seen = 0
        self.s = connect()
        s = self.s
        send(s, SET_OWNER)
        send(s, GET_FEATURES)
        feats = self.features = struct.unpack("<Q", recv_reply(s, GET_FEATURES))[0]
        if not feats & F_VERSION_1 or not feats & F_PROTOCOL:
            fail(f"features {feats:#x} lack VERSION_1 or PROTOCOL_FEATURES")
        send(s, SET_FEATURES, struct.pack("<Q", F_VERSION_1 | F_PROTOCOL | F_INDIRECT))
        send(s, GET_PROTOCOL_FEATURES)
        pf = struct.unpack("<Q", recv_reply(s, GET_PROTOCOL_FEATURES))[0]
        send(s, SET_PROTOCOL_FEATURES, struct.pack("<Q", pf & (1 << 3)))  # REPLY_ACK
        send(s, GET_CONFIG, struct.pack("<III", 0, 8, 0) + bytes(8), flags=NEED_REPLY)
        self.capacity = struct.unpack("<Q", recv_reply(s, GET_CONFIG)[12:20])[0] * 512
        self.acked(SET_MEM_TABLE, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, MEM, UVA, 0), [self.fd])
        self.acked(SET_VRING_NUM, struct.pack("<II", 0, NUM))
        self.acked(SET_VRING_BASE, struct.pack("<II", 0, 0))
        self.acked(SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, UVA + DESC, UVA + USED, UVA + AVAIL, 0))
        self.acked(SET_VRING_KICK, struct.pack("<Q", 0), [self.kick])
        self.acked(SET_VRING_CALL, struct.pack("<Q", 0), [self.call])
        self.acked(SET_VRING_ENABLE, struct.pack("<II", 0, 1))

    def acked(self, req, payload, fds=()):
        send(self.s, req, payload, fds, flags=NEED_REPLY)
        v = struct.unpack("<Q", recv_reply(self.s, req))[0]
        if v != 0:
            fail(f"request {req} failed: {v}")

    def desc(self, i, addr, length, flags, nxt=0, table=DESC):
        struct.pack_into("<QIHH", self.m, table + 16 * i, addr, length, flags, nxt)

    def submit(self, head, count=1):
        struct.pack_into("<H", self.m, AVAIL + 4 + 2 * (self.avail_idx % NUM), head)
        self.avail_idx = (self.avail_idx + count) & 0xFFFF
        struct.pack_into("<H", self.m, AVAIL + 2, self.avail_idx)
        os.eventfd_write(self.kick, 1)

    def wait_used(self, what):
        select.select([self.call], [], [], 5)
        used = struct.unpack_from("<H", self.m, USED + 2)[0]
        if used == self.used_seen:
            fail(f"{what}: not returned on the used ring within 5 s")
        slot = self.used_seen % NUM
        head, length = struct.unpack_from("<II", self.m, USED + 4 + 8 * slot)
        self.used_seen = (self.used_seen + 1) & 0xFFFF
        try:
            os.eventfd_read(self.call)
        except BlockingIOError:
            pass
        return head, length

    def request(self, what, type_, sector, data_len, writable=True, expect=S_OK, hdr_extra=b""):
        hdr = DATA
        buf = DATA + 0x1000
        status = DATA + 0x80000
        self.m[hdr:hdr + 16 + len(hdr_extra)] = struct.pack("<IIQ", type_, 0, sector) + hdr_extra
        self.m[status] = 0xFF
        self.desc(0, hdr, 16 + len(hdr_extra), NEXT, 1)
        if data_len:
            self.desc(1, buf, data_len, NEXT | (WRITE if writable else 0), 2)
            self.desc(2, status, 1, WRITE)
        else:
            self.desc(1, status, 1, WRITE)
        self.submit(0)
        head, length = self.wait_used(what)
        st = self.m[status]
        if head != 0 or st != expect:
            fail(f"{what}: head {head} status {st}, expected status {expect}")
        print(f"ok: {what}: status {st}, used length {length}")
        return bytes(self.m[buf:buf + data_len])

    def bad_chain(self, what):
        status = DATA + 0x80000
        self.m[status] = 0xFF
        self.submit(3)
        head, length = self.wait_used(what)
        if head != 3 or length != 0:
            fail(f"{what}: returned as head {head} with length {length}, expected 3 with 0")
        print(f"ok: {what}: returned with nothing written")


def ring_tests():
    r = Ring()
    with open(BACKING, "rb") as f:
        first = f.read(4096)
    data = r.request("read 4 KiB at 0", 0, 0, 4096)
    if data != first:
        fail("read 4 KiB at 0: data differs from the backing file")
    r.request("read past the end", 0, r.capacity // 512, 512, expect=S_IOERR)
    r.request("read straddling the end", 0, r.capacity // 512 - 1, 1024, expect=S_IOERR)
    r.request("read of 100 bytes (not whole sectors)", 0, 0, 100, expect=S_IOERR)
    r.request("unknown request type 77", 77, 0, 0, expect=S_UNSUPP)
    r.request("discard with the unmap flag", 11, 0, 0, expect=S_UNSUPP, hdr_extra=struct.pack("<QII", 0, 8, 1))
    r.request("two discard segments", 11, 0, 0, expect=S_UNSUPP, hdr_extra=struct.pack("<QII", 0, 8, 0) * 2)
    ident = r.request("GET_ID", 8, 0, 20)
    if ident.rstrip(b"\0") != SERIAL[:20]:
        fail(f"GET_ID returned {ident!r}, expected {SERIAL!r}")
    # Bad chains at head 3.
    r.desc(3, DATA, 16, NEXT, 4); r.desc(4, DATA, 16, NEXT, 3)
    r.bad_chain("descriptor loop 3 -> 4 -> 3")
    r.desc(3, 0xDEAD00000000, 16, NEXT, 4); r.desc(4, DATA + 0x80000, 1, WRITE)
    r.bad_chain("descriptor outside guest memory")
    r.desc(3, MEM - 8, 16, NEXT, 4)
    r.bad_chain("descriptor running past the end of guest memory")
    r.desc(3, DATA, 16, NEXT, 9)
    r.bad_chain("next index beyond the queue")
    r.desc(3, DATA + 0x80000, 1, WRITE | NEXT, 4); r.desc(4, DATA, 16, 0)
    r.bad_chain("readable descriptor after a writable one")
    r.desc(3, DATA + 0x40000, 24, INDIRECT)
    r.bad_chain("indirect table of 24 bytes")
    r.desc(0, DATA + 0x40000, 16, INDIRECT, table=DATA + 0x40000)
    r.desc(3, DATA + 0x40000, 16, INDIRECT)
    r.bad_chain("indirect table pointing at itself")
    # A request without a status byte: nothing can be reported.
    r.desc(3, DATA, 16, 0)
    r.m[DATA:DATA + 16] = struct.pack("<IIQ", 0, 0, 0)
    r.bad_chain("request with no status byte")
    # Still serving good requests.
    data = r.request("read 4 KiB at 0 after the bad chains", 0, 0, 4096)
    if data != first:
        fail("read after bad chains: data differs")
    # A ring index beyond the ring: the ring is broken, nothing is used.
    struct.pack_into("<H", r.m, AVAIL + 2, (r.avail_idx + 100) & 0xFFFF)
    os.eventfd_write(r.kick, 1)
    select.select([r.call], [], [], 1)
    print("ok: avail index 100 ahead of the ring: no crash")
    # GET_VRING_BASE still answers (the ring is stopped and drained).
    send(r.s, GET_VRING_BASE, struct.pack("<II", 0, 0))
    base = struct.unpack("<II", recv_reply(r.s, GET_VRING_BASE))[1]
    print(f"ok: GET_VRING_BASE after a broken ring: {base}")
    r.s.close()


def readonly_tests():
    """A readonly export: RO offered, writes fail with IOERR, data untouched."""
    r = Ring()
    if not r.features & (1 << 5):
        fail("readonly export does not offer VIRTIO_BLK_F_RO")
    with open(BACKING, "rb") as f:
        before = f.read(4096)
    r.m[DATA + 0x1000:DATA + 0x2000] = b"\xaa" * 4096
    r.request("write to the readonly export", 1, 0, 4096, writable=False, expect=S_IOERR)
    r.request("write zeroes to the readonly export", 13, 0, 0, expect=S_UNSUPP, hdr_extra=struct.pack("<QII", 0, 8, 0))
    with open(BACKING, "rb") as f:
        if f.read(4096) != before:
            fail("the readonly export's backing file changed")
    r.request("read from the readonly export", 0, 0, 4096)
    r.s.close()


if len(sys.argv) > 4 and sys.argv[4] == "readonly":
    readonly_tests()
    print("all readonly checks passed")
    sys.exit(0)
malformed()
ring_tests()
print("all hostile front-end checks passed")
