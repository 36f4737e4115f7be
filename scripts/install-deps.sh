#!/usr/bin/env bash
# Installs the Debian packages qdiff needs to build and test. Idempotent.
# Usage: scripts/install-deps.sh [--bench]
# (python3-torch, -numpy and -pil: the ComfyUI node's test, tests/cli_comfyui_node.sh, and bench/
# comparisons; --bench is kept for scripts that pass it and adds nothing more now)
set -euo pipefail
pkgs=(build-essential cmake pkg-config libcjson-dev libpng-dev libjpeg62-turbo-dev zlib1g-dev
      python3 python3-torch python3-numpy python3-pil)
# qdiff serve and its tests: the HTTP library, curl + python3 (tests/cli_serve.sh), headless
# Chromium driven by Node over the DevTools protocol (tests/cli_web.sh); a Node already on
# the machine (e.g. from another repository) is used as it is.
pkgs+=(libmicrohttpd-dev curl chromium)
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
