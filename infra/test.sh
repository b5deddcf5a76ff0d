#!/usr/bin/env bash
# Runs every test: installs the local servers' venv if needed, then the whole cargo test suite.
# Tests start their own OpenSearch-compatible server, or use OPENSEARCH_URL when it is set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
infra/local.sh install
OSMEM_SERVER_BIN="$(infra/local.sh osmem-bin)"
export OSMEM_SERVER_BIN
if [ ! -d target/debug/deps ]; then
  echo "building the tests (the first build compiles a few hundred crates and takes several minutes)" >&2
fi
cargo test "$@"
# The string scan's portable path (eight bytes at a time: arm64's, the architecture the template
# deploys) under the conversion's property and fidelity tests; x86_64 otherwise runs SSE2.
cargo test "$@" --lib --features portable-scan pipeline::
