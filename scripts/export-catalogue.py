#!/usr/bin/env python3
"""Exports the region catalogue (regions/*.toml) to the JSON file terraform reads.

Terraform has no TOML decoder, so the catalogue reaches it through this export:
terraform/live/example/catalogue.json. The schema is documented in terraform/README.md
("The exported catalogue"). Only deployment facts are exported; the dev-only `[local]` table is
dropped. The crate `crates/catalogue` stays the full validator (`cargo test -p
meridian-catalogue`); the checks here are the ones terraform depends on.

Usage:
  scripts/export-catalogue.py            write the file
  scripts/export-catalogue.py --check    exit 1 when the committed file differs from a fresh export
  scripts/export-catalogue.py --stdout   print the export
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGIONS = ROOT / "regions"
OUT = ROOT / "terraform" / "live" / "example" / "catalogue.json"
SCHEMA = 1
# Keep in step with `enum Cloud` in crates/catalogue/src/lib.rs; terraform deploys aws and gcp.
CLOUDS = {"aws", "gcp", "local"}
KEYS = {
    "name", "display_name", "latitude", "longitude", "capacity", "cloud", "cloud_region",
    "ingress", "relay", "local",
}
NAME = re.compile(r"^[a-z0-9-]{1,32}$")


class CatalogueError(Exception):
    """A region file terraform cannot use; the message names the file."""


def region_entry(path: Path) -> dict:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise CatalogueError(f"{path}: {e}") from e

    def bad(msg: str) -> CatalogueError:
        return CatalogueError(f"{path.relative_to(ROOT)}: {msg}")

    unknown = set(raw) - KEYS
    if unknown:
        raise bad(f"unknown keys {sorted(unknown)}")
    name = raw.get("name", "")
    if not NAME.match(name) or name != path.stem:
        raise bad(f"name {name!r} must be 1-32 of a-z 0-9 - and equal the file name")
    cloud = raw.get("cloud")
    if cloud not in CLOUDS:
        raise bad(f"cloud {cloud!r} is not one of {sorted(CLOUDS)}")
    cloud_region = raw.get("cloud_region", "")
    if cloud != "local" and not cloud_region:
        raise bad(f"cloud {cloud} needs cloud_region")
    ingress = raw.get("ingress") or {}
    addresses = [str(ipaddress.ip_address(a)) for a in ingress.get("addresses", [])]
    if not addresses:
        raise bad("ingress.addresses needs at least one address")
    relay_address = (raw.get("relay") or {}).get("address", "")
    host, sep, port = relay_address.rpartition(":")
    if not sep or not port.isdigit():
        raise bad(f"relay.address {relay_address!r} is not host:port")
    relay_ip = ipaddress.ip_address(host.strip("[]"))
    return {
        "name": name,
        "display_name": raw.get("display_name") or name,
        "latitude": float(raw["latitude"]),
        "longitude": float(raw["longitude"]),
        "capacity": int(raw["capacity"]),
        "cloud": cloud,
        "cloud_region": cloud_region,
        "ingress": {
            "addresses": addresses,
            "ws_url": ingress["ws_url"],
            "health_url": ingress["health_url"],
        },
        "relay": {
            "address": relay_address,
            "ip": str(relay_ip),
            "port": int(port),
        },
    }


def export(regions_dir: Path = REGIONS) -> str:
    files = sorted(regions_dir.glob("*.toml"))
    if not files:
        raise CatalogueError(f"{regions_dir}: no region files (*.toml)")
    regions = {}
    for path in files:
        entry = region_entry(path)
        regions[entry["name"]] = entry
    doc = {
        "schema": SCHEMA,
        "generated_by": "scripts/export-catalogue.py from regions/*.toml; do not edit",
        "regions": regions,
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if the committed export is stale")
    mode.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = parser.parse_args()
    try:
        fresh = export()
    except CatalogueError as e:
        print(f"export-catalogue: {e}", file=sys.stderr)
        return 2
    if args.stdout:
        sys.stdout.write(fresh)
        return 0
    rel = OUT.relative_to(ROOT)
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != fresh:
            print(
                f"export-catalogue: {rel} is stale; run `python3 scripts/export-catalogue.py` "
                "and commit it with the region files",
                file=sys.stderr,
            )
            return 1
        count = len(json.loads(fresh)["regions"])
        print(f"export-catalogue: {rel} is current ({count} regions)")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(fresh, encoding="utf-8")
    print(f"export-catalogue: wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
