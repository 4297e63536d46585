#!/usr/bin/env bash
# Installs what RATIO needs on Debian, only what is missing (idempotent; run by `make`).
# Debian packages: compiler tool chain, LibTorch (CPU), the C++ libraries, Chromium and the
# fortunes corpus. npm packages: web/package.json (uPlot, playwright-core, gpt-3-encoder).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git python3
  libtorch-dev libopenblas0-pthread libgloo-dev
  libsqlite3-dev libcpp-httplib-dev nlohmann-json3-dev libyaml-cpp-dev libspdlog-dev libgtest-dev
  libicu-dev
  chromium fortunes nodejs npm
)
# Issue 16: one option library (CLI11), man pages from --help (help2man), and what `make deb`
# (CPack's DEB generator with dpkg-shlibdeps) runs: dpkg-dev and file.
PACKAGES+=(libcli11-dev help2man dpkg-dev file)
# Issue 12: the SLURM executor's tests start a private one-node cluster on localhost
# (tests/daemon/slurm_cluster.h); installing the packages starts nothing they need.
PACKAGES+=(slurmctld slurmd slurm-client munge)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from elsewhere (e.g. a preinstalled Node): accept any working binary.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
  read -r -a missing <<<"${missing[*]}"
fi

if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi

if [ -f web/package.json ] && [ ! -f web/node_modules/.package-lock.json ] ; then
  echo "setup: installing npm packages (web/package-lock.json)" >&2
  (cd web && npm ci --no-audit --no-fund --loglevel=error) >&2
fi

