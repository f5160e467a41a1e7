#!/usr/bin/env bash
# Malformed and hostile clients (nbd_bad_input.py, raw sockets) against one
# daemon, with a well-behaved libnbd client doing verified I/O throughout.
# The buffer pool is kept small (4 MiB per reactor) so that the advertised
# maximum request (2 MiB) is below the 32 MiB the server reads past, and so
# that requests in flight run the pool dry.
#
# Usage: nbd_bad_input.sh BUILD_DIR
source "$(dirname "$0")/nbd_lib.sh" "$1"
need_packages libnbd-bin python3-libnbd gnutls-bin jq

# 2000 idle connections on each side, plus everything else.
ulimit -n 16384 || fail "cannot raise RLIMIT_NOFILE to 16384 (hard limit $(ulimit -Hn))"

make_tmpfs "$WORK/shm" 256M
export NBD_SOCK=$WORK/nbd.sock NBD_TLS_SOCK=$WORK/tls.sock NBD_CTL=$WORK/ctl.sock
export NBD_FILE=$WORK/shm/disk.img NBD_SIZE=$((64 << 20)) NBD_DRAIN_TIMEOUT=2
head -c "$NBD_SIZE" /dev/urandom >"$NBD_FILE"
psktool -u alice -p "$WORK/keys.psk" >/dev/null

daemon_start d --threads 2 --pool-size $((4 << 20)) --drain-timeout "$NBD_DRAIN_TIMEOUT" \
  --control "$NBD_CTL" --tls-psk "$WORK/keys.psk" \
  --blockdev "io_uring,id=disk0,path=$NBD_FILE" \
  --export "nbd,blockdev=disk0,name=rw,socket=$NBD_SOCK" \
  --export "nbd,blockdev=disk0,name=ro,id=ro,readonly=on,socket=$NBD_SOCK" \
  --export "nbd,blockdev=disk0,name=secure,tls=require,socket=$NBD_TLS_SOCK"
NBD_MAX_BLOCK=$(nbdinfo --json "nbd+unix:///rw?socket=$NBD_SOCK" | jq '.exports[0].block_size_maximum')
export NBD_MAX_BLOCK NBD_PID=${DAEMON_PID[d]}
[[ $NBD_MAX_BLOCK -lt $((32 << 20)) ]] || fail "maximum block $NBD_MAX_BLOCK: the small pool did not take effect"
log "advertised maximum block: $NBD_MAX_BLOCK"

python3 "$(dirname "$0")/nbd_bad_input.py" || fail "nbd_bad_input.py failed"
daemon_alive d

# SIGTERM with a client that never takes its replies: the drain gives up on
# it after the drain timeout and the daemon exits.
python3 - "$NBD_SOCK" <<'PY' &
import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(sys.argv[1])
s.recv(18, socket.MSG_WAITALL)                      # greeting
s.sendall(struct.pack(">I", 3))                     # fixed newstyle, no zeroes
s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, 2) + b"rw")  # NBD_OPT_EXPORT_NAME
s.recv(10, socket.MSG_WAITALL)                      # size and flags
for cookie in range(200):                           # 1 MiB reads, never read back
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, cookie, cookie << 20, 1 << 20))
time.sleep(120)
PY
STUCK=$!
at_exit kill "$STUCK"
sleep 1
log "SIGTERM with a client that does not read its replies (drain timeout $NBD_DRAIN_TIMEOUT s)"
daemon_stop d $((NBD_DRAIN_TIMEOUT + 8))
kill "$STUCK" 2>/dev/null || true
