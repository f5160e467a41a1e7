#!/usr/bin/python3
"""Malformed and hostile NBD clients against `blkstack serve`, over raw sockets.

Run by nbd_bad_input.sh, which starts the daemon and passes in the
environment:
  NBD_SOCK        Unix socket with exports "rw" (NBD_FILE) and "ro" (read-only)
  NBD_TLS_SOCK    Unix socket with export "secure" (tls=require)
  NBD_FILE        the file behind "rw"; NBD_SIZE its size
  NBD_CTL         the daemon's control socket; NBD_PID its pid
  NBD_MAX_BLOCK   the largest request the daemon advertises (small pool)
  NBD_DRAIN_TIMEOUT  the daemon's --drain-timeout, seconds

Every case must get the protocol's answer (an error reply, or a clean
disconnect), never a crash; after each one the daemon must still be alive
and serve a new client, and a well-behaved libnbd client (nbdsh, started
here) keeps doing verified I/O on its own connection the whole time.
"""
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time

SOCK = os.environ["NBD_SOCK"]
TLS_SOCK = os.environ["NBD_TLS_SOCK"]
FILE = os.environ["NBD_FILE"]
SIZE = int(os.environ["NBD_SIZE"])
CTL = os.environ["NBD_CTL"]
PID = int(os.environ["NBD_PID"])
MAXB = int(os.environ["NBD_MAX_BLOCK"])
DRAIN = float(os.environ["NBD_DRAIN_TIMEOUT"])
KiB, MiB = 1024, 1 << 20

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
REQ_MAGIC, EXT_REQ_MAGIC = 0x25609513, 0x21E41C71
SIMPLE_MAGIC, CHUNK_MAGIC, EXT_CHUNK_MAGIC = 0x67446698, 0x668E33EF, 0x6E8A278C
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META, OPT_EXTENDED = 8, 9, 10, 11
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 1 << 31
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID = ERR | 1, ERR | 2, ERR | 3
REP_ERR_TLS_REQD, REP_ERR_UNKNOWN, REP_ERR_TOO_BIG = ERR | 5, ERR | 6, ERR | 9
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_ZEROES, CMD_BS = range(8)
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO, F_PAYLOAD_LEN = 1, 2, 4, 8, 16, 32
EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP = 1, 5, 22, 28, 75, 95
REPLY_TYPE_ERROR = (1 << 15) | 1

t0 = time.monotonic()
cases = 0


def log(msg):
    print("[nbd_bad_input +%.1fs] %s" % (time.monotonic() - t0, msg), flush=True)


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


# ------------------------------------------------------------------ raw client
class Client:
    def __init__(self, path=SOCK, timeout=10.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.extended = self.structured = False

    def close(self, reset=False):
        if reset:  # RST instead of FIN where the transport has one
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.s.close()

    def send(self, b):
        self.s.sendall(b)

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.s.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise Fail("server closed the connection after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return bytes(buf)

    def expect_eof(self, what, timeout=10.0):
        """The server must close the connection (after any bytes it still sends)."""
        self.s.settimeout(timeout)
        extra = b""
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return extra
                extra += chunk
                check(len(extra) < (1 << 20), "%s: server keeps talking instead of closing" % what)
        except ConnectionResetError:
            return extra
        except socket.timeout:
            raise Fail("%s: server did not close the connection within %.0f s" % (what, timeout))

    # -- handshake
    def greeting(self, flags=3):
        g = self.recv_exact(18)
        magic, opt, sflags = struct.unpack(">QQH", g)
        check(magic == NBDMAGIC and opt == IHAVEOPT, "bad greeting %r" % g)
        check(sflags & 1, "server does not do fixed newstyle")
        if flags is not None:
            self.send(struct.pack(">I", flags))
        return sflags

    def option(self, opt, data=b"", length=None):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(data) if length is None else length) + data)

    def opt_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        check(magic == REPLY_MAGIC, "bad option reply magic %x" % magic)
        return opt, rtype, self.recv_exact(length)

    def opt_final(self, opt):
        """Replies until a final one (ACK or error); returns (type, data, infos)."""
        infos = []
        while True:
            o, rtype, data = self.opt_reply()
            check(o == opt, "reply for option %d, expected %d" % (o, opt))
            if rtype in (REP_ACK,) or rtype & ERR:
                return rtype, data, infos
            infos.append((rtype, data))

    def go(self, name="rw", structured=False, extended=False, flags=3):
        self.greeting(flags)
        if extended:
            self.option(OPT_EXTENDED)
            check(self.opt_final(OPT_EXTENDED)[0] == REP_ACK, "extended headers refused")
        elif structured:
            self.option(OPT_STRUCTURED)
            check(self.opt_final(OPT_STRUCTURED)[0] == REP_ACK, "structured replies refused")
        n = name.encode()
        self.option(OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
        rtype, data, infos = self.opt_final(OPT_GO)
        check(rtype == REP_ACK, "GO %s: reply %x %r" % (name, rtype, data))
        for t, d in infos:
            if t == REP_INFO and struct.unpack(">H", d[:2])[0] == 0:
                self.size, self.tflags = struct.unpack(">QH", d[2:12])
        self.extended = extended
        self.structured = structured or extended
        return self

    # -- transmission
    def encode(self, rtype, offset=0, length=0, flags=0, cookie=1, payload=b""):
        if self.extended:
            hdr = struct.pack(">IHHQQQ", EXT_REQ_MAGIC, flags, rtype, cookie, offset, length)
        else:
            hdr = struct.pack(">IHHQQI", REQ_MAGIC, flags, rtype, cookie, offset, length)
        return hdr + payload

    def request(self, rtype, offset=0, length=0, flags=0, cookie=1, payload=b""):
        self.send(self.encode(rtype, offset, length, flags, cookie, payload))

    def reply(self):
        """One reply: simple -> ('simple', error, cookie, None); chunk -> (type, error|None, cookie, payload, flags)."""
        magic = struct.unpack(">I", self.recv_exact(4))[0]
        if magic == SIMPLE_MAGIC:
            err, cookie = struct.unpack(">IQ", self.recv_exact(12))
            return ("simple", err, cookie, None, 1)
        if magic == CHUNK_MAGIC:
            flags, ctype, cookie, length = struct.unpack(">HHQI", self.recv_exact(16))
        elif magic == EXT_CHUNK_MAGIC:
            flags, ctype, cookie, _off, length = struct.unpack(">HHQQQ", self.recv_exact(28))
        else:
            raise Fail("bad reply magic %08x" % magic)
        payload = self.recv_exact(length)
        err = struct.unpack(">I", payload[:4])[0] if ctype & (1 << 15) else None
        return (ctype, err, cookie, payload, flags)

    def error_of(self, cookie):
        """Reads one complete reply for `cookie`: its NBD error (0 = ok) and, for
        a structured read, {offset: data} of its data and hole chunks (a simple
        reply's data is left on the socket)."""
        err, pieces = 0, {}
        while True:
            kind, e, c, payload, flags = self.reply()
            check(c == cookie, "reply for cookie %d, expected %d" % (c, cookie))
            if kind == "simple":
                return e, None
            if e is not None:
                err = err or e
            elif kind == 1:  # OFFSET_DATA
                pieces[struct.unpack(">Q", payload[:8])[0]] = payload[8:]
            elif kind == 2:  # OFFSET_HOLE
                off, n = struct.unpack(">QI", payload[:12])
                pieces[off] = bytes(n)
            if flags & 1:
                return err, pieces

    def read_simple(self, offset, length, cookie=7):
        """A read, whatever the reply style; returns the data."""
        self.request(CMD_READ, offset, length, cookie=cookie)
        e, pieces = self.error_of(cookie)
        check(e == 0, "read %d@%d failed: %d" % (length, offset, e))
        if pieces is None:
            return self.recv_exact(length)
        data = b"".join(pieces[k] for k in sorted(pieces))
        check(sorted(pieces)[0] == offset and len(data) == length, "read chunks do not cover the request")
        return data

    def disc(self):
        self.request(CMD_DISC)


# ------------------------------------------------------------------ health
healthy = None


def rss_kib():
    with open("/proc/%d/status" % PID) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Fail("daemon has no VmRSS (gone?)")


def daemon_alive():
    try:
        os.kill(PID, 0)
    except ProcessLookupError:
        raise Fail("the daemon is gone")
    with open("/proc/%d/stat" % PID) as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    check(state != "Z", "the daemon has exited (zombie)")


def ctl(req):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(CTL)
    s.sendall(json.dumps(req).encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        check(chunk, "control socket closed")
        buf += chunk
    s.close()
    return json.loads(buf)


def connections(export):
    r = ctl({"cmd": "stats", "id": export})
    check(r.get("ok"), "stats: %r" % r)
    return r["exports"][0]["stats"]["connections"]


def assert_serving(what, within=2.0):
    """The daemon is alive, a new client gets served quickly, the healthy client runs."""
    daemon_alive()
    start = time.monotonic()
    c = Client(timeout=within + 5).go("rw")
    data = c.read_simple(0, 4096)
    with open(FILE, "rb") as f:
        check(data == f.read(4096), "%s: a new client read wrong data" % what)
    c.disc()
    c.expect_eof("DISC after the health check")
    elapsed = time.monotonic() - start
    check(elapsed < within, "%s: a new client took %.2f s to be served" % (what, elapsed))
    # (The message is built only on failure: healthy_output() waits for the
    # client to exit.)
    if healthy.poll() is not None:
        raise Fail("%s: the healthy libnbd client died: %s" % (what, healthy_output()))


def healthy_output():
    """The healthy client's output, once it has exited (at most 30 s from now)."""
    try:
        healthy.wait(timeout=30)
        return healthy.stdout.read().decode(errors="replace")[-2000:]
    except Exception as e:  # noqa: BLE001
        return "(no output: %s)" % e


def case(name):
    def wrap(fn):
        def run():
            global cases
            log(name)
            fn()
            assert_serving(name)
            cases += 1
        CASES.append((name, run))
        return fn
    return wrap


CASES = []
HEALTHY_SCRIPT = r"""
import os, random
import nbd
rng = random.Random(99)
base = int(os.environ["H_BASE"])
stop = os.environ["H_STOP"]
n = 0
while not os.path.exists(stop):
    off = base + rng.randrange(0, 256) * 4096
    blob = rng.randbytes(4096 * rng.randint(1, 16))
    h.pwrite(blob, off, nbd.CMD_FLAG_FUA if n % 5 == 0 else 0)
    got = h.pread(len(blob), off)
    assert got == blob, "healthy client read back wrong data at %d" % off
    if n % 10 == 0:
        h.flush()
    n += 1
assert n > 100, "healthy client did only %d round trips" % n
print("healthy client: %d verified round trips" % n)
h.shutdown()
"""


# ------------------------------------------------------------------ handshake cases
@case("handshake: unknown client flags -> disconnect")
def _():
    c = Client()
    c.greeting(flags=0x80000003)
    check(c.expect_eof("unknown client flags") == b"", "server replied to bad client flags")


@case("handshake: no FIXED_NEWSTYLE, then NBD_OPT_LIST -> a list or a disconnect, nothing else")
def _():
    c = Client()
    c.greeting(flags=0)
    c.option(OPT_LIST)
    # The spec lets a server answer LIST here or close; anything else is wrong.
    c.s.settimeout(5)
    first = c.s.recv(20)
    if first:
        c_rest = first + c.recv_exact(20 - len(first))
        magic, opt, rtype, length = struct.unpack(">QIII", c_rest)
        check(magic == REPLY_MAGIC and opt == OPT_LIST and rtype in (REP_SERVER, REP_ACK) or rtype & ERR,
              "odd reply to LIST without fixed newstyle: %r" % c_rest)
    c.close()


@case("handshake: bad option magic -> disconnect")
def _():
    c = Client()
    c.greeting()
    c.send(struct.pack(">QII", 0x1122334455667788, OPT_GO, 0))
    check(c.expect_eof("bad option magic") == b"", "server replied to a bad option magic")


@case("handshake: unknown options -> NBD_REP_ERR_UNSUP, negotiation goes on")
def _():
    c = Client()
    c.greeting()
    for opt in (0, 4, 12, 99, 0x7FFFFFFF, 0xFFFFFFFF):
        c.option(opt, b"x" * 17)
        rtype, _, _ = c.opt_final(opt)
        check(rtype == REP_ERR_UNSUP, "option %d: reply %x" % (opt, rtype))
    c.option(OPT_LIST)
    rtype, _, infos = c.opt_final(OPT_LIST)
    check(rtype == REP_ACK and len(infos) == 2, "LIST after unknown options: %x %r" % (rtype, infos))
    c.option(OPT_ABORT)
    check(c.opt_final(OPT_ABORT)[0] == REP_ACK, "ABORT")
    c.expect_eof("after ABORT")


@case("handshake: oversized options (64 KiB+ payloads, 2^31 length) are refused without buffering them")
def _():
    c = Client()
    c.greeting()
    big = struct.pack(">I", 2) + b"rw" + struct.pack(">H", 0) + b"\0" * (100 * KiB)
    c.option(OPT_GO, big)
    rtype, _, _ = c.opt_final(OPT_GO)
    check(rtype & ERR, "GO with a 100 KiB payload: reply %x" % rtype)
    c.option(OPT_INFO, struct.pack(">I", 2) + b"rw" + struct.pack(">H", 0))
    check(c.opt_final(OPT_INFO)[0] == REP_ACK, "INFO after an oversized GO")
    # A 2 GiB option: the server may only stream it past; send 8 MiB of it
    # and vanish. It must not try to hold it.
    before = rss_kib()
    c.option(OPT_GO, length=1 << 31)
    junk = b"\xab" * MiB
    for _ in range(8):
        c.send(junk)
    c.close()
    c = Client()
    c.greeting()
    c.option(0x4242, length=(1 << 31) - 1)
    for _ in range(8):
        c.send(junk)
    c.close()
    time.sleep(0.2)
    grew = rss_kib() - before
    check(grew < 32 * 1024, "daemon RSS grew by %d KiB on oversized options" % grew)


@case("handshake: NBD_OPT_EXPORT_NAME longer than 4096 bytes -> disconnect")
def _():
    c = Client()
    c.greeting()
    c.option(OPT_EXPORT_NAME, b"n" * 5000)
    check(c.expect_eof("long EXPORT_NAME") == b"", "server replied to a 5000-byte EXPORT_NAME")


@case("handshake: truncated and inconsistent option payloads -> NBD_REP_ERR_INVALID")
def _():
    c = Client()
    c.greeting()
    bad = [
        (OPT_GO, struct.pack(">I", 100) + b"rw"),                       # name runs past the payload
        (OPT_GO, struct.pack(">I", 2) + b"rw"),                         # no info count
        (OPT_GO, struct.pack(">I", 2) + b"rw" + struct.pack(">H", 3) + b"\0\1"),  # 3 infos, 1 given
        (OPT_INFO, b"\0\0"),
        (OPT_STRUCTURED, b"junk"),
        (OPT_LIST, b"junk"),
        (OPT_SET_META, struct.pack(">I", 2) + b"rw" + struct.pack(">I", 1)),  # before structured replies
    ]
    for opt, data in bad:
        c.option(opt, data)
        rtype, _, _ = c.opt_final(opt)
        check(rtype == REP_ERR_INVALID, "option %d %r: reply %x" % (opt, data, rtype))
    c.option(OPT_STRUCTURED)
    check(c.opt_final(OPT_STRUCTURED)[0] == REP_ACK, "structured after errors")
    for data in (struct.pack(">I", 2) + b"rw" + struct.pack(">I", 2) + struct.pack(">I", 15) + b"base:allocation",
                 struct.pack(">I", 2) + b"rw" + struct.pack(">I", 1) + struct.pack(">I", 500) + b"x"):
        c.option(OPT_SET_META, data)
        rtype, _, _ = c.opt_final(OPT_SET_META)
        check(rtype == REP_ERR_INVALID, "SET_META with a short query list: %x" % rtype)
    n = b"nope"
    c.option(OPT_INFO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
    check(c.opt_final(OPT_INFO)[0] == REP_ERR_UNKNOWN, "INFO for an unknown export")
    # A header cut short, then the client vanishes.
    c.send(struct.pack(">QI", IHAVEOPT, OPT_GO))
    c.close()
    c = Client()
    c.greeting()
    c.option(OPT_GO, struct.pack(">I", 2) + b"rw", length=40)  # promises 40, sends 6, leaves
    c.close()


@case("handshake: STARTTLS on a server without TLS -> error, negotiation goes on")
def _():
    c = Client()
    c.greeting()
    c.option(OPT_STARTTLS)
    rtype, _, _ = c.opt_final(OPT_STARTTLS)
    check(rtype & ERR, "STARTTLS without TLS: reply %x" % rtype)
    c.option(OPT_GO, struct.pack(">I", 2) + b"rw" + struct.pack(">H", 0))
    check(c.opt_final(OPT_GO)[0] == REP_ACK, "GO after refused STARTTLS")
    c.disc()
    c.expect_eof("DISC")


@case("handshake: more than 1024 options -> disconnect")
def _():
    c = Client()
    c.greeting()
    c.send(struct.pack(">QII", IHAVEOPT, OPT_LIST, 0) * 1100)
    replies = c.expect_eof("1100 options", timeout=15)
    check(len(replies) > 0, "no replies at all to 1100 options")


@case("handshake: a transmission request before GO -> disconnect")
def _():
    c = Client()
    c.greeting()
    c.send(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, 1, 0, 4096))
    c.expect_eof("READ before GO", timeout=10)


@case("handshake: tls=require: GO and EXPORT_NAME before STARTTLS are refused")
def _():
    c = Client(TLS_SOCK)
    c.greeting()
    n = b"secure"
    c.option(OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
    check(c.opt_final(OPT_GO)[0] == REP_ERR_TLS_REQD, "GO before STARTTLS")
    c.option(OPT_LIST)
    check(c.opt_final(OPT_LIST)[0] == REP_ERR_TLS_REQD, "LIST before STARTTLS")
    c.option(OPT_EXPORT_NAME, n)
    c.expect_eof("EXPORT_NAME before STARTTLS")
    c = Client(TLS_SOCK)
    c.greeting(flags=0)  # no fixed newstyle: no TLS possible
    c.expect_eof("non-fixed-newstyle client on a TLS-only socket")


@case("handshake: STARTTLS then garbage instead of a TLS ClientHello -> disconnect")
def _():
    c = Client(TLS_SOCK)
    c.greeting()
    c.option(OPT_STARTTLS)
    check(c.opt_final(OPT_STARTTLS)[0] == REP_ACK, "STARTTLS")
    c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 0) + os.urandom(3000))
    c.expect_eof("garbage TLS records")
    c = Client(TLS_SOCK)
    c.greeting()
    c.option(OPT_STARTTLS)
    check(c.opt_final(OPT_STARTTLS)[0] == REP_ACK, "STARTTLS")
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a ClientHello
    c.close()


# ------------------------------------------------------------------ transmission cases
@case("transmission: out-of-range offsets and lengths -> EINVAL / ENOSPC, then more requests")
def _():
    for structured in (False, True):
        c = Client().go("rw", structured=structured)
        tests = [
            (CMD_READ, SIZE, 512, EINVAL),
            (CMD_READ, SIZE - 256, 512, EINVAL),
            (CMD_READ, (1 << 64) - 512, 1024, EINVAL),  # offset + length wraps
            (CMD_READ, 0, 0, EINVAL),
            (CMD_TRIM, (1 << 63), 4096, EINVAL),
            (CMD_CACHE, SIZE, 1, EINVAL),
            (CMD_ZEROES, SIZE - 1, 2, ENOSPC),
            (CMD_ZEROES, (1 << 64) - 4096, 8192, ENOSPC),
            (CMD_FLUSH, 1, 0, EINVAL),  # offset/length of FLUSH must be 0
        ]
        for i, (t, off, n, want) in enumerate(tests):
            c.request(t, off, n, cookie=100 + i)
            e, _ = c.error_of(100 + i)
            check(e == want, "structured=%s cmd %d %d@%d: error %d, want %d" % (structured, t, n, off, e, want))
        for off in (SIZE - 100, (1 << 64) - 100):
            c.request(CMD_WRITE, off, 200, cookie=9, payload=b"w" * 200)
            e, _ = c.error_of(9)
            check(e == ENOSPC, "write past the end: %d" % e)
        check(len(c.read_simple(0, 4096)) == 4096, "read after range errors")
        c.disc()
        c.expect_eof("DISC")


@case("transmission: lengths over the advertised maximum -> EINVAL/EOVERFLOW, payload skipped, in sync")
def _():
    c = Client().go("rw")
    c.request(CMD_READ, 0, MAXB + 4096, cookie=1)
    check(c.error_of(1)[0] == EINVAL, "oversized read (simple replies)")
    blob = os.urandom(MAXB + 4096)  # above the maximum, below the 32 MiB the server reads past
    c.request(CMD_WRITE, 0, len(blob), cookie=2, payload=blob)
    check(c.error_of(2)[0] == EINVAL, "oversized write")
    with open(FILE, "rb") as f:
        check(f.read(16) != blob[:16], "an oversized write was executed")
    check(len(c.read_simple(4096, 4096, cookie=3)) == 4096, "read after an oversized write")
    c.disc()
    c.expect_eof("DISC")
    c = Client().go("rw", structured=True)
    c.request(CMD_READ, 0, MAXB + 4096, cookie=1)
    check(c.error_of(1)[0] == EOVERFLOW, "oversized structured read")
    c.request(CMD_READ, 0, MAXB, cookie=2)
    e, _ = c.error_of(2)
    check(e == 0, "maximum-size structured read: %d" % e)
    c.disc()
    c.expect_eof("DISC")


@case("transmission: a WRITE payload bigger than the server reads past -> error reply, disconnect")
def _():
    c = Client().go("rw")
    n = 64 * MiB
    c.request(CMD_WRITE, 0, n, cookie=5)
    try:
        c.send(b"\0" * MiB)  # the server must not wait for 64 MiB it will not use
    except (BrokenPipeError, ConnectionResetError):
        pass  # it may stop reading at once: that is the point
    e, _ = c.error_of(5)
    check(e == EINVAL, "huge write: error %d" % e)
    c.expect_eof("huge write")
    c = Client().go("rw", extended=True)
    c.request(CMD_WRITE, 0, 1 << 40, flags=F_PAYLOAD_LEN, cookie=6)
    e, _ = c.error_of(6)
    check(e == EINVAL, "extended 1 TiB write: error %d" % e)
    c.expect_eof("extended huge write")


@case("transmission: writes, trims, zeroes to a read-only export -> EPERM, payload skipped")
def _():
    c = Client().go("ro")
    with open(FILE, "rb") as f:
        before = f.read(64 * KiB)
    c.request(CMD_WRITE, 0, 64 * KiB, cookie=1, payload=b"\xee" * (64 * KiB))
    check(c.error_of(1)[0] == EPERM, "write to ro")
    c.request(CMD_WRITE, 0, 4096, flags=F_FUA, cookie=2, payload=b"\xee" * 4096)
    check(c.error_of(2)[0] == EPERM, "FUA write to ro")
    c.request(CMD_TRIM, 0, 4096, cookie=3)
    check(c.error_of(3)[0] == EPERM, "trim on ro")
    c.request(CMD_ZEROES, 0, 4096, cookie=4)
    check(c.error_of(4)[0] == EPERM, "write zeroes on ro")
    check(c.read_simple(0, 64 * KiB) == before, "read-only export changed")
    c.disc()
    c.expect_eof("DISC")


@case("transmission: unknown commands and flags -> EINVAL, in sync")
def _():
    for structured in (False, True):
        c = Client().go("rw", structured=structured)
        for i, (t, flags) in enumerate([(8, 0), (9, 0), (42, 0), (0xFFFF, 0), (CMD_READ, F_NO_HOLE),
                                        (CMD_READ, 1 << 15), (CMD_FLUSH, F_REQ_ONE), (CMD_TRIM, F_FAST_ZERO),
                                        (CMD_BS, 0), (CMD_READ, F_PAYLOAD_LEN)]):
            c.request(t, 0, 4096, flags=flags, cookie=10 + i)
            e, _ = c.error_of(10 + i)
            check(e == EINVAL, "structured=%s cmd %d flags %x: error %d" % (structured, t, flags, e))
        check(len(c.read_simple(0, 4096)) == 4096, "read after unknown commands")
        c.disc()
        c.expect_eof("DISC")
    c = Client().go("rw", extended=True)
    # With PAYLOAD_LEN the length field is the payload's length.
    c.request(CMD_BS, 0, 12, flags=F_PAYLOAD_LEN, cookie=1, payload=b"\0" * 12)
    check(c.error_of(1)[0] == EINVAL, "block status with a payload (not offered)")
    c.request(CMD_READ, 0, 100, flags=F_PAYLOAD_LEN, cookie=2, payload=b"p" * 100)
    check(c.error_of(2)[0] == EINVAL, "read with a payload")
    c.request(CMD_READ, 0, 1 << 40, cookie=3)
    check(c.error_of(3)[0] in (EINVAL, EOVERFLOW), "extended read of 1 TiB")
    check(len(c.read_simple(0, 4096, cookie=4)) == 4096, "extended read after errors")
    c.disc()
    c.expect_eof("DISC")


@case("transmission: bad request magic -> disconnect")
def _():
    c = Client().go("rw")
    c.send(struct.pack(">IHHQQI", 0xDEADBEEF, 0, CMD_READ, 1, 0, 4096))
    check(c.expect_eof("bad request magic") == b"", "server replied to a bad magic")
    c = Client().go("rw", extended=True)
    c.send(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, 1, 0, 4096) + b"\0" * 4)  # compact magic
    check(c.expect_eof("compact request on an extended session") == b"", "server replied")


@case("transmission: nothing after NBD_CMD_DISC is answered")
def _():
    c = Client().go("rw")
    # One send, so the requests after DISC are on the wire before the server
    # closes; a server that closes first may still make the send fail.
    try:
        c.send(c.encode(CMD_READ, 0, 4096, cookie=1) + c.encode(CMD_DISC, cookie=2) +
               c.encode(CMD_READ, 0, 4096, cookie=3) +
               c.encode(CMD_WRITE, 0, 4096, cookie=4, payload=b"z" * 4096))
    except (BrokenPipeError, ConnectionResetError):
        pass
    e, _ = c.error_of(1)
    check(e == 0, "read before DISC")
    c.recv_exact(4096)
    check(c.expect_eof("after DISC") == b"", "server answered requests sent after DISC")
    with open(FILE, "rb") as f:
        check(f.read(4096) != b"z" * 4096, "a write sent after DISC was executed")


@case("transmission: client vanishes in the middle of a WRITE payload")
def _():
    off = 30 * MiB
    with open(FILE, "rb") as f:
        f.seek(off)
        before = f.read(MiB)
    for reset in (False, True):
        c = Client().go("rw")
        c.request(CMD_WRITE, off, MiB, cookie=1)
        c.send(b"\x5a" * (300 * KiB))
        c.close(reset=reset)
    time.sleep(0.2)
    with open(FILE, "rb") as f:
        f.seek(off)
        check(f.read(MiB) == before, "a half-received write reached the file")


@case("transmission: client vanishes with hundreds of requests in flight")
def _():
    base = connections("rw")
    for reset in (False, True):
        c = Client().go("rw")
        for i in range(400):
            c.request(CMD_READ, (i % 64) * MiB // 2, 256 * KiB, cookie=i)
        for i in range(100):
            c.request(CMD_WRITE, 40 * MiB + i * 4096, 4096, cookie=1000 + i, payload=b"\x11" * 4096)
        c.request(CMD_FLUSH, cookie=5000)
        c.close(reset=reset)
    deadline = time.monotonic() + 10
    while connections("rw") > base and time.monotonic() < deadline:
        time.sleep(0.05)
    check(connections("rw") == base, "connections left behind: %d, expected %d" % (connections("rw"), base))


@case("transmission: client stops sending (half close) with requests in flight: they are answered")
def _():
    c = Client().go("rw")
    for i in range(32):
        c.request(CMD_READ, i * 64 * KiB, 64 * KiB, cookie=i)
    c.s.shutdown(socket.SHUT_WR)
    got = set()
    for _ in range(32):
        kind, err, cookie, _, _ = c.reply()
        check(err == 0, "read %d failed after half close: %d" % (cookie, err))
        c.recv_exact(64 * KiB)
        got.add(cookie)
    check(got == set(range(32)), "missing replies after half close")
    c.expect_eof("half-closed client")


@case("transmission: 120 large reads, then the client stops reading for a second: replies arrive intact")
def _():
    # The daemon answers big reads of a file in memory with zero-copy
    # (spliced) replies; a client that does not read leaves them, and the
    # ordinary replies behind them, waiting for room in the socket. Simple
    # and structured replies; sizes off the page size; data checked.
    def spliced():
        r = ctl({"cmd": "stats", "id": "rw"})
        check(r.get("ok"), "stats: %r" % r)
        return r["exports"][0]["stats"]["spliced_reads"]
    rng = random.Random(7)
    reqs = {}
    for cookie in range(1, 121):
        n = min(MAXB, rng.choice((64 * KiB, 256 * KiB, MiB, 3 * MiB)) + rng.choice((0, 512, 4096 + 7)))
        reqs[cookie] = (rng.randrange(0, 48 * MiB - n), n)
    with open(FILE, "rb") as f:
        image = f.read(48 * MiB)
    before = spliced()
    for structured in (False, True):
        c = Client().go("rw", structured=structured)
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        for cookie, (off, n) in reqs.items():
            c.request(CMD_READ, off, n, cookie=cookie)
        time.sleep(1.0)
        got, done = {}, set()
        while len(done) < len(reqs):
            kind, err, cookie, payload, flags = c.reply()
            check(cookie in reqs and cookie not in done, "reply for unexpected cookie %d" % cookie)
            check(err in (None, 0), "read %d failed: %d" % (cookie, err or 0))
            off, n = reqs[cookie]
            if kind == "simple":
                got[cookie] = c.recv_exact(n)
                done.add(cookie)
                continue
            pieces = got.setdefault(cookie, {})
            if kind == 1:
                pieces[struct.unpack(">Q", payload[:8])[0]] = payload[8:]
            elif kind == 2:
                o, ln = struct.unpack(">QI", payload[:12])
                pieces[o] = bytes(ln)
            if flags & 1:
                got[cookie] = b"".join(pieces[k] for k in sorted(pieces))
                done.add(cookie)
        for cookie, (off, n) in reqs.items():
            check(got[cookie] == image[off:off + n],
                  "read %d of %d bytes at %d (%s replies) came back wrong" %
                  (cookie, n, off, "structured" if structured else "simple"))
        c.disc()
        c.close()
    check(spliced() > before, "no read took the zero-copy path (stats spliced_reads did not move)")


@case("control: remove-export while its clients never read their replies returns after the drain timeout")
def _():
    # One client fills its socket with zero-copy (spliced) 1 MiB replies,
    # another with ordinary 4 KiB ones; neither reads. Removing the export
    # lets them send for the drain timeout, then cuts them off: the control
    # socket answers, the clients see the connection end, the rest serves on.
    r = ctl({"cmd": "add-export", "spec": "nbd,blockdev=disk0,name=stuck,id=stuck,socket=%s" % SOCK})
    check(r.get("ok"), "add-export: %r" % r)
    stuck = []
    for size, count in ((MiB, 200), (4 * KiB, 3000)):
        c = Client().go("stuck")
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        for cookie in range(count):
            c.request(CMD_READ, (cookie * size) % (48 * MiB), size, cookie=cookie)
        stuck.append(c)
    time.sleep(0.5)
    t = time.monotonic()
    r = ctl({"cmd": "remove-export", "id": "stuck"})
    took = time.monotonic() - t
    check(r.get("ok"), "remove-export: %r" % r)
    check(DRAIN - 0.5 <= took <= DRAIN + 5,
          "remove-export took %.1f s with a drain timeout of %.1f s" % (took, DRAIN))
    ids = [e["id"] for e in ctl({"cmd": "list-exports"})["exports"]]
    check("stuck" not in ids, "the removed export is still listed: %r" % ids)
    for c in stuck:
        c.s.settimeout(10)
        try:
            while c.s.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass
        c.close()


@case("control: a client that never reads its replies stalls no one and is dropped past 4 MiB of them")
def _():
    # The control socket runs on the daemon's main thread, with the signals.
    # A client that sends requests and never reads the replies must not
    # block it (other control clients answered at once) nor make it queue
    # replies without end (dropped once 4 MiB wait).
    line = b'{"cmd": "stats"}\n'
    reply_len = len(json.dumps(ctl({"cmd": "stats"}))) + 1
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.settimeout(5)
    hog.connect(CTL)
    try:
        # About 2 MiB of replies: far more than the socket holds, less than
        # the limit.
        hog.sendall(line * ((2 * MiB) // reply_len))
    except socket.timeout:
        raise Fail("the daemon stopped reading a control client's requests")
    time.sleep(0.3)
    t = time.monotonic()
    r = ctl({"cmd": "list-devices"})
    check(r.get("ok"), "list-devices: %r" % r)
    check(time.monotonic() - t < 2, "a control request took %.1f s while another client did not read" %
          (time.monotonic() - t))
    dropped = False
    try:
        for _ in range(64):
            hog.sendall(line * ((MiB) // reply_len))
    except (BrokenPipeError, ConnectionResetError):
        dropped = True
    except socket.timeout:
        raise Fail("the daemon stopped reading a control client's requests")
    check(dropped, "a control client with 64 MiB of unread replies was not dropped")
    hog.close()
    check(ctl({"cmd": "list-devices"}).get("ok"), "control socket unusable after the hog")


@case("2000 idle connections (some mid-handshake, some negotiated); a new client is served at once")
def _():
    idle = []
    try:
        for i in range(2000):
            c = Client(timeout=30)
            if i % 3 == 1:
                c.greeting()
                c.send(struct.pack(">QI", IHAVEOPT, OPT_GO))  # half an option header
            elif i % 3 == 2:
                if i % 30 == 2:
                    c.go("rw")
                else:
                    c.greeting()
            idle.append(c)
    except OSError as e:
        raise Fail("opening idle connection %d: %s (RLIMIT_NOFILE %r)" % (len(idle), e,
                   __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)))
    log("  %d idle connections open" % len(idle))
    daemon_alive()
    for _ in range(3):
        start = time.monotonic()
        c = Client().go("rw")
        c.read_simple(0, 4096)
        c.disc()
        took = time.monotonic() - start
        check(took < 1.0, "a new client among 2000 idle ones took %.2f s" % took)
    log("  new client served in %.3f s" % took)
    for c in idle:
        c.close()


@case("slowloris: handshake and requests one byte every 10 ms, while others are served")
def _():
    done = {}

    def slow(tag):
        try:
            c = Client(timeout=60)
            g = c.recv_exact(18)
            check(g[:8] == b"NBDMAGIC", "greeting")

            def drip(b):
                for x in b:
                    c.send(bytes([x]))
                    time.sleep(0.01)
            drip(struct.pack(">I", 3))
            drip(struct.pack(">QII", IHAVEOPT, OPT_GO, 8) + struct.pack(">I", 2) + b"rw" + struct.pack(">H", 0))
            rtype, _, _ = c.opt_final(OPT_GO)
            check(rtype == REP_ACK, "slow GO")
            c.extended = False
            drip(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 1, 50 * MiB + tag * 4096, 64)
                 + bytes([tag]) * 64)
            check(c.error_of(1)[0] == 0, "slow write")
            drip(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, 2, 50 * MiB + tag * 4096, 64))
            check(c.error_of(2)[0] == 0, "slow read")
            check(c.recv_exact(64) == bytes([tag]) * 64, "slow read data")
            drip(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_DISC, 3, 0, 0))
            c.expect_eof("slow DISC")
            done[tag] = True
        except Exception as e:
            done[tag] = e

    threads = [threading.Thread(target=slow, args=(t,)) for t in range(1, 5)]
    for t in threads:
        t.start()
    served = 0
    while any(t.is_alive() for t in threads):
        c = Client().go("rw")
        c.read_simple(0, 4096)
        c.disc()
        served += 1
        time.sleep(0.05)
    for t in threads:
        t.join()
    for tag, r in done.items():
        check(r is True, "slowloris client %d: %s" % (tag, r))
    check(len(done) == 4, "slowloris clients finished: %d" % len(done))
    check(served >= 10, "only %d other clients served during the slowloris run" % served)
    log("  %d other clients served meanwhile" % served)


# ------------------------------------------------------------------ main
def main():
    global healthy
    stop = os.path.join(os.path.dirname(FILE), "healthy.stop")
    env = dict(os.environ, H_BASE=str(56 * MiB), H_STOP=stop)
    healthy = subprocess.Popen(["nbdsh", "-u", "nbd+unix:///rw?socket=%s" % SOCK, "-c", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    healthy.stdin.write(HEALTHY_SCRIPT.encode())
    healthy.stdin.close()
    time.sleep(0.5)
    if healthy.poll() is not None:
        raise Fail("healthy client did not start: %s" % healthy_output())
    failed = []
    try:
        only = os.environ.get("NBD_CASES")  # a substring: run only the matching cases
        for name, run in CASES:
            if only and only not in name:
                continue
            try:
                run()
            except Exception as e:  # noqa: BLE001 -- every case failure is reported, then the next runs
                log("FAIL: %s: %s" % (name, e))
                failed.append((name, str(e)))
                daemon_alive()  # a dead daemon ends the run
    finally:
        open(stop, "w").close()
    out = healthy_output()
    print(out.strip())
    check(healthy.returncode == 0, "healthy libnbd client failed (exit %s)" % healthy.returncode)
    if failed:
        for name, why in failed:
            print("[nbd_bad_input] failed: %s: %s" % (name, why))
        raise Fail("%d of %d cases failed" % (len(failed), len(CASES)))
    log("all %d cases passed" % cases)


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print("[nbd_bad_input] FAIL: %s" % e, flush=True)
        sys.exit(1)
