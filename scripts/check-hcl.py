#!/usr/bin/env python3
"""Parses every .tf file under terraform/ with an HCL2 parser (python-hcl2) and reports the
ones that do not parse. `terraform validate` would do more, but it needs provider downloads this
machine cannot make (terraform/README.md, "Checks"); this catches syntax errors offline.

Run with an interpreter that has python-hcl2 (scripts/check-infra.sh sets one up)."""

from __future__ import annotations

import sys
from pathlib import Path

import hcl2

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    files = sorted((ROOT / "terraform").rglob("*.tf"))
    files = [f for f in files if ".terraform" not in f.parts]
    if not files:
        print("check-hcl: no .tf files under terraform/", file=sys.stderr)
        return 1
    failed = 0
    for path in files:
        try:
            with path.open(encoding="utf-8") as f:
                hcl2.load(f)
        except Exception as e:  # the parser raises lark errors of several kinds
            failed += 1
            print(f"check-hcl: {path.relative_to(ROOT)}: {e}", file=sys.stderr)
    print(f"check-hcl: {len(files) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
