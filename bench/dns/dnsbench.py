#!/usr/bin/env python3
"""Helpers for bench/dns/run.sh: geo-router vs gdnsd on the same catalogue, database and zone.

Subcommands (run.sh calls them in this order):

  prepare   copy the catalogue (health URLs pointed at one local responder), write the router's
            config, gdnsd's config directory and zone file
  queries   write dnsperf's binary (-B) query file: one `ws.<zone>` query per database network,
            each with its own EDNS Client Subnet option, in a fixed shuffled order
  agree     ask both servers about every network (and every IPv4 address) of the database with
            ECS, compare the regions they answer, and record the ECS scopes they return
  dnsperf   parse one dnsperf run's output (and, with -v, its per-query latencies)
  summary   print the Markdown summary of a run from the collected JSON

Everything talks to 127.0.0.1 only. The networks come from the database file itself (read with
MaxMind's own `maxminddb` reader), not from a copy of demo.rs's table.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import random
import re
import select
import socket
import statistics
import struct
import sys
import time
import tomllib
from pathlib import Path

import dns.edns
import dns.exception
import dns.query
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import maxminddb

SEED = 20261101  # fixed: the same query file and samples every run


# --- catalogue and database -------------------------------------------------------------------


def load_catalogue(regions_dir: Path) -> list[dict]:
    regions = []
    for path in sorted(regions_dir.glob("*.toml")):
        with path.open("rb") as f:
            doc = tomllib.load(f)
        regions.append(
            {
                "file": path.name,
                "name": doc["name"],
                "latitude": float(doc["latitude"]),
                "longitude": float(doc["longitude"]),
                "addresses": list(doc["ingress"]["addresses"]),
                "health_url": doc["ingress"]["health_url"],
            }
        )
    return regions


def database_networks(mmdb: Path) -> list[dict]:
    """Every network of the database that has a location, IPv4 ones in dotted form."""
    networks = []
    with maxminddb.open_database(str(mmdb)) as reader:
        for network, record in reader:
            location = (record or {}).get("location") or {}
            if "latitude" not in location:
                continue
            # maxminddb lists IPv4 data of an IPv6 tree as ::a.b.c.d/96+n; say it as IPv4.
            if network.version == 6 and network.prefixlen >= 96 and int(network.network_address) >> 32 == 0:
                network = ipaddress.ip_network(
                    (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
                )
            networks.append(
                {
                    "network": str(network),
                    "country": (record.get("country") or {}).get("iso_code"),
                    "latitude": location["latitude"],
                    "longitude": location["longitude"],
                }
            )
    # Aliases (::ffff:0:0/96, 2002::/16) would repeat the IPv4 networks: keep each once.
    unique = {n["network"]: n for n in networks}
    return sorted(unique.values(), key=lambda n: (ipaddress.ip_network(n["network"]).version, ipaddress.ip_network(n["network"])))


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


def nearest_region(regions: list[dict], lat: float, lon: float) -> str:
    return min(regions, key=lambda r: great_circle_km(lat, lon, r["latitude"], r["longitude"]))["name"]


# --- prepare ----------------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> None:
    state = Path(args.state)
    regions = load_catalogue(Path(args.regions))
    if not regions:
        sys.exit(f"no regions/*.toml in {args.regions}")
    zone = args.zone.rstrip(".")
    health_url = f"http://127.0.0.1:{args.health_port}/readyz"

    # 1. The catalogue copy: identical but for health_url (one local responder says "ready" for
    #    every region, so the router routes to healthy regions as gdnsd, which monitors nothing
    #    here, does).
    copy = state / "regions"
    copy.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(args.regions).glob("*.toml")):
        text = path.read_text()
        text, n = re.subn(r'(?m)^health_url\s*=\s*".*"$', f'health_url = "{health_url}"', text)
        if n != 1:
            sys.exit(f"{path}: expected one health_url line, found {n}")
        (copy / path.name).write_text(text)
    www = state / "health"
    www.mkdir(exist_ok=True)
    (www / "readyz").write_text("ready\n")

    # 2. The router: ephemeral ports (it prints what it bound), the same database and zone, the
    #    same fallback region order as gdnsd's `datacenters` list for clients it cannot place.
    fallback = args.fallback_order.split(",")
    (state / "router.toml").write_text(
        f'regions = "{copy}"\n'
        f'geoip = "{Path(args.mmdb).resolve()}"\n'
        f'zone = "{zone}."\n'
        'dns_listen = "127.0.0.1:0"\n'
        'http_listen = "127.0.0.1:0"\n'
        "ttl = 30\n"
        'instance = "bench"\n'
        "allow_debug_ip = true\n"
        "\n[policy]\n"
        f'default_region = "{fallback[0]}"\n'
        # The load generator is one source: response rate limiting would measure itself.
        "\n[dns_limits]\nrate_per_s = 0\ntcp_per_network = 256\n"
    )

    # 3. gdnsd: city-auto-mode map with the catalogue's coordinates, one DYNA resource answering
    #    the catalogue's ingress addresses, ECS on (gdnsd 3's default, said explicitly).
    conf = state / "gdnsd"
    (conf / "zones").mkdir(parents=True, exist_ok=True)
    (conf / "geoip").mkdir(exist_ok=True)
    db_copy = conf / "geoip" / "demo.mmdb"
    db_copy.write_bytes(Path(args.mmdb).read_bytes())
    by_name = {r["name"]: r for r in regions}
    if sorted(fallback) != sorted(by_name):
        sys.exit(f"--fallback-order {fallback} must name every catalogue region {sorted(by_name)}")

    def dc_value(addresses: list[str]) -> str:
        return addresses[0] if len(addresses) == 1 else "[ " + ", ".join(addresses) + " ]"

    coords = "\n".join(
        f"          {name} => [ {by_name[name]['latitude']}, {by_name[name]['longitude']} ]" for name in fallback
    )
    dcmap = "\n".join(f"          {name} => {dc_value(by_name[name]['addresses'])}" for name in fallback)
    (conf / "config").write_text(
        f"""# Written by bench/dns/dnsbench.py prepare: gdnsd {args.gdnsd_version} beside geo-router.
options => {{
  listen => [ 127.0.0.1:{args.gdnsd_port} ]
  run_dir => {state / "gdnsd-run"}
  state_dir => {state / "gdnsd-state"}
  udp_threads => {args.udp_threads}
  tcp_threads => 1
  edns_client_subnet => true
  zones_default_ttl => 30
}}
plugins => {{
  geoip => {{
    maps => {{
      meridian => {{
        geoip2_db => demo.mmdb
        datacenters => [ {", ".join(fallback)} ]
        auto_dc_coords => {{
{coords}
        }}
      }}
    }}
    resources => {{
      ws => {{
        map => meridian
        dcmap => {{
{dcmap}
        }}
      }}
    }}
  }}
}}
"""
    )
    (conf / "zones" / zone).write_text(
        f"""$TTL 30
@     SOA ns1 hostmaster ( 1 3600 600 86400 30 )
@     NS  ns1
ns1   A   127.0.0.1
ws    30  DYNA geoip!ws
"""
    )
    json.dump({"regions": regions, "zone": zone + "."}, (state / "catalogue.json").open("w"), indent=1)


# --- queries ----------------------------------------------------------------------------------


def ecs_query(zone: str, qtype: str, address: str, source: int) -> dns.message.Message:
    ecs = dns.edns.ECSOption(address, source, 0)
    return dns.message.make_query(f"ws.{zone}", qtype, use_edns=0, payload=1232, options=[ecs], want_dnssec=False)


def v6_sample(network: ipaddress.IPv6Network, count: int, rng: random.Random) -> list[str]:
    """`count` /56 networks inside `network`: its first and last and random ones between."""
    first = int(network.network_address)
    slots = 1 << (56 - network.prefixlen)
    picks = {0, slots - 1} | {rng.randrange(slots) for _ in range(count * 2)}
    return [str(ipaddress.IPv6Address(first + (i << 72))) for i in sorted(picks)[:count]]


def cmd_queries(args: argparse.Namespace) -> None:
    """The ECS mix: every IPv4 /24 of the database as resolvers send it (source /24, address in
    the network), every IPv6 /40 as 4 different /56 sources (A and AAAA), shuffled: two thirds IPv4."""
    rng = random.Random(SEED)
    zone = args.zone.rstrip(".")
    messages = []
    for entry in database_networks(Path(args.mmdb)):
        network = ipaddress.ip_network(entry["network"])
        if network.version == 4:
            for sub in network.subnets(new_prefix=24) if network.prefixlen < 24 else [network]:
                addr = str(ipaddress.IPv4Address(int(sub.network_address)))
                messages.append(ecs_query(zone, "A", addr, 24))
        else:
            for addr in v6_sample(network, 4, rng):
                messages.append(ecs_query(zone, "A", addr, 56))
                messages.append(ecs_query(zone, "AAAA", addr, 56))
    rng.shuffle(messages)
    with open(args.out, "wb") as f:
        for message in messages:
            wire = message.to_wire()
            f.write(struct.pack("!H", len(wire)) + wire)
    v4 = sum(1 for m in messages if m.opt and m.options[0].family == 1)
    print(json.dumps({"queries": len(messages), "ipv4_ecs": v4, "ipv6_ecs": len(messages) - v4}))


# --- agreement --------------------------------------------------------------------------------


def bulk_query(server: tuple[str, int], wires: list[bytes], window: int = 256, tries: int = 4) -> list[bytes | None]:
    """Sends every query (IDs are set here) with at most `window` outstanding; retries losses."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(server)
    sock.setblocking(False)
    answers: list[bytes | None] = [None] * len(wires)
    for start in range(0, len(wires), window):
        chunk = range(start, min(start + window, len(wires)))
        pending = {i & 0xFFFF: i for i in chunk}
        for _ in range(tries):
            for qid, i in pending.items():
                wire = struct.pack("!H", qid) + wires[i][2:]
                sock.send(wire)
            deadline = time.monotonic() + 1.0
            while pending and time.monotonic() < deadline:
                ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    break
                while True:
                    try:
                        data = sock.recv(65535)
                    except BlockingIOError:
                        break
                    if len(data) >= 2:
                        qid = struct.unpack("!H", data[:2])[0]
                        i = pending.pop(qid, None)
                        if i is not None:
                            answers[i] = data
            if not pending:
                break
    sock.close()
    return answers


def read_answer(wire: bytes | None, region_of: dict[str, str]) -> dict:
    if wire is None:
        return {"rcode": "TIMEOUT", "region": None, "addresses": [], "scope": None}
    msg = dns.message.from_wire(wire)
    addresses = sorted(rd.address for rrset in msg.answer for rd in rrset if rd.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))
    regions = {region_of.get(a, f"?{a}") for a in addresses}
    scope = next((o.scopelen for o in msg.options if isinstance(o, dns.edns.ECSOption)), None)
    return {
        "rcode": dns.rcode.to_text(msg.rcode()),
        "region": ",".join(sorted(regions)) if regions else "-",
        "addresses": addresses,
        "scope": scope,
    }


def cmd_agree(args: argparse.Namespace) -> None:
    catalogue = json.load(open(args.catalogue))
    regions, zone = catalogue["regions"], catalogue["zone"].rstrip(".")
    region_of = {a: r["name"] for r in regions for a in r["addresses"]}
    servers = {"geo-router": parse_addr(args.router), "gdnsd": parse_addr(args.gdnsd)}
    rng = random.Random(SEED)

    # The probes: (label, qtype, ecs address, source prefix, expected region by geometry or None).
    probes: list[tuple[str, str, str, int, str | None, str]] = []
    for entry in database_networks(Path(args.mmdb)):
        network = ipaddress.ip_network(entry["network"])
        expect = nearest_region(regions, entry["latitude"], entry["longitude"])
        if network.version == 4:
            for sub in network.subnets(new_prefix=24) if network.prefixlen < 24 else [network]:
                # As a resolver asks: source /24.
                probes.append(("net", "A", str(sub.network_address), 24, expect, str(sub)))
                # Every address of the network, source /32.
                for addr in sub:
                    probes.append(("addr", "A", str(addr), 32, expect, str(sub)))
        else:
            for addr in v6_sample(network, args.v6_samples, rng):
                kind = "net" if addr == str(network.network_address) else "addr"
                probes.append((kind, "A", addr, 56, expect, str(network)))
                probes.append((kind + "-aaaa", "AAAA", addr, 56, expect, str(network)))
    # Outside the database: informative only (each server's fallback), not in the rate.
    for addr in ["192.0.2.0", "23.10.16.0", "81.20.200.0", "198.51.100.0"]:
        probes.append(("outside", "A", addr, 24, None, addr + "/24"))
    probes.append(("outside", "A", "2001:db8:ff00::", 56, None, "2001:db8:ff00::/40"))

    wires = [ecs_query(zone, qtype, addr, src).to_wire() for _, qtype, addr, src, _, _ in probes]
    results = {}
    for name, server in servers.items():
        started = time.monotonic()
        results[name] = [read_answer(w, region_of) for w in bulk_query(server, wires)]
        print(f"agree: {len(wires)} queries to {name} in {time.monotonic() - started:.1f} s", file=sys.stderr)

    report: dict = {"probes": len(probes), "classes": {}, "disagreements": [], "geometry_mismatches": [], "outside": []}
    for cls in ["net", "addr", "net-aaaa", "addr-aaaa"]:
        idx = [i for i, p in enumerate(probes) if p[0] == cls]
        if not idx:
            continue
        same = sum(1 for i in idx if same_answer(results["geo-router"][i], results["gdnsd"][i]))
        report["classes"][cls] = {"probes": len(idx), "agree": same}
    for i, (cls, qtype, addr, src, expect, network) in enumerate(probes):
        r, g = results["geo-router"][i], results["gdnsd"][i]
        row = {"class": cls, "qtype": qtype, "ecs": f"{addr}/{src}", "network": network, "geometry": expect, "geo-router": r, "gdnsd": g}
        if cls == "outside":
            report["outside"].append(row)
            continue
        if not same_answer(r, g):
            report["disagreements"].append(row)
        if qtype == "A" and (r["region"] != expect or g["region"] != expect):
            report["geometry_mismatches"].append(row)
    compared = [i for i, p in enumerate(probes) if p[0] != "outside"]
    report["agree"] = sum(1 for i in compared if same_answer(results["geo-router"][i], results["gdnsd"][i]))
    report["compared"] = len(compared)
    # Which networks disagree (one line per network rather than per address).
    report["disagreeing_networks"] = sorted({row["network"] for row in report["disagreements"]})
    # ECS scopes for the resolver-shaped IPv4 probes (source /24) and IPv6 (/56).
    for name in servers:
        v4 = [results[name][i]["scope"] for i, p in enumerate(probes) if p[0] == "net" and ":" not in p[2]]
        v6 = [results[name][i]["scope"] for i, p in enumerate(probes) if p[0] == "net" and ":" in p[2]]
        report.setdefault("scopes", {})[name] = {
            "v4_median": median_or_none(v4),
            "v4_min": min((s for s in v4 if s is not None), default=None),
            "v4_max": max((s for s in v4 if s is not None), default=None),
            "v4_histogram": histogram(v4),
            "v6_median": median_or_none(v6),
            "v6_histogram": histogram(v6),
        }
    report["per_region"] = {
        name: histogram([results[name][i]["region"] for i, p in enumerate(probes) if p[0] in ("net", "addr") and p[1] == "A"])
        for name in servers
    }
    report["timeouts"] = {name: sum(1 for a in results[name] if a["rcode"] == "TIMEOUT") for name in servers}
    json.dump(report, open(args.out, "w"), indent=1)
    print(
        f"agreement: {report['agree']}/{report['compared']} "
        f"({100.0 * report['agree'] / report['compared']:.3f}%), "
        f"{len(report['disagreeing_networks'])} disagreeing networks, "
        f"{len(report['geometry_mismatches'])} answers differing from the great-circle nearest region"
    )
    for row in report["disagreements"][:40]:
        print(
            f"  DISAGREE {row['qtype']} ecs {row['ecs']} ({row['network']}): geometry {row['geometry']}, "
            f"geo-router {row['geo-router']['rcode']} {row['geo-router']['region']} scope {row['geo-router']['scope']}, "
            f"gdnsd {row['gdnsd']['rcode']} {row['gdnsd']['region']} scope {row['gdnsd']['scope']}"
        )
    for name, s in report["scopes"].items():
        print(f"  {name}: median IPv4 scope /{s['v4_median']} (range /{s['v4_min']}../{s['v4_max']}), median IPv6 scope /{s['v6_median']}")
    for row in report["outside"]:
        print(
            f"  outside the database, ecs {row['ecs']}: geo-router {row['geo-router']['region']} scope {row['geo-router']['scope']}, "
            f"gdnsd {row['gdnsd']['region']} scope {row['gdnsd']['scope']}"
        )


def same_answer(a: dict, b: dict) -> bool:
    return a["rcode"] == b["rcode"] and a["addresses"] == b["addresses"]


def median_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def histogram(values: list) -> dict:
    out: dict = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost") and not host.startswith("127."):
        sys.exit(f"refusing a non-loopback server {text}")
    return host, int(port)


def cmd_wait_dns(args: argparse.Namespace) -> None:
    """Polls until the server answers `ws.<zone>` A, or fails after the deadline."""
    server = parse_addr(args.server)
    query = dns.message.make_query(f"ws.{args.zone.rstrip('.')}", "A")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            dns.query.udp(query, server[0], port=server[1], timeout=0.5)
            return
        except (dns.exception.Timeout, OSError):
            time.sleep(0.1)
    sys.exit(f"no DNS answer from {args.server} within {args.timeout} s")


def cpu_ticks() -> dict[int, tuple[str, int, int]]:
    """Every process's (name, parent, utime+stime+cutime+cstime in clock ticks)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(entry.name)] = (name, int(fields[1]), sum(int(f) for f in fields[11:15]))
    return out


def cmd_cpu_snapshot(args: argparse.Namespace) -> None:
    json.dump({str(k): v for k, v in cpu_ticks().items()}, open(args.out, "w"))


def cmd_cpu_foreign(args: argparse.Namespace) -> None:
    """CPU seconds that processes other than the benchmark's used between a snapshot and now
    (a process started in between counts whole; one that ended in between is seen through its
    parent's cutime/cstime). Approximate, and meant only to say how shared the machine was."""
    import os

    before = {int(k): v for k, v in json.load(open(args.before)).items()}
    now = cpu_ticks()
    ours = {int(p) for p in args.exclude.split(",") if p} | {os.getpid(), os.getppid()}

    def is_ours(pid: int, table: dict) -> bool:
        seen = 0
        while pid in table and seen < 64:
            if pid in ours:
                return True
            pid = table[pid][1]
            seen += 1
        return pid in ours

    used = 0
    for pid, (name, _, ticks) in now.items():
        if is_ours(pid, now):
            continue
        used += ticks - before[pid][2] if pid in before and before[pid][0] == name else ticks
    print(f"{used / os.sysconf('SC_CLK_TCK'):.2f}")


# --- dnsperf output ---------------------------------------------------------------------------


def cmd_dnsperf(args: argparse.Namespace) -> None:
    text = Path(args.output).read_text(errors="replace")

    def grab(pattern: str, cast=float):
        m = re.search(pattern, text)
        return cast(m.group(1)) if m else None

    result = {
        "sent": grab(r"Queries sent:\s+(\d+)", int),
        "completed": grab(r"Queries completed:\s+(\d+)", int),
        "lost": grab(r"Queries lost:\s+(\d+)", int),
        "qps": grab(r"Queries per second:\s+([\d.]+)"),
        "run_s": grab(r"Run time \(s\):\s+([\d.]+)"),
        "avg_ms": ms(grab(r"Average Latency \(s\):\s+([\d.]+)")),
        "min_ms": ms(grab(r"Average Latency \(s\):\s+[\d.]+ \(min ([\d.]+)")),
        "max_ms": ms(grab(r"Average Latency \(s\):.*max ([\d.]+)\)")),
        "stddev_ms": ms(grab(r"Latency StdDev \(s\):\s+([\d.]+)")),
        "rcodes": {k: int(v) for k, v in re.findall(r"([A-Z]+) (\d+) \(", grab(r"Response codes:\s+(.*)", str) or "")},
    }
    # dnsperf -v: "> NOERROR ws.zone A 0.000123" per answered query ("> T ..." for a timeout).
    latencies = [float(m) for m in re.findall(r"^> [A-Z]+ \S+ \S+ ([\d.]+)$", text, re.M)]
    if latencies:
        latencies.sort()
        result["samples"] = len(latencies)
        for p in (50, 90, 99, 99.9):
            result[f"p{p:g}_ms"] = ms(latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))])
    if args.cpu_s is not None and result["completed"]:
        result["server_cpu_s"] = args.cpu_s
        result["server_cpu_us_per_query"] = round(1e6 * args.cpu_s / result["completed"], 3)
    if args.udp_drops is not None:
        result["udp_rcvbuf_drops"] = args.udp_drops
    if result["qps"] and result["avg_ms"]:
        # Little's law: queries in flight on average; well under dnsperf's -q means the load
        # generator, not the server, set the pace.
        result["in_flight"] = round(result["qps"] * result["avg_ms"] / 1000.0, 1)
    if args.loadgen_cpu_s is not None:
        result["loadgen_cpu_s"] = args.loadgen_cpu_s
    if args.foreign_cpu_s is not None and result["run_s"]:
        result["foreign_cpu_s"] = args.foreign_cpu_s
        result["foreign_cores"] = round(args.foreign_cpu_s / result["run_s"], 3)
    json.dump(result, open(args.out, "w"), indent=1)
    print(json.dumps(result))


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 4)


# --- summary ----------------------------------------------------------------------------------


def cmd_summary(args: argparse.Namespace) -> None:
    run = json.load(open(args.run))
    out = []
    out.append(f"# Geo-router DNS vs gdnsd — {run['date']}\n")
    out.append(f"Machine: {run['machine']}. Command: `bash bench/dns/run.sh`. {run['settings']}\n")
    agree = run["agree"]
    out.append(headline(run))
    for phase in run["phases"]:
        rounds = phase["rounds"]
        agg = {name: aggregate([r[name] for r in rounds]) for name in ("geo-router", "gdnsd")}
        r, g = agg["geo-router"], agg["gdnsd"]
        out.append(f"\n## {phase['title']}\n\n{phase['how']}\n")
        many = len(rounds) > 1
        cols = ["server", "QPS" + (f" (median of {len(rounds)})" if many else ""), "avg ms", "stddev ms", "max ms"]
        if "p50_ms" in r:
            cols += ["p50 ms", "p90 ms", "p99 ms", "p99.9 ms"]
        cols += ["lost (UDP rcvbuf drops)", "in flight", "server CPU µs/query", "QPS router/gdnsd"]
        if many:
            cols += ["QPS per round"]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        ratio = r["qps"] / g["qps"] if r.get("qps") and g.get("qps") else None
        for name, res in (("geo-router", r), ("gdnsd", g)):
            row = [name, fmt(res.get("qps"), 0), fmt(res.get("avg_ms"), 3), fmt(res.get("stddev_ms"), 3), fmt(res.get("max_ms"), 2)]
            if "p50_ms" in r:
                row += [fmt(res.get(k), 3) for k in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms")]
            row += [f"{res.get('lost')} ({res.get('udp_rcvbuf_drops', '–')})", fmt(res.get("in_flight"), 0), fmt(res.get("server_cpu_us_per_query"), 2), (fmt(ratio, 3) + "×") if name == "geo-router" and ratio else ""]
            if many:
                row += [", ".join(fmt(x[name].get("qps"), 0) for x in rounds)]
            out.append("| " + " | ".join(row) + " |")
        notes = []
        if many:
            per_round = [x["geo-router"]["qps"] / x["gdnsd"]["qps"] for x in rounds if x["geo-router"].get("qps") and x["gdnsd"].get("qps")]
            notes.append("router/gdnsd QPS per round: " + ", ".join(f"{x:.3f}" for x in per_round))
        foreign = [x[n].get("foreign_cores") for x in rounds for n in ("geo-router", "gdnsd") if x[n].get("foreign_cores") is not None]
        if foreign:
            notes.append(f"other processes on the machine used {min(foreign):.2f}–{max(foreign):.2f} cores during these runs")
        if notes:
            out.append("\n" + "; ".join(notes) + ".")
    out.append("\n## Agreement and ECS scope (same run)\n")
    out.append(
        f"{agree['agree']} of {agree['compared']} answers identical "
        f"(**{100.0 * agree['agree'] / agree['compared']:.3f}%**); "
        f"{len(agree['disagreeing_networks'])} networks disagree; "
        f"{len(agree['geometry_mismatches'])} A answers differ from the great-circle nearest region.\n"
    )
    out.append("| probes | count | identical |\n|---|---|---|")
    names = {
        "net": "each network as a resolver asks (IPv4 /24 source, IPv6 /56 at the /40's start), A",
        "addr": "every IPv4 address (/32 source) and sampled IPv6 /56s, A",
        "net-aaaa": "IPv6 network start, AAAA",
        "addr-aaaa": "sampled IPv6 /56s, AAAA",
    }
    for cls, c in agree["classes"].items():
        out.append(f"| {names.get(cls, cls)} | {c['probes']} | {c['agree']} |")
    out.append("\n| server | median IPv4 ECS scope (source /24) | IPv4 scopes: networks | median IPv6 scope (source /56) | IPv6 scopes: networks | A answers per region |")
    out.append("|---|---|---|---|---|---|")
    for name, s in agree["scopes"].items():
        regions = ", ".join(f"{k} {v}" for k, v in agree["per_region"][name].items())
        v4 = ", ".join(f"/{k}: {v}" for k, v in sorted(s["v4_histogram"].items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1))
        v6 = ", ".join(f"/{k}: {v}" for k, v in sorted(s["v6_histogram"].items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1))
        out.append(f"| {name} | /{fmt(s['v4_median'], 0)} | {v4} | /{fmt(s['v6_median'], 0)} | {v6} | {regions} |")
    if agree["disagreements"]:
        out.append("\nDisagreements (first 20):\n")
        for row in agree["disagreements"][:20]:
            out.append(
                f"- {row['qtype']} ECS {row['ecs']} ({row['network']}; nearest by geometry {row['geometry']}): "
                f"geo-router {row['geo-router']['rcode']} {row['geo-router']['region']} scope {row['geo-router']['scope']}, "
                f"gdnsd {row['gdnsd']['rcode']} {row['gdnsd']['region']} scope {row['gdnsd']['scope']}"
            )
    out.append("\nOutside the database (fallback, not counted):\n")
    for row in agree["outside"]:
        out.append(
            f"- ECS {row['ecs']}: geo-router {row['geo-router']['rcode']} {row['geo-router']['region']} scope {row['geo-router']['scope']}; "
            f"gdnsd {row['gdnsd']['rcode']} {row['gdnsd']['region']} scope {row['gdnsd']['scope']}"
        )
    w = run.get("wrk")
    if w:
        out.append("\n## `/v1/route` (geo-router HTTP)\n")
        out.append(f"`{w['command']}`\n")
        out.append("| requests/s | p50 | p90 | p99 | non-2xx | socket errors |\n|---|---|---|---|---|---|")
        out.append(f"| {w.get('rps')} | {w.get('p50')} | {w.get('p90')} | {w.get('p99')} | {w.get('non2xx', 0)} | {w.get('socket_errors', 'none')} |")
    print("\n".join(out))


def headline(run: dict) -> str:
    """One table: both servers side by side, the ratio, agreement and scope."""
    phases = {p["name"]: {n: aggregate([r[n] for r in p["rounds"]]) for n in ("geo-router", "gdnsd")} for p in run["phases"]}
    agree = run["agree"]
    rate = 100.0 * agree["agree"] / agree["compared"]
    cols = [("ecs-mix", "qps", "QPS, ECS mix, 1 core each", 0), ("ecs-mix-capped", "qps", "QPS, ECS mix, capped", 0),
            ("no-ecs", "qps", "QPS, no ECS", 0), ("ecs-mix", "avg_ms", "avg ms at saturation", 3),
            ("ecs-fixed-rate", "avg_ms", "avg ms at fixed rate", 3), ("ecs-fixed-rate", "p99_ms", "p99 ms at fixed rate", 3),
            ("ecs-fixed-rate", "server_cpu_us_per_query", "server CPU µs/query at fixed rate", 2)]
    cols = [c for c in cols if c[0] in phases]
    lines = ["## Summary\n", "| server | " + " | ".join(c[2] for c in cols) + " | agreement | median IPv4 ECS scope |",
             "|" + "---|" * (len(cols) + 3)]
    for name in ("geo-router", "gdnsd"):
        cells = [fmt(phases[p][name].get(k), d) for p, k, _, d in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rate:.3f}% | /{fmt(agree['scopes'][name]['v4_median'], 0)} |")
    ratios = []
    for p, k, _, d in cols:
        r, g = phases[p]["geo-router"].get(k), phases[p]["gdnsd"].get(k)
        ratios.append(f"**{r / g:.3f}×**" if r and g and k == "qps" else (f"{r / g:.2f}×" if r and g else "–"))
    lines.append("| router / gdnsd | " + " | ".join(ratios) + " | | |")
    return "\n".join(lines) + "\n"


def aggregate(results: list[dict]) -> dict:
    """Medians across rounds (max of max, sum of losses)."""
    out: dict = {}
    for key in ("in_flight", "qps", "avg_ms", "stddev_ms", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "server_cpu_us_per_query", "foreign_cores"):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    maxes = [r["max_ms"] for r in results if r.get("max_ms") is not None]
    out["max_ms"] = max(maxes) if maxes else None
    out["lost"] = sum(r.get("lost") or 0 for r in results)
    if any("udp_rcvbuf_drops" in r for r in results):
        out["udp_rcvbuf_drops"] = sum(r.get("udp_rcvbuf_drops") or 0 for r in results)
    return out


def fmt(value, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--regions", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--mmdb", required=True)
    p.add_argument("--zone", required=True)
    p.add_argument("--gdnsd-port", type=int, required=True)
    p.add_argument("--gdnsd-version", default="3")
    p.add_argument("--health-port", type=int, required=True)
    p.add_argument("--udp-threads", type=int, default=1)
    p.add_argument("--fallback-order", default="us-east,eu-central,ap-southeast")
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("queries")
    p.add_argument("--mmdb", required=True)
    p.add_argument("--zone", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_queries)
    p = sub.add_parser("agree")
    p.add_argument("--catalogue", required=True)
    p.add_argument("--mmdb", required=True)
    p.add_argument("--router", required=True)
    p.add_argument("--gdnsd", required=True)
    p.add_argument("--v6-samples", type=int, default=64)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_agree)
    p = sub.add_parser("wait-dns")
    p.add_argument("--server", required=True)
    p.add_argument("--zone", required=True)
    p.add_argument("--timeout", type=float, default=20)
    p.set_defaults(func=cmd_wait_dns)
    p = sub.add_parser("cpu-snapshot")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_cpu_snapshot)
    p = sub.add_parser("cpu-foreign")
    p.add_argument("--before", required=True)
    p.add_argument("--exclude", default="", help="comma-separated pids whose process trees are the benchmark's")
    p.set_defaults(func=cmd_cpu_foreign)
    p = sub.add_parser("dnsperf")
    p.add_argument("--output", required=True)
    p.add_argument("--cpu-s", type=float)
    p.add_argument("--loadgen-cpu-s", type=float)
    p.add_argument("--foreign-cpu-s", type=float)
    p.add_argument("--udp-drops", type=int)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_dnsperf)
    p = sub.add_parser("summary")
    p.add_argument("--run", required=True)
    p.set_defaults(func=cmd_summary)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
