# Shared by scripts/demo, test, bench and bench-gpu: REPO and BUILD_DIR, and functions that install
# what is missing, configure and build. Sourced, not run.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${SINKSERVE_BUILD_DIR:-$REPO/build}"

# Debian packages the build, the tests and the plots need; apt-get runs only when one is missing.
PACKAGES=(build-essential cmake ninja-build pkg-config libopenmpi-dev openmpi-bin libboost-dev
          nlohmann-json3-dev libgtest-dev libgmock-dev gnuplot-nox curl ca-certificates)

install_packages() {
  local missing=() extra=("$@")
  for p in "${PACKAGES[@]}" "${extra[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() {
  cmake -S "$REPO" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DSINKSERVE_CUDA="${SINKSERVE_CUDA:-AUTO}" >/dev/null
  cmake --build "$BUILD_DIR" -j"$(nproc)"
}

# The fixtures directory (../shared beside the checkout, or $SINKSERVE_FIXTURES), fetched from
# the public sources into a cache when neither holds them.
fixtures_dir() {
  "$REPO/scripts/fixtures"
}
