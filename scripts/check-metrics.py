#!/usr/bin/env python3
"""Checks that every Meridian metric the monitoring assets use is exported by some binary.

Used names come from:
  - the `expr` of every rule in deploy/prometheus/*.rules.yml (and `record` names they define),
  - every `expr` / `query` / `definition` string in deploy/grafana/*.json,
  - terraform/ (the autoscaling policies read meridian_node_connections).
Only names that start with `meridian_` are checked; Prometheus's own (`up`) are not ours.

Exported names are read from the Rust sources under crates/: each `.register("name", ...)` call,
with the prefix of the registry it is called on (`Registry::with_prefix("meridian_relay")`,
`Registry::with_prefix_and_labels("meridian_node", ...)`, `.sub_registry_with_prefix(...)`,
following `let r = &mut root;` aliases), and the exposition suffixes of its type as
prometheus-client writes them: counters `_total`, histograms `_bucket`/`_sum`/`_count`, gauges
none. The type is read from the struct field the registered value is cloned from.

deploy/metrics-pending.txt lists names that are promised but not yet in code, one per line with a
reason (`name  reason...`). A used name that is neither exported nor pending fails the check; a
pending name that is now exported is reported so the list can shrink (not a failure, so CI stays
green while the code lands).

Exit 0 when every used name is exported or pending; 1 otherwise. Stdlib only."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PENDING = ROOT / "deploy" / "metrics-pending.txt"
SUFFIXES = {
    "Counter": ["_total"],
    "Gauge": [""],
    "Histogram": ["_bucket", "_sum", "_count"],
    None: ["", "_total", "_bucket", "_sum", "_count"],
}
TOKEN = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
TF_METRIC = re.compile(r"\bmeridian_(?:node|relay|router|drill)_[a-z0-9_]+")


# ---------------------------------------------------------------- exported (Rust sources)

PREFIX_LET = re.compile(
    r"let\s+(?:mut\s+)?(\w+)\s*(?::[^=;]+)?=\s*[^;]*?"
    r"(?:with_prefix_and_labels|with_prefix|sub_registry_with_prefix)\(\s*\"([^\"]+)\"",
    re.S,
)
ALIAS_LET = re.compile(r"let\s+(?:mut\s+)?(\w+)\s*(?::[^=;]+)?=\s*&\s*mut\s+(\w+)\s*;")
REGISTER = re.compile(
    r"([\w.]+)\s*\.\s*register(?:_with_unit)?\(\s*\"([^\"]+)\"\s*,\s*(?:\"(?:[^\"\\]|\\.)*\"|[^,]+)\s*,\s*&?\s*([\w.]+)",
    re.S,
)


def field_kind(source: str, field: str) -> str | None:
    m = re.search(rf"\bpub\s+{re.escape(field)}\s*:\s*([^\n]+)", source)
    if not m:
        return None
    for kind in ("Histogram", "Counter", "Gauge"):
        if re.search(rf"\b{kind}\b", m.group(1)):
            return kind
    return None


def exported_names(crates: Path) -> dict[str, str]:
    """exposition name -> 'file: registered name (kind)'."""
    names: dict[str, str] = {}
    for path in sorted(crates.rglob("*.rs")):
        if "target" in path.parts:
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        if ".register" not in source:
            continue
        prefixes = {var: prefix for var, prefix in PREFIX_LET.findall(source)}
        aliases = dict(ALIAS_LET.findall(source))
        for receiver, name, value in REGISTER.findall(source):
            var = receiver.split(".")[-1]
            var = aliases.get(var, var)
            prefix = prefixes.get(var, "")
            full = name if name.startswith("meridian_") or not prefix else f"{prefix}_{name}"
            parts = [p for p in value.split(".") if p not in ("clone", "")]
            kind = field_kind(source, parts[-1]) if parts else None
            for suffix in SUFFIXES[kind]:
                names[full + suffix] = f"{path.relative_to(ROOT)}: {name} ({kind or 'type unknown'})"
    return names


# ---------------------------------------------------------------- used (rules, dashboards, tf)

def rule_exprs(path: Path) -> tuple[list[str], set[str]]:
    """`expr` values (single line or block scalars) and `record` names of a rules file."""
    exprs, records = [], set()
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)(?:-\s+)?(expr|record):\s*(.*)$", line)
        if not m:
            i += 1
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        if key == "record":
            records.add(rest.strip("'\""))
            i += 1
            continue
        if rest in ("|", ">", "|-", ">-", "|+", ">+"):
            block = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            exprs.append("\n".join(block))
        else:
            exprs.append(rest.strip("'\""))
            i += 1
    return exprs, records


def json_exprs(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                out.append(value)
            else:
                out.extend(json_exprs(value))
    elif isinstance(node, list):
        for value in node:
            out.extend(json_exprs(value))
    return out


def metric_tokens(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values are not metric names
    return {t for t in TOKEN.findall(expr) if t.startswith("meridian_") or re.fullmatch(r"[A-Za-z_]\w*:[\w:]+", t)}


def used_names() -> tuple[dict[str, set[str]], set[str]]:
    used: dict[str, set[str]] = {}
    records: set[str] = set()

    def add(name: str, where: str) -> None:
        used.setdefault(name, set()).add(where)

    for path in sorted((ROOT / "deploy" / "prometheus").glob("*.rules.yml")):
        exprs, recs = rule_exprs(path)
        records |= recs
        for e in exprs:
            for t in metric_tokens(e):
                add(t, str(path.relative_to(ROOT)))
    for path in sorted((ROOT / "deploy" / "grafana").glob("*.json")):
        for e in json_exprs(json.loads(path.read_text(encoding="utf-8"))):
            for t in metric_tokens(e):
                add(t, str(path.relative_to(ROOT)))
    for path in sorted((ROOT / "terraform").rglob("*")):
        if path.suffix in (".tf", ".tftpl") and ".terraform" not in path.parts:
            for t in TF_METRIC.findall(path.read_text(encoding="utf-8")):
                add(t, str(path.relative_to(ROOT)))
    return used, records


def pending_names() -> tuple[dict[str, str], list[str]]:
    pending, problems = {}, []
    if not PENDING.exists():
        return pending, problems
    for n, raw in enumerate(PENDING.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not re.fullmatch(r"meridian_\w+", name) or not reason.strip():
            problems.append(f"{PENDING.relative_to(ROOT)}:{n}: want `meridian_name  reason`, got {raw!r}")
            continue
        pending[name] = reason.strip()
    return pending, problems


def main() -> int:
    exported = exported_names(ROOT / "crates")
    used, records = used_names()
    pending, problems = pending_names()
    for p in problems:
        print(f"check-metrics: {p}", file=sys.stderr)

    found, allowed, missing = [], [], []
    for name in sorted(used):
        if name in records:
            continue
        if name in exported:
            found.append(name)
        elif name in pending:
            allowed.append(name)
        else:
            missing.append(name)

    for name in missing:
        print(
            f"check-metrics: MISSING {name} (used in {', '.join(sorted(used[name]))}): no binary exports it "
            f"and {PENDING.relative_to(ROOT)} does not list it",
            file=sys.stderr,
        )
    for name in allowed:
        print(f"check-metrics: pending {name}: {pending[name]}")
    for name in sorted(pending):
        if name in exported:
            print(f"check-metrics: note: {name} is now exported ({exported[name]}); remove it from {PENDING.relative_to(ROOT)}")
        elif name not in used:
            print(f"check-metrics: note: pending {name} is used nowhere; remove it from {PENDING.relative_to(ROOT)}")

    failed = len(missing) + len(problems)
    print(f"check-metrics: {len(found)} passed, {failed} failed, {len(allowed)} skipped (pending)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
