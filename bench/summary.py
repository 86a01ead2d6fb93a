#!/usr/bin/env python3
"""The Markdown summary of one bench/run.sh run (issue 8): each goal as a ratio between
Meridian and its peer measured in the same run, then every phase of every report.

Usage (run.sh calls it): summary.py --date D --machine M --versions V --pinning P --command C
    --loadavg FILE --wrk FILE --out-json FILE REPORT.json...
Standard library only."""

import argparse
import json
import sys
from pathlib import Path


def load(paths):
    reports = []
    for p in paths:
        try:
            reports.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError) as e:
            print(f"summary.py: skipping {p}: {e}", file=sys.stderr)
    return reports


def find(reports, scenario, system, path=None):
    for r in reports:
        if r["scenario"] == scenario and r["system"] == system:
            if path is None or r["params"].get("path", "").startswith(path):
                return r
    return None


def phase(report, name=None):
    if report is None:
        return None
    name = name or report.get("headline")
    for p in report["phases"]:
        if p["name"] == name:
            return p
    return None


def fmt(v, digits=0):
    if v is None:
        return "—"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def verdict(ok):
    return "—" if ok is None else ("**pass**" if ok else "**fail**")


def errors(report):
    return sum(report["errors"].values()) if report else None


def goals(reports):
    rows = []
    mf, sf = find(reports, "fanout", "meridian"), find(reports, "fanout", "socketio")
    if mf and sf:
        mb, sb = phase(mf), phase(sf)
        r = ratio(mb and mb["delivered_per_s"], sb and sb["delivered_per_s"])
        rc = ratio(mb and mb.get("delivered_per_cpu_s"), sb and sb.get("delivered_per_cpu_s"))
        rows.append({
            "goal": "fan-out deliveries/s ≥ 5× Socket.IO at equal CPU (best ramp step, servers on the same pinned core)",
            "meridian": f"{fmt(mb['delivered_per_s'])}/s ({fmt(mb.get('delivered_per_cpu_s'))} per server CPU-s)",
            "peer": f"{fmt(sb['delivered_per_s'])}/s ({fmt(sb.get('delivered_per_cpu_s'))} per server CPU-s)",
            "ratio": f"{r:.2f}× wall clock, {rc:.2f}× per CPU-s" if r and rc else "—",
            "pass": None if r is None else (min(r, rc or r) >= 5.0),
        })
        mx, sx = phase(mf, "fixed"), phase(sf, "fixed")
        rr = ratio(sx and sx["latency"]["p99_ms"], mx and mx["latency"]["p99_ms"])
        rows.append({
            "goal": f"fan-out p99 ≤ 1/5 of Socket.IO's at the same rate ({fmt(mx['offered_per_s'])} msg/s × {mf['params']['joined']} members)",
            "meridian": f"p99 {mx['latency']['p99_ms']:.2f} ms",
            "peer": f"p99 {sx['latency']['p99_ms']:.2f} ms",
            "ratio": f"1/{rr:.2f}" if rr else "—",
            "pass": None if rr is None else rr >= 5.0,
        })
        fl = phase(find(reports, "floor", "floor"), "fixed")
        if fl and sx and mx:
            fp = fl["latency"]["p99_ms"]
            rows.append({
                "goal": "(context) the machine's floor at that rate: a server doing nothing but one write(2) per delivery (`floor-serve`), the same load generator over plain TCP",
                "meridian": f"p99 {mx['latency']['p99_ms']:.2f} ms = floor + {mx['latency']['p99_ms'] - fp:.2f} ms",
                "peer": f"floor p99 {fp:.2f} ms (p50 {fl['latency']['p50_ms']:.2f}), {fl['cpu']['cores']:.3f} server cores",
                "ratio": f"best possible here: 1/{sx['latency']['p99_ms'] / fp:.2f}" if fp else "—",
                "pass": None,
            })
        # p99 at every rate both ramps completed with every delivery: where Socket.IO is loaded.
        common = []
        for mp in mf["phases"]:
            sp = phase(sf, mp["name"])
            if not sp or mp["name"] == "fixed":
                continue
            if sp.get("expected") and sp["delivered"] < sp["expected"]:
                continue
            if sp["offered_per_s"] != mp["offered_per_s"]:
                continue
            common.append(f"{fmt(mp['offered_per_s'])}/s: {mp['latency']['p99_ms']:.1f} vs {sp['latency']['p99_ms']:.1f} ms (1/{sp['latency']['p99_ms'] / mp['latency']['p99_ms']:.1f})")
        if common:
            rows.append({
                "goal": "(context) fan-out p99 at each ramp rate both systems ran, Meridian vs Socket.IO",
                "meridian": "; ".join(common),
                "peer": "",
                "ratio": "",
                "pass": None,
            })
    mi, si = find(reports, "idle", "meridian"), find(reports, "idle", "socketio")
    if mi:
        m = mi["memory"]
        s = si["memory"] if si else None
        rows.append({
            "goal": f"≤ 8 KiB RSS per idle connection at {mi['params']['connections']:,} connections (node processes)",
            "meridian": f"{m['node_kib_per_connection']:.2f} KiB ({m['connections']:,} open; with Redis {m['all_kib_per_connection']:.2f})",
            "peer": f"{s['node_kib_per_connection']:.2f} KiB ({s['connections']:,} open; with Redis {s['all_kib_per_connection']:.2f})" if s else "—",
            "ratio": f"{ratio(m['node_kib_per_connection'], s['node_kib_per_connection']):.2f}× Socket.IO's" if s and s['node_kib_per_connection'] else "—",
            "pass": m["node_kib_per_connection"] <= 8.0 and m["connections"] >= mi["params"]["connections"],
        })
    mj, sj = find(reports, "joinstorm", "meridian"), find(reports, "joinstorm", "socketio")
    if mj:
        p = phase(mj)
        q = phase(sj)
        t = p["extra"]["time_to_all_joined_s"]
        rows.append({
            "goal": f"join storm of {mj['params']['clients']:,} in < 5 s with 0 errors",
            "meridian": f"{t:.2f} s, {errors(mj)} errors, {p['delivered']:,} joined" + (f", {mj['shed_retries']:,} shed handshakes retried" if mj.get("shed_retries") else ""),
            "peer": f"{q['extra']['time_to_all_joined_s']:.2f} s, {errors(sj)} errors, {q['delivered']:,} joined" if q else "—",
            "ratio": f"{ratio(q['extra']['time_to_all_joined_s'], t):.2f}× faster" if q else "—",
            "pass": t < 5.0 and errors(mj) == 0 and p["delivered"] == mj["params"]["clients"],
        })
    # One verdict per geo-router path from the median round (rounds alternate which server goes
    # first; older result files have a single unlabelled round).
    labels = sorted({r.get("label", "") for r in reports if r["scenario"] == "route"})
    for label, path in (("/v1/route", "/v1/route"), ("/v1/connect (like for like: a 307)", "/v1/connect")):
        rounds = []
        for lab in labels:
            same = [r for r in reports if r.get("label", "") == lab]
            mine, peer = find(same, "route", "geo-router", path), find(same, "route", "nginx", "/v1/connect")
            if not (mine and peer):
                continue
            a, b = phase(mine), phase(peer)
            r = ratio(a["delivered_per_s"], b["delivered_per_s"])
            rc = ratio(a.get("delivered_per_cpu_s"), b.get("delivered_per_cpu_s"))
            if r is None:
                continue
            rounds.append((min(r, rc or r), r, rc, a, b))
        if not rounds:
            continue
        rounds.sort(key=lambda x: x[0])
        _, r, rc, a, b = rounds[len(rounds) // 2]
        every = ", ".join(f"{x[1]:.2f}" for x in rounds)
        rows.append({
            "goal": f"geo-router {label} requests/s ≥ 1× nginx geoip2 redirect (wall clock and per server CPU-s; median of {len(rounds)} alternating rounds)",
            "meridian": f"{fmt(a['delivered_per_s'])}/s, p99 {a['latency']['p99_ms']:.2f} ms, {fmt(a.get('delivered_per_cpu_s'))}/CPU-s",
            "peer": f"{fmt(b['delivered_per_s'])}/s, p99 {b['latency']['p99_ms']:.2f} ms, {fmt(b.get('delivered_per_cpu_s'))}/CPU-s",
            "ratio": (f"{r:.2f}× wall clock, {rc:.2f}× per CPU-s" if rc else f"{r:.2f}×") + (f" (rounds, wall clock: {every})" if len(rounds) > 1 else ""),
            "pass": min(r, rc or r) >= 1.0,
        })
    mp, sp = find(reports, "pairs", "meridian"), find(reports, "pairs", "socketio")
    if mp and sp:
        a, b = phase(mp, "closed") or phase(mp), phase(sp, "closed") or phase(sp)
        r = ratio(a["delivered_per_s"], b["delivered_per_s"])
        rows.append({
            "goal": f"signaling pairs ({mp['params']['pairs']:,} pairs, closed loop): messages/s and p99 (no target)",
            "meridian": f"{fmt(a['delivered_per_s'])}/s, p99 {a['latency']['p99_ms']:.2f} ms",
            "peer": f"{fmt(b['delivered_per_s'])}/s, p99 {b['latency']['p99_ms']:.2f} ms",
            "ratio": f"{r:.2f}×" if r else "—",
            "pass": None,
        })
    return rows


def phase_table(r):
    out = [f"#### {r['scenario']} — {r['system']}", ""]
    params = ", ".join(f"{k} {v}" for k, v in r["params"].items())
    out.append(f"Parameters: {params}.")
    out.append("")
    out.append("| phase | s | offered/s | sent | delivered | expected | delivered/s | per server CPU-s | server cores | loadgen cores | p50 ms | p99 ms | p99.9 ms | max ms |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in r["phases"]:
        lat = p["latency"]
        star = " ★" if p["name"] == r.get("headline") else ""
        out.append(
            f"| {p['name']}{star} | {p['seconds']:.1f} | {fmt(p.get('offered_per_s'))} | {p['sent']:,} | {p['delivered']:,} | "
            f"{fmt(p.get('expected'))} | {fmt(p['delivered_per_s'])} | {fmt(p.get('delivered_per_cpu_s'))} | {p['cpu']['cores']:.2f} | {p['cpu'].get('loadgen_cores', 0):.2f} | "
            + (f"{lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['p999_ms']:.2f} | {lat['max_ms']:.2f} |" if lat["count"] else "— | — | — | — |")
        )
    extras = [f"{p['name']}: " + ", ".join(f"{k} {v:g}" for k, v in p["extra"].items()) for p in r["phases"] if p.get("extra")]
    if extras:
        out.append("")
        out.extend(f"- {e}" for e in extras)
    if r.get("memory"):
        m = r["memory"]
        out.append(f"- memory: {m['connections']:,} connections open; RSS KiB before {m['before_kib']}, after {m['after_kib']}; "
                   f"node processes {m['node_kib_per_connection']:.2f} KiB/connection, with Redis {m['all_kib_per_connection']:.2f}; "
                   f"load generator {m['loadgen_kib']:,} KiB")
    cpu = [f"{p['name']}: " + ", ".join(f"{k} {v:.2f} s" for k, v in p["cpu"]["by_process"].items()) for p in r["phases"] if p["cpu"]["by_process"]]
    if cpu:
        out.append("- server CPU seconds by process: " + "; ".join(cpu))
    out.append(f"- errors: {r['errors'] or 'none'}" + (f" (e.g. `{r['error_samples'][0]}`)" if r.get("error_samples") else ""))
    if r.get("shed_retries"):
        out.append(f"- handshakes shed by the node's admission control (`reconnect` `overloaded`) and retried after the delay it asked for: {r['shed_retries']:,}")
    for n in r.get("notes", []):
        out.append(f"- {n}")
    out.append("")
    return out


def main():
    ap = argparse.ArgumentParser()
    for a in ("date", "machine", "versions", "pinning", "command", "loadavg", "wrk", "out_json"):
        ap.add_argument("--" + a.replace("_", "-"), required=True)
    ap.add_argument("reports", nargs="*")
    args = ap.parse_args()
    reports = load(args.reports)
    rows = goals(reports)
    loadavg = Path(args.loadavg).read_text().strip().splitlines()
    wrk = Path(args.wrk).read_text()
    out = [f"# Benchmarks side by side — {args.date}", ""]
    out.append(f"- machine: {args.machine}")
    out.append(f"- software: {args.versions}")
    out.append(f"- pinning: {args.pinning}")
    out.append(f"- command: `{args.command}`")
    if loadavg:
        out.append("- load average (1, 5, 15 min) before → after each run: " + "; ".join(
            f"{l.split()[0]} {l.split()[1]}: {' '.join(l.split()[2:5])} → {' '.join(l.split()[5:8])}" for l in loadavg))
    out.append("")
    out.append("## Goals")
    out.append("")
    out.append("| goal | Meridian | peer | ratio | result |")
    out.append("|---|---|---|---|---|")
    for r in rows:
        out.append(f"| {r['goal']} | {r['meridian']} | {r['peer']} | {r['ratio']} | {verdict(r['pass'])} |")
    out.append("")
    out.append("## Every phase")
    out.append("")
    for r in reports:
        out.extend(phase_table(r))
    if wrk.strip():
        out.append("## wrk cross-check (one thread, one client address)")
        out.append("")
        out.append("```")
        out.append(wrk.strip())
        out.append("```")
        out.append("")
    print("\n".join(out))
    Path(args.out_json).write_text(json.dumps({
        "date": args.date, "machine": args.machine, "versions": args.versions, "pinning": args.pinning,
        "command": args.command, "loadavg": loadavg, "goals": rows, "reports": reports, "wrk": wrk,
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
