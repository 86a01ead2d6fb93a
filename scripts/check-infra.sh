#!/usr/bin/env bash
# Checks the infrastructure and monitoring assets (terraform/, deploy/) offline:
#   1. every .tf parses (python-hcl2), and `terraform fmt -check` when terraform is installed
#   2. checkov over terraform/: every finding fixed or suppressed in the code with a reason
#   3. terraform/live/example/catalogue.json is a current export of regions/
#   4. every catalogue region maps to exactly one region-module instance of its cloud
#   5. promtool check rules / check config, and promtool test rules
#   6. every metric the rules, the dashboard and terraform use is exported by a binary
#   7. systemd-analyze verify on the units (skipped with a message when unavailable)
# Installs what is missing: Debian's prometheus package (promtool) and, in venvs under
# .venv-infra/ (git-ignored), python-hcl2 and checkov, which both ship a module named `hcl2` and
# so cannot share one environment. Idempotent; fast once the tools are there. Nothing here
# contacts a cloud: checkov runs with --skip-download, terraform with CHECKPOINT_DISABLE.
set -euo pipefail
cd "$(dirname "$0")/.."

HCL2_VERSION="8.1.4"
CHECKOV_VERSION="3.3.30"
VENV=".venv-infra"
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 BC_SKIP_MAPPING=TRUE PIP_DISABLE_PIP_VERSION_CHECK=1
# A TF_CLI_CONFIG_FILE pointing at a missing file makes terraform warn on every call.
if [ -n "${TF_CLI_CONFIG_FILE:-}" ] && [ ! -e "$TF_CLI_CONFIG_FILE" ]; then
  export TF_CLI_CONFIG_FILE=/dev/null
fi

step() { printf '\n== %s\n' "$*"; }
START=$SECONDS

# ---------------------------------------------------------------- tools
venv_with() { # venv_with NAME PACKAGE VERSION: a venv holding PACKAGE==VERSION
  local dir="$VENV/$1" pkg="$2" version="$3"
  if ! "$dir/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$pkg') != '$version')" 2>/dev/null; then
    echo "check-infra: installing $pkg $version into $dir" >&2
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet "$pkg==$version"
  fi
}
venv_with hcl2 python-hcl2 "$HCL2_VERSION"
venv_with checkov checkov "$CHECKOV_VERSION"
HCL2_PY="$VENV/hcl2/bin/python"
CHECKOV="$VENV/checkov/bin/checkov"

if ! command -v promtool >/dev/null 2>&1; then
  echo "check-infra: installing Debian's prometheus package (for promtool)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# ---------------------------------------------------------------- terraform
step "HCL2 parse of every .tf"
"$HCL2_PY" scripts/check-hcl.py
if command -v terraform >/dev/null 2>&1; then
  step "terraform fmt -check"
  terraform fmt -check -recursive terraform/
  echo "terraform fmt: ok"
else
  echo "terraform not installed: fmt check skipped (the HCL2 parse above still ran)"
fi

step "checkov over terraform/"
# --skip-download: no calls to the vendor's platform; findings come from the bundled checks.
"$CHECKOV" --directory terraform --framework terraform --quiet --compact --skip-download \
  --download-external-modules false

step "catalogue export is current"
python3 scripts/export-catalogue.py --check

step "catalogue -> region module instances"
"$HCL2_PY" scripts/check-terraform-catalogue.py

# ---------------------------------------------------------------- monitoring
step "promtool check rules / config"
promtool check rules deploy/prometheus/meridian.rules.yml
(cd deploy/prometheus && promtool check config --syntax-only prometheus.yml)

step "promtool test rules"
(cd deploy/prometheus && promtool test rules meridian.rules.test.yml)

step "metrics used by rules, dashboard and terraform are exported"
python3 scripts/check-metrics.py

# ---------------------------------------------------------------- systemd
step "systemd-analyze verify"
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify insists that ExecStart binaries exist; point them at stubs in a scratch directory.
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/bin" "$scratch/units"
  for b in region-node interregion-relay geo-router meridian-fetch-secrets; do
    printf '#!/bin/sh\n' > "$scratch/bin/$b"
    chmod +x "$scratch/bin/$b"
  done
  for unit in deploy/systemd/*.service; do
    sed -E "s#^ExecStart=(-?)/usr/local/(bin|lib/meridian)/#ExecStart=\1$scratch/bin/#" "$unit" \
      > "$scratch/units/$(basename "$unit")"
  done
  (cd "$scratch/units" && systemd-analyze verify ./*.service)
  echo "systemd-analyze verify: $(ls deploy/systemd/*.service | wc -l) units ok"
  bash -n deploy/bin/meridian-fetch-secrets
else
  echo "systemd-analyze not available: unit verification skipped"
fi

printf '\ncheck-infra: all checks passed in %ss\n' "$((SECONDS - START))"
