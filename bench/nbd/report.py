#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Helper for bench/nbd/run.sh: turns one measured point into a JSON line,
and all points of a run into the comparison tables and a results JSON.

  report.py point --server S --transport T --workload W --round R
                  --cpu-before TICKS --cpu-after TICKS --clk-tck HZ
                  (--fio FIO.json | --nbdcopy-bytes B --nbdcopy-ns NS --request-size BYTES)
  report.py report --points POINTS.jsonl --meta META.json [--json OUT.json]

CPU per request is the server process's utime+stime delta (from
/proc/PID/stat, which covers all of its threads, dead ones included)
divided by the requests the client completed in that run.
"""
import argparse
import json
import statistics
import sys

OURS = "blkstack"


def cmd_point(a):
    cpu_s = (a.cpu_after - a.cpu_before) / a.clk_tck
    if a.fio:
        with open(a.fio) as f:
            text = f.read()
        # fio may print warnings before the JSON document.
        doc = json.loads(text[text.index("{"):])
        jobs = doc["jobs"]
        reqs = iops = bw = 0.0
        lat_us = []
        for j in jobs:
            for d in ("read", "write"):
                x = j[d]
                reqs += x["total_ios"]
                iops += x["iops"]
                bw += x["bw_bytes"]
                if x["total_ios"]:
                    lat_us.append(x["clat_ns"]["mean"] / 1000.0 if "clat_ns" in x else 0.0)
                    err = j.get("error", 0)
                    if err:
                        sys.exit(f"fio job reported error {err}")
        elapsed = max(j["job_runtime"] for j in jobs) / 1000.0
        lat = statistics.mean(lat_us) if lat_us else None
    else:
        elapsed = a.nbdcopy_ns / 1e9
        reqs = a.nbdcopy_bytes / a.request_size
        bw = a.nbdcopy_bytes / elapsed
        iops = reqs / elapsed
        lat = None
    if reqs <= 0:
        sys.exit("no requests completed")
    rec = {
        "server": a.server, "transport": a.transport, "workload": a.workload, "round": a.round,
        "requests": int(reqs), "seconds": round(elapsed, 3), "iops": round(iops, 1),
        "mb_s": round(bw / 1e6, 2), "server_cpu_s": round(cpu_s, 3),
        "cpu_us_per_req": round(cpu_s * 1e6 / reqs, 3), "clat_us_mean": round(lat, 2) if lat else None,
    }
    print(json.dumps(rec))
    print(f"  {a.server:<13} {a.transport:<4} {a.workload:<17} {iops:>10,.0f} IOPS {bw / 1e6:>9,.1f} MB/s "
          f"{rec['cpu_us_per_req']:>7.2f} us CPU/req", file=sys.stderr)


def med(xs):
    return statistics.median(xs) if xs else None


def spread(xs):
    # (max - min) / median, in percent: how much the rounds disagree.
    if len(xs) < 2:
        return None
    m = statistics.median(xs)
    return 100.0 * (max(xs) - min(xs)) / m if m else None


def fmt(x, nd=1):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def cmd_report(a):
    with open(a.meta) as f:
        meta = json.load(f)
    points = []
    with open(a.points) as f:
        for line in f:
            line = line.strip()
            if line:
                points.append(json.loads(line))
    servers = meta["servers"]
    peers = [s for s in servers if s != OURS]
    results = []
    out = []
    w = out.append
    w(f"NBD server benchmark: {meta['rounds']} round(s) x {meta['runtime_s']} s per point, "
      f"jobs={meta['jobs']}, image {meta['image_mib']} MiB on tmpfs, medians over rounds")
    w(f"servers: " + "; ".join(f"{s} = {meta['server_desc'].get(s, s)}" for s in servers))
    w("CPU = server utime+stime per request (µs); 'spread' = (max-min)/median of IOPS over rounds")
    for t in meta["transports"]:
        for wl in meta["workloads"]:
            rows = {}
            for s in servers:
                ps = [p for p in points if p["server"] == s and p["transport"] == t and p["workload"] == wl]
                if not ps:
                    continue
                rows[s] = {
                    "server": s, "transport": t, "workload": wl, "rounds": len(ps),
                    "iops": med([p["iops"] for p in ps]),
                    "mb_s": med([p["mb_s"] for p in ps]),
                    "cpu_us_per_req": med([p["cpu_us_per_req"] for p in ps]),
                    "clat_us_mean": med([p["clat_us_mean"] for p in ps if p.get("clat_us_mean") is not None]),
                    "iops_spread_pct": spread([p["iops"] for p in ps]),
                    "per_round": ps,
                }
            if not rows:
                continue
            ours = rows.get(OURS)
            peer_rows = [rows[s] for s in peers if s in rows]
            best = max(peer_rows, key=lambda r: r["iops"]) if peer_rows else None
            summary = {"transport": t, "workload": wl, "servers": rows}
            if ours and best:
                summary["best_peer"] = best["server"]
                summary["iops_ratio_vs_best_peer"] = ours["iops"] / best["iops"]
                summary["cpu_ratio_peer_over_ours"] = {
                    r["server"]: (r["cpu_us_per_req"] / ours["cpu_us_per_req"]) if ours["cpu_us_per_req"] else None
                    for r in peer_rows}
            results.append(summary)
            w("")
            w(f"== {t} / {wl} " + "=" * max(0, 60 - len(t) - len(wl)))
            w(f"{'server':<14}{'IOPS':>12}{'MB/s':>10}{'spread':>8}{'lat µs':>9}{'CPU µs/req':>12}"
              f"{'IOPS ratio':>12}{'CPU peer/ours':>15}")
            for s in servers:
                if s not in rows:
                    continue
                r = rows[s]
                if s == OURS:
                    ratio = f"{summary['iops_ratio_vs_best_peer']:.2f}x" if best else "-"
                    cpu_ratio = "1.00"
                else:
                    ratio = f"{r['iops'] / ours['iops']:.2f}x" if ours else "-"
                    cr = summary.get("cpu_ratio_peer_over_ours", {}).get(s)
                    cpu_ratio = f"{cr:.2f}x" if cr else "-"
                sp = f"{r['iops_spread_pct']:.0f}%" if r["iops_spread_pct"] is not None else "-"
                w(f"{s:<14}{fmt(r['iops'], 0):>12}{fmt(r['mb_s'], 1):>10}{sp:>8}{fmt(r['clat_us_mean'], 1):>9}"
                  f"{fmt(r['cpu_us_per_req'], 2):>12}{ratio:>12}{cpu_ratio:>15}")
            if ours and best:
                w(f"blkstack vs best peer ({best['server']}): IOPS {summary['iops_ratio_vs_best_peer']:.2f}x; "
                  f"(IOPS ratio column: blkstack/best peer on our row, peer/blkstack on peer rows)")
    # Targets (4 KiB random read, QD32): CPU <= 1/3 of nbdkit file's, IOPS >= 1.3x best peer.
    w("")
    w("targets (randread-4k-qd32): CPU/req <= 1/3 of nbdkit-file's, IOPS >= 1.3x best peer")
    targets = []
    for r in results:
        if r["workload"] != "randread-4k-qd32" or OURS not in r["servers"]:
            continue
        ours = r["servers"][OURS]
        nf = r["servers"].get("nbdkit-file")
        tgt = {"transport": r["transport"]}
        if nf:
            q = nf["cpu_us_per_req"] / ours["cpu_us_per_req"] if ours["cpu_us_per_req"] else None
            tgt["cpu_nbdkit_file_over_ours"] = q
            tgt["cpu_target_met"] = bool(q and q >= 3.0)
            w(f"  {r['transport']}: CPU nbdkit-file/blkstack = {q:.2f}x (need >= 3.00): "
              f"{'MET' if tgt['cpu_target_met'] else 'NOT MET'}")
        if "iops_ratio_vs_best_peer" in r:
            q = r["iops_ratio_vs_best_peer"]
            tgt["iops_ratio_vs_best_peer"] = q
            tgt["iops_target_met"] = q >= 1.3
            w(f"  {r['transport']}: IOPS blkstack/{r['best_peer']} = {q:.2f}x (need >= 1.30): "
              f"{'MET' if tgt['iops_target_met'] else 'NOT MET'}")
        targets.append(tgt)
    text = "\n".join(out)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "results": results, "targets": targets}, f, indent=1)
            f.write("\n")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    pt = sub.add_parser("point")
    pt.add_argument("--server", required=True)
    pt.add_argument("--transport", required=True)
    pt.add_argument("--workload", required=True)
    pt.add_argument("--round", type=int, required=True)
    pt.add_argument("--cpu-before", type=int, required=True)
    pt.add_argument("--cpu-after", type=int, required=True)
    pt.add_argument("--clk-tck", type=int, required=True)
    pt.add_argument("--fio")
    pt.add_argument("--nbdcopy-bytes", type=int)
    pt.add_argument("--nbdcopy-ns", type=int)
    pt.add_argument("--request-size", type=int, default=1 << 20)
    rp = sub.add_parser("report")
    rp.add_argument("--points", required=True)
    rp.add_argument("--meta", required=True)
    rp.add_argument("--json")
    a = p.parse_args()
    if a.cmd == "point":
        if not a.fio and a.nbdcopy_bytes is None:
            p.error("point: --fio or --nbdcopy-bytes is required")
        cmd_point(a)
    else:
        cmd_report(a)


if __name__ == "__main__":
    main()
