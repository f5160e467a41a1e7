#!/usr/bin/env bash
# NBD over TLS: X.509 certificates made with certtool (CA, server cert for
# localhost, client certs) and pre-shared keys made with psktool, against
# libnbd's tools (nbds+unix:// and nbds:// URIs) and QEMU's tls-creds-x509 /
# tls-creds-psk objects; tls=require refuses plaintext, tls=on takes both,
# --tls-verify-peer demands a client certificate from the right CA.
#
# Usage: nbd_tls.sh BUILD_DIR
source "$(dirname "$0")/nbd_lib.sh" "$1"
need_packages gnutls-bin libnbd-bin qemu-utils jq

PKI=$WORK/pki
mkdir -p "$PKI"/{ca,ca2,server,client,client-nocert,client-wrongca,client-otherca,psk,psk-bob,psk-badkey}

# ---------------------------------------------------------------- certificates
step "certificates: CA, server (CN/dNSName localhost), clients; a second CA"
cert() { certtool "$@" >>"$PKI/certtool.log" 2>&1 || { tail "$PKI/certtool.log" >&2; fail "certtool $*"; }; }
make_ca() {  # DIR CN
  cert --generate-privkey --outfile "$1/ca-key.pem"
  printf 'cn = %s\nca\ncert_signing_key\nexpiration_days = 3\n' "$2" >"$1/ca.info"
  cert --generate-self-signed --load-privkey "$1/ca-key.pem" --template "$1/ca.info" --outfile "$1/ca-cert.pem"
}
make_cert() {  # CA_DIR KEY_OUT CERT_OUT TEMPLATE_TEXT
  cert --generate-privkey --outfile "$2"
  printf '%s\nexpiration_days = 3\n' "$4" >"$2.info"
  cert --generate-certificate --load-ca-certificate "$1/ca-cert.pem" --load-ca-privkey "$1/ca-key.pem" \
    --load-privkey "$2" --template "$2.info" --outfile "$3"
}
make_ca "$PKI/ca" "blkstack test CA"
make_ca "$PKI/ca2" "some other CA"
make_cert "$PKI/ca" "$PKI/server/server-key.pem" "$PKI/server/server-cert.pem" \
  "$(printf 'organization = blkstack\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key')"
cp "$PKI/ca/ca-cert.pem" "$PKI/server/"
# Client directories, laid out as libnbd (tls-certificates=) and QEMU
# (tls-creds-x509 dir=, endpoint=client) both expect them.
make_cert "$PKI/ca" "$PKI/client/client-key.pem" "$PKI/client/client-cert.pem" \
  "$(printf 'cn = client\ntls_www_client\nencryption_key\nsigning_key')"
cp "$PKI/ca/ca-cert.pem" "$PKI/client/"
cp "$PKI/ca/ca-cert.pem" "$PKI/client-nocert/"
cp "$PKI/ca2/ca-cert.pem" "$PKI/client-wrongca/"  # does not trust the server
make_cert "$PKI/ca2" "$PKI/client-otherca/client-key.pem" "$PKI/client-otherca/client-cert.pem" \
  "$(printf 'cn = intruder\ntls_www_client\nencryption_key\nsigning_key')"
cp "$PKI/ca/ca-cert.pem" "$PKI/client-otherca/"  # trusts the server, but its cert is from ca2
certtool --verify --load-ca-certificate "$PKI/ca/ca-cert.pem" --infile "$PKI/server/server-cert.pem" \
  >/dev/null 2>&1 || fail "the server certificate does not verify against its CA"

step "pre-shared keys: psktool"
psktool -u alice -p "$PKI/psk/keys.psk" >/dev/null
psktool -u bob -p "$PKI/psk-bob/keys.psk" >/dev/null
psktool -u alice -p "$PKI/psk-badkey/keys.psk" >/dev/null  # same user, another key
grep -q '^alice:[0-9a-f]\{64\}$' "$PKI/psk/keys.psk" || fail "psktool output: $(cat "$PKI/psk/keys.psk")"

# ---------------------------------------------------------------- daemons
MiB=$((1 << 20))
SIZE=$((48 * MiB))
truncate -s "$SIZE" "$WORK/disk.img"
REQ=$WORK/req.sock ON=$WORK/on.sock OFF=$WORK/off.sock VERIFY=$WORK/verify.sock PSK=$WORK/psk.sock
PORT=$(free_port)  # "localhost": served on 127.0.0.1 and [::1], whichever the client picks
daemon_start x509 --threads 2 --tls-creds "$PKI/server" --blockdev "io_uring,id=disk0,path=$WORK/disk.img" \
  --export "nbd,blockdev=disk0,name=secure,tls=require,socket=$REQ" \
  --export "nbd,blockdev=disk0,name=secure,id=secure-tcp,tls=require,tcp=127.0.0.1:$PORT" \
  --export "nbd,blockdev=disk0,name=secure,id=secure-tcp6,tls=require,tcp=[::1]:$PORT" \
  --export "nbd,blockdev=disk0,name=either,tls=on,socket=$ON" \
  --export "nbd,blockdev=disk0,name=plain,tls=off,socket=$OFF"
daemon_start verify --threads 1 --tls-creds "$PKI/server" --tls-verify-peer \
  --blockdev "io_uring,id=disk0,path=$WORK/disk.img" --export "nbd,blockdev=disk0,name=v,tls=require,socket=$VERIFY"
daemon_start psk --threads 1 --tls-psk "$PKI/psk/keys.psk" \
  --blockdev "io_uring,id=disk0,path=$WORK/disk.img" --export "nbd,blockdev=disk0,name=p,tls=require,socket=$PSK"

tls_info() {  # URI: nbdinfo must succeed and report TLS
  local json
  json=$(nbdinfo --json "$1" 2>"$WORK/nbdinfo.err") || { cat "$WORK/nbdinfo.err" >&2; fail "nbdinfo $1"; }
  jq -e ".TLS == true and .exports[0].\"export-size\" == $SIZE" <<<"$json" >/dev/null || fail "nbdinfo $1: $json"
}
plain_info() {  # URI: nbdinfo must succeed without TLS
  local json
  json=$(nbdinfo --json "$1") || fail "nbdinfo $1"
  jq -e ".TLS == false and .exports[0].\"export-size\" == $SIZE" <<<"$json" >/dev/null || fail "nbdinfo $1: $json"
}

# ---------------------------------------------------------------- X.509, libnbd
step "nbdinfo over TLS (X.509): nbds+unix:// and nbds://localhost"
tls_info "nbds+unix:///secure?socket=$REQ&tls-certificates=$PKI/client"
tls_info "nbds://localhost:$PORT/secure?tls-certificates=$PKI/client"
tls_info "nbds+unix:///secure?socket=$REQ&tls-certificates=$PKI/client-nocert"  # no client cert needed here
nbdinfo --list "nbds+unix:///?socket=$REQ&tls-certificates=$PKI/client" | grep -q 'export="secure"' ||
  fail "nbdinfo --list over TLS"

step "tls=require refuses plaintext clients"
expect_fail nbdinfo "nbd+unix:///secure?socket=$REQ"
expect_fail nbdinfo "nbd://127.0.0.1:$PORT/secure"
expect_fail nbdinfo --list "nbd+unix:///?socket=$REQ"
expect_fail nbdcopy "nbd+unix:///secure?socket=$REQ" "$WORK/never.img"
[[ ! -s $WORK/never.img ]] || fail "data was read without TLS"

# (Over TCP, where the client has a host name to check the certificate for;
# libnbd 1.14 does not verify the server's certificate on Unix sockets.)
step "a client that does not trust the server's CA refuses it"
expect_fail nbdinfo "nbds://localhost:$PORT/secure?tls-certificates=$PKI/client-wrongca"

step "tls=on: plaintext and TLS clients both served"
plain_info "nbd+unix:///either?socket=$ON"
tls_info "nbds+unix:///either?socket=$ON&tls-certificates=$PKI/client"
plain_info "nbd+unix:///plain?socket=$OFF"
# A client that insists on TLS gets refused where TLS is off.
expect_fail nbdinfo "nbds+unix:///plain?socket=$OFF&tls-certificates=$PKI/client"

step "nbdcopy round trips over TLS (Unix socket and TCP, 4 connections)"
random_file "$WORK/src.img" 48
nbdcopy --connections=4 --threads=4 --requests=32 "$WORK/src.img" \
  "nbds+unix:///secure?socket=$REQ&tls-certificates=$PKI/client"
same_content "$WORK/disk.img" "$WORK/src.img"
nbdcopy --connections=4 --threads=4 --requests=32 "nbds://localhost:$PORT/secure?tls-certificates=$PKI/client" \
  "$WORK/out.img"
same_content "$WORK/out.img" "$WORK/src.img"
nbdcopy "nbds+unix:///either?socket=$ON&tls-certificates=$PKI/client" "$WORK/out2.img"
same_content "$WORK/out2.img" "$WORK/src.img"

# ---------------------------------------------------------------- X.509, QEMU
qtls() { printf 'tls-creds-x509,id=tls0,dir=%s,endpoint=client' "$1"; }
step "qemu-img and qemu-io over TLS (tls-creds-x509)"
qemu-img info --object "$(qtls "$PKI/client")" --output=json \
  --image-opts "driver=nbd,server.type=unix,server.path=$REQ,export=secure,tls-creds=tls0,tls-hostname=localhost" >"$WORK/qi.json" ||
  fail "qemu-img info over TLS"
jq -e ".\"virtual-size\" == $SIZE" "$WORK/qi.json" >/dev/null || fail "qemu-img info: $(cat "$WORK/qi.json")"
qemu-io --object "$(qtls "$PKI/client")" \
  --image-opts "driver=nbd,server.type=inet,server.host=localhost,server.port=$PORT,export=secure,tls-creds=tls0,tls-hostname=localhost" \
  -c 'write -P 0x3c 1M 1M' -c 'read -P 0x3c 1M 1M' -c 'write -z 2M 64k' -c 'read -P 0 2M 64k' -c flush \
  >"$WORK/qio.out" 2>&1 || { cat "$WORK/qio.out" >&2; fail "qemu-io over TLS (TCP)"; }
random_file "$WORK/src2.img" 48
qemu-img convert -n --object "$(qtls "$PKI/client")" -f raw "$WORK/src2.img" \
  --target-image-opts "driver=nbd,server.type=unix,server.path=$REQ,export=secure,tls-creds=tls0,tls-hostname=localhost"
same_content "$WORK/disk.img" "$WORK/src2.img"
qemu-img compare --object "$(qtls "$PKI/client")" -f raw "$WORK/src2.img" \
  "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$REQ\"},\"export\":\"secure\",\"tls-creds\":\"tls0\",\"tls-hostname\":\"localhost\"}" \
  >/dev/null || fail "qemu-img compare over TLS"
expect_fail qemu-img info --image-opts "driver=nbd,server.type=unix,server.path=$REQ,export=secure"
expect_fail qemu-img info --object "$(qtls "$PKI/client-wrongca")" \
  --image-opts "driver=nbd,server.type=unix,server.path=$REQ,export=secure,tls-creds=tls0,tls-hostname=localhost"

step "QEMU 10 (trixie) over TLS: extended headers inside TLS"
TRIXIE=$("$SRC/scripts/trixie-root.sh" ensure)
"$SRC/scripts/trixie-root.sh" run --bind "$WORK:$WORK" "$TRIXIE" -- qemu-io --object "$(qtls "$PKI/client")" \
  --image-opts "driver=nbd,server.type=unix,server.path=$REQ,export=secure,tls-creds=tls0,tls-hostname=localhost" \
  -c 'write -P 0x4d 5M 3M' -c 'read -P 0x4d 5M 3M' -c 'write -z 9M 1M' -c 'read -P 0 9M 1M' >"$WORK/qio.out" 2>&1 ||
  { cat "$WORK/qio.out" >&2; fail "QEMU 10 qemu-io over TLS"; }
"$SRC/scripts/trixie-root.sh" run --bind "$WORK:$WORK" "$TRIXIE" -- nbdinfo --json --no-content \
  "nbds+unix:///secure?socket=$REQ&tls-certificates=$PKI/client" >"$WORK/ni.json" ||
  fail "trixie nbdinfo over TLS"
jq -e '.TLS == true and .extended == true' "$WORK/ni.json" >/dev/null ||
  fail "trixie nbdinfo: expected TLS with extended headers: $(cat "$WORK/ni.json")"

# ---------------------------------------------------------------- verify peer
step "--tls-verify-peer: a certificate from the CA is required"
tls_info "nbds+unix:///v?socket=$VERIFY&tls-certificates=$PKI/client"
expect_fail nbdinfo "nbds+unix:///v?socket=$VERIFY&tls-certificates=$PKI/client-nocert"
expect_fail nbdinfo "nbds+unix:///v?socket=$VERIFY&tls-certificates=$PKI/client-otherca"
expect_fail nbdinfo "nbd+unix:///v?socket=$VERIFY"
qemu-io --object "$(qtls "$PKI/client")" \
  --image-opts "driver=nbd,server.type=unix,server.path=$VERIFY,export=v,tls-creds=tls0,tls-hostname=localhost" \
  -c 'read -P 0x4d 5M 3M' >/dev/null || fail "qemu-io with a client certificate (verify-peer)"
expect_fail qemu-io --object "$(qtls "$PKI/client-nocert")" \
  --image-opts "driver=nbd,server.type=unix,server.path=$VERIFY,export=v,tls-creds=tls0,tls-hostname=localhost" -c 'read 0 4k'

# ---------------------------------------------------------------- PSK
# libnbd 1.14 takes the PSK user name from the URI's user part (newer
# versions also accept a tls-username= parameter).
step "PSK: alice's key works, bob and a wrong key for alice do not"
tls_info "nbds+unix://alice@/p?socket=$PSK&tls-psk-file=$PKI/psk/keys.psk"
expect_fail nbdinfo "nbds+unix://bob@/p?socket=$PSK&tls-psk-file=$PKI/psk-bob/keys.psk"
expect_fail nbdinfo "nbds+unix://alice@/p?socket=$PSK&tls-psk-file=$PKI/psk-badkey/keys.psk"
expect_fail nbdinfo "nbd+unix:///p?socket=$PSK"
expect_fail nbdinfo "nbds+unix:///p?socket=$PSK&tls-certificates=$PKI/client"
nbdcopy "$WORK/src.img" "nbds+unix://alice@/p?socket=$PSK&tls-psk-file=$PKI/psk/keys.psk"
same_content "$WORK/disk.img" "$WORK/src.img"
nbdcopy --connections=2 --threads=2 "nbds+unix://alice@/p?socket=$PSK&tls-psk-file=$PKI/psk/keys.psk" \
  "$WORK/out3.img"
same_content "$WORK/out3.img" "$WORK/src.img"
qemu-io --object "tls-creds-psk,id=tls0,dir=$PKI/psk,username=alice,endpoint=client" \
  --image-opts "driver=nbd,server.type=unix,server.path=$PSK,export=p,tls-creds=tls0" \
  -c 'write -P 0x6b 0 1M' -c 'read -P 0x6b 0 1M' >/dev/null || fail "qemu-io over PSK"
expect_fail qemu-io --object "tls-creds-psk,id=tls0,dir=$PKI/psk-badkey,username=alice,endpoint=client" \
  --image-opts "driver=nbd,server.type=unix,server.path=$PSK,export=p,tls-creds=tls0" -c 'read 0 4k'

step "all daemons survived the refused clients"
for d in x509 verify psk; do daemon_alive "$d"; done
tls_info "nbds+unix:///secure?socket=$REQ&tls-certificates=$PKI/client"
for d in x509 verify psk; do daemon_stop "$d"; done
