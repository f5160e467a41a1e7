#!/usr/bin/env bash
# A throwaway single-node Ceph cluster on loopback, for tests and benchmarks:
# one monitor, one memstore OSD, pool `rbd` (size 1), no authentication
# unless asked for (CEPH_AUTH=cephx).
# Everything lives under DIR; nothing touches /etc/ceph or systemd.
#
#   scripts/ceph-cluster.sh start DIR      # prints DIR/ceph.conf when ready
#   scripts/ceph-cluster.sh stop DIR       # kills the daemons, removes their state
#   scripts/ceph-cluster.sh kill-osd DIR   # SIGKILL the OSD (fault tests)
#   scripts/ceph-cluster.sh start-osd DIR  # start it again, wait until it is up
#   scripts/ceph-cluster.sh status DIR
#
# Clients: CEPH_CONF=DIR/ceph.conf rbd ls, or the rbd driver's conf=DIR/ceph.conf.
# Runs as root. The monitor port is picked free at start (two clusters in two
# DIRs do not collide).
#
# CEPH_AUTH=none (default) or cephx. With cephx every daemon and client.admin
# authenticate with keys from DIR/keyring (named in ceph.conf, so `ceph` and
# `rbd` need nothing more), and start also makes client.blkstack, limited to
# the rbd profile on pool rbd, with its key alone in DIR/blkstack.keyring: a
# user and keyring as a real deployment hands them to a client.
#
# CEPH_OSD_STORE=memstore (default) keeps objects in the OSD's memory: fastest
# start and I/O, but a SIGKILLed OSD loses everything. Fault tests that kill
# the OSD and then check acknowledged data use CEPH_OSD_STORE=bluestore (a
# sparse file under DIR; a few seconds slower to start), which survives it.
set -euo pipefail

cmd=${1:-}
DIR=${2:-}
[[ -n $cmd && -n $DIR ]] || { sed -n '2,13p' "$0" >&2; exit 2; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
CONF=$DIR/ceph.conf
STORE=${CEPH_OSD_STORE:-memstore}
AUTH=${CEPH_AUTH:-none}
[[ $AUTH == none || $AUTH == cephx ]] || { echo "ceph-cluster: CEPH_AUTH must be none or cephx" >&2; exit 2; }
export CEPH_CONF=$CONF

log() { echo "ceph-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_of() { [[ -f $DIR/run/$1.pid ]] && cat "$DIR/run/$1.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }

kill_daemon() {  # NAME SIGNAL
  local p; p=$(pid_of "$1")
  [[ -n $p ]] || return 0
  kill "-$2" "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true
  rm -f "$DIR/run/$1.pid"
}

write_conf() {
  local port=$1 fsid=$2
  cat > "$CONF" <<CONF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$port
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = $AUTH
auth service required = $AUTH
auth client required = $AUTH
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
osd objectstore = $STORE
memstore device bytes = 4294967296
bluestore block size = 10737418240
bluestore block create = true
bluestore fsck on mount = false
bluestore cache size = 268435456
osd memory target = 939524096
ms bind ipv6 = false
ms bind msgr2 = false
run dir = $DIR/run
log file = $DIR/log/\$name.log
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
mon data = $DIR/mon/\$name
osd data = $DIR/osd/\$name
keyring = $DIR/keyring
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
osd max object name len = 460
osd max object namespace len = 64
osd heartbeat grace = 5
# The OSD would place itself in the CRUSH map at boot with monitor commands
# that race its first monitor map (intermittent 'wrong fsid' exits): start
# places it instead, once.
osd crush update on start = false
osd class update on start = false
mon osd down out interval = 0
debug ms = 0
[client]
log file = $DIR/log/client.log
admin socket =
CONF
}

wait_osd_up() {
  local i
  for i in $(seq 300); do
    if ceph osd dump 2>/dev/null | grep -q '^osd.0 up'; then return 0; fi
    alive osd.0 || die "osd.0 died while starting (see $DIR/log/osd.0.log)"
    sleep 0.1
  done
  die "osd.0 did not come up in 30 s (see $DIR/log/osd.0.log)"
}

start_osd() {
  alive osd.0 && return 0
  # A store made once is started again as it is (bluestore keeps what was
  # written; memstore saved it only on a clean stop).
  if [[ ! -f $DIR/osd/osd.0/fsid ]]; then
    rm -rf "$DIR/osd/osd.0"
    mkdir -p "$DIR/osd/osd.0"
    ceph-osd -i 0 --mkfs --osd-uuid "$(cat "$DIR/osd-uuid")" >/dev/null 2>&1 ||
      die "ceph-osd --mkfs failed (see $DIR/log/osd.0.log)"
  fi
  ceph-osd -i 0 2>/dev/null
  wait_osd_up
}

start() {
  # A cluster this script finished starting, still running: use it. Anything
  # else left in DIR (a start that failed half-way, a dead daemon) goes.
  if [[ -f $DIR/ready ]] && alive mon.a && alive osd.0; then
    # (Only if it authenticates as asked.)
    if [[ $AUTH == none && ! -f $DIR/blkstack.keyring || $AUTH == cephx && -f $DIR/blkstack.keyring ]]; then
      log "already running"; echo "$CONF"; return 0
    fi
  fi
  stop
  rm -rf "$DIR"/{mon,osd,run,log}
  mkdir -p "$DIR"/{mon/mon.a,osd,run,log}
  local port fsid
  port=$(free_port)
  fsid=$(uuidgen)
  write_conf "$port" "$fsid"
  # Without auth, the monitor still wants a keyring at mkfs.
  ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
    --cap mgr 'allow *' >/dev/null
  # The monitor imports every key in this keyring at mkfs: the OSD's too,
  # so under cephx it can join without a key of its own to register.
  ceph-authtool "$DIR/keyring" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap osd 'allow *' \
    --cap mgr 'allow profile osd' >/dev/null
  monmaptool --create --clobber --fsid "$fsid" --addv a "[v1:127.0.0.1:$port]" "$DIR/monmap" >/dev/null
  ceph-mon --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring" >/dev/null 2>&1 ||
    die "ceph-mon --mkfs failed"
  ceph-mon -i a 2>/dev/null
  local i
  for i in $(seq 100); do ceph -s --connect-timeout 2 >/dev/null 2>&1 && break; sleep 0.1; done
  ceph -s --connect-timeout 5 >/dev/null || die "monitor did not answer (see $DIR/log/mon.a.log)"
  uuidgen > "$DIR/osd-uuid"
  ceph osd new "$(cat "$DIR/osd-uuid")" 0 >/dev/null
  ceph osd crush add osd.0 1.0 host=localhost root=default >/dev/null 2>&1 || die "crush add failed"
  start_osd
  ceph osd pool create rbd 8 >/dev/null || die "pool create failed"
  rbd pool init rbd || die "rbd pool init failed"
  rm -f "$DIR/blkstack.keyring"
  if [[ $AUTH == cephx ]]; then
    ceph auth get-or-create client.blkstack mon 'profile rbd' osd 'profile rbd pool=rbd' \
      -o "$DIR/blkstack.keyring" || die "could not make client.blkstack"
  fi
  touch "$DIR/ready"
  log "ready: mon 127.0.0.1:$port, conf $CONF"
  echo "$CONF"
}

stop() {
  rm -f "$DIR/ready"
  kill_daemon osd.0 TERM
  kill_daemon mon.a TERM
  rm -rf "$DIR"/{mon,osd,run}
}

case $cmd in
  start) start ;;
  stop) stop ;;
  kill-osd) kill_daemon osd.0 KILL ;;
  start-osd) start_osd ;;
  status) ceph -s ;;
  *) die "unknown command $cmd" ;;
esac
