# Every NBD command and command flag against `blkstack serve`, through
# libnbd 1.14's Python binding. Run by nbd_commands.sh as
#   nbdsh -n -c - < nbd_commands.py
# with NBD_SOCK (the daemon's Unix socket), NBD_FILE (the file behind the
# "rw" export, on tmpfs) and NBD_SIZE in the environment. Exports there:
#   rw  (NBD_FILE, read-write)   ro (the same file, readonly=on)
#
# Each check raises on a mismatch; nbdsh then exits non-zero.
import errno
import os
import random
import time

import nbd

SOCK = os.environ["NBD_SOCK"]
FILE = os.environ["NBD_FILE"]
SIZE = int(os.environ["NBD_SIZE"])
KiB, MiB = 1024, 1 << 20
rng = random.Random(1234)
t0 = time.monotonic()


def log(msg):
    print("[nbd_commands +%.1fs] %s" % (time.monotonic() - t0, msg), flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def rand(n):
    return rng.randbytes(n)


def connect(name, structured=True, meta=True, strict=True, flags=None):
    h = nbd.NBD()
    h.set_handle_name("t-" + name)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if not structured:
        h.set_request_structured_replies(False)
    if flags is not None:
        h.set_handshake_flags(flags)
    h.connect_uri("nbd+unix:///%s?socket=%s" % (name, SOCK))
    if not strict:
        # Let requests the server must refuse reach the server.
        h.set_strict_mode(0)
    return h


def expect_error(fn, want_errno, what):
    try:
        fn()
    except nbd.Error as e:
        check(e.errnum == want_errno,
              "%s: expected %s, got %s (%s)" % (what, errno.errorcode[want_errno], e.errno, e.string))
        return
    raise AssertionError("%s: succeeded, expected %s" % (what, errno.errorcode[want_errno]))


def file_read(off, n):
    with open(FILE, "rb") as f:
        f.seek(off)
        return f.read(n)


def file_is_hole(off, n):
    """True if [off, off+n) of the backing file is entirely unallocated."""
    fd = os.open(FILE, os.O_RDONLY)
    try:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return True
            raise
        return data >= off + n
    finally:
        os.close(fd)


def file_is_data(off, n):
    fd = os.open(FILE, os.O_RDONLY)
    try:
        if os.lseek(fd, off, os.SEEK_DATA) != off:
            return False
        return os.lseek(fd, off, os.SEEK_HOLE) >= off + n
    finally:
        os.close(fd)


ZERO = bytes(32 * MiB)


def zeroes(n):
    return ZERO[:n]


# ------------------------------------------------------------------ handshake
log("handshake: what the rw and ro exports advertise")
h = connect("rw")
check(h.get_size() == SIZE, "size %d" % h.get_size())
check(h.get_protocol() == "newstyle-fixed", h.get_protocol())
check(h.get_structured_replies_negotiated(), "structured replies not negotiated")
check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not negotiated")
for f in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_cache", "can_df",
          "can_multi_conn"):
    check(getattr(h, f)(), "rw: %s is false" % f)
check(not h.is_read_only(), "rw is read-only")
check(h.get_block_size(nbd.SIZE_MINIMUM) == 1, "min block")
check(h.get_block_size(nbd.SIZE_PREFERRED) == 4096, "preferred block")
MAXB = h.get_block_size(nbd.SIZE_MAXIMUM)
check(MAXB == 32 * MiB, "max block %d" % MAXB)

ro = connect("ro", strict=False)
check(ro.is_read_only(), "ro is not read-only")
for f in ("can_trim", "can_zero", "can_fast_zero"):
    check(not getattr(ro, f)(), "ro: %s is true" % f)
check(ro.can_flush() and ro.can_cache() and ro.can_df(), "ro: flush/cache/df")

log("handshake: option mode (LIST, INFO, LIST_META_CONTEXT, GO)")
o = nbd.NBD()
o.set_opt_mode(True)
o.set_full_info(True)
o.connect_uri("nbd+unix:///rw?socket=%s" % SOCK)
names = []
check(o.opt_list(lambda name, desc: names.append((name, desc))) == 2, "opt_list count")
check(sorted(names) == [("ro", "read-only view"), ("rw", "")], "opt_list: %r" % names)
o.set_export_name("ro")
o.opt_info()
check(o.is_read_only() and o.get_size() == SIZE, "opt_info ro")
check(o.get_export_description() == "read-only view", "description")
check(o.get_canonical_export_name() == "ro", "canonical name %r" % o.get_canonical_export_name())
o.set_export_name("nope")
expect_error(o.opt_info, errno.ENOENT, "opt_info of an unknown export")
o.set_export_name("rw")
ctxs = []
n = o.opt_list_meta_context(lambda name: ctxs.append(name))
check(n == 1 and ctxs == ["base:allocation"], "list meta context: %r" % ctxs)
o.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
o.opt_go()
check(not o.is_read_only() and o.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "opt_go rw")
check(o.pread(512, 0) == file_read(0, 512), "read after opt_go")
o.shutdown()

log("handshake: oldstyle-free variants (no NO_ZEROES; not fixed: NBD_OPT_EXPORT_NAME)")
for flags in (nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE, 0):
    v = connect("rw", meta=False, structured=False, flags=flags)
    check(v.get_size() == SIZE, "size with handshake flags %d" % flags)
    blob = rand(4096)
    v.pwrite(blob, 5 * MiB + 123)
    check(v.pread(4096, 5 * MiB + 123) == blob, "read back with handshake flags %d" % flags)
    v.shutdown()

# ------------------------------------------------------------------ WRITE / READ
log("WRITE and READ, with and without FUA, aligned and not")
for off, n, flags in ((0, 4096, 0), (12345, 777, 0), (1 * MiB, 1 * MiB, nbd.CMD_FLAG_FUA),
                      (SIZE - 1000, 1000, nbd.CMD_FLAG_FUA), (3 * MiB + 1, 1, 0), (4 * MiB, 32 * MiB, 0)):
    blob = rand(n)
    h.pwrite(blob, off, flags)
    check(h.pread(n, off) == blob, "read back %d@%d" % (n, off))
    check(file_read(off, n) == blob, "file content %d@%d" % (n, off))
    check(ro.pread(n, off) == blob, "ro view %d@%d" % (n, off))
# Reads with DF at every size, and plain reads across the end of the data.
check(h.pread_structured(1, SIZE - 1, lambda *a: 0, nbd.CMD_FLAG_DF) == file_read(SIZE - 1, 1), "last byte")
check(h.pread(MAXB, SIZE - MAXB) == file_read(SIZE - MAXB, MAXB), "largest read at the end")

log("FLUSH")
h.flush()
ro.flush()

# ------------------------------------------------------------------ holes and structured reads
log("structured READ: OFFSET_HOLE chunks over a hole, one chunk with DF")
R = 40 * MiB
h.zero(256 * KiB, R)  # punches a hole on tmpfs
a, b = rand(64 * KiB), rand(64 * KiB)
h.pwrite(a, R)
h.pwrite(b, R + 192 * KiB)
check(file_is_hole(R + 64 * KiB, 128 * KiB) and file_is_data(R, 64 * KiB), "backing file layout")
expected = a + zeroes(128 * KiB) + b

chunks = []


def on_chunk(buf, offset, status, err):
    chunks.append((offset, len(buf), status))
    if status == nbd.READ_HOLE:
        check(buf == zeroes(len(buf)), "hole chunk is not zeroes")
    return 0


got = h.pread_structured(256 * KiB, R, on_chunk)
check(got == expected, "structured read content")
check(chunks == [(R, 64 * KiB, nbd.READ_DATA), (R + 64 * KiB, 128 * KiB, nbd.READ_HOLE),
                 (R + 192 * KiB, 64 * KiB, nbd.READ_DATA)], "chunks: %r" % chunks)
chunks.clear()
got = h.pread_structured(256 * KiB, R, on_chunk, nbd.CMD_FLAG_DF)
check(got == expected, "DF read content")
check(chunks == [(R, 256 * KiB, nbd.READ_DATA)], "DF chunks: %r" % chunks)
chunks.clear()
got = h.pread_structured(128 * KiB, R + 64 * KiB, on_chunk)
check(got == zeroes(128 * KiB) and chunks == [(R + 64 * KiB, 128 * KiB, nbd.READ_HOLE)],
      "all-hole read: %r" % chunks)
# 512 alternating extents in one read: the chunks must still tile the
# request exactly, and the data must be right.
S = 48 * MiB
h.zero(2 * MiB, S)
pieces = {}
for i in range(0, 512, 2):  # 4 KiB data, 4 KiB hole, 256 times
    pieces[i] = rand(4096)
    h.pwrite(pieces[i], S + i * 4096)
model = bytearray(2 * MiB)
for i, p in pieces.items():
    model[i * 4096:i * 4096 + 4096] = p
chunks.clear()
got = h.pread_structured(2 * MiB, S, on_chunk)
check(got == bytes(model), "read over 512 extents")
pos = S
for off, n, st in sorted(chunks):
    check(off == pos and n > 0 and st in (nbd.READ_DATA, nbd.READ_HOLE), "chunks do not tile: %r" % chunks)
    pos += n
check(pos == S + 2 * MiB, "chunks cover %d bytes" % (pos - S))
check(any(st == nbd.READ_HOLE for _, _, st in chunks), "no hole chunk reported")
# Without structured replies the same read is one simple reply.
s = connect("rw", structured=False, meta=False)
check(not s.get_structured_replies_negotiated() and not s.can_df(), "simple replies session")
check(s.pread(2 * MiB, S) == bytes(model), "simple-reply read over holes")

# ------------------------------------------------------------------ BLOCK_STATUS
log("BLOCK_STATUS base:allocation, with and without REQ_ONE")
seen = []


def on_extents(ctx, offset, entries, err):
    check(ctx == "base:allocation", "context %s" % ctx)
    seen.append((offset, list(entries)))
    return 0


h.block_status(256 * KiB, R, on_extents)
check(seen == [(R, [64 * KiB, 0, 128 * KiB, 3, 64 * KiB, 0])], "extents: %r" % seen)
seen.clear()
h.block_status(256 * KiB, R, on_extents, nbd.CMD_FLAG_REQ_ONE)
check(seen == [(R, [64 * KiB, 0])], "REQ_ONE extents: %r" % seen)
seen.clear()
h.block_status(64 * KiB, R + 96 * KiB, on_extents, nbd.CMD_FLAG_REQ_ONE)
check(seen == [(R + 96 * KiB, [64 * KiB, 3])], "REQ_ONE inside a hole: %r" % seen)
seen.clear()
h.block_status(2 * MiB, S, on_extents)
ents = seen[0][1]
check(sum(ents[0::2]) == 2 * MiB, "extents over the alternating area sum to %d" % sum(ents[0::2]))
check(ents[0:4] == [4096, 0, 4096, 3], "alternating extents: %r" % ents[0:8])
seen.clear()
ro.block_status(SIZE, 0, on_extents)
check(sum(seen[0][1][0::2]) <= SIZE and seen[0][1][0] > 0, "ro whole-disk block status")

# ------------------------------------------------------------------ TRIM
log("TRIM, with and without FUA")
T = 20 * MiB
for flags in (0, nbd.CMD_FLAG_FUA):
    h.pwrite(rand(1 * MiB), T)
    check(file_is_data(T, 1 * MiB), "trim: not data before")
    h.trim(512 * KiB, T + 256 * KiB, flags)
    check(file_is_hole(T + 256 * KiB, 512 * KiB), "trim did not punch a hole (flags %d)" % flags)
    check(h.pread(512 * KiB, T + 256 * KiB) == zeroes(512 * KiB), "trimmed range reads as zeroes")
    check(file_is_data(T, 256 * KiB) and file_is_data(T + 768 * KiB, 256 * KiB), "trim went too far")
# Unaligned trims are advisory: whatever they do, reads stay consistent.
blob = rand(64 * KiB)
h.pwrite(blob, T)
h.trim(1000, T + 100)
got = h.pread(64 * KiB, T)
check(got[:100] == blob[:100] and got[1100:] == blob[1100:], "unaligned trim touched bytes outside its range")
check(got[100:1100] in (blob[100:1100], zeroes(1000)), "unaligned trim left garbage")

# ------------------------------------------------------------------ WRITE_ZEROES
log("WRITE_ZEROES: plain, FUA, NO_HOLE, FAST_ZERO, FAST_ZERO|NO_HOLE on tmpfs")
Z = 24 * MiB
pattern = rand(1 * MiB)
h.pwrite(pattern, Z)
# tmpfs cannot zero in place without writing (no FALLOC_FL_ZERO_RANGE), so a
# fast zero that must not punch a hole has to fail at once, changing nothing.
expect_error(lambda: h.zero(1 * MiB, Z, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE), errno.ENOTSUP,
             "FAST_ZERO|NO_HOLE on tmpfs")
check(h.pread(1 * MiB, Z) == pattern and file_read(Z, 1 * MiB) == pattern, "failed fast zero changed data")
h.zero(1 * MiB, Z, nbd.CMD_FLAG_FAST_ZERO)
check(h.pread(1 * MiB, Z) == zeroes(1 * MiB) and file_is_hole(Z, 1 * MiB), "FAST_ZERO: zeroes and a hole")
h.pwrite(pattern, Z)
h.zero(1 * MiB, Z, nbd.CMD_FLAG_NO_HOLE)
check(h.pread(1 * MiB, Z) == zeroes(1 * MiB), "NO_HOLE: zeroes")
check(file_is_data(Z, 1 * MiB), "NO_HOLE left a hole in the file")
h.pwrite(pattern, Z)
h.zero(1 * MiB, Z, nbd.CMD_FLAG_FUA)
check(h.pread(1 * MiB, Z) == zeroes(1 * MiB) and file_is_hole(Z, 1 * MiB), "plain zero: zeroes and a hole")
h.pwrite(pattern, Z)
h.zero(1 * MiB, Z, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
check(file_read(Z, 1 * MiB) == zeroes(1 * MiB), "NO_HOLE|FUA")
# Odd sizes and offsets, and a zero range bigger than the largest write.
h.pwrite(pattern, Z)
h.zero(777, Z + 1000)
check(h.pread(1 * MiB, Z) == pattern[:1000] + zeroes(777) + pattern[1777:], "unaligned zero")
h.pwrite(rand(MAXB), 88 * MiB)
h.zero(40 * MiB, 80 * MiB)  # more than the largest write
check(h.pread(MAXB, 80 * MiB) == zeroes(MAXB) and h.pread(8 * MiB, 112 * MiB) == zeroes(8 * MiB), "40 MiB zero")

# ------------------------------------------------------------------ CACHE
log("CACHE")
h.cache(4096, 0)
h.cache(5 * MiB + 17, 3)  # several 1 MiB prefetch pieces
h.cache(SIZE, 0)
ro.cache(1 * MiB, 0)

# ------------------------------------------------------------------ errors
log("errors: beyond the end, oversized, zero length, read-only, bad flags")
e = connect("rw", strict=False)
expect_error(lambda: e.pread(512, SIZE - 256), errno.EINVAL, "read across the end")
expect_error(lambda: e.pread(1, SIZE), errno.EINVAL, "read at the end")
expect_error(lambda: e.pread(512, 1 << 62), errno.EINVAL, "read far beyond the end")
# The spec asks for ENOSPC on writes past the end (EINVAL for reads/trims).
expect_error(lambda: e.pwrite(b"x" * 512, SIZE - 256), errno.ENOSPC, "write across the end")
expect_error(lambda: e.zero(4096, SIZE), errno.ENOSPC, "write zeroes beyond the end")
expect_error(lambda: e.trim(4096, SIZE), errno.EINVAL, "trim beyond the end")
expect_error(lambda: e.cache(4096, SIZE), errno.EINVAL, "cache beyond the end")
expect_error(lambda: e.block_status(4096, SIZE, on_extents), errno.EINVAL, "block status beyond the end")
expect_error(lambda: e.pread(MAXB + 4096, 0), errno.EOVERFLOW, "read over the maximum block size")
expect_error(lambda: e.pread(0, 0), errno.EINVAL, "zero-length read")
expect_error(lambda: e.pread(512, 0, nbd.CMD_FLAG_NO_HOLE), errno.EINVAL, "read with a write-zeroes flag")
expect_error(lambda: e.pread(512, 0, 1 << 12), errno.EINVAL, "read with an unknown flag")
expect_error(lambda: e.trim(512, 0, nbd.CMD_FLAG_FAST_ZERO), errno.EINVAL, "trim with FAST_ZERO")
check(e.pread(4096, 0) == file_read(0, 4096), "connection usable after errors")
se = connect("rw", strict=False, structured=False, meta=False)
expect_error(lambda: se.pread(512, SIZE - 256), errno.EINVAL, "simple reply: read across the end")
expect_error(lambda: se.pread(MAXB + 4096, 0), errno.EINVAL, "simple reply: oversized read")
expect_error(lambda: se.block_status(4096, 0, on_extents), errno.EINVAL, "block status not negotiated")
check(se.pread(4096, 0) == file_read(0, 4096), "simple-reply connection usable after errors")
se.shutdown()

before = file_read(0, 8192)
expect_error(lambda: ro.pwrite(b"y" * 4096, 0), errno.EPERM, "write to a read-only export")
expect_error(lambda: ro.pwrite(b"y" * 4096, 0, nbd.CMD_FLAG_FUA), errno.EPERM, "FUA write to read-only")
expect_error(lambda: ro.trim(4096, 0), errno.EPERM, "trim on a read-only export")
expect_error(lambda: ro.zero(4096, 0), errno.EPERM, "write zeroes on a read-only export")
check(file_read(0, 8192) == before and ro.pread(8192, 0) == before, "read-only export changed data")

# ------------------------------------------------------------------ many in flight
log("64 writes, then 64 reads, in flight at once")
BASE = 8 * MiB
blocks = [rand(64 * KiB) for _ in range(64)]
done_order = []


def completion(tag):
    def cb(err):
        check(err.value == 0, "request %r failed: %d" % (tag, err.value))
        done_order.append(tag)
        return 1
    return cb


for i, blk in enumerate(blocks):
    h.aio_pwrite(nbd.Buffer.from_bytearray(blk), BASE + i * 64 * KiB, completion(("w", i)),
                 nbd.CMD_FLAG_FUA if i % 7 == 0 else 0)
check(h.aio_in_flight() == 64, "in flight after queueing writes: %d" % h.aio_in_flight())
while h.aio_in_flight() > 0:
    h.poll(-1)
check(sorted(done_order) == [("w", i) for i in range(64)], "writes completed: %d" % len(done_order))
bufs = []
done_order.clear()
for i in reversed(range(64)):
    buf = nbd.Buffer(64 * KiB)
    bufs.append((i, buf))
    h.aio_pread(buf, BASE + i * 64 * KiB, completion(("r", i)))
while h.aio_in_flight() > 0:
    h.poll(-1)
check(len(done_order) == 64, "reads completed: %d" % len(done_order))
for i, buf in bufs:
    check(bytes(buf.to_bytearray()) == blocks[i], "aio read %d content" % i)

log("mixed big reads and small writes in flight: replies may overtake each other")
done_order.clear()
big = []
small = {}
for i in range(32):
    buf = nbd.Buffer(4 * MiB)
    big.append(buf)
    h.aio_pread(buf, 28 * MiB, completion(("R", i)))
    blk = rand(4096)
    small[i] = blk
    h.aio_pwrite(nbd.Buffer.from_bytearray(blk), 2 * MiB + i * 4096, completion(("W", i)))
h.aio_flush(completion(("F", 0)))
check(h.aio_in_flight() == 65, "in flight: %d" % h.aio_in_flight())
while h.aio_in_flight() > 0:
    h.poll(-1)
check(len(done_order) == 65, "mixed completions: %d" % len(done_order))
issue_order = [t for i in range(32) for t in (("R", i), ("W", i))] + [("F", 0)]
log("  completion order differs from issue order: %s" % (done_order != issue_order))
ref = file_read(28 * MiB, 4 * MiB)
for buf in big:
    check(bytes(buf.to_bytearray()) == ref, "big read content")
for i, blk in small.items():
    check(h.pread(4096, 2 * MiB + i * 4096) == blk, "small write %d" % i)

log("eight 32 MiB writes and reads in flight (more than the buffer pool holds)")
done_order.clear()
huge = [rand(MAXB) for _ in range(2)]
for i in range(8):
    h.aio_pwrite(nbd.Buffer.from_bytearray(huge[i % 2]), (i % 2) * MAXB, completion(("HW", i)))
while h.aio_in_flight() > 0:
    h.poll(-1)
bufs = [nbd.Buffer(MAXB) for _ in range(8)]
for i, buf in enumerate(bufs):
    h.aio_pread(buf, (i % 2) * MAXB, completion(("HR", i)))
while h.aio_in_flight() > 0:
    h.poll(-1)
check(len(done_order) == 16, "huge completions: %d" % len(done_order))
for i, buf in enumerate(bufs):
    check(bytes(buf.to_bytearray()) == huge[i % 2], "huge read %d" % i)

log("multi-conn: a flushed write on one connection is seen on another")
h2 = connect("rw")
blob = rand(128 * KiB)
h.pwrite(blob, 33 * MiB)
h.flush()
check(h2.pread(128 * KiB, 33 * MiB) == blob, "second connection")
h2.shutdown()

# ------------------------------------------------------------------ DISC
log("DISC: in-flight requests are answered before the server closes")
d = connect("rw")
blocks = [rand(32 * KiB) for _ in range(16)]
done_order.clear()
for i, blk in enumerate(blocks):
    d.aio_pwrite(nbd.Buffer.from_bytearray(blk), 30 * MiB + i * 32 * KiB, completion(("D", i)))
d.aio_disconnect()
while not d.aio_is_closed() and not d.aio_is_dead():
    d.poll(-1)
check(d.aio_is_closed(), "connection should close cleanly after DISC: %s" % d.connection_state())
check(len(done_order) == 16, "requests before DISC answered: %d of 16" % len(done_order))
for i, blk in enumerate(blocks):
    check(h.pread(32 * KiB, 30 * MiB + i * 32 * KiB) == blk, "write %d before DISC landed" % i)
try:
    d.pread(512, 0)
    raise AssertionError("a read after disconnecting succeeded")
except nbd.Error:
    pass

for x in (h, ro, e, s):
    x.shutdown()
    try:
        x.pread(512, 0)
        raise AssertionError("a read after shutdown succeeded")
    except nbd.Error:
        pass

log("a new connection after all that")
n = connect("rw")
check(n.pread(4096, 0) == file_read(0, 4096), "fresh connection")
n.shutdown()
log("all commands passed")
