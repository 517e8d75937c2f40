#!/usr/bin/env bash
# Installs the real programs tests/programs/scenarios.py drives: from Debian nginx and
# socat, from PyPI gunicorn, uvicorn and requests (pinned), into the Python that runs
# scenarios.py; and what its alert check runs: promtool (Debian's prometheus package) and
# jsonnet, which render and test the shipped rules (tests/monitoring/check.sh needs the
# same), and PyYAML. Skips what is already there; needs root. Measured on a fresh machine
# of this project's kind: see FINDINGS.md ("Install cost").
#
#   tests/programs/install.sh          install what is missing
#   tests/programs/install.sh --list   print the packages, install nothing
set -euo pipefail

APT_PACKAGES=(nginx socat prometheus jsonnet)
PIP_PACKAGES=(gunicorn==23.0.0 uvicorn==0.38.0 requests==2.34.2)
# Only when the Python has no yaml module at all (Debian's python3-yaml, or pyenv's own).
PIP_IF_NO_YAML=PyYAML==6.0.3
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--list" ]; then
    echo "apt: ${APT_PACKAGES[*]}"
    echo "pip: ${PIP_PACKAGES[*]} (and $PIP_IF_NO_YAML without a yaml module)"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "install.sh: needs root" >&2; exit 1; }

missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
if ((${#missing[@]})); then
    # Debian's nginx and prometheus start their services on install where no
    # policy-rc.d forbids it; the scenarios run their own nginx in private namespaces and
    # need no Prometheus server, so stop only what the install started.
    # One pgrep per name: given 'nginx|prometheus' (16 characters, more than a process
    # name holds) pgrep still matches but warns in every log that it matches nothing.
    before=$( (pgrep -x nginx; pgrep -x prometheus) || true)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
    for pid in $( (pgrep -x nginx; pgrep -x prometheus) || true); do
        grep -qx "$pid" <<<"$before" || kill "$pid" 2>/dev/null || true
    done
fi

pip_missing=()
for spec in "${PIP_PACKAGES[@]}"; do
    name=${spec%%==*}
    version=${spec##*==}
    installed=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
    [ "$installed" = "$version" ] || pip_missing+=("$spec")
done
"$PYTHON" -c 'import yaml' 2>/dev/null || pip_missing+=("$PIP_IF_NO_YAML")
if ((${#pip_missing[@]})); then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "${pip_missing[@]}"
fi
