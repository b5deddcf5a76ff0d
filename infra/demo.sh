#!/usr/bin/env bash
# Runs the whole pipeline locally: builds, starts a local OpenSearch-compatible server and a
# local DynamoDB with Streams, creates a table with a stream and an index from the template,
# writes a few hundred changes, delivers the stream to the function as Lambda would, prints what
# landed and the table-versus-index check, and stops the servers.
# OPENSEARCH_URL / DYNAMODB_ENDPOINT point it at servers you run yourself instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export OPENSEARCH_PORT="${OPENSEARCH_PORT:-9200}" DYNAMODB_PORT="${DYNAMODB_PORT:-8000}"
# The dev profile, as `cargo test` uses: the tests and the demo share one build.
if [ ! -d target/debug/deps ]; then
  echo "building the demo (the first build compiles a few hundred crates and takes several minutes)" >&2
fi
cargo build --bin demo
started=()
cleanup() { for s in "${started[@]}"; do infra/local.sh stop "$s"; done; }
trap cleanup EXIT
if [ -z "${OPENSEARCH_URL:-}" ]; then
  infra/local.sh start os
  started+=(os)
  export OPENSEARCH_URL="http://127.0.0.1:$OPENSEARCH_PORT"
fi
if [ -z "${DYNAMODB_ENDPOINT:-}" ]; then
  infra/local.sh start ddb
  started+=(ddb)
  export DYNAMODB_ENDPOINT="http://127.0.0.1:$DYNAMODB_PORT"
fi
export OPENSEARCH_INDEX="${OPENSEARCH_INDEX:-demo-items}" RUST_LOG="${RUST_LOG:-warn}"
target/debug/demo "$@"
