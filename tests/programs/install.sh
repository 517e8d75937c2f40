#!/usr/bin/env bash
# Installs the real programs tests/programs/scenarios.py drives: from Debian nginx and
# socat, from PyPI gunicorn, uvicorn and requests (pinned), into the Python that runs
# scenarios.py. Skips what is already there; needs root. Measured on a fresh machine of
# this project's kind: see FINDINGS.md ("Install cost").
#
#   tests/programs/install.sh          install what is missing
#   tests/programs/install.sh --list   print the packages, install nothing
set -euo pipefail

APT_PACKAGES=(nginx socat)
PIP_PACKAGES=(gunicorn==23.0.0 uvicorn==0.38.0 requests==2.34.2)
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--list" ]; then
    echo "apt: ${APT_PACKAGES[*]}"
    echo "pip: ${PIP_PACKAGES[*]}"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "install.sh: needs root" >&2; exit 1; }

missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
if ((${#missing[@]})); then
    # Debian's nginx starts its service on install where no policy-rc.d forbids it; the
    # scenarios run their own nginx in private namespaces, so stop only the one the
    # install started.
    before=$(pgrep -x nginx || true)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
    for pid in $(pgrep -x nginx || true); do
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
if ((${#pip_missing[@]})); then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "${pip_missing[@]}"
fi
