#!/usr/bin/env python3
"""Checks that every catalogue region maps to exactly one region-module instance of its cloud
in the root configuration terraform/live/example.

Two halves:
1. Structure (python-hcl2): the root has exactly one module call per region module
   (modules/aws-region, modules/gcp-region), each with for_each over the catalogue module's map
   for its own cloud (`module.catalogue.by_cloud["aws"]`, directly or through a local), and the
   catalogue module reads the catalogue.json beside the root.
2. Values (terraform, offline): the catalogue module is evaluated on the committed
   catalogue.json (`terraform apply` of a harness with no provider and no resource, so nothing
   is downloaded and nothing is contacted), and its by_cloud maps must hold every region exactly
   once, under the cloud its region file names. A self-test then feeds it a catalogue with a
   region terraform cannot deploy (cloud = "local") and expects the apply to fail.
   Without a terraform binary the values half evaluates the same partition in Python and says so.

Run with an interpreter that has python-hcl2 (scripts/check-infra.sh sets one up)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import hcl2

ROOT = Path(__file__).resolve().parent.parent
LIVE = ROOT / "terraform" / "live" / "example"
CATALOGUE_MODULE = ROOT / "terraform" / "modules" / "catalogue"
REGION_MODULES = {"aws": "modules/aws-region", "gcp": "modules/gcp-region"}

failures: list[str] = []
passes = 0


def ok(cond: bool, what: str) -> None:
    global passes
    if cond:
        passes += 1
    else:
        failures.append(what)
        print(f"FAIL: {what}", file=sys.stderr)


def unquote(s: str) -> str:
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s


def expr(s: str) -> str:
    """`${x}` -> `x`, whitespace removed."""
    s = unquote(s) if isinstance(s, str) else str(s)
    m = re.fullmatch(r"\$\{(.*)\}", s, re.S)
    return re.sub(r"\s+", "", m.group(1) if m else s)


def load_exporter():
    spec = importlib.util.spec_from_file_location("export_catalogue", ROOT / "scripts" / "export-catalogue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_root() -> tuple[dict, list[dict]]:
    local_values: dict[str, str] = {}
    modules: list[dict] = []
    for path in sorted(LIVE.glob("*.tf")):
        with path.open(encoding="utf-8") as f:
            doc = hcl2.load(f)
        for block in doc.get("locals", []):
            for key, value in block.items():
                if not key.startswith("__"):
                    local_values[key] = value
        for block in doc.get("module", []):
            for name, body in block.items():
                modules.append({"name": unquote(name), "file": path.name, **body})
    return local_values, modules


def check_structure() -> None:
    local_values, modules = parse_root()
    resolved = {k: expr(v) for k, v in local_values.items() if isinstance(v, str)}

    def resolve(e: str) -> str:
        e = expr(e)
        m = re.fullmatch(r"local\.([A-Za-z0-9_]+)", e)
        return resolved.get(m.group(1), e) if m else e

    catalogue_calls = [m for m in modules if unquote(m.get("source", "")).endswith("modules/catalogue")]
    ok(len(catalogue_calls) == 1, "the root calls modules/catalogue exactly once")
    if catalogue_calls:
        call = catalogue_calls[0]
        ok(call["name"] == "catalogue", "the catalogue module call is named `catalogue`")
        ok(
            expr(call.get("catalogue_json", "")) == 'file("${path.module}/catalogue.json")',
            "module.catalogue reads catalogue.json beside the root",
        )

    for cloud, source in REGION_MODULES.items():
        calls = [m for m in modules if unquote(m.get("source", "")).endswith(source)]
        ok(len(calls) == 1, f"exactly one call of {source} (found {[c['name'] for c in calls]})")
        for call in calls:
            for_each = resolve(call.get("for_each", ""))
            ok(
                for_each == f'module.catalogue.by_cloud["{cloud}"]',
                f"module.{call['name']} ({source}) iterates module.catalogue.by_cloud[\"{cloud}\"], got {for_each!r}",
            )
            ok(expr(call.get("region", "")) == "each.value", f"module.{call['name']} gets region = each.value")
            ok("count" not in call, f"module.{call['name']} uses for_each, not count")


def terraform_apply(harness: Path, catalogue: Path) -> subprocess.CompletedProcess:
    (harness / "main.tf").write_text(
        f'''module "catalogue" {{
  source         = "{CATALOGUE_MODULE.as_posix()}"
  catalogue_json = file("{catalogue.as_posix()}")
}}

output "by_cloud" {{
  value = module.catalogue.by_cloud
}}
''',
        encoding="utf-8",
    )
    env = dict(os.environ, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0")
    cli_config = env.get("TF_CLI_CONFIG_FILE")
    if cli_config and not Path(cli_config).exists():
        env["TF_CLI_CONFIG_FILE"] = "/dev/null"
    env.pop("TF_DATA_DIR", None)
    run = lambda *args: subprocess.run(  # noqa: E731
        ["terraform", f"-chdir={harness}", *args], env=env, capture_output=True, text=True
    )
    init = run("init", "-backend=false", "-input=false", "-no-color")
    if init.returncode != 0:
        return init
    apply = run("apply", "-auto-approve", "-input=false", "-no-color", "-lock=false")
    if apply.returncode != 0:
        return apply
    return run("output", "-json", "-no-color")


def check_values() -> None:
    exported = json.loads(load_exporter().export())
    regions = exported["regions"]
    committed = LIVE / "catalogue.json"
    ok(committed.exists(), f"{committed.relative_to(ROOT)} exists")
    if not committed.exists():
        return

    if shutil.which("terraform"):
        with tempfile.TemporaryDirectory(prefix="meridian-tf-catalogue-") as tmp:
            result = terraform_apply(Path(tmp), committed)
            if result.returncode != 0:
                ok(False, f"terraform evaluates the catalogue module:\n{result.stdout}\n{result.stderr}")
                return
            by_cloud = json.loads(result.stdout)["by_cloud"]["value"]
        source = "terraform"
    else:
        print("check-terraform-catalogue: no terraform binary; evaluating the partition in Python")
        by_cloud = {c: {n: r for n, r in regions.items() if r["cloud"] == c} for c in REGION_MODULES}
        source = "python"

    for name, region in regions.items():
        homes = [cloud for cloud, members in by_cloud.items() if name in members]
        ok(
            homes == [region["cloud"]],
            f"region {name} (cloud {region['cloud']}) maps to exactly one module instance of its cloud; found {homes}",
        )
        for cloud in homes:
            ok(by_cloud[cloud][name]["cloud_region"] == region["cloud_region"], f"{name} keeps its cloud_region")
    extra = sorted({n for members in by_cloud.values() for n in members} - set(regions))
    ok(not extra, f"no module instance without a region file (extra: {extra})")
    print(
        f"check-terraform-catalogue: {len(regions)} regions -> "
        + ", ".join(f"{cloud}: {sorted(members)}" for cloud, members in by_cloud.items())
        + f" (evaluated by {source})"
    )

    if source == "terraform":
        # Self-test: a region terraform cannot deploy must fail the evaluation, not vanish.
        doc = json.loads(committed.read_text(encoding="utf-8"))
        first = sorted(doc["regions"])[0]
        doc["regions"][first]["cloud"] = "local"
        with tempfile.TemporaryDirectory(prefix="meridian-tf-catalogue-") as tmp:
            bad = Path(tmp) / "catalogue.json"
            bad.write_text(json.dumps(doc), encoding="utf-8")
            harness = Path(tmp) / "harness"
            harness.mkdir()
            result = terraform_apply(harness, bad)
        ok(
            result.returncode != 0 and "cannot deploy" in (result.stdout + result.stderr),
            "a region with cloud = \"local\" fails the catalogue module instead of being dropped",
        )


def main() -> int:
    check_structure()
    check_values()
    print(f"check-terraform-catalogue: {passes} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
