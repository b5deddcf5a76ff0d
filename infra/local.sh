#!/usr/bin/env bash
# Local servers for the tests, the demo and users: an OpenSearch-compatible server (osmem-server)
# and DynamoDB with Streams (moto_server), both from PyPI in a venv under infra/.venv.
#
#   infra/local.sh install          create or update the venv (idempotent)
#   infra/local.sh start [os|ddb]   start the servers (both by default), idempotent
#   infra/local.sh stop  [os|ddb]   stop them
#   infra/local.sh env              print export lines for OPENSEARCH_URL and DYNAMODB_ENDPOINT
#   infra/local.sh osmem-bin        print the osmem-server binary path
#   infra/local.sh reference-python create the function bench's Python reference venv
#                                   (infra/.venv-reference) if needed; print its python
#
# Ports: OPENSEARCH_PORT (default 9200), DYNAMODB_PORT (default 8000).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
state="$here/.venv/run"
os_port="${OPENSEARCH_PORT:-9200}"
ddb_port="${DYNAMODB_PORT:-8000}"
python="${PYTHON:-python3}"

install() {
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  if ! "$venv/bin/python" -c "import osmem_server, moto" 2>/dev/null; then
    echo "installing osmem-server and moto into infra/.venv (once; about a minute)" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  fi
  mkdir -p "$state"
}

# The function bench's reference (infra/reference/function.py) in a venv of its own: boto3's and
# awslambdaric's pins are not the servers'.
reference_python() {
  local ref="$here/.venv-reference"
  if [ ! -x "$ref/bin/python" ]; then
    "$python" -m venv "$ref"
  fi
  if ! "$ref/bin/python" -c "import awslambdaric, boto3, opensearchpy" 2>/dev/null; then
    echo "installing the Python reference function's libraries into infra/.venv-reference (once)" >&2
    "$ref/bin/pip" install --quiet --disable-pip-version-check -r "$here/reference/requirements.txt"
  fi
  echo "$ref/bin/python"
}

osmem_bin() {
  "$venv/bin/python" -c "from osmem_server import resolve_binary; print(resolve_binary())"
}

pidfile() { case "$1" in os) echo "$state/os-$os_port.pid" ;; ddb) echo "$state/ddb-$ddb_port.pid" ;; esac; }
running() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

wait_http() {
  for _ in $(seq 1 100); do
    if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "server at $1 did not answer" >&2
  return 1
}

start_os() {
  if running os; then return 0; fi
  nohup "$(osmem_bin)" -addr "127.0.0.1:$os_port" -no-stdin-watch >"$state/os-$os_port.log" 2>&1 </dev/null &
  echo $! >"$(pidfile os)"
  wait_http "http://127.0.0.1:$os_port/"
  echo "OpenSearch-compatible server on http://127.0.0.1:$os_port"
}

start_ddb() {
  if running ddb; then return 0; fi
  nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$ddb_port" >"$state/ddb-$ddb_port.log" 2>&1 </dev/null &
  echo $! >"$(pidfile ddb)"
  wait_http "http://127.0.0.1:$ddb_port/moto-api/"
  echo "DynamoDB (moto) on http://127.0.0.1:$ddb_port"
}

stop_one() {
  if running "$1"; then kill "$(cat "$(pidfile "$1")")" 2>/dev/null || true; fi
  rm -f "$(pidfile "$1")"
}

cmd="${1:-}"
what="${2:-all}"
case "$cmd" in
  install) install ;;
  start)
    install
    case "$what" in os) start_os ;; ddb) start_ddb ;; all) start_os; start_ddb ;; *) echo "unknown server $what" >&2; exit 2 ;; esac ;;
  stop)
    case "$what" in os) stop_one os ;; ddb) stop_one ddb ;; all) stop_one os; stop_one ddb ;; *) echo "unknown server $what" >&2; exit 2 ;; esac ;;
  env)
    echo "export OPENSEARCH_URL=http://127.0.0.1:$os_port"
    echo "export DYNAMODB_ENDPOINT=http://127.0.0.1:$ddb_port" ;;
  osmem-bin) install >/dev/null; osmem_bin ;;
  reference-python) reference_python ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
