#!/usr/bin/env bash
# The library's tests built for aarch64 (the architecture the template deploys) and run under
# qemu-user. Installs what it needs where it can: Debian's cross linker and qemu-user, and the
# aarch64 standard library through rustup. Where one of them cannot be installed, says so and
# skips (exit 0); a test that fails is a failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target=aarch64-unknown-linux-gnu
skip() { echo "aarch64 tests skipped: $*" >&2; exit 0; }

if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  command -v apt-get >/dev/null || skip "no qemu-aarch64 or aarch64-linux-gnu-gcc, and no apt-get"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  $sudo apt-get install -y -q gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null \
    || skip "apt-get could not install gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" >/dev/null || skip "rustup could not add $target"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test "$@" --target "$target" --lib
