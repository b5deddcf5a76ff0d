#!/usr/bin/env bash
# Runs the function locally: starts a local OpenSearch-compatible server, applies the index
# template, delivers the events/ fixtures to the handler in order, prints the resulting
# documents, and stops the server. Set OPENSEARCH_URL to use a running cluster instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export OPENSEARCH_PORT="${OPENSEARCH_PORT:-9200}"
started=""
if [ -z "${OPENSEARCH_URL:-}" ]; then
  infra/local.sh start os
  started=1
  export OPENSEARCH_URL="http://127.0.0.1:$OPENSEARCH_PORT"
fi
trap '[ -n "$started" ] && infra/local.sh stop os' EXIT
export OPENSEARCH_INDEX="${OPENSEARCH_INDEX:-demo-items}"
cargo build --release --quiet --bin deliver
target/release/deliver --apply-template --show \
  events/every-type.json events/insert.json events/modify.json events/mixed.json \
  events/large-item.json events/remove.json events/ttl-remove.json
