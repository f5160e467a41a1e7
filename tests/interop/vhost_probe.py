#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""vhost_probe.py SOCK - ask a vhost-user-blk backend what it offers, as a
front-end (QEMU, libblkio) does before it sets up memory and rings, and
print it as JSON:

  GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES (what was
  offered), GET_QUEUE_NUM (if the MQ protocol feature is offered),
  GET_CONFIG (if CONFIG is offered; the virtio-blk config space, decoded).

Written from the vhost-user specification (QEMU docs/interop/vhost-user.rst)
and the virtio-blk config layout (virtio 1.2, 5.2.4). No memory table, no
rings: the backend is left as a front-end that went away would leave it.
"""
import json
import socket
import struct
import sys

GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES = 1, 15, 16
GET_QUEUE_NUM, GET_CONFIG = 17, 24
VERSION, REPLY = 0x1, 0x4

FEATURES = {
    1: "BLK_F_SIZE_MAX", 2: "BLK_F_SEG_MAX", 4: "BLK_F_GEOMETRY", 5: "BLK_F_RO",
    6: "BLK_F_BLK_SIZE", 9: "BLK_F_FLUSH", 10: "BLK_F_TOPOLOGY", 11: "BLK_F_CONFIG_WCE",
    12: "BLK_F_MQ", 13: "BLK_F_DISCARD", 14: "BLK_F_WRITE_ZEROES", 15: "BLK_F_LIFETIME",
    16: "BLK_F_SECURE_ERASE", 17: "BLK_F_ZONED",
    28: "F_INDIRECT_DESC", 29: "F_EVENT_IDX", 30: "VHOST_USER_F_PROTOCOL_FEATURES",
    32: "F_VERSION_1", 33: "F_ACCESS_PLATFORM", 34: "F_RING_PACKED", 35: "F_IN_ORDER",
    36: "F_ORDER_PLATFORM", 37: "F_SR_IOV", 38: "F_NOTIFICATION_DATA",
    24: "F_NOTIFY_ON_EMPTY", 26: "VHOST_F_LOG_ALL", 27: "F_ANY_LAYOUT",
}
PROTOCOL = {
    0: "MQ", 1: "LOG_SHMFD", 2: "RARP", 3: "REPLY_ACK", 4: "NET_MTU",
    5: "BACKEND_REQ", 6: "CROSS_ENDIAN", 7: "CRYPTO_SESSION", 8: "PAGEFAULT",
    9: "CONFIG", 10: "BACKEND_SEND_FD", 11: "HOST_NOTIFIER", 12: "INFLIGHT_SHMFD",
    13: "RESET_DEVICE", 14: "INBAND_NOTIFICATIONS", 15: "CONFIGURE_MEM_SLOTS",
    16: "STATUS", 17: "XEN_MMAP", 18: "SHARED_OBJECT", 19: "DEVICE_STATE",
}


def bits(value, names):
    return [names.get(i, f"bit{i}") for i in range(64) if value >> i & 1]


class Backend:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise SystemExit("vhost_probe: the backend closed the connection")
            buf += chunk
        return buf

    def call(self, req, payload=b"", reply=True):
        self.s.sendall(struct.pack("<III", req, VERSION, len(payload)) + payload)
        if not reply:
            return None
        rreq, flags, size = struct.unpack("<III", self.recv_exact(12))
        if rreq != req or not flags & REPLY:
            raise SystemExit(f"vhost_probe: bad reply header {rreq} {flags:#x} to request {req}")
        return self.recv_exact(size)

    def u64(self, req):
        return struct.unpack("<Q", self.call(req))[0]


def main():
    b = Backend(sys.argv[1])
    out = {}
    feat = b.u64(GET_FEATURES)
    out["features"] = f"{feat:#x}"
    out["feature_names"] = bits(feat, FEATURES)
    proto = 0
    if feat >> 30 & 1:
        proto = b.u64(GET_PROTOCOL_FEATURES)
        out["protocol_features"] = f"{proto:#x}"
        out["protocol_feature_names"] = bits(proto, PROTOCOL)
        b.call(SET_PROTOCOL_FEATURES, struct.pack("<Q", proto), reply=False)
    if proto & 1:
        out["queue_num"] = b.u64(GET_QUEUE_NUM)
    if proto >> 9 & 1:
        size = 60  # up to and including num_queues (+ padding)
        r = b.call(GET_CONFIG, struct.pack("<III", 0, size, 0) + bytes(size))
        off, rsize, _ = struct.unpack("<III", r[:12])
        cfg = r[12:12 + rsize]
        if len(cfg) >= 36:
            capacity, size_max, seg_max = struct.unpack_from("<QII", cfg, 0)
            blk_size, = struct.unpack_from("<I", cfg, 20)
            pbe, align_off, min_io, opt_io = struct.unpack_from("<BBHI", cfg, 24)
            wce, = struct.unpack_from("<B", cfg, 32)
            num_queues, = struct.unpack_from("<H", cfg, 34)
            out["config"] = {
                "capacity_sectors": capacity, "size_max": size_max, "seg_max": seg_max,
                "blk_size": blk_size, "physical_block_exp": pbe,
                "alignment_offset": align_off, "min_io_size": min_io,
                "opt_io_size": opt_io, "wce": wce, "num_queues": num_queues,
            }
            if len(cfg) >= 60:
                mdisc, mdseg, dalign, mwz, mwzseg, wzunmap = struct.unpack_from("<IIIIIB", cfg, 36)
                out["config"].update({
                    "max_discard_sectors": mdisc, "max_discard_seg": mdseg,
                    "discard_sector_alignment": dalign, "max_write_zeroes_sectors": mwz,
                    "max_write_zeroes_seg": mwzseg, "write_zeroes_may_unmap": wzunmap,
                })
        else:
            out["config_raw"] = cfg.hex()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
