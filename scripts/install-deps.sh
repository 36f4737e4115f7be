#!/usr/bin/env bash
# Installs the Debian packages qdiff needs to build and test. Idempotent.
# Usage: scripts/install-deps.sh [--bench]   (--bench adds python3-torch for bench/ comparisons)
set -euo pipefail
pkgs=(build-essential cmake pkg-config libcjson-dev libpng-dev libjpeg62-turbo-dev zlib1g-dev)
# qdiff serve and its tests: the HTTP library, curl + python3 (tests/cli_serve.sh), headless
# Chromium driven by Node over the DevTools protocol (tests/cli_web.sh); a Node already on
# the machine (e.g. from another repository) is used as it is.
pkgs+=(libmicrohttpd-dev curl python3 chromium)
command -v node >/dev/null || pkgs+=(nodejs)
if [[ "${1:-}" == "--bench" ]]; then pkgs+=(python3-torch python3-numpy); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
